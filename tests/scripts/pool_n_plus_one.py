"""One query per row: a handler takes a connection from the pool once per row, in a loop."""

import asyncio


async def fetch(pool: asyncio.Queue[str], sql: str, arg: int) -> list[int]:
    conn = await pool.get()
    try:
        await asyncio.sleep(0)  # the query
        return [arg]
    finally:
        pool.put_nowait(conn)


async def list_orders(pool: asyncio.Queue[str]) -> list[int]:
    orders = await fetch(pool, "SELECT id FROM orders", 0)
    lines = []
    for order_id in range(30):
        lines += await fetch(pool, "SELECT * FROM lines WHERE order_id = ?", order_id)  # PER ROW
    return orders + lines


async def main() -> None:
    pool: asyncio.Queue[str] = asyncio.Queue()
    for n in range(2):
        pool.put_nowait(f"conn-{n}")
    for _ in range(3):
        await list_orders(pool)
    await fetch(pool, "SELECT 1", 0)


asyncio.run(main())
