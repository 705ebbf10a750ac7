"""The pools section of the text report (priority 42): who held a pool's items while others waited.

A pure function of the ``pools`` section that :func:`conctools.pools.track_pools` publishes.
Each pool that was waited on gets one headline in the shape a person asks for::

    pool 'db' exhausted for 2.30 s: 10 of 10 connections held; 8 by tasks awaiting
    `fetch_upstream()` at app.py:412 (acquired at app.py:405), 2 by tasks awaiting `to_thread()`
    at db.py:80 (acquired at app.py:405); 37 waits, p99 1.90 s

then the tally of what the holders were doing each time conctools looked, the longest
exhaustion with every holder, and runs of takes from one line by one task (the N+1 pattern).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from conctools._units import format_duration
from conctools.recorder import Snapshot
from conctools.reporting._table import table

__all__ = [
    "doing_words",
    "group_words",
    "n_plus_one_lines",
    "pool_findings",
    "pool_headline",
    "pools_section",
    "share_words",
]


def _clean(text: object) -> str:
    """Names and source lines come from the program: control characters cannot reach the terminal."""
    s = str(text)
    return s if s.isprintable() else repr(s)[1:-1]


def _num(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) else 0.0


def _rows(section: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(section, dict):
        return []
    value = section.get(key)
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []


def doing_words(holder: dict[str, Any], one: bool = True, function: bool = False) -> str:
    """What a holder was doing: ``awaiting `fetch_upstream()` at app.py:412 (acquired at app.py:405)``
    (``function=True``: ``at app.py:412 in create_order``)."""
    state = str(holder.get("state") or "unknown")
    call = holder.get("call")
    site = _clean(holder.get("site") or "?")
    if function and holder.get("function") and holder.get("function") != "?":
        site += f" in {_clean(holder['function'])}"
    if state == "awaiting":
        text = f"awaiting `{_clean(call)}` at {site}" if call else f"suspended at {site}"
    elif state == "calling":
        text = f"in `{_clean(call)}` at {site}"
    elif state == "running":
        text = f"running at {site}"
    elif state in ("finished", "exited"):
        text = f"{state} without giving {'it' if one else 'them'} back"
    else:
        text = "(not known what it does)" if one else "(not known what they do)"
    acquired = holder.get("acquired_at")
    if acquired:
        text += f" (acquired at {_clean(acquired)})"
    return text


def group_words(count: int, holder: dict[str, Any], joiner: str = "by", function: bool = False) -> str:
    """``8 by tasks awaiting `fetch_upstream()` at app.py:412 (acquired at app.py:405)``;
    ``joiner="were"``: ``8 were tasks awaiting ...``."""
    party = str(holder.get("party") or "task")
    one = count == 1
    article = "a " if joiner else ""  # "1 by a task ...", but "1 task ..." in a tally
    who = (f"{article}{party}" if one else f"{party}s") if party in ("task", "thread") else _clean(party)
    if holder.get("state") in ("finished", "exited"):
        who += " that"
    if joiner == "were" and one:
        joiner = "was"
    return f"{count} {joiner} {who} {doing_words(holder, one, function)}".replace("  ", " ")


def share_words(share: float, holder: dict[str, Any]) -> str:
    """``80% tasks awaiting `fetch_upstream()` at app.py:412 (acquired at app.py:405)``."""
    party = str(holder.get("party") or "task")
    who = f"{party}s" if party in ("task", "thread") else _clean(party)
    if holder.get("state") in ("finished", "exited"):
        who += " that"
    return f"{100 * share:.0f}% {who} {doing_words(holder, False)}"


def _grouped(holders: Iterable[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for h in holders:
        key = (h.get("party"), h.get("state"), h.get("call"), h.get("site"), h.get("acquired_at"))
        entry = groups.setdefault(key, [0, h])
        entry[0] += int(_num(h, "holders")) if "holders" in h else 1
    return sorted(((n, h) for n, h in groups.values()), key=lambda g: -g[0])


def pool_headline(
    pool: dict[str, Any],
    longest: dict[str, Any] | None,
    holders: Sequence[dict[str, Any]],
    blame: Sequence[dict[str, Any]] = (),
) -> str:
    """One sentence: how long the pool was exhausted, who held its items and where, who waited.

    Who held them comes from every look at the holders while someone waited (``blame``, the
    whole run); without those, from the last look during the longest exhaustion (``holders``).
    """
    name = _clean(pool.get("pool", "?"))
    items = _clean(pool.get("items") or "items")
    exhausted = _num(pool, "exhausted_s")
    text = f"pool {name!r} exhausted for {format_duration(exhausted)}"
    episodes = int(_num(pool, "episodes"))
    if episodes > 1:
        text += f" ({episodes} times, longest {format_duration(_num(pool, 'longest_s'))})"
    waiting = int(_num(pool, "waiting_now"))
    if waiting:
        text += f" (still: {waiting} waiting now)"
    if longest is not None and (holders or blame):
        held = int(_num(longest, "held")) or len(holders)
        capacity = max(int(_num(longest, "capacity")), held)
        text += f": {held} of {capacity} {items} held"
    groups = _grouped(blame)
    if groups:
        seen = sum(n for n, _ in groups)
        words = ", ".join(share_words(n / seen, h) for n, h in groups[:3])
        text += f"; holders seen while it was exhausted: {words}"
    elif holders:
        text += "; " + ", ".join(group_words(n, h) for n, h in _grouped(holders)[:3])
    waits = int(_num(pool, "waits"))
    text += f"; {waits} wait{'s' if waits != 1 else ''}"
    if waits > waiting:  # the percentiles are of the waits that ended
        text += f", p99 {format_duration(_num(pool, 'wait_p99_s'))}"
    return text


def _by_pool(section: Any, key: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in _rows(section, key):
        out.setdefault(str(row.get("pool")), []).append(row)
    return out


def pool_findings(section: Any) -> list[str]:
    """One headline per pool whose longest exhaustion reached the section's threshold, worst first."""
    threshold = _num(section, "threshold_s") if isinstance(section, dict) else 0.0
    longest = {str(r.get("pool")): r for r in _rows(section, "longest")}
    holders, blame = _by_pool(section, "holders"), _by_pool(section, "blame")
    lines = []
    for pool in sorted(_rows(section, "pools"), key=lambda p: -_num(p, "exhausted_s")):
        if _num(pool, "longest_s") < threshold or not _num(pool, "waits"):
            continue
        key = str(pool.get("pool"))
        lines.append(pool_headline(pool, longest.get(key), holders.get(key, []), blame.get(key, [])))
    return lines


def _frame_site(f: dict[str, Any]) -> str:
    filename = str(f.get("filename", "?"))
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return f"{_clean(base)}:{f.get('lineno', 0)} in {_clean(f.get('function', '?'))}"


def n_plus_one_lines(section: Any) -> list[str]:
    """One line per N+1 pattern: the pool, how many takes in a row, and the line they came from."""
    items = {str(p.get("pool")): str(p.get("items") or "items") for p in _rows(section, "pools")}
    out = []
    for r in sorted(_rows(section, "repeats"), key=lambda r: -_num(r, "max_run")):
        stack = [f for f in r.get("stack", []) if isinstance(f, dict)]
        head = int(_num(r, "loop_frame")) if stack else -1  # the frame that loops, as the producer found it
        head = head if 0 <= head < len(stack) else (0 if stack else -1)
        where = _frame_site(stack[head]) if head >= 0 else "?"
        via = [_frame_site(f) for f in stack[:head]]
        runs = int(_num(r, "runs"))
        pool = str(r.get("pool", "?"))
        out.append(
            f"N+1 pattern: {_clean(r.get('who', 'a task'))} took {int(_num(r, 'max_run'))} "
            f"{_clean(items.get(pool, 'items'))} in a row from pool {_clean(pool)!r}, one after another, "
            f"at {where}" + (f" (via {', '.join(via)})" if via else "") + f"; {runs} such run{'s' if runs != 1 else ''}"
        )
    return out


def pools_section(snapshot: Snapshot, brief: bool) -> str | None:
    """The pools table, each pool's headline and blame, the longest exhaustion, the N+1 runs."""
    section = snapshot.sections.get("pools")
    pools = sorted(_rows(section, "pools"), key=lambda p: (-_num(p, "exhausted_s"), -_num(p, "waits")))
    repeats = _rows(section, "repeats")
    waited = [p for p in pools if _num(p, "waits")]
    if not waited and not repeats:
        return None
    lines = [f"Pools ({len(waited)} waited on; who held the items while others waited)"]
    if waited:
        rows = [
            (
                _clean(p.get("pool", "?")),
                _clean(p.get("kind", "?")),
                int(_num(p, "capacity")),
                int(_num(p, "takes")),
                int(_num(p, "waits")),
                format_duration(_num(p, "waited_s")),
                format_duration(_num(p, "wait_p50_s")),
                format_duration(_num(p, "wait_p99_s")),
                format_duration(_num(p, "wait_max_s")),
                f"{format_duration(_num(p, 'exhausted_s'))} ({int(_num(p, 'episodes'))})",
                format_duration(_num(p, "longest_s")),
            )
            for p in waited[: 10 if brief else 50]
        ]
        lines.append(
            table(
                ("pool", "kind", "size", "takes", "waits", "waited", "wait p50", "p99", "max", "exhausted", "longest"),
                rows,
                right=(2, 3, 4, 5, 6, 7, 8, 9, 10),
            )
        )
    longest = {str(r.get("pool")): r for r in _rows(section, "longest")}
    holders, blame = _by_pool(section, "holders"), _by_pool(section, "blame")
    for p in waited[: 3 if brief else 20]:
        key = str(p.get("pool"))
        lines += ["", "  " + pool_headline(p, longest.get(key), holders.get(key, []), blame.get(key, []))]
        tally = blame.get(key, [])
        if tally and not brief:
            looks, total = int(_num(p, "samples")), sum(int(_num(b, "holders")) for b in tally)
            items = _clean(p.get("items") or "items")
            lines.append(f"    who held its {items} while others waited ({looks} looks, {total} holders seen):")
            for b in tally[:8]:
                share = f"{100 * _num(b, 'share'):.0f}%".rjust(4)
                lines.append(f"    {share}  {group_words(int(_num(b, 'holders')), b, '', function=True)}")
                if b.get("line"):
                    lines.append(f"             {_clean(b['line'])}")
        worst = longest.get(key)
        if worst is not None and not brief:
            lines.append(
                f"    longest exhaustion: {format_duration(_num(worst, 'duration_s'))}, "
                f"{int(_num(worst, 'waits'))} waits (at most {int(_num(worst, 'max_waiters'))} at once); "
                "holders at the last look:"
            )
            shown = holders.get(key, [])
            for h in shown[:10]:
                held = h.get("held_s")
                held_words = f", held {format_duration(float(held))}" if isinstance(held, (int, float)) else ""
                lines.append(f"      {_clean(h.get('who', '?'))}: {doing_words(h)}{held_words}")
            if len(shown) > 10:
                lines.append(f"      ... {len(shown) - 10} more")
    for line in n_plus_one_lines(section)[: 3 if brief else 16]:
        lines += ["", "  " + line]
    return "\n".join(lines)
