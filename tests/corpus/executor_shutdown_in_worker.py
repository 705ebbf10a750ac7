"""A job shuts its own pool down (shutdown(wait=True)) while another job of the pool waits for
it to say that it is done."""

import threading
from concurrent.futures import ThreadPoolExecutor, wait

export_done = threading.Event()
both_running = threading.Barrier(2)
pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="export")


def export_and_close() -> None:
    both_running.wait()
    pool.shutdown(wait=True)  # MARK: shutdown
    export_done.set()


def notify_when_exported() -> None:
    both_running.wait()
    export_done.wait()  # MARK: waits-for-export
    print("exported")


jobs = [pool.submit(export_and_close), pool.submit(notify_when_exported)]
wait(jobs)  # MARK: main-waits
