"""The caller holds the accounts lock and waits for a pool job that needs the same lock."""

import threading
from concurrent.futures import ThreadPoolExecutor

accounts_lock = threading.Lock()
balances = {"ada": 10}


def audit() -> int:
    with accounts_lock:  # MARK: job-blocks
        return sum(balances.values())


def close_day(pool: ThreadPoolExecutor) -> int:
    with accounts_lock:  # MARK: caller-acquires
        job = pool.submit(audit)
        return job.result()  # MARK: caller-waits


with ThreadPoolExecutor(max_workers=2, thread_name_prefix="audit") as pool:
    print(close_day(pool))
