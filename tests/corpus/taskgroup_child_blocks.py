"""A TaskGroup fans out three fetches; one child uses a blocking client by mistake.

The stall belongs to that child task and its line, not to the parent that awaits the group.
"""

import asyncio
import time


def legacy_client_get(url: str) -> bytes:
    time.sleep(0.35)  # MARK: legacy-sleep
    return url.encode()


async def fetch(url: str) -> bytes:
    await asyncio.sleep(0.01)
    if url.endswith("/2"):
        return legacy_client_get(url)
    await asyncio.sleep(0.05)
    return url.encode()


async def main() -> None:
    async with asyncio.TaskGroup() as group:
        for i in range(3):
            group.create_task(fetch(f"http://svc/{i}"), name=f"fetch-{i}")
    print("fetched")


asyncio.run(main())
