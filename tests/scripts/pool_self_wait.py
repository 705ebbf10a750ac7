"""Every worker of a thread pool waits on a job queued behind it in the same pool."""

import threading
from concurrent.futures import ThreadPoolExecutor

pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pool")
both_busy = threading.Barrier(2)


def parent(n: int) -> int:
    both_busy.wait()
    child = pool.submit(lambda: n * 2)
    return child.result()


if __name__ == "__main__":
    futures = [pool.submit(parent, n) for n in range(2)]
    print([f.result() for f in futures])
