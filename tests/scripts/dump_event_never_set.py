"""A worker waits for an Event nobody sets, and main joins the worker: a hang without a cycle."""

import threading

ready = threading.Event()


def worker() -> None:
    print("started", flush=True)
    ready.wait()  # waits: worker
    print("never")


if __name__ == "__main__":
    t = threading.Thread(target=worker, name="worker")
    t.start()
    t.join()  # joins: main
