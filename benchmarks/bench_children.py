"""What following child processes costs: a child's start, and a Pool.map of small CPU jobs.

    .venv/bin/python benchmarks/bench_children.py [ROUNDS]

Every figure is measured inside a program that ``conctools run`` runs twice per round, with
and without ``--no-follow-children`` (the same instruments otherwise), interleaved round by
round, so both sides see the same load on a shared machine:

1. A child's start: ``subprocess.run([sys.executable, "-c", "pass"])``, and a ``Process`` of
   the fork and spawn start methods started and joined, each timed from the parent (median of
   10 children per round). The difference is what following adds to one child (the issue's
   budget: 0.15 s).
2. ``multiprocessing.Pool(2).map`` of 1,000 small CPU jobs (``sum(range(10_000))`` each, about
   0.2 ms; the pool's start and end included), fork and spawn. The ratio is the slowdown
   (budget: 10%).

Plain ``python`` is timed too, for scale. Each line gives the median and the range over rounds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap

PROGRAM = textwrap.dedent(
    """
    import json, multiprocessing as mp, statistics, subprocess, sys, time

    def noop():
        pass

    def job(i):
        return sum(range(10_000)) + i

    def timed(fn, n):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def process(method):
        p = mp.get_context(method).Process(target=noop)
        p.start()
        p.join()

    def pool_map(method):
        with mp.get_context(method).Pool(2) as pool:
            pool.map(job, range(1_000))

    if __name__ == "__main__":
        out = {
            "subprocess": timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), 10),
            "fork": timed(lambda: process("fork"), 10),
            "spawn": timed(lambda: process("spawn"), 10),
            "pool fork": timed(lambda: pool_map("fork"), 3),
            "pool spawn": timed(lambda: pool_map("spawn"), 3),
        }
        print(json.dumps(out))
    """
)


def measure(script: str, mode: str) -> dict[str, float]:
    base = [sys.executable]
    if mode == "plain":
        cmd = [*base, script]
    else:
        cmd = [*base, "-m", "conctools", "run", "--no-report", "--sample-interval", "0.5"]
        cmd += ["--no-follow-children"] if mode == "not followed" else []
        cmd.append(script)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    data: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, {rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "prog.py")
        with open(script, "w") as f:
            f.write(PROGRAM)
        results: dict[str, list[dict[str, float]]] = {"plain": [], "not followed": [], "followed": []}
        for _ in range(rounds):
            for mode in results:
                results[mode].append(measure(script, mode))
    keys = list(results["plain"][0])

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    print("1. one child's start and end, seen from its parent (median of 10 per round)")
    print(f"   {'child':<12} {'python':>9} {'not followed':>13} {'followed':>9} {'added (median, range)':>28}")
    for key in keys[:3]:
        added = [f[key] - n[key] for f, n in zip(results["followed"], results["not followed"], strict=True)]
        print(
            f"   {key:<12} {med('plain', key) * 1e3:>7.1f}ms {med('not followed', key) * 1e3:>11.1f}ms "
            f"{med('followed', key) * 1e3:>7.1f}ms {statistics.median(added) * 1e3:>11.1f} ms "
            f"({min(added) * 1e3:.1f} .. {max(added) * 1e3:.1f})"
        )
    print("2. Pool(2).map of 1,000 small CPU jobs, pool start and end included (median of 3 per round)")
    print(f"   {'pool':<12} {'python':>9} {'not followed':>13} {'followed':>9} {'ratio (median, range)':>28}")
    for key in keys[3:]:
        ratios = [f[key] / n[key] for f, n in zip(results["followed"], results["not followed"], strict=True)]
        print(
            f"   {key:<12} {med('plain', key) * 1e3:>7.1f}ms {med('not followed', key) * 1e3:>11.1f}ms "
            f"{med('followed', key) * 1e3:>7.1f}ms {statistics.median(ratios):>14.3f} "
            f"({min(ratios):.3f} .. {max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
