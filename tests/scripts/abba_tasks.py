"""Two asyncio tasks take two asyncio locks in opposite orders."""

import asyncio


async def worker(first: asyncio.Lock, second: asyncio.Lock, both: asyncio.Event, ready: list[int]) -> None:
    async with first:
        ready.append(1)
        if len(ready) == 2:
            both.set()
        await both.wait()
        async with second:
            print("never")


async def main() -> None:
    cache_lock = asyncio.Lock()
    db_lock = asyncio.Lock()
    both, ready = asyncio.Event(), []
    await asyncio.gather(
        asyncio.create_task(worker(cache_lock, db_lock, both, ready), name="refresh-cache"),
        asyncio.create_task(worker(db_lock, cache_lock, both, ready), name="write-db"),
    )


if __name__ == "__main__":
    asyncio.run(main())
