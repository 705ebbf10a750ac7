"""One report from many processes: the ``processes`` section, and merging saved reports.

:func:`processes_section` merges the run's main process with every child's record (its file)
and what the parents learnt when they reaped their children (exit status, CPU, peak RSS):
one entry per process, main process first, each child with its own whole report
(``report``), so the reporters show a section per process. :func:`merge_snapshots` does the
same for reports saved apart (``conctools report a.json b.json --out DIR``): from several
processes, runs or machines.

Pure functions of the records, but for ``alive(pid, started_wall)``, which the caller passes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence

from conctools._records import replace
from conctools._typing import Any
from conctools.recorder import Snapshot

__all__ = ["exit_words", "merge_snapshots", "processes_section"]

SECTION = "processes"
Alive = Callable[[int, Any], bool]


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def exit_words(code: int | None) -> str:
    """``exit status 1``, ``killed by SIGKILL (signal 9)``; ``0`` reads ``exit status 0``."""
    if code is None:
        return "unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} (signal {-code})"
    return f"exit status {code}"


def _reap_for(record: dict[str, Any], reaps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the parents learnt when this record's process ended (same pid, reaped after it
    started): a forkserver child is reaped by the forkserver (CPU time) and its status is also
    seen by the process that started it (its name, and whether it stopped it on purpose)."""
    started = float(record.get("started_wall") or 0.0)
    merged: dict[str, Any] = {}
    for reap in reaps:
        if int(reap.get("pid") or -1) != int(record.get("pid") or -2):
            continue
        at = reap.get("at_wall")
        if at is not None and float(at) + 1.0 < started:
            continue  # an earlier process that had the same pid
        for key, value in reap.items():
            if value is not None and (key not in merged or key in ("cpu_s", "peak_rss_bytes")):
                merged[key] = value
    return merged or None


def _entry(record: dict[str, Any], reap: dict[str, Any] | None, alive: Alive, stopping: bool) -> dict[str, Any]:
    pid = int(record.get("pid") or 0)
    final = bool(record.get("final"))
    own_status = record.get("exit_status")
    cpu = float(record.get("cpu_user_s") or 0.0) + float(record.get("cpu_system_s") or 0.0)
    peak = int(record.get("peak_rss_bytes") or 0)
    threads = list(record.get("threads") or [])
    entry: dict[str, Any] = {
        "pid": pid,
        "ppid": record.get("ppid"),
        "host": record.get("host"),
        "name": record.get("name") or _argv_name(record.get("argv") or []),
        "target": record.get("target"),
        "argv": list(record.get("argv") or []),
        "start_method": record.get("start_method") or "?",
        "started_wall": record.get("started_wall"),
        "started_ns": record.get("started_ns"),
        "updated_wall": record.get("updated_wall"),
        "final": final,
        "ended_by": record.get("ended_by"),
        "stuck": record.get("stuck"),
        "report": record.get("report"),
    }
    code: int | None = None
    if reap is not None:
        code = int(reap["exit_code"])
        entry["name"] = record.get("name") or reap.get("name") or entry["name"]
        entry["target"] = record.get("target") or reap.get("target")
        cpu = max(cpu, float(reap.get("cpu_s") or 0.0))
        peak = max(peak, int(reap.get("peak_rss_bytes") or 0))
        entry["reaped_by"] = reap.get("by")
        entry["reaped_wall"] = reap.get("at_wall")
    elif isinstance(own_status, int):
        code = own_status
    stopped = reap is not None and bool(reap.get("terminated_by_parent"))
    if code is not None and stopped:
        entry["state"] = "ended"
        entry["exit_text"] = f"stopped by its parent ({_signal_name(code)})"
    elif code is not None:
        entry["state"] = "ended"
        entry["exit_text"] = exit_words(code)
    elif final:
        entry["state"] = "ended"
        entry["exit_text"] = "ended (its exit status did not reach conctools)"
    elif pid and alive(pid, record.get("started_wall")):
        entry["state"] = "running"
        entry["exit_text"] = "still running when the report was made"
        stuck = record.get("stuck")
        if isinstance(stuck, dict):
            state = "deadlocked" if stuck.get("verdict") == "deadlock" else "hung"
            entry["exit_text"] = f"{state}; ended with the program" if stopping else f"{state}, still waiting"
        elif stopping:
            entry["exit_text"] = "still running; ended with the program"
        elif str(entry["start_method"]).startswith("forkserver (server)"):
            entry["exit_text"] = "running (multiprocessing's forkserver ends with the program)"
    else:
        entry["state"] = "vanished"
        entry["exit_text"] = "ended without its last record (killed or crashed; nobody reaped it)"
    entry["exit_code"] = code
    # A record written before the end says "at least this much"; a final one or the reaping, exactly.
    exact = final or (reap is not None and reap.get("cpu_s") is not None)
    entry["cpu_s"] = cpu if exact or cpu > 0 else None
    entry["cpu_partial"] = not exact
    entry["peak_rss_bytes"] = peak
    abnormal = (
        (code is not None and code != 0 and not stopped)
        or entry["state"] == "vanished"
        or record.get("ended_by") == "os._exit"
    )
    if (abnormal or entry["stuck"]) and threads:
        entry["last_stack"] = threads[0].get("stack") or []
        entry["last_stack_thread"] = threads[0].get("thread_name")
        entry["last_seen_wall"] = record.get("updated_wall")
        entry["threads"] = threads
    return entry


def _argv_name(argv: Sequence[Any]) -> str:
    if not argv:
        return "?"
    first = str(argv[0])
    if first in ("-c", "-m") and len(argv) > 1:
        return f"python {first} {argv[1]}"[:60]
    return os.path.basename(first)


def processes_section(
    main: dict[str, Any], records: Sequence[dict[str, Any]], *, alive: Alive, stopping: bool = False
) -> dict[str, Any]:
    """The merged ``processes`` section: ``main`` (this process, as a record) and every child."""
    reaps: list[dict[str, Any]] = list(main.get("reaped") or [])
    for record in records:
        reaps.extend(record.get("reaped") or [])
    out = [
        {
            **{k: v for k, v in main.items() if k != "reaped"},
            "state": "main",
            "exit_text": str(main.get("exit_status")) if main.get("exit_status") is not None else "",
            "cpu_s": float(main.get("cpu_user_s") or 0.0) + float(main.get("cpu_system_s") or 0.0),
            "report": None,
        }
    ]
    seen_pids: set[int] = set()
    ordered = sorted(records, key=lambda r: float(r.get("started_wall") or 0.0))
    for n, record in enumerate(ordered):
        pid = int(record.get("pid") or 0)
        if pid == int(main.get("pid") or -1):
            continue
        successor = next(
            (r for r in ordered[n + 1 :] if int(r.get("pid") or 0) == pid and r.get("start_method") == "exec"), None
        )
        if successor is not None and not record.get("final"):
            # os.exec*: the same process goes on as a new program, which has a record of its own.
            entry = _entry(record, None, lambda _pid, _started: False, stopping)
            entry.update(state="ended", exit_text="became another program (os.exec*): see the same pid below")
            entry.pop("last_stack", None)
            out.append(entry)
            continue
        out.append(_entry(record, _reap_for(record, reaps), alive, stopping))
        seen_pids.add(pid)
    # multiprocessing children that died before they wrote anything: known from their reaping alone
    for pid in dict.fromkeys(int(r.get("pid") or 0) for r in reaps):
        if pid in seen_pids:
            continue
        reap = _reap_for({"pid": pid}, reaps)
        if reap is None or reap.get("source") != "multiprocessing":
            continue
        code = int(reap["exit_code"])
        words = exit_words(code)
        if reap.get("terminated_by_parent"):
            words = f"stopped by its parent ({_signal_name(code)})"
        out.append(
            {
                "pid": pid,
                "ppid": reap.get("by"),
                "name": reap.get("name") or "?",
                "target": reap.get("target"),
                "start_method": reap.get("start_method") or "?",
                "state": "ended",
                "exit_code": code,
                "exit_text": words + ", before it wrote any record",
                "cpu_s": reap.get("cpu_s"),
                "peak_rss_bytes": int(reap.get("peak_rss_bytes") or 0),
                "report": None,
            }
        )
    return {"main_pid": main.get("pid"), "processes": out}


def merge_snapshots(snapshots: Sequence[Snapshot], sources: Sequence[str]) -> Snapshot:
    """Several saved reports as one: the first is the main one; every other (and every process it
    had merged itself) becomes one of its processes."""
    if not snapshots:
        raise ValueError("nothing to merge")
    base = snapshots[0]
    section = dict(base.sections.get(SECTION) or {})
    processes: list[dict[str, Any]] = list(section.get("processes") or [])
    if not processes:
        processes = [_as_process(base, sources[0], main=True)]
    for snapshot, source in zip(snapshots[1:], sources[1:], strict=False):
        processes.append(_as_process(snapshot, source, main=False))
        for child in (snapshot.sections.get(SECTION) or {}).get("processes") or []:
            if child.get("state") != "main":
                processes.append({**child, "source": source})
    sections = {**base.sections, SECTION: {"main_pid": base.meta.get("pid"), "processes": processes}}
    meta = {**base.meta, "merged_from": list(sources)}
    return replace(base, sections=sections, meta=meta)


def _as_process(snapshot: Snapshot, source: str, *, main: bool) -> dict[str, Any]:
    """A saved report as an entry of the ``processes`` section."""
    meta = snapshot.meta
    listed: list[dict[str, Any]] = list((snapshot.sections.get(SECTION) or {}).get("processes") or [])
    own: dict[str, Any] = next((p for p in listed if p.get("state") == "main"), {})
    status = meta.get("exit_status")
    code = status if isinstance(status, int) else None
    resources = snapshot.sections.get("resources") or {}
    rss_max = resources.get("rss_bytes_max") if isinstance(resources, dict) else None
    cpu = own.get("cpu_s")
    if cpu is None and isinstance(resources, dict) and resources.get("cpu_percent_mean") is not None:
        cpu = float(resources["cpu_percent_mean"]) / 100.0 * float(resources.get("span_s") or 0.0)
    stripped = snapshot.to_dict()
    if isinstance(stripped.get("sections"), dict):
        stripped["sections"] = {k: v for k, v in stripped["sections"].items() if k != SECTION}
    return {
        "pid": meta.get("pid"),
        "ppid": own.get("ppid"),
        "host": own.get("host"),
        "name": "MainProcess" if main else str(meta.get("command") or source),
        "argv": list(meta.get("argv") or []),
        "start_method": "run" if main else "run (merged)",
        "started_wall": snapshot.started_wall,
        "started_ns": snapshot.started_ns,
        "state": "main" if main else "ended",
        "exit_code": code,
        "exit_text": "" if status is None else (str(status) if main else exit_words(code)),
        "cpu_s": float(cpu or 0.0),
        "peak_rss_bytes": int(own.get("peak_rss_bytes") or rss_max or 0),
        "source": source,
        "report": None if main else stripped,
    }
