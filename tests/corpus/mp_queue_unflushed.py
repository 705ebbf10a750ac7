"""A worker process puts its (large) result into a multiprocessing.Queue; the parent joins the
worker before reading the queue. The worker cannot exit until its queued data is read (its
feeder thread is blocked writing into the full pipe), so join() waits forever."""

import multiprocessing


def render_report(results: multiprocessing.Queue) -> None:
    results.put("x" * 1_000_000)  # far more than a pipe holds


if __name__ == "__main__":
    results: multiprocessing.Queue = multiprocessing.Queue()
    worker = multiprocessing.Process(target=render_report, args=(results,), name="renderer")
    worker.start()
    worker.join()  # MARK: parent-joins
    print(len(results.get()))
