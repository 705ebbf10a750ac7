"""A coroutine calls a sync wrapper that runs a job in a thread pool and waits for it, blocking
the loop; the job needs the loop (run_coroutine_threadsafe) to finish: a cycle through the pool
and the loop."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="render")


async def fetch_template(name: str) -> str:
    await asyncio.sleep(0.01)
    return f"<h1>{name}</h1>"


def render(loop: asyncio.AbstractEventLoop, name: str) -> str:
    template = asyncio.run_coroutine_threadsafe(fetch_template(name), loop).result()  # MARK: job-waits
    return template.upper()


def render_sync(loop: asyncio.AbstractEventLoop, name: str) -> str:
    return pool.submit(render, loop, name).result()  # MARK: loop-waits


async def page_handler() -> None:
    loop = asyncio.get_running_loop()
    print(render_sync(loop, "home"))


asyncio.run(page_handler())
