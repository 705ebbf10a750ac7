"""A threading lock held across an await (lock_across_await.py), on uvloop."""

import asyncio
import threading

import uvloop

state_lock = threading.Lock()
state: dict[str, int] = {}


async def save_remote(value: int) -> None:
    await asyncio.sleep(0.2)


async def writer() -> None:
    with state_lock:  # MARK: writer-acquires
        state["value"] = 1
        await save_remote(1)  # MARK: writer-awaits


async def reader() -> int:
    await asyncio.sleep(0.05)
    with state_lock:  # MARK: reader-blocks
        return state.get("value", 0)


async def main() -> None:
    await asyncio.gather(
        asyncio.create_task(writer(), name="writer"),
        asyncio.create_task(reader(), name="reader"),
    )


uvloop.run(main())
