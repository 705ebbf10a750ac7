"""What conctools.profile costs, side by side with the same workload plain and under yappi used
directly, in one process.

    .venv/bin/python benchmarks/bench_profile.py

Variants (every profiled one includes reading the results, as a real session does):
  plain                     no profiler
  yappi                     yappi.start(profile_threads=True), wall clock, get_func_stats()
  yappi + task tags         the same with the tag callback yappi's docs suggest for asyncio
                            (``id(asyncio.current_task())``, RuntimeError off-loop -> 0)
  conctools (tasks=False)   conctools.profile(tasks=False): real thread names, no task tags
  conctools                 conctools.profile(): thread names and per-task tags

Two workloads: CPU-bound calls in 2 threads, and 50 asyncio tasks that await and call.
Each figure is the best of several repeats (the machine is shared and noisy), with the
variants interleaved so drift hits them alike.
"""

from __future__ import annotations

import asyncio
import platform
import threading
import time
from collections.abc import Callable
from importlib.metadata import version

import yappi

import conctools
from conctools.recorder import Recorder, use_recorder

REPEATS = 11


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def threads_workload() -> None:
    threads = [threading.Thread(target=fib, args=(21,), name=f"bench-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


async def _task(steps: int) -> int:
    total = 0
    for i in range(steps):
        await asyncio.sleep(0)
        total += fib(5) + i
    return total


async def _tasks_main() -> None:
    await asyncio.gather(*(asyncio.create_task(_task(100), name=f"task-{i}") for i in range(50)))


def asyncio_workload() -> None:
    asyncio.run(_tasks_main())


def _docs_tag() -> int:
    try:
        return id(asyncio.current_task())
    except RuntimeError:
        return 0


def plain(work: Callable[[], None]) -> None:
    work()


def yappi_direct(work: Callable[[], None], tag: Callable[[], int] | None = None) -> None:
    yappi.clear_stats()
    yappi.set_clock_type("wall")
    if tag is not None:
        yappi.set_tag_callback(tag)
    yappi.start(profile_threads=True)
    try:
        work()
    finally:
        yappi.stop()
        stats = yappi.get_func_stats()
        yappi.get_thread_stats()
        assert len(stats) > 0
        yappi.set_tag_callback(None)
        yappi.clear_stats()


def conctools_profile(work: Callable[[], None], tasks: bool = True) -> None:
    with conctools.profile(tasks=tasks) as p:
        work()
    assert p.functions


VARIANTS: list[tuple[str, Callable[[Callable[[], None]], None]]] = [
    ("plain", plain),
    ("yappi", yappi_direct),
    ("yappi + task tags", lambda w: yappi_direct(w, _docs_tag)),
    ("conctools (tasks=False)", lambda w: conctools_profile(w, tasks=False)),
    ("conctools", conctools_profile),
]


def measure(work: Callable[[], None]) -> dict[str, float]:
    best = {name: float("inf") for name, _ in VARIANTS}
    for _ in range(REPEATS):
        for name, run in VARIANTS:
            t0 = time.perf_counter()
            run(work)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    print(
        f"conctools.profile overhead: Python {platform.python_version()}, yappi {version('yappi')}, "
        f"best of {REPEATS} (lower is better)"
    )
    with use_recorder(Recorder()):
        workloads = (("2 threads, fib(21)", threads_workload), ("50 asyncio tasks x 100 steps", asyncio_workload))
        for label, work in workloads:
            best = measure(work)
            base = best["plain"]
            print(f"\n{label}")
            print(f"  {'variant':<26}{'time':>10}{'vs plain':>10}{'vs yappi':>10}")
            for name, _ in VARIANTS:
                t = best[name]
                ref = best["yappi + task tags"] if name == "conctools" else best["yappi"]
                vs_yappi = f"{t / ref:9.2f}x" if name.startswith("conctools") else ""
                print(f"  {name:<26}{t * 1e3:8.1f} ms{t / base:9.2f}x{vs_yappi:>10}")
    print("\n'vs yappi': conctools (tasks=False) against plain yappi; conctools against yappi + task tags.")


if __name__ == "__main__":
    main()
