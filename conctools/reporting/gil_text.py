"""The GIL in words: the bottleneck verdict (priority 5, the report's first lines) and the
"CPU-bound threads" section (priority 46), from the ``"gil"`` section that
:mod:`conctools.gil` publishes.

Pure: a snapshot (or the section's dict) in, text out. The section speaks only when the GIL
cost the program something (threads wanted it at the same time for a while, and waited for it);
otherwise it stays silent, so I/O-bound programs, idle pools and C code that releases the GIL
never get advice they do not need.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from conctools._units import format_duration
from conctools.events import SlowCallbackEvent
from conctools.recorder import Snapshot
from conctools.reporting._table import table

__all__ = [
    "PRIORITY",
    "VERDICT_PRIORITY",
    "Breakdown",
    "advice",
    "breakdown",
    "console_text",
    "format_gil",
    "format_verdict",
    "gil_data",
    "gil_section",
    "headline",
    "html_lines",
    "matters",
    "speedup",
    "verdict_section",
]

PRIORITY = 46  # after the lock table: where the time went, not a failure
VERDICT_PRIORITY = 5  # right under the header

# The section speaks when threads wanted the GIL at the same time for at least this long (and for
# a tenth of the run), and waited for it at least this long in total.
MIN_CONTENDED_S = 0.2
MIN_CONTENDED_SHARE = 0.1
MIN_WAIT_S = 0.2
MIN_SPEEDUP = 1.15
# A thread gets a row when it waited this long for the GIL, or wanted it this share of its time.
SHOW_WAIT_S = 0.05
SHOW_SHARE = 0.1
# Threads waited this share of their time for a CPU (not the GIL): the machine was busy.
BUSY_SHARE = 0.2  # "up to N x faster" is said only from here
# The verdict needs this much working thread time and this many samples to judge, and working
# thread time of at least this share of the run: a process that only waited for others (a parent
# joining its child) is not I/O-bound because starting the child took it 80 ms on a busy machine.
MIN_VERDICT_THREAD_S = 0.05
MIN_VERDICT_SAMPLES = 5
MIN_VERDICT_SHARE = 0.05

Breakdown = dict[str, float]
CATEGORIES = (
    ("python", "running Python"),
    ("gil", "waiting for the GIL"),
    ("native", "C code without the GIL"),
    ("io", "I/O or sleep"),
    ("sync", "locks/queues/futures"),
    ("loop", "blocked event loop"),
    ("cpu", "waiting for a CPU (busy machine)"),
)


def gil_data(snapshot: Snapshot) -> dict[str, Any] | None:
    """The ``gil`` section of ``snapshot`` when it has the expected shape, else ``None``."""
    data = snapshot.sections.get("gil")
    if isinstance(data, dict) and isinstance(data.get("threads"), list):
        return data
    return None


def _f(data: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    value = data.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _threads(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [t for t in data.get("threads") or () if isinstance(t, dict)]


def matters(data: Mapping[str, Any]) -> bool:
    """True when the GIL cost this run something worth a section (see the thresholds above)."""
    wall = _f(data, "wall_s")
    if not data.get("gil_enabled", True):
        together = _f(data, "running_together_s")
        return together >= MIN_CONTENDED_S and together >= MIN_CONTENDED_SHARE * wall
    contended = _f(data, "contended_s")
    return (
        contended >= MIN_CONTENDED_S
        and contended >= MIN_CONTENDED_SHARE * wall
        and _f(data, "gil_wait_s") >= MIN_WAIT_S
    )


def _concurrency(data: Mapping[str, Any]) -> dict[int, float]:
    raw = data.get("concurrency")
    out: dict[int, float] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            try:
                n, t = int(k), float(v)
            except (TypeError, ValueError):
                continue
            if n >= 2 and t > 0 and math.isfinite(t):
                out[n] = t
    return out


def speedup(data: Mapping[str, Any]) -> float:
    """How much faster the run could have been with the contended Python work spread over the
    cores (Amdahl: the time when n threads wanted the GIL shrinks n-fold, at most cores-fold)."""
    wall = _f(data, "wall_s")
    cores = max(1, int(_f(data, "cores", 1)))
    conc = _concurrency(data)
    if wall <= 0 or not conc:
        return 1.0
    contended = sum(conc.values())
    shrunk = sum(t / min(n, cores) for n, t in conc.items())
    return wall / max(1e-9, wall - min(wall, contended) + shrunk)


def headline(data: Mapping[str, Any]) -> str:
    """The section's first sentence, e.g. "4 threads wanted the GIL at the same time for 740 ms;
    the program used 1.0 of 2 cores." """
    cores = max(1, int(_f(data, "cores", 1)))
    used = f"the program used {_f(data, 'parallelism'):.1f} of {cores} core{'s' if cores != 1 else ''}"
    if not data.get("gil_enabled", True):
        together = format_duration(_f(data, "running_together_s"))
        return f"the GIL is off (free-threaded build): threads ran Python at the same time for {together}; {used}."
    conc = _concurrency(data)
    contended = format_duration(_f(data, "contended_s"))
    if not conc:
        return f"threads wanted the GIL at the same time for {contended}; {used}."
    mode = max(conc, key=lambda n: (conc[n], n))
    mostly = conc[mode] >= 0.6 * sum(conc.values()) or len(conc) == 1
    who = f"{mode} threads" if mostly else f"2 to {max(conc)} threads"
    return f"{who} wanted the GIL at the same time for {contended}; {used}."


def _culprit(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The function the threads that wanted the GIL run (weighted by that time), and their pool."""
    weight: dict[str, float] = {}
    pools: dict[str, str | None] = {}
    # The threads that ran Python or waited to: the one hogging the GIL is as much the culprit as
    # the ones waiting behind it.
    for t in _threads(data):
        if _f(t, "python_s") + _f(t, "gil_wait_s") <= 0:
            continue
        entry = t.get("entry")
        if not isinstance(entry, str) or not entry:
            hot = t.get("hot") or []
            entry = hot[0].get("function") if hot and isinstance(hot[0], dict) else None
        if not isinstance(entry, str) or not entry:
            continue
        weight[entry] = weight.get(entry, 0.0) + _f(t, "gil_wait_s") + _f(t, "python_s")
        pool = t.get("pool")
        pools.setdefault(entry, pool if isinstance(pool, str) else None)
    if not weight:
        return None, None
    entry = max(weight, key=lambda k: (weight[k], k))
    return entry, pools.get(entry)


def advice(data: Mapping[str, Any]) -> str:
    """What to do about it, in plain words, naming the function and the kind of thread pool."""
    if not data.get("gil_enabled", True):
        return "Threads run Python code in parallel on this build; no GIL to wait for."
    entry, pool = _culprit(data)
    cores = max(1, int(_f(data, "cores", 1)))
    gain = speedup(data)
    faster = f" (up to {gain:.1f}x faster here)" if gain >= MIN_SPEEDUP and cores > 1 else ""
    what = f"`{_clean(entry, 60)}`" if entry else "the CPU-bound work"
    lesson = "CPU-bound Python code in threads runs one thread at a time"
    if cores <= 1:
        return (
            f"{lesson}, and this process may use only 1 core (its CPU affinity), so processes would not"
            " make it faster either: make the code faster, or give the program more cores."
        )
    if pool == "asyncio":
        return (
            f"{lesson}: {what} runs in the event loop's default thread pool (asyncio.to_thread or"
            " run_in_executor(None, ...)), and to_thread does not make CPU-bound code parallel: run it with"
            f" loop.run_in_executor(ProcessPoolExecutor(), ...){faster}, or use code that releases the GIL."
        )
    if pool == "ThreadPoolExecutor":
        return (
            f"{lesson}: {what} runs in a ThreadPoolExecutor; a ProcessPoolExecutor has the same interface"
            f"{faster}, or use code that releases the GIL."
        )
    return f"{lesson}: run {what} in a ProcessPoolExecutor{faster}, or use code that releases the GIL."


def _clean(value: object, width: int = 200) -> str:
    """A name from the program, made safe for a terminal (control and bidi characters escaped)."""
    text = str(value)
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= width else text[: width - 1] + "…"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"


def _short(filename: str) -> str:
    parts = filename.replace("\\", "/").rsplit("/", 2)
    return "/".join(parts[-2:]) if len(parts) > 2 else filename


def _hot(t: Mapping[str, Any]) -> list[tuple[str, int, str, str]]:
    """(site, samples, function, line) of a thread's hottest lines."""
    out = []
    for h in t.get("hot") or ():
        if not isinstance(h, dict):
            continue
        samples = int(_f(h, "python_samples")) + int(_f(h, "native_samples"))
        site = _clean(f"{_short(str(h.get('filename', '?')))}:{h.get('lineno', '?')}")
        out.append((site, samples, _clean(h.get("function", ""), 60), _clean(h.get("line", ""), 120)))
    return out


def _hot_cell(t: Mapping[str, Any]) -> str:
    hot = _hot(t)
    if not hot:
        return "-"
    total = sum(s for _, s, _, _ in hot) or 1
    return f"{hot[0][0]} ({100 * hot[0][1] / total:.0f}%)"


def _busy(threads: list[dict[str, Any]]) -> str | None:
    """A caveat when the threads also waited for a CPU: other programs used the cores too."""
    wall = sum(_f(t, "wall_s") for t in threads)
    queued = sum(_f(t, "runqueue_s") for t in threads)
    if wall <= 0 or queued < BUSY_SHARE * wall:
        return None
    return (
        f"The machine was busy: these threads also waited {format_duration(queued)} for a CPU"
        f" ({100 * queued / wall:.0f}% of their time), so processes would gain less than the cores suggest."
    )


def _hottest_lines(threads: list[dict[str, Any]]) -> list[str]:
    """The hottest lines over the threads shown, each with the threads that ran it."""
    sites: dict[tuple[str, str, str], list[Any]] = {}
    for t in threads:
        for site, samples, function, text in _hot(t):
            entry = sites.setdefault((site, function, text), [0, []])
            entry[0] += samples
            if len(entry[1]) < 4:
                entry[1].append(_clean(t.get("name", "?"), 40))
            elif len(entry[1]) == 4:
                entry[1].append("...")
    if not sites:
        return []
    total = sum(v[0] for v in sites.values()) or 1
    out = ["  hottest lines (sampled while threads ran Python, waited for the GIL or ran C code):"]
    for (site, function, text), (samples, names) in sorted(sites.items(), key=lambda kv: -kv[1][0])[:5]:
        out.append(f"    {site} in {function} ({100 * samples / total:.0f}%; {', '.join(names)})")
        if text:
            out.append(f"        {text}")
    return out


def format_gil(data: Mapping[str, Any], *, brief: bool = False, force: bool = False) -> str | None:
    """The "CPU-bound threads" section from a ``gil`` section dict; ``None`` when it does not
    matter (``force`` renders it anyway, for the console)."""
    if not force and not matters(data):
        return None
    title = "CPU-bound threads: " + headline(data)
    lines = [title, "  " + advice(data)]
    rows_data = [
        t
        for t in _threads(data)
        if _f(t, "wall_s") > 0
        and (
            _f(t, "gil_wait_s") >= SHOW_WAIT_S
            or _f(t, "gil_wait_s") + _f(t, "python_s") >= SHOW_SHARE * _f(t, "wall_s")
        )
    ]
    limit = 8 if brief else 40
    if rows_data:
        # A column for the time spent waiting for a CPU only when the machine was busy.
        busy_column = any(_f(t, "cpu_wait_s") >= 0.05 * _f(t, "wall_s") for t in rows_data[:limit])
        rows = []
        for t in rows_data[:limit]:
            wall = _f(t, "wall_s")
            name = _clean(t.get("name", "?"), 40)
            if t.get("pool") and not brief:
                name += f" [{_clean(t['pool'], 30)}]"
            cells = [
                name,
                _clean(t.get("entry") or "-", 30),
                format_duration(wall),
                format_duration(_f(t, "cpu_s")),
                _pct(_f(t, "python_s"), wall),
                f"{_pct(_f(t, 'gil_wait_s'), wall)} ({format_duration(_f(t, 'gil_wait_s'))})",
                _pct(_f(t, "native_s"), wall),
                _pct(_f(t, "io_s") + _f(t, "sleep_s"), wall),
                _pct(_f(t, "sync_s") + _f(t, "idle_s"), wall),
            ]
            if busy_column:
                cells.append(_pct(_f(t, "cpu_wait_s"), wall))
            rows.append((*cells, _hot_cell(t)))
        headers = ["thread", "runs", "wall", "CPU", "ran Python", "waited for the GIL", "C code", "I/O, sleep", "waits"]
        if busy_column:
            headers.append("for a CPU")
        headers.append("hottest line")
        lines.append(table(headers, rows, right=tuple(range(2, len(headers) - 1))))
        if len(rows_data) > limit:
            lines.append(f"  ... {len(rows_data) - limit} more threads")
    if not brief:
        lines += _hottest_lines(rows_data[:limit])
    busy = _busy(rows_data)
    if busy:
        lines.append("  " + busy)
    lines.append(
        f"  (sampled every {format_duration(_f(data, 'interval_s', 0.01))} or so, {int(_f(data, 'samples'))} samples;"
        " GIL waits are estimates, see the README)"
    )
    return "\n".join(lines)


def gil_section(snapshot: Snapshot, brief: bool) -> str | None:
    """The "CPU-bound threads" section of the text report, or ``None`` when it does not matter."""
    data = gil_data(snapshot)
    return format_gil(data, brief=brief) if data is not None else None


def _stall_total(snapshot: Snapshot | None) -> float:
    if snapshot is None:
        return 0.0
    section = snapshot.sections.get("slow_callbacks")
    if isinstance(section, dict):
        sites = section.get("sites") or []
        return float(sum(_f(s, "total_s") for s in sites if isinstance(s, dict)))
    return float(sum(e.duration_s for e in snapshot.of_kind(SlowCallbackEvent)))


def breakdown(data: Mapping[str, Any], snapshot: Snapshot | None = None) -> Breakdown:
    """Where the program's thread time went, summed over its threads (seconds per category of
    :data:`CATEGORIES`, plus ``idle``: waiting for work or for other threads, which is no bottleneck)."""
    out: Breakdown = {key: 0.0 for key, _ in CATEGORIES}
    out["idle"] = 0.0
    # A loop thread's time while a callback blocked it: running Python, in C code, or in a blocking
    # call (a time.sleep, a synchronous query) or a threading wait made on the loop.
    on_loop = {"python": 0.0, "native": 0.0, "io": 0.0, "sync": 0.0}
    for t in _threads(data):
        out["python"] += _f(t, "python_s")
        out["gil"] += _f(t, "gil_wait_s")
        out["native"] += _f(t, "native_s")
        out["cpu"] += _f(t, "cpu_wait_s")
        out["io"] += _f(t, "io_s") + _f(t, "sleep_s")
        out["sync"] += _f(t, "sync_s")
        out["idle"] += _f(t, "idle_s")
        if t.get("loop"):
            on_loop["python"] += _f(t, "python_s")
            on_loop["native"] += _f(t, "native_s")
            on_loop["io"] += _f(t, "io_s") + _f(t, "sleep_s")
            on_loop["sync"] += _f(t, "sync_s")
    blocked = min(_stall_total(snapshot), sum(on_loop.values()))
    if blocked > 0:
        left = blocked
        for key in ("python", "native", "io", "sync"):  # what a blocked loop most likely did, first
            taken = min(left, on_loop[key], out[key])
            out[key] -= taken
            left -= taken
        out["loop"] = blocked - left
    return out


def format_verdict(data: Mapping[str, Any], snapshot: Snapshot | None = None) -> str | None:
    """The bottleneck verdict: one line saying what bounds the program and what helps, then where
    its thread time went; ``None`` when the run was too short or idle to judge."""
    if int(_f(data, "samples")) < MIN_VERDICT_SAMPLES:
        return None
    b = breakdown(data, snapshot)
    # Waiting for a CPU says that other programs kept the cores busy, not what bounds this one:
    # it is shown, but the verdict is taken on the rest.
    work = sum(b[key] for key, _ in CATEGORIES if key != "cpu")
    if work < max(MIN_VERDICT_THREAD_S, MIN_VERDICT_SHARE * _f(data, "wall_s")):
        return None
    total = work + b["cpu"]
    cores = max(1, int(_f(data, "cores", 1)))
    used = f"the program used {_f(data, 'parallelism'):.1f} of {cores} core{'s' if cores != 1 else ''}"
    share = {key: b[key] / work for key, _ in CATEGORIES}
    if data.get("gil_enabled", True) and matters(data) and share["gil"] >= 0.2:
        line = (
            f"CPU-bound Python code in threads: use processes; {_pct(b['gil'], total)} of thread time waited"
            f" for the GIL and {used} (see CPU-bound threads)."
        )
    elif share["loop"] >= 0.3 and share["loop"] >= max(share["io"], share["python"]):
        line = (
            f"a blocked event loop: callbacks held it for {format_duration(b['loop'])}; move blocking calls off"
            " the loop (asyncio.to_thread for blocking I/O, a process pool for CPU-bound code; see Slow callbacks)."
        )
    elif share["python"] + share["gil"] >= 0.5:
        line = (
            f"CPU-bound in Python: {_pct(b['python'] + b['gil'], total)} of thread time ran Python code and {used};"
            " a faster algorithm helps, or processes if the work splits into independent parts."
        )
    elif share["native"] >= 0.5:
        line = (
            f"CPU-bound in C code that releases the GIL: {_pct(b['native'], total)} of thread time;"
            f" threads run it in parallel ({used})."
        )
    elif share["io"] >= 0.5:
        line = (
            f"I/O-bound: threads or asyncio are the right tool; {_pct(b['io'], total)} of thread time"
            " waited on I/O or sleeps."
        )
    elif share["sync"] >= 0.5:
        line = (
            f"waiting on locks, queues and futures: {_pct(b['sync'], total)} of thread time"
            " (see the lock tables for who held them)."
        )
    else:
        top = sorted((kv for kv in CATEGORIES if kv[0] != "cpu"), key=lambda kv: -b[kv[0]])[:2]
        line = (
            "mixed: " + ", ".join(f"{label} {_pct(b[key], total)}" for key, label in top) + f" of thread time; {used}."
        )
    shown = [(key, label) for key, label in CATEGORIES if b[key] >= 0.005 * total or key not in ("loop", "cpu")]
    parts = ", ".join(f"{label} {_pct(b[key], total)}" for key, label in shown)
    counted = [t for t in _threads(data) if _f(t, "wall_s") > _f(t, "idle_s") + _f(t, "unknown_s")]
    detail = f"  where thread time went ({len(counted)} threads, {format_duration(total)}): {parts}"
    if b["idle"] > 0:
        detail += f"; not counted: {format_duration(b['idle'])} idle (joins, idle pool workers, waits for futures)"
    if b["cpu"] >= BUSY_SHARE * total:
        detail += "\n  the machine was busy: other programs kept the cores, and the threads waited for a CPU"
    return "Bottleneck: " + line + "\n" + detail


def verdict_section(snapshot: Snapshot, brief: bool) -> str | None:
    """The bottleneck verdict at the top of the text report."""
    data = gil_data(snapshot)
    return format_verdict(data, snapshot) if data is not None else None


def console_text(data: Mapping[str, Any] | None) -> str:
    """What the console's ``gil`` command prints: the verdict and the full section, whether or not
    it matters (a person asked), and a note when there is nothing to measure with."""
    if not data:
        return "No GIL measurement: the GIL monitor is not running and could not run."
    if data.get("method") == "none":
        return (
            "Per-thread states are not readable here (no /proc): "
            f"the program used {_f(data, 'parallelism'):.1f} of {int(_f(data, 'cores', 1))} cores."
        )
    parts = []
    verdict = format_verdict(data)
    if verdict:
        parts.append(verdict)
    section = format_gil(data, force=True)
    if section and not matters(data):
        section = section.replace(
            "CPU-bound threads: ", "CPU-bound threads (no GIL contention worth acting on): ", 1
        ).replace("\n  " + advice(data), "", 1)
    if section:
        parts.append(section)
    running = " (the monitor is running)" if data.get("running") else ""
    parts.append(f"measured over {format_duration(_f(data, 'wall_s'))}{running}")
    return "\n\n".join(parts)


def html_lines(snapshot: Snapshot) -> dict[str, Any] | None:
    """The verdict and the section for the HTML report, as lines of text (``None``: no data)."""
    data = gil_data(snapshot)
    if data is None:
        return None
    verdict = format_verdict(data, snapshot)
    section = format_gil(data)
    return {
        "verdict": verdict.splitlines() if verdict else [],
        "section": section.splitlines() if section else [],
    }
