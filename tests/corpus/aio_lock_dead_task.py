"""A task takes an asyncio.Lock with acquire() and crashes before release(): the lock stays
locked, and every later task waits for it forever."""

import asyncio

cache_lock = asyncio.Lock()


async def refresh(source: dict[str, int]) -> None:
    await cache_lock.acquire()  # MARK: refresher-acquires
    value = source["ttl"]  # MARK: refresher-crashes
    cache_lock.release()
    print(value)


async def read_cache() -> None:
    await asyncio.sleep(0.05)
    async with cache_lock:  # MARK: reader-waits
        print("cache read")


async def main() -> None:
    asyncio.create_task(refresh({}), name="refresher")  # noqa: RUF006 (fire and forget, as the bug has it)
    await asyncio.create_task(read_cache(), name="reader")


asyncio.run(main())
