"""Two threads take two locks in opposite orders: the classic ABBA deadlock."""

import threading

accounts_lock = threading.Lock()
audit_lock = threading.Lock()
both_hold_one = threading.Barrier(2)


def transfer() -> None:
    with accounts_lock:
        both_hold_one.wait()
        with audit_lock:
            print("transferred")


def audit() -> None:
    with audit_lock:
        both_hold_one.wait()
        with accounts_lock:
            print("audited")


if __name__ == "__main__":
    workers = [threading.Thread(target=transfer, name="transfer"), threading.Thread(target=audit, name="audit")]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
