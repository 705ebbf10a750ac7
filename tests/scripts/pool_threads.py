"""A pool of connections in a queue.Queue shared by threads; the first two workers keep theirs
while they call a slow upstream, and the others wait for the pool."""

import queue
import threading
import time

pool: queue.Queue[str] = queue.Queue()
for n in range(2):
    pool.put(f"conn-{n}")
inside = threading.Semaphore(0)  # released by each holder once it is inside the slow call


def slow_upstream() -> None:
    inside.release()
    time.sleep(0.4)


def worker() -> None:
    conn = pool.get()  # ACQUIRE
    try:
        slow_upstream()  # HOLD: the connection is kept during this call
    finally:
        pool.put(conn)


holders = [threading.Thread(target=worker, name=f"holder-{i}") for i in range(2)]
for t in holders:
    t.start()
for _ in holders:
    inside.acquire()  # both holders are in slow_upstream(): only now do the others come
waiters = [threading.Thread(target=worker, name=f"waiter-{i}") for i in range(3)]
for t in waiters:
    t.start()
for t in holders + waiters:
    t.join()
