"""Overhead of the event-loop monitor on an asyncio-heavy workload, side by side.

Workload: 200 tasks x 100 ``asyncio.sleep(0)`` plus a 20k-item ``asyncio.Queue(maxsize=1)``
ping-pong. Configurations, interleaved round by round in one process so machine noise hits
them alike: plain asyncio, ``conctools.watch_loop`` (threshold 0.1 s), the same with
blocking-call detection, asyncio debug mode (slow_callback_duration 0.1 s), and aiodebug's
slow-callback logger (the best cheap peer: it wraps ``Handle._run``), and the design we did
not take (a hook timestamping every ``select()``, and a thread pinging the loop with
``call_soon_threadsafe``), for comparison. CPU time is
``time.process_time()`` (every thread, so the watchdog's own work counts). Prints the median
per configuration and its ratio to plain asyncio, then the detection latency on real stalls.

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
from typing import Any

from conctools.events import SlowCallbackEvent
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


def _run_select_hook() -> None:
    """The alternative design, measured: timestamp every select() (what a per-iteration hook costs)."""

    async def main() -> None:
        selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
        original = selector.select
        marks = [0, 0]

        def select(timeout: float | None = None) -> list[Any]:
            marks[0] = time.monotonic_ns()
            try:
                return original(timeout)  # type: ignore[no-any-return]
            finally:
                marks[1] = time.monotonic_ns()

        selector.select = select
        try:
            await workload()
        finally:
            selector.select = original

    asyncio.run(main())


def intrinsic_cost(rounds: int = 5) -> None:
    """The monitor's own work, measured apart from machine noise: the watchdog thread's CPU time
    and the loop-side cost of its probes (one call_soon_threadsafe handle each)."""
    watchdog_s, probes, wall_s = 0.0, 0, 0.0
    for _ in range(rounds):

        async def main() -> tuple[float, int]:
            async with watch_loop(threshold_s=0.1) as monitor:
                await workload()
            return monitor.watchdog_cpu_s, monitor.probes

        t0 = time.perf_counter()
        with use_recorder():
            cpu, n = asyncio.run(main())
        wall_s += time.perf_counter() - t0
        watchdog_s += cpu
        probes += n

    async def probe_cost(n: int = 20_000) -> float:
        """CPU per heartbeat: a chain of call_later timers, as the monitor runs them."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        count = [0]

        def beat() -> None:
            count[0] += 1
            if count[0] == n:
                done.set_result(None)
            else:
                loop.call_later(0, beat)

        t0 = time.process_time()
        loop.call_later(0, beat)
        await done
        return (time.process_time() - t0) / n

    per_probe = asyncio.run(probe_cost())
    total = watchdog_s + probes * per_probe
    print(
        f"intrinsic: watchdog thread {watchdog_s / rounds * 1e3:.2f} ms CPU and {probes / rounds:.0f} heartbeats"
        f" x {per_probe * 1e6:.1f} µs per workload run of {wall_s / rounds * 1e3:.0f} ms wall"
        f" = {total / wall_s * 100:.2f}% of one core"
    )


def _run_cross_thread_probe() -> None:
    """The first design, measured: a thread pinging the loop with call_soon_threadsafe every 20 ms."""
    import _thread
    import threading

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = [False]
        wake = _thread.allocate_lock()
        wake.acquire()

        def pinger() -> None:
            while not stop[0]:
                loop.call_soon_threadsafe(lambda: None)
                wake.acquire(True, 0.02)

        thread = threading.Thread(target=pinger, daemon=True)
        thread.start()
        try:
            await workload()
        finally:
            stop[0] = True
            wake.release()
            thread.join()

    asyncio.run(main())


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def detection_latency(stalls: int = 8, threshold_s: float = 0.1, stall_s: float = 0.3, cpu: bool = False) -> None:
    """Block the loop ``stalls`` times (``time.sleep``, or a CPU loop holding the GIL) and print
    how late each stall was noticed and how well its duration was measured."""

    async def main() -> None:
        async with watch_loop(threshold_s=threshold_s):
            for _ in range(stalls):
                if cpu:
                    _spin(stall_s)
                else:
                    time.sleep(stall_s)
                await asyncio.sleep(0.05)

    with use_recorder() as rec:
        asyncio.run(main())
    events = rec.snapshot().of_kind(SlowCallbackEvent)
    late = sorted((e.detected_after_s or 0.0) - threshold_s for e in events)
    error = sorted(abs(e.duration_s - stall_s) for e in events)
    print(
        f"detection ({'CPU loop' if cpu else 'time.sleep'}): {len(events)}/{stalls} stalls"
        f" of {stall_s * 1e3:.0f} ms found"
        f" (threshold {threshold_s * 1e3:.0f} ms);"
        f" noticed threshold + {statistics.median(late) * 1e3:.1f} ms median, + {late[-1] * 1e3:.1f} ms worst;"
        f" duration error median {statistics.median(error) * 1e3:.2f} ms, worst {error[-1] * 1e3:.2f} ms"
    )


def _cpu(fn: Callable[[], None]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--debug-rounds", type=int, default=2, help="rounds of asyncio debug mode (~15x slower)")
    parser.add_argument("--latency-only", action="store_true", help="only measure detection latency")
    ns = parser.parse_args()
    if ns.latency_only:
        detection_latency()
        detection_latency(cpu=True)
        return
    configs: dict[str, Callable[[], None]] = {
        "plain asyncio": _run_plain,
        "conctools watch_loop": _run_monitor,
        "watch_loop + detect_blocking": _run_monitor_blocking,
        "aiodebug slow callbacks": _run_aiodebug,
        "(alternative) select() hook": _run_select_hook,
        "(alternative) cross-thread probe": _run_cross_thread_probe,
    }
    try:
        import aiodebug  # noqa: F401
    except ImportError:
        del configs["aiodebug slow callbacks"]
        print("(aiodebug not installed: pip install aiodebug)")
    for fn in configs.values():  # warm up imports and caches
        fn()
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(ns.rounds):
        for name, fn in configs.items():
            times[name].append(_cpu(fn))
    if ns.debug_rounds:
        times["asyncio debug mode"] = [_cpu(_run_debug) for _ in range(ns.debug_rounds)]
    base = statistics.median(times["plain asyncio"])
    print(f"workload: {TASKS} tasks x {STEPS} sleep(0) + {ITEMS} Queue(maxsize=1) items; {ns.rounds} rounds")
    base_min = min(times["plain asyncio"])
    plain = times["plain asyncio"]
    # Paired ratio: each round runs every configuration back to back, so the median of the
    # per-round ratios cancels most of the drift a shared, noisy machine adds.
    print(f"{'configuration':32} {'median CPU':>11} {'ratio':>7} {'min CPU':>10} {'ratio':>7} {'paired':>7}")
    for name, samples in times.items():
        med, low = statistics.median(samples), min(samples)
        paired = statistics.median(t / p for t, p in zip(samples, plain, strict=False))
        print(
            f"{name:32} {med * 1e3:8.1f} ms {med / base:6.3f}x {low * 1e3:7.1f} ms {low / base_min:6.3f}x"
            f" {paired:6.3f}x"
        )
    intrinsic_cost()
    detection_latency()
    detection_latency(cpu=True)


if __name__ == "__main__":
    main()
