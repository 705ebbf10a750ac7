"""A consumer waits on a queue that the producer forgot to feed."""

import queue
import threading

jobs: "queue.Queue[str]" = queue.Queue()


def consumer() -> None:
    while True:
        job = jobs.get()
        print("got", job)


if __name__ == "__main__":
    t = threading.Thread(target=consumer, name="consumer")
    t.start()
    t.join()
