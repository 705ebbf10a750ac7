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

Plain ``python`` is timed too, for scale. Each line gives the median and the range over rounds,
of the wall time and of the CPU time (this process and its reaped children: what the load of a
shared machine does not inflate).
"""

from __future__ import annotations

import argparse
import compileall
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
    import json, multiprocessing as mp, resource, statistics, subprocess, sys, time

    def noop():
        pass

    def job(i):
        return sum(range(10_000)) + i

    def cpu():
        # This process and its reaped children: CPU time, which the machine's load does not inflate.
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def timed(fn, n):
        walls, cpus = [], []
        for _ in range(n):
            t0, c0 = time.perf_counter(), cpu()
            fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(cpu() - c0)
        return [statistics.median(walls), statistics.median(cpus)]

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


def measure(script: str, mode: str) -> dict[str, list[float]]:
    base = [sys.executable]
    if mode == "plain":
        cmd = [*base, script]
    else:
        cmd = [*base, "-m", "conctools", "run", "--no-report", "--sample-interval", "0.5"]
        cmd += ["--no-follow-children"] if mode == "not followed" else []
        cmd.append(script)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    data: dict[str, list[float]] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description="Cost of following child processes (see the module docstring).")
    parser.add_argument("rounds", nargs="?", type=int, default=5, help="interleaved rounds (default 5)")
    rounds = parser.parse_args().rounds
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, {rounds} rounds")
    # As users get it (pip compiles it): a tree under PYTHONDONTWRITEBYTECODE has no bytecode, and
    # every followed interpreter would recompile conctools (~0.1 s), as benchmarks/bench_run.py says.
    import conctools

    compileall.compile_dir(os.path.dirname(conctools.__file__), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "prog.py")
        with open(script, "w") as f:
            f.write(PROGRAM)
        results: dict[str, list[dict[str, list[float]]]] = {"plain": [], "not followed": [], "followed": []}
        for _ in range(rounds):
            for mode in results:
                results[mode].append(measure(script, mode))
    keys = list(results["plain"][0])

    def med(mode: str, key: str, i: int) -> float:
        return statistics.median(r[key][i] for r in results[mode])

    def paired(key: str, i: int, ratio: bool) -> list[float]:
        pairs = zip(results["followed"], results["not followed"], strict=True)
        return [f[key][i] / n[key][i] if ratio else f[key][i] - n[key][i] for f, n in pairs]

    def line(key: str, i: int, ratio: bool) -> str:
        values = paired(key, i, ratio)
        cells = " ".join(f"{med(m, key, i) * 1e3:>9.1f}ms" for m in results)
        if ratio:
            return f"{cells} {statistics.median(values):>8.3f} ({min(values):.3f} .. {max(values):.3f})"
        mid, lo, hi = (v * 1e3 for v in (statistics.median(values), min(values), max(values)))
        return f"{cells} {mid:>6.1f} ms ({lo:.1f} .. {hi:.1f})"

    head = f"   {'':<22} {'python':>11} {'not followed':>11} {'followed':>11}"
    print("1. one child's start and end, seen from its parent (median of 10 per round)")
    print(f"{head}  added: median (range)")
    for key in keys[:3]:
        print(f"   {key + ', wall':<22} {line(key, 0, False)}")
        print(f"   {key + ', CPU':<22} {line(key, 1, False)}")
    print("2. Pool(2).map of 1,000 small CPU jobs, pool start and end included (median of 3 per round)")
    print(f"{head}  ratio: median (range)")
    for key in keys[3:]:
        print(f"   {key + ', wall':<22} {line(key, 0, True)}")
        print(f"   {key + ', CPU':<22} {line(key, 1, True)}")
    print("   (CPU: the parent's and its reaped children's, which the machine's load does not inflate)")


if __name__ == "__main__":
    main()
