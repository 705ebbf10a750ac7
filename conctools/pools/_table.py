"""The ``pools`` section: every kept pool's counters and findings as JSON-able rows."""

from __future__ import annotations

import os
import time

from conctools._typing import Any
from conctools.events import Frame
from conctools.pools._state import REPEAT_MIN, listed, registry_mutex, threshold_ns
from conctools.recorder import Histogram


def pool_table() -> dict[str, Any]:
    """The ``pools`` section: JSON-able rows (see ``docs/report-schema.md``)."""
    with registry_mutex:
        states = list(listed)
    pools: list[dict[str, Any]] = []
    blame: list[dict[str, Any]] = []
    longest: list[dict[str, Any]] = []
    holders: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []
    for st in states:
        with st.mutex:
            if not st.semaphore and st.returns == 0:
                continue  # a channel (or a pool nobody gave back to yet): not a pool
            # An exhaustion still going on (a hang's report, a snapshot mid-run) counts up to now.
            ongoing = time.monotonic_ns() - st.episode_start_ns if st.waiters > 0 else 0
            worst = st.longest
            if ongoing and (worst is None or ongoing > worst["duration_ns"]):
                holders_now, capacity_now, held_now = st.episode_snapshot or ((), 0, 0)
                worst = {
                    "start_ns": st.episode_start_ns,
                    "duration_ns": ongoing,
                    "capacity": capacity_now,
                    "held": held_now,
                    "waits": st.episode_waits,
                    "max_waiters": st.episode_max,
                    "holders": holders_now,
                }
            st._sync_hist()
            hist = Histogram()
            hist.merge(st.wait_hist)
            name = st.display_name
            obj = st.ref() if st.ref is not None else None
            row = {
                "pool": name,
                "kind": st.kind,
                "items": st.items,
                "created_at": st.created_at,
                "takes": st.takes,
                "returns": st.returns,
                "waits": st.waits,
                "waited_s": hist.total_ns / 1e9,
                "wait_p50_s": hist.percentile_ns(0.5) / 1e9,
                "wait_p99_s": hist.percentile_ns(0.99) / 1e9,
                "wait_max_s": hist.max_ns / 1e9,
                "exhausted_s": (st.exhausted_ns + ongoing) / 1e9,
                "episodes": st.episodes + (1 if ongoing else 0),
                "long_episodes": st.long_episodes,
                "longest_s": (worst["duration_ns"] / 1e9) if worst else 0.0,
                "waiting_now": st.waiters,
                "capacity": st.capacity,
                "held_now": sum(len(h) if isinstance(h, list) else 1 for h in st.held.values()),
                "samples": st.samples,
            }
            blame_rows = sorted(st.blame.items(), key=lambda kv: -kv[1][0])
            reps = [(k, dict(v)) for k, v in st.repeats.items()]
        if obj is not None and not st.semaphore:
            try:
                row["available_now"] = int(obj.qsize())
            except Exception:
                pass
        pools.append(row)
        total = sum(v[0] for _, v in blame_rows) or 1
        for (party, state, call, site, function, acquired), (count, line) in blame_rows:
            blame.append(
                {
                    "pool": name,
                    "holders": count,
                    "share": count / total,
                    "party": party,
                    "state": state,
                    "call": call or None,
                    "site": site,
                    "function": function,
                    "acquired_at": acquired,
                    "line": line,
                }
            )
        if worst is not None:
            longest.append(
                {
                    "pool": name,
                    "start_ns": worst["start_ns"],
                    "duration_s": worst["duration_ns"] / 1e9,
                    "capacity": worst["capacity"],
                    "held": worst["held"],
                    "waits": worst["waits"],
                    "max_waiters": worst["max_waiters"],
                }
            )
            for h in worst["holders"]:
                holders.append(
                    {
                        "pool": name,
                        "who": h.who,
                        "party": h.party,
                        "state": h.state,
                        "call": h.call,
                        "site": h.site,
                        "function": h.function,
                        "line": h.line,
                        "acquired_at": h.acquired_at,
                        "held_s": h.held_s,
                    }
                )
        for _sig, entry in reps:
            stack: tuple[Frame, ...] = entry["stack"]
            repeats.append(
                {
                    "pool": name,
                    "runs": entry["runs"],
                    "max_run": entry["max_run"],
                    "who": entry["who"],
                    "loop_frame": entry.get("loop_frame", 0),
                    "site": _loop_site(stack, entry.get("loop_frame", 0)),
                    "stack": [
                        {"filename": f.filename, "lineno": f.lineno, "function": f.function, "line": f.line}
                        for f in stack
                    ],
                }
            )
    return {
        "threshold_s": threshold_ns[0] / 1e9,
        "repeat_min": REPEAT_MIN,
        "pools": pools,
        "blame": blame,
        "longest": longest,
        "holders": holders,
        "repeats": repeats,
    }


def _loop_site(stack: tuple[Frame, ...], index: int) -> str:
    """``app.py:362 in list_orders``: the frame that loops, the line to look at."""
    if not stack:
        return "?"
    f = stack[index] if 0 <= index < len(stack) else stack[0]
    return f"{os.path.basename(f.filename)}:{f.lineno} in {f.function}"
