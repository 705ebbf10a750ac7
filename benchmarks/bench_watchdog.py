"""What the deadlock/hang watchdog costs, side by side, in one process.

    .venv/bin/python benchmarks/bench_watchdog.py

1. One scan (the work the ``conctools-watchdog`` thread does per wake-up) with T threads
   parked on Events and L live traced locks, against the closest peer: what pytest-timeout
   and faulthandler-style dumpers do when they fire (``sys._current_frames()`` and a
   formatted stack per thread). The watchdog wakes every ``min(1 s, timeout / 4)``, so its
   CPU share at the default 10 s timeout is scan time / 1 s.
2. A lock-heavy workload (4 threads x 20k traced acquisitions of their own lock, every
   16th also of a shared one) with the watchdog off and on
   (interval 0.05 s, far more often than the default), interleaved round by round; the
   ratio is the slowdown the watchdog causes to the program.

Each figure is the best of several interleaved repeats (the machine is shared and noisy).
"""

from __future__ import annotations

import platform
import sys
import threading
import time
import traceback
from collections.abc import Callable

import conctools
from conctools import deadlock

REPEATS = 7


def best_of(fn: Callable[[], object], repeats: int = REPEATS, number: int = 20) -> float:
    """Seconds per call, best of ``repeats`` rounds of ``number`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def peer_dump() -> None:
    """What a stack dumper does when it fires: every thread's formatted stack."""
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for tid, frame in sys._current_frames().items():
        out.append(names.get(tid, str(tid)))
        out.extend(traceback.format_stack(frame))


def scan_costs() -> None:
    print("1. one scan vs a stack dump (threads parked on Events, traced locks alive)")
    print(f"   {'threads':>7} {'locks':>6} {'watchdog scan':>14} {'stack dump (peer)':>18} {'ratio':>6}")
    for n_threads, n_locks in ((4, 100), (16, 1_000), (64, 10_000)):
        stop = threading.Event()
        threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(n_threads)]
        for t in threads:
            t.start()
        locks = [conctools.Lock() for _ in range(n_locks)]
        for lock in locks[::2]:
            with lock:
                pass
        watchdog = deadlock.DeadlockWatchdog(10.0)
        ours = best_of(watchdog.scan)
        peer = best_of(peer_dump)
        stop.set()
        for t in threads:
            t.join()
        del locks
        print(f"   {n_threads:>7} {n_locks:>6} {ours * 1e3:>11.3f} ms {peer * 1e3:>15.3f} ms {ours / peer:>6.2f}")


def workload() -> float:
    shared = conctools.Lock()

    def worker() -> None:
        own = conctools.Lock()
        for i in range(20_000):
            with own:
                pass
            if i % 16 == 0:  # some contention too, so that waits come and go
                with shared:
                    pass

    threads = [threading.Thread(target=worker) for _ in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def workload_overhead() -> None:
    print("2. lock-heavy workload (4 threads x 20k traced acquisitions), watchdog off / on (0.05 s interval)")
    off = on = float("inf")
    for _ in range(REPEATS):
        off = min(off, workload())
        watchdog = deadlock.DeadlockWatchdog(10.0, interval_s=0.05)
        with watchdog:
            on = min(on, workload())
    print(f"   off {off * 1e3:8.1f} ms   on {on * 1e3:8.1f} ms   ratio {on / off:.3f}")


def main() -> None:
    print(f"Python {platform.python_version()} on {platform.machine()}, best of {REPEATS}")
    scan_costs()
    workload_overhead()


if __name__ == "__main__":
    main()
