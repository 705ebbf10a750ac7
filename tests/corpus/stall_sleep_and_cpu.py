"""Eight workers wake from the same sleep; one calls time.sleep, another runs a CPU loop.

One stall, two culprits: each must be named under its own task with its own line.
"""

import asyncio
import time


def checksum(seconds: float) -> int:
    total = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # MARK: cpu-loop
        total = (total * 31 + 7) % 1_000_003
    return total


async def worker(i: int) -> None:
    await asyncio.sleep(0.05)
    if i == 3:
        time.sleep(0.4)  # MARK: worker-sleep
    elif i == 5:
        checksum(0.4)
    await asyncio.sleep(0)


async def main() -> None:
    await asyncio.gather(*(asyncio.create_task(worker(i), name=f"worker-{i}") for i in range(8)))
    print("done")


asyncio.run(main())
