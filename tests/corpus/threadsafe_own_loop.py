"""A sync helper, called from a coroutine, schedules a coroutine on the running loop and waits
for it: the loop's thread waits for its own loop, which cannot run anything while it waits."""

import asyncio


async def fetch_token() -> str:
    await asyncio.sleep(0.01)
    return "token"


def get_token_sync(loop: asyncio.AbstractEventLoop) -> str:
    future = asyncio.run_coroutine_threadsafe(fetch_token(), loop)
    return future.result()  # MARK: waits-own-loop


async def handler() -> None:
    loop = asyncio.get_running_loop()
    print(get_token_sync(loop))


asyncio.run(handler())
