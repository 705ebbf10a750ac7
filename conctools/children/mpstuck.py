"""Processes stuck on each other through shared ``multiprocessing`` locks and events: pure
functions of what each process of the run says it holds and waits for
(:mod:`conctools.children.mpsync`, one ``.sync`` file per process).

Three findings, each only from waits without a timeout that lasted the run's deadlock timeout:

* **deadlock**: a cycle of threads, in two processes or more, each waiting for a lock the next
  one holds (a waiting thread cannot release what it holds: the cycle is certain);
* **dead holder**: a thread waits for a lock held by a process that ended (a ``multiprocessing``
  lock is never released for a process that dies holding it);
* **nobody left to set it**: a thread waits on an Event, Condition, Barrier or Semaphore that
  no process still running could set, other than processes whose every thread waits too.

:func:`resolve_targets` names, for the chain of a stuck child, the processes a thread's wait
depends on: the holder of a lock, the processes that could set an event.
"""

from __future__ import annotations

from collections.abc import Mapping

from conctools._records import record
from conctools._typing import Any
from conctools.children.mpsync import UNKNOWN_SITE

__all__ = ["SyncFinding", "find_stuck", "holders_of", "name_sites", "resolve_targets"]

Node = tuple[int, int]  # (pid, thread id)


@record(kw_only=True)
class SyncFinding:
    """Processes stuck through shared locks: the verdict, the process to name, why, and the waits
    (``(pid, thread id)``) that make the chain, in the order a person reads it."""

    verdict: str  # "deadlock" | "dead" | "ended" | "hang"
    pid: int
    reason: str
    links: tuple[Node, ...]


def _label(pid: int, states: Mapping[int, Mapping[str, Any]], root_pid: int) -> str:
    name = str(states.get(pid, {}).get("name") or "?")
    return f"process {pid} {name!r}" if pid == root_pid else f"child pid {pid} {name!r}"


def holders_of(key: str, states: Mapping[int, Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    """``(pid, hold)`` of every process whose last state says it holds the lock ``key``."""
    return [(pid, hold) for pid, state in states.items() for hold in state.get("holds") or () if hold.get("key") == key]


def name_sites(text: str, key: str, states: Mapping[int, Mapping[str, Any]]) -> str:
    """``text`` with the creation site of SemLock ``key`` where its process did not know it."""
    if UNKNOWN_SITE not in text:
        return text
    for state in states.values():
        site = (state.get("made") or {}).get(key)
        if site:
            return text.replace(UNKNOWN_SITE, str(site))
    return text


def _long_waits(
    states: Mapping[int, Mapping[str, Any]], now_wall: float, timeout_s: float
) -> dict[Node, Mapping[str, Any]]:
    out: dict[Node, Mapping[str, Any]] = {}
    for pid, state in states.items():
        if not state.get("alive"):
            continue
        for wait in state.get("waits") or ():
            since = wait.get("since_wall")
            if wait.get("timeout_s") is None and isinstance(since, (int, float)) and now_wall - since >= timeout_s:
                out[(pid, int(wait.get("thread_id") or 0))] = wait
    return out


def find_stuck(
    states: Mapping[int, Mapping[str, Any]], now_wall: float, timeout_s: float, root_pid: int
) -> SyncFinding | None:
    """The first of the findings in the module docstring that holds, or ``None``.

    ``states`` maps a pid to its sync state (``holds``, ``waits``, ``has``, ``made``, ``threads``)
    with ``name``, ``alive`` (still running), ``ended`` (how it ended, in words, when it did) and
    ``updated_wall`` (when it was read).
    """
    long = _long_waits(states, now_wall, timeout_s)
    if not long:
        return None
    return (
        _deadlock(long, states, root_pid) or _dead_holder(long, states, root_pid) or _no_setter(long, states, root_pid)
    )


def _deadlock(
    long: Mapping[Node, Mapping[str, Any]], states: Mapping[int, Mapping[str, Any]], root_pid: int
) -> SyncFinding | None:
    edges: dict[Node, tuple[Node, Mapping[str, Any]]] = {}
    for node, wait in long.items():
        if wait.get("sync") != "lock":
            continue
        holders = holders_of(str(wait.get("key")), states)
        if len(holders) != 1:
            continue
        pid, hold = holders[0]
        target = (pid, int(hold.get("thread_id") or 0))
        if target in long:  # a waiting thread cannot release what it holds
            edges[node] = (target, hold)
    for start in sorted(edges, key=lambda n: (n[0] != root_pid, n)):
        path = [start]
        node = start
        while node in edges:
            node = edges[node][0]
            if node in path:
                cycle = path[path.index(node) :]
                if len({n[0] for n in cycle}) < 2:
                    break  # within one process: its own watchdog's business
                return _deadlock_finding(cycle, long, edges, states, root_pid)
            path.append(node)
    return None


def _deadlock_finding(
    cycle: list[Node],
    long: Mapping[Node, Mapping[str, Any]],
    edges: Mapping[Node, tuple[Node, Mapping[str, Any]]],
    states: Mapping[int, Mapping[str, Any]],
    root_pid: int,
) -> SyncFinding:
    first = min(range(len(cycle)), key=lambda i: (cycle[i][0] != root_pid, cycle[i]))
    cycle = cycle[first:] + cycle[:first]
    parts = []
    for node in cycle:
        target, hold = edges[node]
        wait = long[node]
        thread = wait.get("thread_name")
        what = name_sites(str(wait.get("waits_on")), str(wait.get("key")), states)
        parts.append(
            f"thread {thread!r} of {_label(node[0], states, root_pid)} waits for {what}, held by thread "
            f"{hold.get('thread_name')!r} of {_label(target[0], states, root_pid)}"
        )
    child = next((n[0] for n in cycle if n[0] != root_pid), cycle[0][0])
    reason = "deadlock across processes: " + "; ".join(parts) + " (each waits for the next: none can go on)"
    return SyncFinding(verdict="deadlock", pid=child, reason=reason, links=tuple(cycle))


def _dead_holder(
    long: Mapping[Node, Mapping[str, Any]], states: Mapping[int, Mapping[str, Any]], root_pid: int
) -> SyncFinding | None:
    for node, wait in sorted(long.items(), key=lambda item: (item[0][0] != root_pid, item[0])):
        if wait.get("sync") != "lock":
            continue
        key = str(wait.get("key"))
        since = float(wait.get("since_wall") or 0)
        holders = holders_of(key, states)
        live = [s for s in states.values() if s.get("alive")]
        if any(float(s.get("updated_wall") or 0) < since for s in live):
            continue  # a live process's state is older than the wait: it may hold it since
        waiters = tuple(n for n, w in long.items() if w.get("key") == key)
        if (
            holders
            and all(not states[pid].get("alive") for pid, _ in holders)
            and node[0] not in (p for p, _ in holders)
        ):
            pid, hold = holders[0]
            ended = states[pid].get("ended") or "ended"
            lock = name_sites(str(hold.get("lock")), key, states)
            reason = (
                f"{ended} while holding {lock} (its thread {hold.get('thread_name')!r} had taken it); a "
                f"multiprocessing lock is never released for a process that ends holding it, so whoever waits "
                f"for it waits forever"
            )
            return SyncFinding(verdict="dead", pid=int(pid), reason=reason, links=waiters)
        if holders:
            continue
        dead = _killed_having(key, states)
        if len(dead) == 1:
            pid = dead[0]
            what = name_sites(str(wait.get("waits_on")), key, states).split(" (", 1)[0]
            reason = (
                f"{states[pid].get('ended')}; no process still running holds {what}, which it had: it "
                f"probably took it after its last record (conctools did not see it take it), and a "
                f"multiprocessing lock is never released for a process that ends holding it"
            )
            return SyncFinding(verdict="dead", pid=pid, reason=reason, links=waiters)
    return None


def _killed_having(key: str, states: Mapping[int, Mapping[str, Any]]) -> list[int]:
    """Processes that had SemLock ``key`` and were killed: when nobody says they hold a lock that is
    held, one of them took it after its last record."""
    return [
        pid
        for pid, s in states.items()
        if not s.get("alive") and "killed" in str(s.get("ended") or "") and key in (s.get("has") or ())
    ]


def _blocked(pid: int, state: Mapping[str, Any], long: Mapping[Node, Mapping[str, Any]]) -> bool:
    """Every thread of the program in process ``pid`` waits, without a timeout, on a shared primitive."""
    threads = [int(t) for t in state.get("threads") or ()]
    return bool(threads) and all((pid, t) in long for t in threads)


def _no_setter(
    long: Mapping[Node, Mapping[str, Any]], states: Mapping[int, Mapping[str, Any]], root_pid: int
) -> SyncFinding | None:
    for node, wait in sorted(long.items(), key=lambda item: (item[0][0] != root_pid, item[0])):
        if wait.get("sync") != "signal" or not _blocked(node[0], states[node[0]], long):
            continue
        key = str(wait.get("key"))
        since = float(wait.get("since_wall") or 0)
        having = [pid for pid, s in states.items() if key in (s.get("has") or ())]
        live = [pid for pid in having if states[pid].get("alive")]
        if any(float(states[pid].get("updated_wall") or 0) < since for pid in live):
            continue
        if any(not _blocked(pid, states[pid], long) for pid in live):
            continue  # a process that has it still runs: it may set it
        what = name_sites(str(wait.get("waits_on")), key, states).split(" (", 1)[0]
        waiters = tuple(n for n, w in long.items() if w.get("key") == key)
        ended = [pid for pid in having if not states[pid].get("alive")]
        if ended:
            pid = ended[-1]
            reason = (
                f"{states[pid].get('ended') or 'ended'} without setting {what}, and no process still running can: "
                f"the ones that have it all wait themselves"
            )
            return SyncFinding(verdict="ended", pid=pid, reason=reason, links=waiters)
        others = [pid for pid in live if pid != node[0]]
        if others:
            reason = (
                f"nothing progressed: every thread of the processes that have {what} waits without a timeout, so "
                f"none of them can set it"
            )
            return SyncFinding(verdict="hang", pid=others[0], reason=reason, links=waiters)
    return None


def resolve_targets(
    pid: int, wait: Mapping[str, Any], states: Mapping[int, Mapping[str, Any]], root_pid: int
) -> tuple[list[int], str]:
    """The processes a shared-primitive wait of ``pid`` depends on, and the words that name them:
    the holder of a lock (``, held by child pid 12 'Process-1', thread 'MainThread'``), or the
    other processes that have an event and could set it."""
    key = str(wait.get("key") or wait.get("sync_key") or "")
    if wait.get("sync") == "lock":
        holders = holders_of(key, states)
        if not holders:
            dead = _killed_having(key, states)
            if len(dead) == 1:
                who = _label(dead[0], states, root_pid)
                return dead, f", held by no process still running; {who}, which had it, {states[dead[0]].get('ended')}"
            return [], ", held by a process conctools does not follow or cannot name"
        parts = []
        for hpid, hold in holders:
            who = "this process" if hpid == pid else _label(hpid, states, root_pid)
            who += f", thread {hold.get('thread_name')!r}"
            if not states[hpid].get("alive") and hpid != pid:
                who += f", which {states[hpid].get('ended') or 'ended'} while holding it"
            parts.append(who)
        words = ", held by " + " or ".join(parts)
        if len(holders) > 1:
            words += " (conctools cannot tell which)"
        return sorted({hpid for hpid, _ in holders if hpid != pid}), words
    having = sorted(p for p, s in states.items() if p != pid and key in (s.get("has") or ()) and s.get("alive"))
    if not having:
        return [], ", which no other process still running has"
    names = ", ".join(f"{p} {str(states[p].get('name') or '?')!r}" for p in having)
    return having, f", which {'pid' if len(having) == 1 else 'pids'} {names} could set"
