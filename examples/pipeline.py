"""A small threaded + asyncio pipeline to try `conctools run` on: `conctools run examples/pipeline.py`."""

import asyncio
import queue
import threading
import time

import conctools


@conctools.traced
def parse(item: int) -> int:
    time.sleep(0.001)
    return item * 2


@conctools.traced("worker.loop")
def worker(inbox: "queue.Queue[int | None]", results: list[int]) -> None:
    while (item := inbox.get()) is not None:
        results.append(parse(item))


@conctools.traced
async def fetch(i: int) -> int:
    await asyncio.sleep(0.01)
    return i


@conctools.traced
async def crawl() -> int:
    async with conctools.traced("crawl.gather"):
        values = await asyncio.gather(*(fetch(i) for i in range(20)))
    return sum(values)


def main() -> None:
    inbox: queue.Queue[int | None] = queue.Queue()
    results: list[int] = []
    threads = [threading.Thread(target=worker, args=(inbox, results), name=f"worker-{n}") for n in range(3)]
    for t in threads:
        t.start()
    for i in range(60):
        inbox.put(i)
    for _ in threads:
        inbox.put(None)
    total = asyncio.run(crawl())
    for t in threads:
        t.join()
    print(f"parsed {len(results)} items, crawled total {total}")


if __name__ == "__main__":
    main()
