"""Overhead under load: the sample server instrumented by conctools vs the same server plain.

Both servers run as ``conctools serve`` processes (``--no-instrument`` for the plain one:
stdlib primitives, no ``@traced``, no loop monitor, watchdog or sampler) and are loaded by
the SAME generator, in interleaved rounds. The generator must not be the bottleneck, so
this uses ``wrk`` (Debian package ``wrk``), which drives far more requests per CPU second
than Locust; the script also records each process' CPU use so the output says which side
limited the throughput. ``--locust`` adds one run of a single Locust process against the
plain server, to show Locust's own ceiling on this machine.

    .venv/bin/python benchmarks/bench_server.py [--seconds 5] [--rounds 3] [--locust]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

MIX_LUA = textwrap.dedent(
    """
    -- A realistic mix of the sample server's cheap endpoints (no seeded bugs, no CPU pool).
    local requests = {
      {"GET", "/health"}, {"GET", "/health"}, {"GET", "/io?delay_ms=1"}, {"GET", "/cache?key=a"},
      {"GET", "/cache?key=b"}, {"GET", "/downstream"}, {"POST", "/counter"}, {"POST", "/jobs"},
    }
    local i = 0
    request = function()
      i = i % #requests + 1
      local r = requests[i]
      return wrk.format(r[1], r[2], nil, r[1] == "POST" and "x" or nil)
    end
    """
)

LOCUST_FILE = textwrap.dedent(
    """
    from locust import FastHttpUser, constant, task

    class Hammer(FastHttpUser):
        wait_time = constant(0)

        @task
        def health(self):
            self.client.get("/health")
    """
)


class Server:
    """A ``conctools serve`` child process on a free loopback port."""

    def __init__(self, instrumented: bool) -> None:
        cmd = [sys.executable, "-m", "conctools", "serve", "--port", "0", "--no-console", "--no-report"]
        if not instrumented:
            cmd.append("--no-instrument")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
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


def _cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def run_wrk(server: Server, seconds: float, script: Path | None, connections: int) -> tuple[float, float, float, float]:
    """One wrk run: (requests/s, server CPU %, wrk CPU %, server CPU µs per request)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(server.url + "/health")
    before = _cpu_s(server.ps)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    gen = psutil.Process(proc.pid)
    gen_cpu = 0.0
    while proc.poll() is None:
        try:
            gen_cpu = _cpu_s(gen)
        except psutil.Error:
            pass
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    elapsed = time.monotonic() - started
    server_cpu = (_cpu_s(server.ps) - before) / elapsed * 100
    server_cpu_s = _cpu_s(server.ps) - before
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not match or not total:
        raise SystemExit(f"wrk output not understood:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"  warning: {errors.group(1)} non-2xx responses", file=sys.stderr)
    per_request_us = server_cpu_s / max(1, int(total.group(1))) * 1e6
    return float(match.group(1)), server_cpu, gen_cpu / elapsed * 100, per_request_us


def run_locust(server: Server, seconds: float, users: int) -> tuple[float, float, float]:
    """One single-process Locust run: (requests/s, server CPU %, locust CPU %)."""
    with tempfile.TemporaryDirectory() as tmp:
        locustfile = Path(tmp) / "hammer.py"
        locustfile.write_text(LOCUST_FILE)
        cmd = [
            sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", str(users), "-r", str(users),
            "-t", f"{int(seconds)}s", "--host", server.url, "--csv", str(Path(tmp) / "s"), "--only-summary",
            "--loglevel", "ERROR",
        ]  # fmt: skip
        before = _cpu_s(server.ps)
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gen = psutil.Process(proc.pid)
        gen_cpu = 0.0
        while proc.poll() is None:
            try:
                gen_cpu = _cpu_s(gen)
            except psutil.Error:
                pass
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        server_cpu = (_cpu_s(server.ps) - before) / elapsed * 100
        rows = (Path(tmp) / "s_stats.csv").read_text().splitlines()
        agg = next(r for r in rows if ",Aggregated," in r).split(",")
        header = rows[0].split(",")
        rps = float(agg[header.index("Requests/s")])
    return rps, server_cpu, gen_cpu / elapsed * 100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per side")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--locust", action="store_true", help="also measure one Locust process' ceiling")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench_server: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        mix = Path(tmp) / "mix.lua"
        mix.write_text(MIX_LUA)
        scenarios: list[tuple[str, Path | None]] = [("GET /health", None), ("mix of 6 endpoints", mix)]
        plain, instr = Server(instrumented=False), Server(instrumented=True)
        try:
            # Warm both (pools, caches, the process pool's spawn) before measuring.
            for s in (plain, instr):
                run_wrk(s, 1, mix, args.connections)
            print(
                f"Sample server throughput, wrk -t1 -c{args.connections}, {args.seconds:g} s x {args.rounds} "
                f"interleaved rounds per side (median), {os.cpu_count()} CPUs"
            )
            print(
                f"  {'scenario':<20} {'plain req/s':>12} {'conctools req/s':>16} {'ratio':>6}   "
                f"{'server CPU plain/conctools':>27}   {'CPU µs/req plain/conctools':>27} {'ratio':>6}   {'wrk CPU':>7}"
            )
            for name, script in scenarios:
                results: dict[str, list[tuple[float, float, float, float]]] = {"plain": [], "instr": []}
                for _ in range(args.rounds):
                    results["plain"].append(run_wrk(plain, args.seconds, script, args.connections))
                    results["instr"].append(run_wrk(instr, args.seconds, script, args.connections))
                p_rps = statistics.median(r[0] for r in results["plain"])
                i_rps = statistics.median(r[0] for r in results["instr"])
                p_cpu = statistics.median(r[1] for r in results["plain"])
                i_cpu = statistics.median(r[1] for r in results["instr"])
                g_cpu = statistics.median(r[2] for r in results["plain"] + results["instr"])
                p_us = statistics.median(r[3] for r in results["plain"])
                i_us = statistics.median(r[3] for r in results["instr"])
                print(
                    f"  {name:<20} {p_rps:>12,.0f} {i_rps:>16,.0f} {i_rps / p_rps:>6.2f}   "
                    f"{p_cpu:>12.0f}% / {i_cpu:>3.0f}%{'':>8}   {p_us:>15.0f} / {i_us:>5.0f}{'':>5} "
                    f"{p_us / i_us:>6.2f}   {g_cpu:>6.0f}%"
                )
            print(
                "  ratios are conctools / plain (1.00 = no overhead); the CPU-per-request ratio is the steadier "
                "one on a shared machine.\n  bottleneck: the server when its CPU is near 100% (one event loop = "
                "one core) while wrk's is lower; the machine itself when neither is"
            )
            if args.locust:
                rps, s_cpu, l_cpu = run_locust(plain, max(5.0, args.seconds), users=50)
                print(
                    f"  one Locust process (FastHttpUser, no wait, 50 users) vs the plain server: {rps:,.0f} req/s, "
                    f"server CPU {s_cpu:.0f}%, Locust CPU {l_cpu:.0f}% -> Locust is the bottleneck"
                    if l_cpu > s_cpu
                    else f"  one Locust process vs the plain server: {rps:,.0f} req/s, server CPU {s_cpu:.0f}%, "
                    f"Locust CPU {l_cpu:.0f}%"
                )
        finally:
            plain.stop()
            instr.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
