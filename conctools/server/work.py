"""The sample server's plain work functions: CPU work for the process pool, blocking work for
threads. No aiohttp and no conctools imports, so process-pool workers start light."""

from __future__ import annotations

import hashlib
import time

__all__ = ["count_primes", "slow_read"]


def count_primes(limit: int) -> int:
    """The number of primes below ``limit`` (deliberately naive: it is the CPU load)."""
    count = 0
    for n in range(2, max(2, limit)):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
    return count


def slow_read(delay_s: float, payload: bytes = b"conctools") -> str:
    """A blocking call (a slow disk or a sync client): sleeps, then hashes ``payload``."""
    time.sleep(delay_s)
    return hashlib.sha256(payload).hexdigest()[:16]
