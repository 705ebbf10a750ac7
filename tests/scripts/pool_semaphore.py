"""A semaphore-guarded pool: a list of connections behind asyncio.Semaphore(2); each holder
keeps its slot while it awaits a slow upstream."""

import asyncio


async def call_upstream() -> None:
    await asyncio.sleep(0.3)  # HOLD


async def handler(slots: asyncio.Semaphore, conns: list[str]) -> None:
    async with slots:
        conn = conns.pop()
        try:
            await call_upstream()
        finally:
            conns.append(conn)


async def main() -> None:
    slots = asyncio.Semaphore(2)
    conns = ["conn-a", "conn-b"]
    await asyncio.gather(*(handler(slots, conns) for _ in range(6)))


asyncio.run(main())
