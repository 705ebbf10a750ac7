"""A program for the exporter tests: nested traced calls in two threads that contend for one lock,
and traced coroutines in tasks, one of which raises."""

import asyncio
import threading
import time

import conctools

ledger = threading.Lock()


@conctools.traced
def post(n):
    with ledger:  # WAIT LINE
        time.sleep(0.03)
    return n


@conctools.traced
def settle():
    return post(1) + post(2)


@conctools.traced
async def fetch(i):
    await asyncio.sleep(0.01)
    if i == 2:
        raise ValueError("boom")
    return i


@conctools.traced
async def main():
    return await asyncio.gather(fetch(1), fetch(2), return_exceptions=True)


started = threading.Barrier(2)


def worker():
    started.wait()
    settle()


threads = [threading.Thread(target=worker, name=f"worker-{i}") for i in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
asyncio.run(main())
