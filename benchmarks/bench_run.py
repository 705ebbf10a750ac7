"""Whole-program overhead of ``conctools run`` against plain ``python``, on realistic programs.

    .venv/bin/python benchmarks/bench_run.py [--rounds N] [--programs NAME,...] [--startup-only]

The programs live in ``benchmarks/programs/``: asyncio tasks through a semaphore, a lock and a
queue; a thread pool over a lock-protected cache plus a producer/consumer queue; an aiohttp
client/server pair on 127.0.0.1; a ``concurrent.futures`` fan-out; ``wait()`` and
``as_completed()`` on 40,000 futures at once (the cost per lock of a lock-order run must not grow
with the locks held); a ``queue.Queue`` pipeline.
Each runs as a fresh process, under each configuration:

- ``python``: ``python prog.py``
- ``default``: ``conctools run --no-report prog.py`` (lock tracing, lock order, watchdog,
  loop monitor and resource sampler on: what a user gets)
- ``--no-lock-order``, ``--no-trace-locks``, ``--no-gil``: the default minus one part, to show where the cost sits
- ``all off``: ``--no-trace-locks --deadlock-timeout 0 --loop-threshold 0 --sample-interval 0``
  (the runner alone: imports, ``runpy``, the recorder and the final snapshot)

Wall time is what the targets are about; CPU time (user + system of the child, every thread) is
printed too, because on a shared machine it moves far less with other people's load.

Method. Rounds are interleaved: each round runs every (program, configuration) pair once, in an
order that rotates from round to round, so that a burst of load from elsewhere hits every column
alike. Wall time is measured around the child process (spawn to exit); peak memory is the child's
own ``ru_maxrss`` from ``wait4``. Start-up is excluded from the ratio: in the same rounds every
(program, configuration) pair also runs with ``BENCH_IMPORTS_ONLY=1``, which makes the program
import what it imports and exit before its work. The overhead of a configuration on a program is
``(T_config(prog) - S_config(prog)) / (T_python(prog) - S_python(prog))``, ``S`` being that
imports-only run of the same round: interpreter, conctools and the program's own imports cancel out
(an empty script would not do: conctools imports asyncio, which an asyncio program then gets for
free). The ratio is computed per round (paired) and the median over rounds is printed, with the
lowest and highest round as a range. Start-up itself is reported on its own: an empty script
under every configuration (and through the installed ``conctools`` script), its wall and CPU time
(minimum and median), and its overhead over ``python`` paired: each round's run minus the same
round's ``python`` run, minimum, median and range, in wall time (the figure the start-up target of
issue 12 is about: at most +0.10 s) and in CPU time (user + system of the child from ``wait4``,
which a busy machine moves far less). ``--startup-only`` runs just that table (use 20 rounds or
more on a shared machine).

Bytecode: a ``pip install`` compiles conctools' bytecode; a source tree with
``PYTHONDONTWRITEBYTECODE`` set has none, and every run would recompile ~15k lines (~60 ms). This
script compiles it first so start-up is measured as users get it.

Nothing is asserted: the machine is shared, so figures are quoted as ranges with the load average.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROGRAMS_DIR = HERE / "programs"
PROGRAMS = {
    "asyncio: 20k tasks, Semaphore(50), Lock, Queue": "async_locks.py",
    "threads: pool(8) x 40k jobs, locked cache, Queue(100)": "threads_cache.py",
    "aiohttp client/server, 2k requests": "aiohttp_pair.py",
    "concurrent.futures fan-out, 1k x 25": "futures_fanout.py",
    "concurrent.futures wait()/as_completed() on 40k futures at once": "futures_wide.py",
    "queue.Queue pipeline, 3 stages x 2 threads, 50k items": "queue_pipeline.py",
}
EMPTY = PROGRAMS_DIR / "empty.py"
RUN = [sys.executable, "-m", "conctools", "run", "--no-report"]
CONFIGS = {
    "python": [sys.executable],
    "default": RUN,
    "--no-lock-order": [*RUN, "--no-lock-order"],
    "--no-trace-locks": [*RUN, "--no-trace-locks"],
    "--no-gil": [*RUN, "--no-gil"],
    "all off": [
        *RUN,
        "--no-trace-locks",
        "--deadlock-timeout",
        "0",
        "--loop-threshold",
        "0",
        "--sample-interval",
        "0",
    ],
}
# Start-up also with the report printed (the default without --no-report), and through the
# ``conctools`` script that pip installs next to the interpreter (where there is one).
STARTUP_EXTRA = {"default, report printed": [sys.executable, "-m", "conctools", "run"]}
_SCRIPT = Path(sys.executable).with_name("conctools")
if _SCRIPT.exists():
    STARTUP_EXTRA["`conctools run --no-report` (the script)"] = [str(_SCRIPT), "run", "--no-report"]


@dataclass
class Samples:
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)


def run_once(argv: list[str], imports_only: bool = False) -> tuple[float, float, int]:
    """Wall time (s), CPU time (s, user + system) and peak RSS (KiB) of one child process.

    Exits on a failing program."""
    env = {**os.environ, "BENCH_IMPORTS_ONLY": "1"} if imports_only else None
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"bench_run: {' '.join(argv)} exited {proc.returncode}:\n{err.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def load() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def ratio_range(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.2f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--programs", help="comma-separated program files to run (default: all)")
    parser.add_argument("--configs", help="comma-separated configurations (default: all)")
    parser.add_argument(
        "--startup-only", action="store_true", help="only the empty script: the start-up table (quick; try --rounds 20)"
    )
    ns = parser.parse_args()
    programs = dict(PROGRAMS)
    if ns.startup_only:
        programs = {}
    elif ns.programs:
        wanted = {p.strip().removesuffix(".py") for p in ns.programs.split(",")}
        programs = {k: v for k, v in PROGRAMS.items() if v.removesuffix(".py") in wanted}
        if not programs:
            parser.error(f"no such program: {ns.programs}")
    configs = dict(CONFIGS)
    if ns.configs:
        wanted = {c.strip() for c in ns.configs.split(",")} | {"python"}
        configs = {k: v for k, v in CONFIGS.items() if k in wanted}

    import conctools

    compileall.compile_dir(os.path.dirname(conctools.__file__), quiet=1)
    started = datetime.datetime.now().astimezone()
    load_before = load()

    startup_configs = {**configs, **(STARTUP_EXTRA if "default" in configs else {})}
    jobs: list[tuple[str, str, list[str], bool]] = []
    for cname, argv in startup_configs.items():
        jobs.append(("empty", cname, [*argv, str(EMPTY)], False))
    for label, fname in programs.items():
        for cname, argv in configs.items():
            jobs.append((label, cname, [*argv, str(PROGRAMS_DIR / fname)], False))
            jobs.append((f"{label} (imports only)", cname, [*argv, str(PROGRAMS_DIR / fname)], True))

    samples: dict[tuple[str, str], Samples] = {}
    for r in range(ns.rounds):
        shift = r % len(jobs)
        for label, cname, argv, imports_only in jobs[shift:] + jobs[:shift]:
            wall, cpu, rss = run_once(argv, imports_only)
            s = samples.setdefault((label, cname), Samples())
            s.wall_s.append(wall)
            s.cpu_s.append(cpu)
            s.rss_kib.append(rss)
        print(f"round {r + 1}/{ns.rounds} done (load {load()})", file=sys.stderr)

    out = [
        f"conctools run vs python, {started:%Y-%m-%d %H:%M %Z}: {machine()}, Python {platform.python_version()}",
        f"load average before {load_before}, after {load()}; {ns.rounds} interleaved rounds, median (range)",
        "",
    ]

    def work_s(label: str, cname: str, what: str) -> list[float]:
        full = getattr(samples[(label, cname)], what)
        start = getattr(samples[(f"{label} (imports only)", cname)], what)
        return [f - s for f, s in zip(full, start)]

    for title, what in (
        ("Wall time, start-up excluded (each run minus the same round's imports-only run):", "wall_s"),
        ("CPU time (user + system, all threads), start-up excluded the same way (steadier under load):", "cpu_s"),
    ):
        out += [
            title,
            "",
            "| program | python | " + " | ".join(c for c in configs if c != "python") + " |",
            "|---|---:|" + "---:|" * (len(configs) - 1),
        ]
        for label in programs:
            py = work_s(label, "python", what)
            cells = [f"{statistics.median(py):.2f} s"]
            for cname in configs:
                if cname == "python":
                    continue
                mine = work_s(label, cname, what)
                cells.append(ratio_range([m / p for m, p in zip(mine, py)]))
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")

    out += [
        "Peak memory (RSS, median):",
        "",
        "| program | " + " | ".join(configs) + " |",
        "|---|" + "---:|" * len(configs),
    ]
    for label in [*programs, "empty"]:
        base = statistics.median(samples[(label, "python")].rss_kib) / 1024
        cells = [f"{base:.0f} MiB"]
        for cname in configs:
            if cname == "python":
                continue
            mine = statistics.median(samples[(label, cname)].rss_kib) / 1024
            cells.append(f"{mine:.0f} MiB ({mine - base:+.0f})")
        out.append(f"| {'empty script' if label == 'empty' else label} | " + " | ".join(cells) + " |")

    out += ["", f"Start-up (an empty script, {ns.rounds} interleaved rounds; min / median, and (range)):", ""]
    out.append(
        "| configuration | wall time | paired: over python in the same round | CPU time (user + system) "
        "| paired CPU over python |"
    )
    out.append("|---|---:|---:|---:|---:|")
    py = samples[("empty", "python")]
    for cname in startup_configs:
        mine = samples[("empty", cname)]
        cells = [f"{min(mine.wall_s):.3f} / {statistics.median(mine.wall_s):.3f} s", ""]
        cpu_cells = [f"{min(mine.cpu_s):.3f} / {statistics.median(mine.cpu_s):.3f} s", ""]
        if cname != "python":
            # Per round: this configuration minus python, run next to each other (load from elsewhere
            # hits both alike); the target of issue 12 is this figure, at most +0.10 s. CPU time (the
            # child's user + system, every thread) moves far less with the machine's load.
            for column, what in ((cells, "wall_s"), (cpu_cells, "cpu_s")):
                diffs = [t - p for t, p in zip(getattr(mine, what), getattr(py, what))]
                column[1] = (
                    f"{min(diffs):+.3f} / {statistics.median(diffs):+.3f} s ({min(diffs):+.3f} to {max(diffs):+.3f})"
                )
        out.append(f"| {cname} | {cells[0]} | {cells[1]} | {cpu_cells[0]} | {cpu_cells[1]} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
