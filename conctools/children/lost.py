"""A parent stuck on a dead child: a ``multiprocessing.Pool`` waiting for jobs that a dead worker took.

When a pool's worker dies in the middle of a job (killed, crashed, ``os._exit``), the pool
starts a new worker but never runs that job again: ``Pool.map`` and ``AsyncResult.get()``
without a timeout then wait forever, while every worker sits idle. :class:`LostJobsCheck`
recognises it from outside, from facts that cannot be a passing moment:

* a thread of this process waits, without a timeout, on the results of a pool;
* a worker of a pool of this process died abnormally while that wait was on (its parent reaped
  it: killed by a signal, or a non-zero exit, not stopped by the pool itself);
* every current worker of that pool is idle (its last record shows it waiting for a job,
  written after the death), the pool's task queue and its two pipes are empty;

and all of it stays true for ``timeout_s``. It reads the pool's attributes statically (never
runs the program's code) and only when such a wait exists.
"""

from __future__ import annotations

import time
from types import FrameType

from conctools._records import record
from conctools._typing import Any
from conctools.children.waits import pool_of_wait

__all__ = ["LostJobs", "LostJobsCheck"]


@record(kw_only=True)
class LostJobs:
    """A wait that will never end: the jobs it waits for were taken by a worker that died."""

    thread_id: int
    dead: dict[str, Any]  # the dead worker's reaping: pid, exit_code, name, at_wall
    workers: tuple[int, ...]  # the pool's current (idle) workers


def _static(obj: Any, name: str) -> Any:
    from conctools.children.waits import _static as static

    return static(obj, name)


def _readable(queue: Any) -> bool | None:
    """Whether a ``multiprocessing.SimpleQueue``'s pipe has data waiting (``None``: cannot tell)."""
    reader = _static(queue, "_reader")
    poll = getattr(reader, "poll", None)
    if poll is None:
        return None
    try:
        return bool(poll(0))
    except (OSError, ValueError, EOFError):
        return None


class LostJobsCheck:
    """Looks, each time it is called, for a pool wait that lost its jobs (see the module docstring)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._since: dict[tuple[int, int], float] = {}  # (thread, pool id) -> when the wait was first seen
        self._lost_since: dict[tuple[int, int], float] = {}  # -> when every condition first held

    def check(
        self,
        frames: dict[int, FrameType],
        reaped: list[dict[str, Any]],
        records: dict[int, dict[str, Any]],
    ) -> LostJobs | None:
        now = time.time()
        seen: set[tuple[int, int]] = set()
        found = None
        for tid, frame in frames.items():
            pool = pool_of_wait(frame)
            if pool is None:
                continue
            key = (tid, id(pool))
            seen.add(key)
            since = self._since.setdefault(key, now)
            lost = self._lost(pool, since, reaped, records)
            if lost is None:
                self._lost_since.pop(key, None)
                continue
            first = self._lost_since.setdefault(key, now)
            if now - first >= self.timeout_s and found is None:
                found = LostJobs(thread_id=tid, dead=lost[0], workers=lost[1])
        for key in list(self._since):
            if key not in seen:
                self._since.pop(key, None)
                self._lost_since.pop(key, None)
        return found

    @staticmethod
    def _lost(
        pool: Any, since: float, reaped: list[dict[str, Any]], records: dict[int, dict[str, Any]]
    ) -> tuple[dict[str, Any], tuple[int, ...]] | None:
        workers = []
        for proc in list(_static(pool, "_pool") or ()):
            pid = _static(_static(proc, "_popen"), "pid")
            if isinstance(pid, int):
                workers.append(pid)
        dead = [
            r
            for r in reaped
            if r.get("source") == "multiprocessing"
            and int(r.get("exit_code") or 0) != 0
            and not r.get("terminated_by_parent")
            and "PoolWorker" in str(r.get("name") or "")
            and float(r.get("at_wall") or 0) >= since - 1.0
            and int(r.get("pid") or 0) not in workers
        ]
        if not dead or not workers or not _static(pool, "_cache"):
            return None
        died = max(float(r.get("at_wall") or 0) for r in dead)
        for pid in workers:  # every current worker idle, as its record written after the death says
            record = records.get(pid)
            threads = (record or {}).get("threads") or []
            if not record or float(record.get("updated_wall") or 0) <= died or not threads:
                return None
            if not threads[0].get("idle_worker"):
                return None
        taskqueue = _static(pool, "_taskqueue")
        empty = getattr(taskqueue, "empty", None)
        if empty is None or not empty():
            return None
        if _readable(_static(pool, "_inqueue")) is not False or _readable(_static(pool, "_outqueue")) is not False:
            return None
        return dead[-1], tuple(workers)
