"""Overhead of the event-loop monitor on an asyncio-heavy workload, side by side.

Workload: 200 tasks x 100 ``asyncio.sleep(0)`` plus a 20k-item ``asyncio.Queue(maxsize=1)``
ping-pong. Configurations, interleaved round by round in one process so machine noise hits
them alike: plain asyncio, ``conctools.watch_loop`` (threshold 0.1 s), the same with
blocking-call detection, asyncio debug mode (slow_callback_duration 0.1 s), and aiodebug's
slow-callback logger (the best cheap peer: it wraps ``Handle._run``). CPU time is
``time.process_time()`` (every thread, so the watchdog's own work counts). Prints the median
per configuration and its ratio to plain asyncio.

    .venv/bin/python benchmarks/bench_loopmon.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import time
from collections.abc import Callable, Iterator

from conctools.loopmon import watch_loop
from conctools.recorder import use_recorder

TASKS = 200
STEPS = 100
ITEMS = 20_000


async def _sleeper() -> None:
    for _ in range(STEPS):
        await asyncio.sleep(0)


async def _ping_pong() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

    async def produce() -> None:
        for i in range(ITEMS):
            await queue.put(i)

    async def consume() -> None:
        for _ in range(ITEMS):
            await queue.get()

    await asyncio.gather(produce(), consume())


async def workload() -> None:
    """The measured work: sleep(0) storm, then the queue ping-pong."""
    await asyncio.gather(*(_sleeper() for _ in range(TASKS)))
    await _ping_pong()


async def _with_monitor(detect_blocking: bool) -> None:
    async with watch_loop(threshold_s=0.1, detect_blocking=detect_blocking):
        await workload()


@contextlib.contextmanager
def _aiodebug() -> Iterator[None]:
    from asyncio import events

    from aiodebug import log_slow_callbacks

    original = events.Handle._run
    log_slow_callbacks.enable(0.1, on_slow_callback=lambda name, duration: None)
    try:
        yield
    finally:
        events.Handle._run = original  # type: ignore[method-assign]


def _run_plain() -> None:
    asyncio.run(workload())


def _run_monitor() -> None:
    with use_recorder():
        asyncio.run(_with_monitor(False))


def _run_monitor_blocking() -> None:
    with use_recorder():
        asyncio.run(_with_monitor(True))


def _run_debug() -> None:
    async def main() -> None:
        asyncio.get_running_loop().slow_callback_duration = 0.1
        await workload()

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # measure the checks, not log output
    asyncio.run(main(), debug=True)


def _run_aiodebug() -> None:
    with _aiodebug():
        asyncio.run(workload())


def _cpu(fn: Callable[[], None]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-debug", action="store_true", help="skip asyncio debug mode (slow)")
    ns = parser.parse_args()
    configs: dict[str, Callable[[], None]] = {
        "plain asyncio": _run_plain,
        "conctools watch_loop": _run_monitor,
        "watch_loop + detect_blocking": _run_monitor_blocking,
        "aiodebug slow callbacks": _run_aiodebug,
    }
    try:
        import aiodebug  # noqa: F401
    except ImportError:
        del configs["aiodebug slow callbacks"]
        print("(aiodebug not installed: pip install aiodebug)")
    if not ns.no_debug:
        configs["asyncio debug mode"] = _run_debug
    for fn in configs.values():  # warm up imports and caches
        fn()
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(ns.rounds):
        for name, fn in configs.items():
            times[name].append(_cpu(fn))
    base = statistics.median(times["plain asyncio"])
    print(f"workload: {TASKS} tasks x {STEPS} sleep(0) + {ITEMS} Queue(maxsize=1) items; {ns.rounds} rounds")
    print(f"{'configuration':32} {'median CPU':>11} {'min CPU':>9} {'ratio':>7}")
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"{name:32} {med * 1e3:9.1f} ms {min(samples) * 1e3:6.1f} ms {med / base:6.3f}x")


if __name__ == "__main__":
    main()
