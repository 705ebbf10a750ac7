"""The cache-refresh cycle through the event loop (threadsafe_under_lock.py), on uvloop."""

import asyncio
import threading

import uvloop

cache_lock = threading.Lock()
cache: dict[str, str] = {}


async def load_config() -> str:
    with cache_lock:  # MARK: coroutine-blocks
        return cache.get("config", "default")


def refresh_cache(loop: asyncio.AbstractEventLoop) -> None:
    with cache_lock:  # MARK: worker-acquires
        future = asyncio.run_coroutine_threadsafe(load_config(), loop)
        cache["config"] = future.result()  # MARK: worker-waits


async def main() -> None:
    loop = asyncio.get_running_loop()
    worker = threading.Thread(target=refresh_cache, args=(loop,), name="cache-worker")
    worker.start()
    await asyncio.sleep(0.2)
    await asyncio.to_thread(worker.join)


uvloop.run(main())
