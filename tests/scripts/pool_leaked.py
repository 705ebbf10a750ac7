"""A task takes the pool's only connection and ends without giving it back; the next request
waits for it forever: a hang whose report names the leaker and where it took the connection."""

import asyncio


async def leaky(pool: asyncio.Queue[str]) -> None:
    await pool.get()  # LEAK: never given back


async def main() -> None:
    pool: asyncio.Queue[str] = asyncio.Queue()
    pool.put_nowait("conn")
    conn = await pool.get()
    pool.put_nowait(conn)
    await asyncio.create_task(leaky(pool))
    await pool.get()  # waits forever


asyncio.run(main())
