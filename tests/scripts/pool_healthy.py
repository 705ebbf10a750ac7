"""Healthy pool use and a producer/consumer queue: nothing to report about pools.

The pool always has a connection free; the job queue's consumers wait for work (a channel,
not a pool: its items never come back)."""

import asyncio


async def consumer(jobs: asyncio.Queue[int], done: list[int]) -> None:
    while True:
        job = await jobs.get()
        done.append(job)
        jobs.task_done()


async def query(pool: asyncio.Queue[str]) -> None:
    conn = await pool.get()
    try:
        await asyncio.sleep(0.001)
    finally:
        pool.put_nowait(conn)


async def main() -> None:
    pool: asyncio.Queue[str] = asyncio.Queue()
    for n in range(4):
        pool.put_nowait(f"conn-{n}")
    for _ in range(20):
        await asyncio.gather(*(query(pool) for _ in range(3)))
    jobs: asyncio.Queue[int] = asyncio.Queue()
    done: list[int] = []
    workers = [asyncio.create_task(consumer(jobs, done)) for _ in range(3)]
    for i in range(300):
        await jobs.put(i)
        await asyncio.sleep(0)
    await jobs.join()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert len(done) == 300


asyncio.run(main())
