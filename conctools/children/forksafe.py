"""A forked child starts with conctools' own locks free and its parent's threads forgotten.

``fork()`` copies every lock as it was: one that a parent thread held at that instant stays
held forever in the child, where that thread does not exist. The child's first report (or
first traced lock) would then wait for it. Right after the fork, in the child, every plain
lock conctools uses internally is re-initialised (``_at_fork_reinit``, as the standard library
does for its own), and the registry forgets the waits of the parent's threads.
"""

from __future__ import annotations

import _thread
import sys
import threading

from conctools._typing import Any

__all__ = ["forget_parent_sections", "own_lock_table", "reinit_after_fork"]

_MODULE_LOCKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("conctools.lockorder", ("_mutex",)),
    ("conctools.locks", ("_stats_mutex", "_patch_mutex")),
    ("conctools.loopmon.stats", ("_stats_lock",)),
    ("conctools.loopmon.monitor", ("_active_lock",)),
    ("conctools.loopmon.hooks", ("_hook_lock",)),
    ("conctools.loopmon.blocking", ("_blocking_lock",)),
    ("conctools._threadstate", ("_calibration_lock",)),  # a fork while the GIL is calibrated
    ("conctools.casualties", ("_lock",)),
    ("conctools.recorder", ("_sinks_anywhere_lock",)),
    ("conctools.pools", ("_patch_mutex",)),
    ("conctools.pools._state", ("registry_mutex",)),
    ("conctools.agent.server", ("_agent_lock",)),
    ("conctools.exporters.otel", ("_active_lock",)),
    ("conctools.profiling", ("_session_lock",)),
    ("conctools.registry", ("_lock",)),
    ("conctools.taskdump", ("_registry_lock",)),
    ("conctools.runner", ("_final_lock",)),
)


def _reinit(lock: Any) -> None:
    method = getattr(lock, "_at_fork_reinit", None)
    if callable(method):
        try:
            method()
        except Exception:
            pass


_PLAIN_RLOCK = type(_thread.RLock())


def reinit_after_fork() -> None:
    """Free conctools' internal locks and drop the parent's threads' waits (in a forked child).

    ``threading`` re-creates its own bookkeeping lock after a fork with ``threading.RLock()``,
    which ``trace_locks()`` has replaced: that lock is made a plain one again (every
    ``threading.enumerate()`` would otherwise count as progress and hide a hang).
    """
    limbo = getattr(threading, "_active_limbo_lock", None)
    if limbo is not None and type(limbo) is not _PLAIN_RLOCK:
        threading._active_limbo_lock = _thread.RLock()  # type: ignore[attr-defined]
    for module_name, names in _MODULE_LOCKS:
        module = sys.modules.get(module_name)
        for name in names:
            _reinit(getattr(module, name, None))
    locks = sys.modules.get("conctools.locks")
    stats = getattr(locks, "_stats", None)
    if isinstance(stats, dict):
        for st in list(stats.values()):
            _reinit(getattr(st, "mutex", None))
    looker = getattr(sys.modules.get("conctools.pools._looker"), "LOOKER", None)
    if looker is not None:  # the pools' thread: its mutex may have been held by it at the fork
        try:
            looker.reset_after_fork()
        except Exception:
            pass
    state_module = sys.modules.get("conctools.pools._state")
    for pool_state in list(getattr(state_module, "listed", ()) or ()):
        _reinit(getattr(pool_state, "mutex", None))
    resources = sys.modules.get("conctools.resources")
    _reinit(getattr(getattr(resources, "_thread_starts", None), "lock", None))
    registry = sys.modules.get("conctools.registry")
    promote = getattr(registry, "promote_waits", None)
    if promote is not None:
        promote()
    waiting = getattr(registry, "_waiting", None)
    if isinstance(waiting, dict):
        me = threading.get_ident()
        for key in [k for k in list(waiting) if isinstance(k, tuple) and k and k[0] != me]:
            waiting.pop(key, None)


_COUNTS = ("acquisitions", "contentions", "timeouts", "wait_total_s", "hold_count")


def own_lock_table(recorder: Any) -> None:
    """Make a forked child's lock table count what the child did only.

    The child inherits its parent's lock statistics: the table is read once right after the
    fork and every later table has those counts taken away (rows with nothing left are
    dropped). Percentiles and maxima are not split: a row's still include the parent's waits.
    """
    sections = getattr(recorder, "_sections", None)
    provider = sections.get("locks") if isinstance(sections, dict) else None
    if provider is None:
        return
    try:
        baseline = {_key(row): row for row in provider()}
    except Exception:
        return

    def child_table() -> list[dict[str, Any]]:
        rows = []
        for row in provider():
            base = baseline.get(_key(row))
            if base is not None:
                row = {**row, **{k: max(0, row.get(k, 0) - base.get(k, 0)) for k in _COUNTS}}
                sites = {s.get("site"): s for s in base.get("hottest_sites") or []}
                row["hottest_sites"] = [
                    {**s, "waits": s.get("waits", 0) - sites.get(s.get("site"), {}).get("waits", 0)}
                    for s in row.get("hottest_sites") or []
                    if s.get("waits", 0) > sites.get(s.get("site"), {}).get("waits", 0)
                ]
            if row.get("acquisitions") or row.get("contentions"):
                rows.append(row)
        return rows

    recorder.add_section("locks", child_table)


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("name"), row.get("kind"), row.get("created_at"))


def forget_parent_sections(recorder: Any) -> None:
    """Drop the sections whose providers are the parent's instruments: its sampler, its profile, its
    loop monitor's aggregates (their locks may have been held by the parent's threads at the fork,
    and their figures are the parent's), and the merge (the run's main process's own). The child's
    instruments publish their own."""
    # (the GIL monitor's section too: its lock may be held by the parent's sampler at the fork; the
    # monitor itself is made inert by conctools.gil's own fork hook, and the child starts its own)
    for section in ("processes", "resources", "profile", "slow_callbacks", "gil"):
        recorder.remove_section(section)
    loopmon = sys.modules.get("conctools.loopmon.stats")
    table = getattr(loopmon, "_stats_by_recorder", None)
    if isinstance(table, dict):
        table.pop(id(recorder), None)
