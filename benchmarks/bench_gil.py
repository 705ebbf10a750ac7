"""The GIL monitor: how right it is on known workloads (the calibration table), and what it costs.

Calibration: each workload's threads measure their own truth with the kernel's exact counters
(``/proc/thread-self/schedstat``: CPU time and time runnable but not running). A thread that
blocks only on the GIL (CPU-bound Python, hashing) waited for the GIL ``wall - CPU - run-queue``;
a sleeping thread waited for it ``oversleep - run-queue`` (the time between the end of its sleep
and its next line of Python, less the time it waited for a CPU). The "implied" column is what the
workload implies on an idle machine ((n-1)/n for n CPU-bound threads, 0 for threads that do not
compete). The monitor's estimate comes from ``GilMonitor.summary()``. Also shown: what a
gilknocker-style probe (a thread timing how late it gets the GIL back after a 5 ms sleep) reports
for the process, in a separate run of the same workload.

Cost: the monitor thread's own CPU, and paired, interleaved runs with and without the monitor of
fixed-work programs (4 CPU-bound threads; benchmarks/bench_contended.py's lock hammer;
benchmarks/bench_loopmon.py's asyncio workload; 4 sleeping threads), and of the sample server
under wrk load (instrumented with vs without the GIL monitor), as in benchmarks/bench_server.py.

    .venv/bin/python benchmarks/bench_gil.py [--rounds 3] [--seconds 2] [--no-server] [--no-cost]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from conctools.gil import GilMonitor
from conctools.recorder import Recorder

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

SLEEP_S = 0.02


def _schedstat() -> tuple[int, int]:
    with open("/proc/thread-self/schedstat", "rb") as f:
        cpu, rq, _ = f.read().split()
    return int(cpu), int(rq)


def _crunch(stop: list[bool]) -> int:
    total = 0
    while not stop[0]:
        for i in range(10_000):
            total += i * i % 7
    return 0


def _hash(stop: list[bool]) -> int:
    data = b"x" * (8 << 20)
    while not stop[0]:
        hashlib.sha256(data).digest()
    return 0


def _sleep(stop: list[bool]) -> int:
    over = 0
    while not stop[0]:
        t0 = time.perf_counter_ns()
        time.sleep(SLEEP_S)
        over += time.perf_counter_ns() - t0 - int(SLEEP_S * 1e9)
    return over


KINDS: dict[str, Callable[[list[bool]], int]] = {"cpu": _crunch, "hash": _hash, "io": _sleep}
WORKLOADS: dict[str, list[str]] = {
    "1 CPU-bound thread": ["cpu"],
    "2 CPU-bound threads": ["cpu"] * 2,
    "4 CPU-bound threads": ["cpu"] * 4,
    "4 I/O-bound threads (sleep)": ["io"] * 4,
    "2 threads hashing 8 MiB buffers": ["hash"] * 2,
    "mix: 2 CPU + 2 I/O + 1 hashing": ["cpu", "cpu", "io", "io", "hash"],
}


def implied(kinds: list[str], kind: str) -> float:
    """What the workload implies on an idle machine: (n-1)/n for n CPU-bound threads, else 0."""
    n = kinds.count("cpu")
    return (n - 1) / n if kind == "cpu" and n else 0.0


def run_workload(kinds: list[str], seconds: float, monitor: bool, probe: bool) -> dict[str, Any]:
    """Run the threads for ``seconds``; return each thread's truth and the monitor's / probe's figures."""
    stop = [False]
    truth: dict[str, tuple[str, float, float]] = {}

    def body(name: str, kind: str) -> None:
        cpu0, rq0 = _schedstat()
        t0 = time.perf_counter_ns()
        over = KINDS[kind](stop)
        wall = time.perf_counter_ns() - t0
        cpu1, rq1 = _schedstat()
        cpu, rq = cpu1 - cpu0, rq1 - rq0
        # Time neither running nor in its own sleeps: waiting for the GIL, or for a CPU (run-queue).
        not_running = (wall - cpu) if kind != "io" else over
        lower, upper = max(0, not_running - rq) / wall, max(0, not_running) / wall
        truth[name] = (kind, lower, upper)

    names = [f"{k}-{i}" for i, k in enumerate(kinds)]
    threads = [threading.Thread(target=body, args=(n, k), name=n) for n, k in zip(names, kinds)]
    gil = GilMonitor(recorder=Recorder()) if monitor else None
    knocker = _Probe() if probe else None
    if gil is not None:
        gil.start()
    if knocker is not None:
        knocker.start()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop[0] = True
    for t in threads:
        t.join()
    out: dict[str, Any] = {"truth": truth}
    if knocker is not None:
        out["probe"] = knocker.stop()
    if gil is not None:
        gil.stop()
        summary = gil.summary()
        out["estimate"] = {t["name"]: t["gil_wait_s"] / t["wall_s"] for t in summary["threads"] if t["wall_s"] > 0}
        out["monitor_cpu"] = summary["monitor_cpu_s"] / summary["wall_s"]
        out["samples"] = summary["samples"]
    return out


class _Probe:
    """gilknocker's idea: a thread that sleeps 5 ms and times how late it runs Python again."""

    def __init__(self) -> None:
        self._stop = False
        self._late = 0
        self._total = 0
        self._thread = threading.Thread(target=self._run, name="knocker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            t0 = time.perf_counter_ns()
            time.sleep(0.005)
            elapsed = time.perf_counter_ns() - t0
            self._late += max(0, elapsed - 5_000_000)
            self._total += elapsed

    def stop(self) -> float:
        self._stop = True
        self._thread.join()
        return self._late / max(1, self._total)


def calibration(rounds: int, seconds: float) -> None:
    print(f"Calibration: GIL wait as a share of each thread's time, {rounds} rounds of {seconds:g} s each")
    print(
        f"  {'workload':<33} {'thread':<6} {'implied':>7} {'truth (kernel)':>16} {'conctools':>10} "
        f"{'off by':>6} {'vs implied':>10} {'ranked':>6} {'samples':>7} {'probe':>7}"
    )
    monitor_cpu: list[float] = []
    for label, kinds in WORKLOADS.items():
        lowers: dict[str, list[float]] = {}
        uppers: dict[str, list[float]] = {}
        estimates: dict[str, list[float]] = {}
        off: dict[str, list[float]] = {}
        off_implied: dict[str, list[float]] = {}
        probes: list[float] = []
        samples: list[int] = []
        ranked = 0
        for _ in range(rounds):
            r = run_workload(kinds, seconds, monitor=True, probe=False)
            probes.append(run_workload(kinds, seconds, monitor=False, probe=True)["probe"])
            monitor_cpu.append(r["monitor_cpu"])
            samples.append(r["samples"])
            rows = []
            for name, (kind, lower, upper) in r["truth"].items():
                est = r["estimate"].get(name, 0.0)
                lowers.setdefault(kind, []).append(lower)
                uppers.setdefault(kind, []).append(upper)
                estimates.setdefault(kind, []).append(est)
                off.setdefault(kind, []).append(max(0.0, lower - est, est - upper))
                off_implied.setdefault(kind, []).append(abs(est - implied(kinds, kind)))
                rows.append((lower, upper, est))
            ranked += _ranked_right(rows)
        for kind in dict.fromkeys(kinds):
            truth = f"{_range(lowers[kind])} .. {_range(uppers[kind])}"
            vs_implied = f"{max(off_implied[kind]):.0%}" if kind == "cpu" and kinds == ["cpu"] * len(kinds) else "-"
            print(
                f"  {label:<33} {kind:<6} {implied(kinds, kind):>7.0%} {truth:>16} {_range(estimates[kind]):>10} "
                f"{max(off[kind]):>6.0%} {vs_implied:>10} {f'{ranked}/{rounds}':>6} {min(samples):>7} "
                f"{_range(probes):>7}"
            )
            label = ""
    print(
        "  truth (kernel): from the thread's own schedstat, without .. with the time it waited for a CPU"
        " (run-queue):\n  time neither running nor in its own sleeps, as a share of its wall time; the GIL wait"
        " lies in between\n  (they meet on an idle machine). off by: the estimate's distance to that interval"
        " (worst thread, worst round);\n  vs implied: distance to (n-1)/n; ranked: rounds in which every thread"
        " whose wait is surely 5 points\n  above another's (its lower bound above the other's upper bound) was"
        " ranked above it; samples: fewest in a round;\n  probe: a gilknocker-style probe's figure for the whole"
        f" process in a separate run. The monitor thread used {min(monitor_cpu):.2%}-{max(monitor_cpu):.2%}"
        " of one core."
    )


def _ranked_right(rows: list[tuple[float, float, float]]) -> int:
    for lower_a, _, est_a in rows:
        for _, upper_b, est_b in rows:
            if lower_a >= upper_b + 0.05 and not est_a > est_b:
                return 0
    return 1


def _range(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.0%}" if round(lo, 2) == round(hi, 2) else f"{lo:.0%}-{hi:.0%}"


# ---- cost -------------------------------------------------------------------------------------


def _fixed_cpu_work() -> None:
    def work() -> None:
        total = 0
        for i in range(3_000_000):
            total += i * i % 7

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _sleepers() -> None:
    def work() -> None:
        for _ in range(150):
            time.sleep(0.01)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _lock_hammer() -> None:
    import bench_contended

    for _ in range(8):
        bench_contended.hammer(lambda name: threading.Lock())


def _asyncio_work() -> None:
    import bench_loopmon

    for _ in range(3):
        asyncio.run(bench_loopmon.workload())


PROGRAMS: dict[str, Callable[[], None]] = {
    "4 CPU-bound threads, fixed work": _fixed_cpu_work,
    "bench_contended: 4 threads x 25k nested with-locks, x8": _lock_hammer,
    "bench_loopmon: asyncio tasks + queue ping-pong, x3": _asyncio_work,
    "4 threads sleeping 10 ms x 150": _sleepers,
}


def _measure(fn: Callable[[], None], monitored: bool) -> tuple[float, float, float]:
    """(wall, process CPU, the monitor's own CPU) of one run of ``fn``."""
    monitor = GilMonitor(recorder=Recorder()) if monitored else None
    if monitor is not None:
        monitor.start()
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    own = 0.0
    if monitor is not None:
        monitor.stop()
        own = monitor.summary()["monitor_cpu_s"]
    return wall, cpu, own


def cost(rounds: int) -> None:
    print(
        f"\nCost on fixed-work programs: with / without the monitor, {rounds} interleaved pairs (median ratio, range)"
    )
    print(f"  {'program':<58} {'wall ratio':>22} {'CPU ratio':>22} {'CPU added':>10} {'monitor':>9}")
    GilMonitor(recorder=Recorder()).start().stop()  # calibrate once, outside the measurements
    for label, fn in PROGRAMS.items():
        fn()  # warm up
        walls, cpus, added, own = [], [], [], []
        for i in range(rounds):
            first = i % 2 == 0  # alternate which side runs first
            a = _measure(fn, not first)
            b = _measure(fn, first)
            (w1, c1, m1), (w0, c0, _) = (b, a) if first else (a, b)
            walls.append(w1 / w0)
            cpus.append(c1 / c0)
            added.append((c1 - c0) / w1)
            own.append(m1 / w1)
        print(
            f"  {label:<58} {_ratios(walls):>22} {_ratios(cpus):>22} {statistics.median(added):>10.1%}"
            f" {statistics.median(own):>9.2%}"
        )
    print(
        "  CPU added: extra process CPU per second of the monitored run (median), as a share of one core;"
        "\n  monitor: the monitor thread's own CPU time per second"
    )


class _Server:
    """A ``conctools serve`` child process, instrumented, with or without the GIL monitor."""

    def __init__(self, gil: bool) -> None:
        cmd = [sys.executable, "-m", "conctools", "serve", "--port", "0", "--no-console", "--no-report"]
        if not gil:
            cmd.append("--no-gil")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            raise SystemExit(f"server did not start: {line!r}")
        self.url = line.split("listening on ", 1)[1].split()[0]
        self.ps = psutil.Process(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def server(rounds: int, seconds: float) -> None:
    import bench_server

    if shutil.which("wrk") is None:
        print("\nserver: skipped, wrk is not installed (apt-get install wrk)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        mix = Path(tmp) / "mix.lua"
        mix.write_text(bench_server.MIX_LUA)
        without, with_gil = _Server(gil=False), _Server(gil=True)
        try:
            for s in (without, with_gil):
                bench_server.run_wrk(s, 1, mix, 50)  # type: ignore[arg-type]
            res: dict[str, list[tuple[float, float, float, float]]] = {"without": [], "with": []}
            for _ in range(rounds):
                res["without"].append(bench_server.run_wrk(without, seconds, mix, 50))  # type: ignore[arg-type]
                res["with"].append(bench_server.run_wrk(with_gil, seconds, mix, 50))  # type: ignore[arg-type]
        finally:
            without.stop()
            with_gil.stop()
    rps = [w[0] / o[0] for w, o in zip(res["with"], res["without"])]
    us = [w[3] / o[3] for w, o in zip(res["with"], res["without"])]
    print(
        f"\nSample server under wrk load (mix of endpoints, -c50, {seconds:g} s x {rounds} interleaved pairs),"
        " instrumented with / without the GIL monitor:"
        f"\n  req/s ratio {_ratios(rps)}, server CPU per request ratio {_ratios(us)}"
        f"\n  (without: {statistics.median(r[0] for r in res['without']):,.0f} req/s,"
        f" {statistics.median(r[3] for r in res['without']):.0f} µs CPU per request)"
    )


def _ratios(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (range {min(values):.3f}-{max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per workload / interleaved pairs")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each calibration run")
    parser.add_argument("--no-cost", action="store_true", help="skip the cost measurements")
    parser.add_argument("--no-server", action="store_true", help="skip the sample server under wrk")
    parser.add_argument("--no-calibration", action="store_true", help="skip the calibration table")
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        print("bench_gil: needs Linux (/proc per-thread states)", file=sys.stderr)
        return 2
    load = os.getloadavg()
    print(
        f"bench_gil: Python {sys.version.split()[0]}, {len(os.sched_getaffinity(0))} cores, "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at start, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    if not args.no_calibration:
        calibration(args.rounds, args.seconds)
    if not args.no_cost:
        cost(max(args.rounds, 15))
    if not args.no_server:
        server(max(args.rounds, 5), 5.0)
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
