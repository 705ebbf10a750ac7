"""A pool of connections in an asyncio.Queue; each handler keeps its connection while it
awaits a slow upstream, so the others wait for the pool (pool blame under `conctools run`)."""

import asyncio


async def fetch_upstream(request_id: int) -> int:
    await asyncio.sleep(0.3)
    return request_id


async def handler(pool: asyncio.Queue[str], request_id: int) -> None:
    conn = await pool.get()  # ACQUIRE
    try:
        await fetch_upstream(request_id)  # HOLD: the connection is kept across this await
    finally:
        pool.put_nowait(conn)


async def main() -> None:
    pool: asyncio.Queue[str] = asyncio.Queue()
    for n in range(3):
        pool.put_nowait(f"conn-{n}")
    await asyncio.gather(*(handler(pool, i) for i in range(9)))


asyncio.run(main())
