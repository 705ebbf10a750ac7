"""Two threads deadlock (ABBA) while the main thread keeps answering on stdin, so that a test can
check that the program still runs, unchanged, after `conctools dump` looked inside."""

import os
import sys
import threading

accounts = threading.Lock()
ledger = threading.Lock()
both_hold_one = threading.Barrier(2)


def transfer() -> None:
    with accounts:  # holds: transfer
        both_hold_one.wait()
        with ledger:  # waits: transfer
            print("transferred")


def audit() -> None:
    with ledger:  # holds: audit
        both_hold_one.wait()
        with accounts:  # waits: audit
            print("audited")


if __name__ == "__main__":
    workers = [threading.Thread(target=f, name=f.__name__, daemon=True) for f in (transfer, audit)]
    for w in workers:
        w.start()
    print("started", flush=True)
    for line in sys.stdin:
        if line.strip() == "status":
            alive = ",".join(w.name for w in workers if w.is_alive())
            print(f"status alive={alive} accounts={accounts.locked()} ledger={ledger.locked()}", flush=True)
        elif line.strip() == "quit":
            break
    print("bye", flush=True)
    os._exit(3)  # the deadlocked workers never end: leave without joining them
