"""Two asyncio tasks deadlock (ABBA) while a heartbeat task keeps the loop busy and a thread
answers on stdin, so that a test can check that the program still runs, unchanged, after
`conctools dump` looked inside."""

import asyncio
import os
import sys
import threading

beats = [0]


async def worker(first: asyncio.Lock, second: asyncio.Lock, both: asyncio.Event, ready: list[int]) -> None:
    async with first:  # holds: worker
        ready.append(1)
        if len(ready) == 2:
            both.set()
        await both.wait()
        async with second:  # waits: worker
            print("never")


async def heartbeat() -> None:
    while True:
        await asyncio.sleep(0.02)
        beats[0] += 1


def answer(loop: asyncio.AbstractEventLoop) -> None:
    for line in sys.stdin:
        if line.strip() == "status":
            print(f"status beats={beats[0]}", flush=True)
        elif line.strip() == "quit":
            break
    print("bye", flush=True)
    os._exit(3)


async def main() -> None:
    cache_lock = asyncio.Lock()
    db_lock = asyncio.Lock()
    both, ready = asyncio.Event(), []
    threading.Thread(target=answer, args=(asyncio.get_running_loop(),), name="stdin", daemon=True).start()
    beat = asyncio.create_task(heartbeat(), name="heartbeat")
    print("started", flush=True)
    await asyncio.gather(
        asyncio.create_task(worker(cache_lock, db_lock, both, ready), name="refresh-cache"),
        asyncio.create_task(worker(db_lock, cache_lock, both, ready), name="write-db"),
        beat,
    )


if __name__ == "__main__":
    asyncio.run(main())
