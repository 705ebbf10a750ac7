"""Shutdown joins the flusher thread while holding the registry lock the flusher needs."""

import threading
import time

registry_lock = threading.Lock()
pending: list[str] = ["a", "b"]


def flush() -> None:
    time.sleep(0.1)
    with registry_lock:  # MARK: flusher-blocks
        pending.clear()


def shutdown(flusher: threading.Thread) -> None:
    with registry_lock:  # MARK: main-acquires
        flusher.join()  # MARK: main-joins


flusher = threading.Thread(target=flush, name="flusher")
flusher.start()
shutdown(flusher)
