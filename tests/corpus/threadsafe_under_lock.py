"""A cache-refresh thread holds the cache lock and waits for a coroutine it scheduled on the
event loop; the coroutine takes the same lock on the loop's thread: a cycle through the loop."""

import asyncio
import threading

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


asyncio.run(main())
