"""``conctools demo``: the sample server with its seeded bugs, under Locust load, then a report.

Steps, each bounded in time:

1. start ``conctools serve --bugs --port 0 --out DIR`` as a child process on loopback and
   read the URL it prints;
2. run the Locust users against it (:func:`conctools.loadtest.run_loadtest`, another child);
3. stop the server with SIGTERM: it writes its conctools report files into ``DIR``;
4. line Locust's per-second latencies up with the server's events (marks on the same
   timeline) and re-render the report files;
5. print what was found and where (``file:line``) and where the files are.

This is a wiring module (it reads snapshots and calls the reporters); it never imports
locust or aiohttp.
"""

from __future__ import annotations

import csv
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from conctools._context import internal_thread
from conctools.events import LockOrderEvent, LockWaitEvent, MarkEvent, SlowCallbackEvent
from conctools.recorder import Snapshot
from conctools.reporting.pools_text import n_plus_one_lines, pool_findings

__all__ = ["DemoError", "DemoOptions", "find_findings", "run_demo"]

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


class DemoError(Exception):
    """The demo could not run (the server did not start, Locust is missing, ...)."""


@dataclass(slots=True, kw_only=True)
class DemoOptions:
    """How long and how hard the demo loads the server, and where the report folder goes."""

    duration_s: float = 30.0
    users: int = 20
    processes: int = 1
    out_dir: Path = Path("build/demo")
    deadlock_timeout_s: float = 10.0


def _short(path: str) -> str:
    """``conctools/server/app.py`` rather than the absolute path (relative to the cwd when possible)."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def find_findings(snapshot: Snapshot) -> list[str]:
    """What the run found, worst first, one line each with ``file:line`` (a pure function)."""
    lines: list[str] = []
    deadlocks = snapshot.counts.get("deadlock", 0)
    hangs = snapshot.counts.get("hang", 0)
    if deadlocks or hangs:
        lines.append(f"deadlocks: {deadlocks}, hangs: {hangs} (see report.txt)")
    for event in snapshot.of_kind(LockOrderEvent)[:3]:
        edges = "; ".join(
            f"{e.to_lock} taken at {_site(e.to_site)} while holding {e.from_lock} (taken at {_site(e.from_site)})"
            for e in event.edges
        )
        lines.append(f"potential deadlock (lock-order inversion {' -> '.join(event.cycle)}): {edges}")
    stalls = snapshot.of_kind(SlowCallbackEvent)
    ranked = _stall_sites(snapshot, stalls)
    if ranked:
        total = snapshot.counts.get("slow_callback", len(stalls))
        site, count, _total_s, _max_s = ranked[0]
        worst = max(r[3] for r in ranked)
        lines.append(
            f"event loop blocked {total} times (worst {worst * 1000:.0f} ms); top culprit {site} ({count} stalls)"
        )
        # Every other culprit line too (up to 3): each seeded stall is named with its line.
        for site, count, _total_s, max_s in [r for r in ranked[1:] if not r[0].startswith("<")][:3]:
            lines.append(f"event loop also blocked at {site} ({count} stalls, worst {max_s * 1000:.0f} ms)")
    waits = snapshot.of_kind(LockWaitEvent)
    if waits:
        per_lock: Counter[str] = Counter()
        wait_s: dict[str, float] = defaultdict(float)
        sites: dict[str, Counter[str]] = defaultdict(Counter)
        for w in waits:
            per_lock[w.lock_name] += 1
            wait_s[w.lock_name] += w.wait_s
            sites[w.lock_name][w.site] += 1
        name = max(wait_s, key=lambda n: wait_s[n])
        site = sites[name].most_common(1)[0][0]
        lines.append(
            f"lock contention: {name!r} waited on {per_lock[name]} times, {wait_s[name]:.2f} s in total; "
            f"hottest waiting site {_site(site)}"
        )
    pools = snapshot.sections.get("pools")
    lines += pool_findings(pools)  # a pool that ran dry: who held its items, and where
    lines += n_plus_one_lines(pools)  # one query per row: a pool taken again and again from one line
    if not lines:
        lines.append("nothing found: no stalls, lock waits, inversions or deadlocks were recorded")
    return lines


def _stall_sites(snapshot: Snapshot, stalls: list[SlowCallbackEvent]) -> list[tuple[str, int, float, float]]:
    """(culprit, stalls, total s, worst s) per culprit line, most total time first: from the loop
    monitor's section when there is one (exact however many stall events the recorder kept), else
    from the events."""
    section = snapshot.sections.get("slow_callbacks")
    rows = section.get("sites") if isinstance(section, dict) else None
    out: list[tuple[str, int, float, float]] = []
    if rows:
        for r in rows:
            function = r.get("function") or ""
            key = f"{_site(str(r.get('site', '')))} in {function}" if function else str(r.get("key", ""))
            out.append((key, int(r.get("count", 0)), float(r.get("total_s", 0.0)), float(r.get("max_s", 0.0))))
    else:
        by_site: dict[str, list[float]] = defaultdict(list)
        for s in stalls:
            key = f"{_site(s.culprit.site)} in {s.culprit.function}" if s.culprit is not None else s.callback
            by_site[key].append(s.duration_s)
        out = [(key, len(ds), sum(ds), max(ds)) for key, ds in by_site.items()]
    out.sort(key=lambda r: -r[2])
    return out


def _site(site: str) -> str:
    path, sep, line = site.rpartition(":")
    return f"{_short(path)}:{line}" if sep and path else site


def _read_url(proc: subprocess.Popen[str], log: IO[str], timeout_s: float) -> str:
    """Wait (bounded) for the server's ``listening on URL`` line; the rest of its stdout goes to ``log``."""
    assert proc.stdout is not None
    stdout = proc.stdout
    deadline = time.monotonic() + timeout_s
    url = None
    with selectors.DefaultSelector() as sel:
        sel.register(stdout, selectors.EVENT_READ)
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            if not sel.select(timeout=min(0.5, max(0.0, deadline - time.monotonic()))):
                continue
            line = stdout.readline()
            if not line:
                break
            log.write(line)
            log.flush()  # the server's stderr shares the file: keep the lines in order
            if "listening on " in line:
                url = line.split("listening on ", 1)[1].split()[0]
    if url is None:
        raise DemoError("the server did not start (see server.log in the report folder)")

    def drain() -> None:  # the server must never block on a full stdout pipe
        for line in stdout:
            log.write(line)
            log.flush()

    internal_thread(drain, "conctools-demo-drain").start()
    return url


def _add_locust_timeline(snapshot: Snapshot, history_csv: Path) -> Snapshot:
    """Put Locust's per-second aggregate latencies on the server's timeline as marks."""
    if not history_csv.exists():
        return snapshot
    marks: list[MarkEvent] = []
    with history_csv.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") != "Aggregated":
                continue
            try:
                wall = float(row["Timestamp"])
                ts_ns = snapshot.started_ns + int((wall - snapshot.started_wall) * 1e9)
                detail = {
                    "users": int(float(row.get("User Count") or 0)),
                    "rps": float(row.get("Requests/s") or 0),
                    "failures_per_s": float(row.get("Failures/s") or 0),
                    "p50_ms": float(row.get("50%") or 0),
                    "p95_ms": float(row.get("95%") or 0),
                    "p99_ms": float(row.get("99%") or 0),
                }
            except (KeyError, ValueError):
                continue
            if snapshot.started_ns <= ts_ns <= snapshot.taken_ns:
                marks.append(
                    MarkEvent(ts_ns=ts_ns, thread_id=0, thread_name="locust", name="locust.latency", detail=detail)
                )
    if not marks:
        return snapshot
    events = tuple(sorted((*snapshot.events, *marks), key=lambda e: e.ts_ns))
    counts = dict(snapshot.counts)
    counts["mark"] = counts.get("mark", 0) + len(marks)
    return Snapshot(
        started_ns=snapshot.started_ns,
        started_wall=snapshot.started_wall,
        taken_ns=snapshot.taken_ns,
        events=events,
        counts=counts,
        dropped=snapshot.dropped,
        spans=snapshot.spans,
        sections=snapshot.sections,
        meta=snapshot.meta,
    )


def _add_locust_counters(trace_json: Path) -> None:
    """Turn the Locust marks of a written trace into counter tracks (latency and req/s graphs)."""
    if not trace_json.exists():
        return
    try:
        data = json.loads(trace_json.read_text(encoding="utf-8"))
        events = data["traceEvents"] if isinstance(data, dict) else data
        counters = []
        for e in events:
            if e.get("ph") == "i" and e.get("name") == "locust.latency":
                args = e.get("args", {})
                latency = {k: args[k] for k in ("p50_ms", "p95_ms", "p99_ms") if k in args}
                rate = {k: args[k] for k in ("rps", "failures_per_s") if k in args}
                base = {"ph": "C", "ts": e["ts"], "pid": e["pid"]}
                counters.append({**base, "name": "Locust latency (ms)", "args": latency})
                counters.append({**base, "name": "Locust requests/s", "args": rate})
        if counters:
            events.extend(counters)
            trace_json.write_text(json.dumps(data), encoding="utf-8")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"conctools demo: could not add Locust's counters to {trace_json}: {exc}", file=sys.stderr)


def run_demo(options: DemoOptions, out: IO[str] | None = None) -> int:
    """Run the whole demo; print the summary to ``out`` (stdout); returns the exit status."""
    from conctools.loadtest import LoadTestError, LoadTestOptions, run_loadtest, validate
    from conctools.reporting import load_json
    from conctools.runner import write_reports

    stream = out if out is not None else sys.stdout
    out_dir = options.out_dir
    try:  # the load's bounds are checked before anything starts (not after the server is up)
        validate(LoadTestOptions(host="http://127.0.0.1:8080", users=options.users, duration_s=options.duration_s,
                                 processes=options.processes, out_dir=out_dir))  # fmt: skip
    except LoadTestError as exc:
        raise DemoError(str(exc)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    server_log = (out_dir / "server.log").open("w", encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "conctools",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--bugs",
        "--no-console",
        "--no-report",
        "--deadlock-timeout",
        f"{options.deadlock_timeout_s:g}",
        "--out",
        str(out_dir),
    ]
    print(f"conctools demo: starting the sample server with its seeded bugs, {options.users} users for "
          f"{options.duration_s:g} s", file=stream, flush=True)  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=server_log, text=True, start_new_session=True)
    load = None
    try:
        url = _read_url(server, server_log, START_TIMEOUT_S)
        print(f"conctools demo: server at {url}; running Locust", file=stream, flush=True)
        try:
            load = run_loadtest(
                LoadTestOptions(
                    host=url,
                    users=options.users,
                    duration_s=options.duration_s,
                    processes=options.processes,
                    out_dir=out_dir,
                )
            )
        except LoadTestError as exc:
            raise DemoError(str(exc)) from None
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        server_log.close()
    report_json = out_dir / "report.json"
    if not report_json.exists():
        raise DemoError(f"the server wrote no report (exit {server.returncode}); see {out_dir / 'server.log'}")
    snapshot = _add_locust_timeline(load_json(report_json), out_dir / "locust_stats_history.csv")
    written = write_reports(snapshot, out_dir)
    _add_locust_counters(out_dir / "trace.json")
    print("", file=stream)
    print("conctools demo: what the load found", file=stream)
    if load is not None and load.summary is not None:
        for line in load.summary.format().splitlines():
            print(f"  load:   {line}", file=stream)
    for line in find_findings(snapshot):
        print(f"  found:  {line}", file=stream)
    files = sorted({*written, *(load.files if load is not None else [])}, key=str)
    others = [p.name for p in files if p.name != "report.txt"]
    print(f"  report: {out_dir / 'report.txt'} (text), {', '.join(others)}", file=stream)
    stream.flush()
    return 0
