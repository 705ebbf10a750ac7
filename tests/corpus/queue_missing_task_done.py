"""A worker skips task_done() on one path; the producer's Queue.join() never returns."""

import queue
import threading

jobs: queue.Queue[int] = queue.Queue()


def worker() -> None:
    while True:
        item = jobs.get()
        if item % 3 == 2:
            continue  # skipped items: task_done() forgotten on this path
        jobs.task_done()


threading.Thread(target=worker, name="worker", daemon=True).start()
for i in range(4):
    jobs.put(i)
jobs.join()  # MARK: main-joins
