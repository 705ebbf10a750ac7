"""The only consumer task dies on a bad item; the producer then waits in Queue.join() forever."""

import asyncio


async def consumer(jobs: asyncio.Queue[int]) -> None:
    while True:
        item = await jobs.get()
        print(100 // item)  # MARK: consumer-dies
        jobs.task_done()


async def main() -> None:
    jobs: asyncio.Queue[int] = asyncio.Queue()
    asyncio.create_task(consumer(jobs), name="consumer")  # noqa: RUF006 (fire and forget, as the bug has it)
    for item in (5, 0, 2, 1):
        jobs.put_nowait(item)
    await jobs.join()  # MARK: main-joins


asyncio.run(main())
