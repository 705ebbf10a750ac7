"""A worker waits for a 'ready' Event that nobody ever sets; main joins the worker."""

import threading

ready = threading.Event()


def worker() -> None:
    ready.wait()
    print("never")


if __name__ == "__main__":
    t = threading.Thread(target=worker, name="worker")
    t.start()
    t.join()
