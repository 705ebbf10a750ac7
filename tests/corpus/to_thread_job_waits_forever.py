"""A request handler awaits a job in a thread; the job waits for a 'warm-up done' event that the
warm-up thread never sets, because it crashed: the loop has nothing left but that job."""

import asyncio
import threading

warmed_up = threading.Event()


def warm_up(sizes: list[int]) -> None:
    for size in sizes:
        assert size > 0, f"bad cache size {size}"  # MARK: warmup-crashes
    warmed_up.set()


def lookup(key: str) -> str:
    warmed_up.wait()  # MARK: job-waits
    return key.upper()


async def handle(key: str) -> str:
    return await asyncio.to_thread(lookup, key)  # MARK: handler-awaits


threading.Thread(target=warm_up, args=([64, 0],), name="warm-up").start()
print(asyncio.run(handle("user:1")))
