"""A consumer checks for work, then waits; the producer's notify came in between: lost."""

import threading
import time

cond = threading.Condition()
items: list[int] = []


def consumer() -> None:
    if not items:  # checked without holding the lock: the classic race
        time.sleep(0.2)  # (widen the window so that the race is lost every time)
        with cond:
            cond.wait()
    print("consumed", items)


def producer() -> None:
    time.sleep(0.1)
    with cond:
        items.append(1)
        cond.notify()


if __name__ == "__main__":
    threads = [threading.Thread(target=consumer, name="consumer"), threading.Thread(target=producer, name="producer")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
