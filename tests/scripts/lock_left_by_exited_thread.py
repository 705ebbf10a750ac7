"""A worker exits holding a lock; a later worker, which gets the same thread id, waits for it.

Not a self-deadlock: the lock's holder is gone. (Linux reuses a thread id as soon as the thread
has been joined; the script starts readers until one has the old id, and that one waits.)
"""

import threading

cache_lock = threading.Lock()
first_ident = 0


def leaky_refresh() -> None:
    cache_lock.acquire()  # the bug: never released


def reader() -> None:
    if threading.get_ident() == first_ident:
        with cache_lock:
            print("read")


if __name__ == "__main__":
    first = threading.Thread(target=leaky_refresh, name="refresher")
    first.start()
    first.join()
    first_ident = first.ident or 0
    for _ in range(200):
        worker = threading.Thread(target=reader, name="reader")
        worker.start()
        worker.join()
    raise SystemExit("thread ids were not reused here")
