"""An asyncio task awaits an Event that nobody sets: the loop has nothing left to do."""

import asyncio


async def wait_for_config(loaded: asyncio.Event) -> None:
    await loaded.wait()


async def main() -> None:
    loaded = asyncio.Event()
    await asyncio.create_task(wait_for_config(loaded), name="wait-for-config")


if __name__ == "__main__":
    asyncio.run(main())
