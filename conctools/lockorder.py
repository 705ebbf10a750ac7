"""Lock-order checking: Python's lockdep.

Every traced lock belongs to a *class*: its ``name=`` when given, else its creation site, so
the thousand locks created on one line are one node. When a thread (or task) that holds A
acquires B, the graph gets an edge A -> B. A cycle in that graph means two code paths take
the same locks in opposite orders: a potential deadlock, even if this run was lucky. Each
distinct cycle is recorded once, as a :class:`~conctools.events.LockOrderEvent` whose edges
say where each lock was taken and by whom (ThreadSanitizer's shape; the text report adds
lockdep's CPU0/CPU1 scenario).

Two locks of the same class nested in each other (``a, b = Lock(), Lock()`` on one line, or
per-account locks) cannot be ordered by class, so those edges are kept per instance: taking
them in one global order (say, sorted by id) is fine, taking them both ways is reported.
Instance edges could be many (``concurrent.futures.wait()`` takes the conditions of all its
futures: 25 futures held together make 300 pairs, 1,000 make half a million), so only the edge
from the innermost held lock of the class is kept: the locks of one class held by one owner are
taken one after the other, each while the previous ones were held, so every other pair is already
a path (a -> b -> c stands for a -> c as well) and a cycle exists in this graph exactly when it
exists among all the pairs; a cycle found along a chain is reported by its shortest pairs (each
edge keeps which locks of the class were held then). A cycle is looked for only when the lock
taken already leads to another of its class, and a stack is kept for a sample of the edges per
site. Locks of one class taken one after the other, each while holding the ones before (a *run*:
``wait()`` takes 25 futures' conditions so), are checked with no graph lookup from the second one on,
in C with the C extension: the owner's held stack is what it was after the run's last lock, so
the edges from locks of other classes are known and the edge is from that last lock. With the C
extension a run's first lock is added in C too (``run_start``), when it needs no stack, no cycle
search and no pruning: a fan-out's ``wait()`` or ``as_completed()`` then runs no Python code here. A run is
stored once, as the record of all its edges (the graph maps each lock to the run with an edge into
it; an edge's record is made from the run when a cycle is reported), so a ``wait()`` makes a few
objects, not a few per future. A run whose locks the garbage collector took, and that is a chain of
its own, is forgotten a few runs later; the edges of other dead locks are forgotten once there are
many, where no path between other locks goes through them.

Checking costs a thread-local lookup and a dict lookup per held lock on every acquisition,
so it is a mode: :func:`enable` (what ``trace_locks(lock_order=True)`` and ``conctools run``
do) makes locks created from then on check their order.
"""

from __future__ import annotations

import _thread
import operator
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from types import FrameType

from conctools._context import _SAMPLE_DIR, _SKIP_MAYBE, capture_stack, current_task_name
from conctools._log import get_logger
from conctools._typing import Any
from conctools.events import LockOrderEdge, LockOrderEvent
from conctools.recorder import get_recorder

__all__ = [
    "Held",
    "HeldStack",
    "check",
    "code_site",
    "disable",
    "enable",
    "forget_task",
    "graph_size",
    "held_stack",
    "is_enabled",
    "note_acquired",
    "note_released",
    "reported_cycles",
    "reset",
    "site_text",
    "task_held_stack",
]

_log = get_logger("conctools.lockorder")

MAX_EDGES = 50_000  # bounded memory: past this, new edges are not tracked (logged once)

_mutex = _thread.allocate_lock()
_enabled = [0]  # nesting depth of enable()
# (from_key, to_key) -> the first edge seen; adjacency for cycle search.
_edges: dict[tuple[str, str], LockOrderEdge] = {}
_succ: dict[str, set[str]] = {}
_names: dict[str, str] = {}  # node key -> display name
_reported: set[tuple[str, ...]] = set()
_full = [False]
_generation = [0]  # bumped by reset(): caches of known edges (the C extension's) start over
_local = threading.local()

# Instance edges (see the module docstring), by lock serial. Every one of them is an edge of a run
# (see _Run): from the lock of the run's class taken before, in the run's list of them. A run is
# stored once, as the record of all its edges: the graph keeps, for each lock with edges into it, the
# run that holds such an edge (or a tuple of them: a lock taken after different ones), and the serials
# that lead to some other lock of their class (only an edge into one of those can close a cycle). A
# run of n locks is thus n dict entries and no other object, where a record per edge was four
# (a record, a tuple of the preds, a list, an int) that lived until pruned and made the collector run.
# The record of one edge (from held entry, to entry, thread name, task name, stack or None, a list
# whose first n are the held entries of the class then, n) is made from the run when it is read.
_inst_in: dict[int, Any] = {}  # serial -> _Run, or a tuple of them
# serial -> its out-edges (how many: see _drop_dead_runs); the C extension's RunIndex (set by conctools.locks
# before any edge: 12 bytes a slot where a dict entry took ~33), else a dict
_inst_has_out: Any = {}
_inst_count = [0]  # distinct instance edges
_inst_stacks: dict[tuple[Any, ...], int] = {}  # (class key, site: id(code), offset) -> stacks taken there
INSTANCE_STACKS_PER_SITE = 8
# Locks with edges into them kept before the dead locks' are forgotten (then twice those that stayed).
# A pass costs about the same per record whenever it runs, but less when the records are recent (they
# are still in the CPU's caches) and fewer of them live through collections: 2,000 rather than 10,000
# makes a fan-out of futures' conditions ~10% cheaper.
INSTANCE_PRUNE_AT = 2_000
INSTANCE_MAX_EDGES = 100_000  # instance edges kept at most (bounded memory, a few MiB)
_inst_prune_at = [INSTANCE_PRUNE_AT]
_inst_full_skip = [0, 0]  # when full of live locks' edges: new edges skipped before pruning again; warned
# The C extension's untrack(obj) (set by conctools.locks), else None. Instance edges are many (24 per
# concurrent.futures.wait() of 25 futures) and live until pruned; their records (tuples of names,
# sites, frames and held-lock entries, which hold their lock weakly) and the lists of them can never
# be part of a reference cycle, so the garbage collector need not walk them at every collection.
_untrack: list[Callable[[Any], None] | None] = [None]
# The C extension's drop_dead_run(run, into, has_out) (set by conctools.locks), else None: _drop_if_dead's
# work in C, one call per run where Python's takes ~8 steps per lock of the run.
_drop_dead_run: list[Callable[[Any, Any, Any], int] | None] = [None]
# The C extension's graph_alive(into) (set by conctools.locks), else None: True when both locks of every
# instance edge are alive, so that a prune pass would forget nothing (a wait() on 40,000 futures passes at
# 2k, 8k and 32k edges, all of live locks: ~0.1 s of Python, ~1 ms in C).
_graph_alive: list[Callable[[Any], bool] | None] = [None]
# The C extension's order_checking(on) (set by conctools.locks), else None: check() says it is running in this
# thread, for the C paths that add edges (its twin of _local.checking, which they would read at every lock of a run).
_c_checking: list[Callable[[bool], None] | None] = [None]


# A held lock: (weak reference to the primitive, class key, display name, serial, site): weak,
# so a lock dropped while held (acquired, never released, garbage) leaves the stack. For the C
# extension's locks the reference and the serial are one object, a ``_speedups.LockRef`` (called, the
# lock or None; hashing and comparing as the serial int), at both places. The site is a
# "file.py:LINE" string or a (code, instruction offset) pair turned into one only when an
# edge is new (see :func:`site_text`): the hot path never computes a line number.
Held = tuple[Any, str, str, int, Any]

_site_texts: dict[tuple[Any, int], str] = {}


def code_site(frame: FrameType | None) -> Any:
    """The (code, offset) of the first frame outside conctools, asyncio, threading & co."""
    while frame is not None:
        filename = frame.f_code.co_filename
        # _SKIP_PREFIXES, in 8 prefixes instead of ~40: the package (but the sample server) and the stdlib's
        if not filename.startswith(_SKIP_MAYBE) or filename.startswith(_SAMPLE_DIR):
            break
        frame = frame.f_back
    if frame is None:
        return "?"
    return (frame.f_code, frame.f_lasti)


def site_text(site: Any) -> str:
    """``file.py:LINE`` of a site from :func:`code_site` (or a site already in text)."""
    if isinstance(site, str):
        return site
    text = _site_texts.get(site)
    if text is None:
        code, lasti = site
        line = code.co_firstlineno
        for start, end, lineno in code.co_lines():
            if start <= lasti < end and lineno is not None:
                line = lineno
                break
        base = os.path.basename(code.co_filename)
        if base in ("__init__.py", "__main__.py"):
            base = os.path.join(os.path.basename(os.path.dirname(code.co_filename)), base)
        text = f"{base}:{line}"
        if len(_site_texts) < 100_000:
            _site_texts[site] = text
    return text


def enable() -> None:
    """Switch lock-order checking on for locks created from now on (nests)."""
    with _mutex:
        _enabled[0] += 1


def disable() -> None:
    """Undo one :func:`enable`."""
    with _mutex:
        _enabled[0] = max(0, _enabled[0] - 1)


def is_enabled() -> bool:
    """True while at least one :func:`enable` is active."""
    return _enabled[0] > 0


def reset() -> None:
    """Forget every edge and reported cycle (tests, or a new run)."""
    with _mutex:
        _edges.clear()
        _succ.clear()
        _names.clear()
        _reported.clear()
        _full[0] = False
        _generation[0] += 1
        _inst_in.clear()
        _inst_has_out.clear()
        _inst_count[0] = 0
        _inst_stacks.clear()
        _inst_prune_at[0] = INSTANCE_PRUNE_AT
        _inst_full_skip[:] = [0, 0]
        _runs.clear()
        _run_log.clear()


def graph_size() -> int:
    """The number of distinct edges recorded (between classes, and between instances of one class)."""
    return len(_edges) + _inst_count[0]


def reported_cycles() -> list[tuple[str, ...]]:
    """The cycles reported so far, as tuples of node keys."""
    with _mutex:
        return sorted(_reported)


class HeldStack(list[Held]):
    """A thread's held locks (innermost last): a list whose ``version`` is bumped by every change,
    so that the next lock of a run (see ``_Run``) is known to find the stack as the run left it by
    one comparison instead of one per lock held. What the C extension's ``conctools._speedups.HeldStack``
    does, and the model its tests read: the held stacks are the C type when the extension is there, and
    plain lists without it (see ``_stack_type``: these methods are Python code, which must not run inside
    a critical section); asyncio tasks' stacks are plain lists.
    """

    __slots__ = ("version",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.version = 0

    def append(self, item: Held) -> None:
        self.version += 1
        list.append(self, item)

    def extend(self, items: Any) -> None:
        self.version += 1
        list.extend(self, items)

    def insert(self, index: Any, item: Held) -> None:
        self.version += 1
        list.insert(self, index, item)

    def pop(self, index: Any = -1) -> Held:
        self.version += 1
        return list.pop(self, index)

    def remove(self, item: Held) -> None:
        self.version += 1
        list.remove(self, item)

    def clear(self) -> None:
        self.version += 1
        list.clear(self)

    def sort(self, **kwargs: Any) -> None:
        self.version += 1
        list.sort(self, **kwargs)

    def reverse(self) -> None:
        self.version += 1
        list.reverse(self)

    def __iadd__(self, items: Any) -> HeldStack:  # type: ignore[override,misc]
        self.version += 1
        list.extend(self, items)
        return self

    def __setitem__(self, index: Any, value: Any) -> None:
        self.version += 1
        list.__setitem__(self, index, value)

    def __delitem__(self, index: Any) -> None:
        self.version += 1
        list.__delitem__(self, index)


# The held stacks' type: the C twin of HeldStack once conctools.locks has installed the C paths, else
# plain lists (compared item by item: O(n) per lock of a run). Not the Python HeldStack: its methods run
# Python code between a lock's acquire and the return to the caller, and around its release, where a
# garbage collection could start and run finalizers inside the program's critical section (issue 22;
# tests/test_side_effects.py::TestCriticalSectionsStayClean saw it about one run in four).
_stack_type: list[type[list[Held]] | None] = [None]


def held_stack() -> list[Held]:
    """The calling thread's held locks (a live list, innermost last)."""
    try:
        stack: list[Held] = _local.stack
    except AttributeError:
        stack = _local.stack = (_stack_type[0] or list)()
    _settle(stack)
    return stack


def _settle(held: list[Held]) -> None:
    """Drop the entries the C type's order_pop left as None at the bottom of ``held`` (its thread released
    its first locks while holding later ones), before anything reads it."""
    if held and held[0] is None:
        held._compact()  # type: ignore[attr-defined]


def _run_matches(run: _Run, held: list[Held]) -> bool:
    """Is ``held`` as ``run`` left it (after its last lock's push)? By the version for a stack of
    the current type (the same length and innermost lock besides: a failed acquire followed by
    one other change has the version expected), else item by item."""
    versioned = _stack_type[0]
    if versioned is not None and type(held) is versioned:
        # (run[0] is the stack's expected length, and its innermost entry is the run's last lock's)
        return bool(run[9] == held.version and len(held) == run[0] and held and held[-1] is run[5][-1])  # type: ignore[attr-defined]
    return bool(run[0] == held)


def check(held: list[Held], entry: Held) -> None:
    """Add the edges ``held -> entry``.

    Called BEFORE the lock in ``entry`` is taken (the stack is the same as after it, and nothing
    that allocates may run between an acquire and the caller's next statement); a real deadlock is
    therefore reported as an inversion too. A new edge captures its stack and records an event:
    if that work runs a finalizer which takes traced locks in turn, their checks are skipped
    (never re-entered), so the check can neither recurse nor wait for itself.
    """
    if getattr(_local, "checking", False):
        return
    _local.checking = True
    c_checking = _c_checking[0]
    if c_checking is not None:
        c_checking(True)
    try:
        _settle(held)
        run = _runs.get(id(held))
        if run is not None and run[1] == entry[1] and entry[3] not in run[2] and _run_matches(run, held):
            # The next lock of a run (see _Run): its class edges are those of the previous one.
            inner = held[-1]
            if inner[0]() is not None:
                _run_edge(run, inner, entry)
                return
        me = entry[0]()
        key = entry[1]
        dead = False
        same: list[Held] | None = None
        for h in held:
            other = h[0]()
            if other is None:  # dropped without a release: it can never be waited for again
                dead = True
                continue
            if other is me:
                continue  # re-entry is not an edge
            if h[1] == key:  # same class: ordered per instance, from the innermost one (below)
                if same is None:
                    same = [h]
                else:
                    same.append(h)
            elif (h[1], key) not in _edges:
                _new_edge(h[1], key, h, entry, h[2], entry[2])
        if dead:
            held[:] = [h for h in held if h[0]() is not None]
        if same is not None:
            _instance_edge_from(held, same, entry)
    except Exception:  # observation must never break the program
        _log.exception("conctools: lock-order check failed")
    finally:
        _local.checking = False
        if c_checking is not None:
            c_checking(False)


# Runs. concurrent.futures.wait() and as_completed() take the conditions of all their futures
# (one class), one after the other, each while holding the ones before: 24 instance edges per call
# of 25 futures. Walking the held stack for each of them made such a call cost O(n^2); a run keeps
# the owner's state after its last lock of the class, so that the next one, taken while the held
# stack is exactly what it was then (known by its version, bumped by every change: O(1) per lock;
# an asyncio task's stack, a plain list, is compared item by item), needs no graph lookup: its class edges (from the
# locks of other classes held) are those of the previous lock of the run, already checked, and its
# instance edge is from the previous one. Anything else (a lock released, another one taken in
# between, a dead entry, a reset) makes the held stack differ, and
# the full walk runs and starts a new run.
# A run: [the held stack expected next (a copy; for a versioned stack, only its length: its innermost
# entry is the run's last lock's, the version says the rest), class key, its serials (serial -> index in
# the list of held locks of the class: a dict, or the C extension's RunIndex), thread name, task name,
# the held locks of the class (the run's own after the first ones; where each edge's record comes from),
# last site whose stacks were all taken (or None), where its edges start in that list, whether it is in
# _run_log, the held stack's version after the last lock's push (-1: a plain list), the stacks taken
# (index -> stack, or None)].
# By id() of the held stack; validated by the version (or the content). The edge into the lock at
# index i of the list (i > the start) is from the one at i - 1, and was held with the first i of them.
_Run = list[Any]
_runs: dict[int, _Run] = {}
# A run's serials -> index table: the C extension's RunIndex (set by conctools.locks: 12 bytes a lock where a
# dict entry and an int took ~65; a wait() on 40,000 futures is a run of 40,000 locks), else a dict.
_run_index: list[Callable[[], Any]] = [dict]
# The runs that added an edge to the graph in Python (the first lock of a run always comes through
# Python), for the pruning (see _drop_dead_runs), oldest first; a run whose edges were all known
# (the same locks nested again) is not kept. Each new one looks at the two oldest first
# (_drop_old_runs): a fan-out's runs are dropped a few calls after their futures are gone.
_run_log: deque[_Run] = deque()
RUNS_LOOKED_AT_PER_RUN = 2
RUN_LOG_MAX = 10_000
_deref = operator.call  # (a held entry's ref: a weak reference, or the C extension's LockRef)
_first = operator.itemgetter(0)
_fourth = operator.itemgetter(3)
_is = operator.is_
_one = 1


def _runs_into(to: int) -> tuple[_Run, ...]:
    """The runs holding an edge into the lock ``to`` (caller holds ``_mutex``, or is the C path's twin)."""
    v = _inst_in.get(to)
    if v is None:
        return ()
    return (v,) if type(v) is list else v  # type: ignore[no-any-return]


def _pred(run: _Run, to: int) -> int:
    """The serial of the lock that ``run``'s edge into ``to`` is from."""
    return run[5][run[2][to] - 1][3]  # type: ignore[no-any-return]


def _record(run: _Run, to: int) -> tuple[Any, ...]:
    """``run``'s edge into ``to`` as a record (see ``_inst_in``)."""
    i = run[2][to]
    same = run[5]
    stacks = run[10]
    return (same[i - 1], same[i], run[3], run[4], stacks.get(i) if stacks else None, same, i)


def _records_into(to: int) -> list[tuple[Any, ...]]:
    """The records of the edges into the lock ``to`` (tests, reports)."""
    with _mutex:
        return [_record(run, to) for run in _runs_into(to)]


def _instance_edge_from(held: list[Held], same: list[Held], entry: Held) -> None:
    """``entry``'s lock is taken while ``same``, locks of its class, are held: start a run there. (The C
    extension's run_start does the same, with _add_instance_edge's, when that needs no stack, cycle search,
    pruning or warning: tests/test_lockorder.py::TestRunsInC compares their tables.)"""
    versioned = _stack_type[0] is not None and type(held) is _stack_type[0]
    serials = _run_index[0]()
    for i, h in enumerate(same):
        serials[h[3]] = i
    run: _Run = [
        len(held) + 1 if versioned else [*held, entry],
        entry[1],
        serials,
        threading.current_thread().name,
        current_task_name(),
        same,
        None,
        len(same) - 1,
        False,
        held.version + 1 if versioned else -1,  # type: ignore[attr-defined]
        None,
    ]
    untrack = _untrack[0]
    if untrack is not None:  # (nothing in a run refers back to it: see _untrack)
        untrack(same)
        if not versioned:
            untrack(run[0])
        untrack(run)
    inner = same[-1]
    run[2][entry[3]] = len(same)
    same.append(entry)
    if len(_runs) >= 1_024:  # (stacks of threads and tasks that are gone)
        _runs.clear()
    _runs[id(held)] = run
    if _run_log:
        # The oldest runs' locks may be gone since the last run was logged (a wait() whose futures were
        # dropped since): their edges and entries go now, not when the next run adds an edge, after the
        # program made new objects among them (issue 12: a fan-out's memory grew round after round).
        with _mutex:
            _drop_old_runs()
    _add_instance_edge(run, inner, entry)


def _run_edge(run: _Run, inner: Held, entry: Held) -> None:
    """The next lock of ``run`` (``held`` is its expected stack): the edge from the previous one."""
    same = run[5]
    if run[9] >= 0:
        run[0] += 1
        run[9] += 1  # (after this lock's push)
    else:
        run[0].append(entry)
    run[2][entry[3]] = len(same)
    same.append(entry)
    _add_instance_edge(run, inner, entry)


def _add_instance_edge(run: _Run, inner: Held, entry: Held) -> None:
    """Add the edge ``inner -> entry``, the last two of ``run``'s locks (already there), to the graph, and
    look for a cycle only when this lock already leads to another of its class."""
    to, frm = entry[3], inner[3]
    known = _inst_in.get(to)
    if known is not None:
        for other in (known,) if type(known) is list else known:
            if _pred(other, to) == frm:
                return
    if _inst_full_skip[0]:
        _inst_full_skip[0] -= 1
        return
    site = entry[4]
    if site is not run[6]:
        # By the site's code object's id, not the object: hashing a code object costs ~0.4 µs.
        # (The count only bounds the stacks taken: a recycled id can at worst take fewer for a new site.)
        site_key = (entry[1], id(site[0]), site[1]) if type(site) is tuple else (entry[1], site)
        taken = _inst_stacks.get(site_key, 0)
        if taken < INSTANCE_STACKS_PER_SITE and len(_inst_stacks) < 10_000:
            _inst_stacks[site_key] = taken + 1
            if run[10] is None:
                run[10] = {}
            run[10][run[2][to]] = capture_stack(3, limit=32)  # from check()'s caller
        else:
            run[6] = site  # no more stacks for this site: the next locks of the run skip the lookup
    cycle: list[int] | None = None
    with _mutex:
        if _inst_count[0] >= INSTANCE_MAX_EDGES:
            _prune_instances()
            if _inst_count[0] >= INSTANCE_MAX_EDGES:
                # Full of edges that paths between live locks go through: skip a while, then look again.
                _inst_full_skip[0] = 10_000
                if not _inst_full_skip[1]:
                    _inst_full_skip[1] = 1
                    _log.warning(
                        "conctools: lock-order graph is full (%d edges between locks of one class); "
                        "new ones are ignored for a while",
                        INSTANCE_MAX_EDGES,
                    )
                return
        known = _inst_in.get(to)
        if known is None:
            _inst_in[to] = run
        elif type(known) is list:
            if _pred(known, to) == frm:
                return  # (added by another thread meanwhile)
            _inst_in[to] = (known, run)
        else:
            if any(_pred(other, to) == frm for other in known):
                return
            _inst_in[to] = (*known, run)
        _inst_count[0] += 1
        if not run[8]:
            run[8] = True
            _drop_old_runs()
            _run_log.append(run)
        if to in _inst_has_out:  # it leads on: the new edge may close a cycle
            cycle = _instance_path(frm, to)
        _inst_has_out[frm] = _inst_has_out.get(frm, 0) + 1
        if len(_inst_in) >= _inst_prune_at[0]:
            _prune_instances()
    if cycle is not None:
        _report_instance_cycle(cycle, entry)


def _instance_path(source: int, goal: int) -> list[int] | None:
    """A cycle ``goal -> ... -> source -> goal``, following edges backwards from ``source`` (caller
    holds ``_mutex``): the serials from ``goal`` to ``source``, in the edges' direction."""
    parent: dict[int, int | None] = {source: None}
    todo = [source]
    while todo:
        node = todo.pop()
        if node == goal:
            out = []
            cur: int | None = node
            while cur is not None:
                out.append(cur)
                cur = parent[cur]
            return out
        for run in _runs_into(node):
            prev = _pred(run, node)
            if prev not in parent:
                parent[prev] = node
                todo.append(prev)
    return None


def _drop_if_dead(run: _Run) -> bool:
    """Drop the edges of ``run`` if its locks are all gone and they are a chain of their own,
    ``s0 -> s1 -> ... -> sk``: no edge into ``s0``, the only edge into each other one this run's, and
    no other edge out of them (caller holds ``_mutex``). False when one of its locks is alive (the run
    is kept for later), True otherwise (whether dropped or left to the general pass)."""
    drop = _drop_dead_run[0]
    if drop is not None:
        dropped = drop(run, _inst_in, _inst_has_out)
        if dropped < 0:
            return False
        _inst_count[0] -= dropped
        return True
    chain = run[5][run[7] :]
    if any(map(_deref, map(_first, chain))):  # (map over C callables: a fan-out's runs are many)
        return False
    into = _inst_in
    out = _inst_has_out
    serials = list(map(_fourth, chain))
    first = serials[0]
    if first in into or first not in out or serials[-1] in out:
        return True  # (the general pass looks at its edges)
    froms = serials[:-1]
    tos = serials[1:]
    # each edge into the next one this run's only, one edge out of each
    if not all(map(_is, map(into.get, tos), [run] * len(tos))) or any(map(_one.__ne__, map(out.get, froms))):
        return True
    deque(map(into.__delitem__, tos), 0)
    deque(map(out.__delitem__, froms), 0)
    _inst_count[0] -= len(tos)
    return True


def _drop_old_runs() -> None:
    """Before a new run is logged (caller holds ``_mutex``): the two oldest runs of the log are dropped
    when their locks are gone (see :func:`_drop_if_dead`), else put last. The edges of a fan-out's
    runs, and the held-lock entries they keep (each with a weak reference), then live a few calls
    rather than until the next prune: thousands of them made the garbage collector run ~15x as often
    as in a plain run (3.11 collects after 700 more objects made than freed)."""
    for _ in range(min(RUNS_LOOKED_AT_PER_RUN, len(_run_log))):
        run = _run_log.popleft()
        if not _drop_if_dead(run):
            _run_log.append(run)


def _drop_dead_runs() -> None:
    """The first step of :func:`_prune_instances` (caller holds ``_mutex``): the edges of every run of
    the log whose locks are all gone, when they are a chain of their own (see :func:`_drop_if_dead`).
    Removing dead locks with no edge into them, one after the other, would take them all: this does
    it in one pass over the run, before the general pass (which then walks only what is left: for
    a fan-out of futures, the runs of the futures still alive)."""
    keep = [run for run in _run_log if not _drop_if_dead(run)]
    if len(keep) > RUN_LOG_MAX:  # runs of long-lived locks: the general pass still prunes their edges
        del keep[: len(keep) - RUN_LOG_MAX]
    _run_log.clear()
    _run_log.extend(keep)


def _prune_instances() -> None:
    """Forget the edges of locks the garbage collector took (caller holds ``_mutex``), where no path
    between other locks goes through them: a dead lock with no edge into it, or none out of it.
    A dead lock between two live ones stays (``a -> dead -> b`` is still ``a -> b``)."""
    before = len(_inst_in)
    alive_all = _graph_alive[0]
    if alive_all is not None and alive_all(_inst_in):
        # Nothing to forget (the pass takes only dead locks' edges, and runs of dead locks: those that
        # have no edge left stay in the log until _drop_old_runs reaches them).
        _next_prune(before, before)
        return
    _drop_dead_runs()
    alive: dict[int, bool] = {}
    succs: dict[int, list[int]] = {}
    for to, v in _inst_in.items():
        for run in (v,) if type(v) is list else v:
            same = run[5]
            i = run[2][to]
            if to not in alive:
                alive[to] = same[i][0]() is not None
            h = same[i - 1]
            if h[3] not in alive:
                alive[h[3]] = h[0]() is not None
            succs.setdefault(h[3], []).append(to)
    work = [n for n, live in alive.items() if not live and (n not in _inst_in or n not in succs)]
    removed: set[int] = set()
    while work:
        n = work.pop()
        if n in removed:
            continue
        removed.add(n)
        for run in _runs_into(n):  # its in-edges
            p = _pred(run, n)
            _inst_count[0] -= 1
            out = succs.get(p)
            if out is not None and n in out:
                out.remove(n)
                if not out and not alive.get(p, True) and p not in removed:
                    work.append(p)
        _inst_in.pop(n, None)
        for s in succs.pop(n, ()):  # its out-edges
            runs = _runs_into(s)
            if s in removed or not runs:
                continue
            rest = tuple(run for run in runs if _pred(run, s) != n)
            if len(rest) == len(runs):
                continue
            _inst_count[0] -= len(runs) - len(rest)
            if rest:
                _inst_in[s] = rest[0] if len(rest) == 1 else rest
            else:
                del _inst_in[s]
                if not alive.get(s, True):
                    work.append(s)
    _inst_has_out.clear()
    for to, v in _inst_in.items():
        for run in (v,) if type(v) is list else v:
            p = _pred(run, to)
            _inst_has_out[p] = _inst_has_out.get(p, 0) + 1
    _next_prune(before, len(_inst_in))


def _next_prune(before: int, after: int) -> None:
    """The next pass once the graph has doubled, or quadrupled when this one found almost nothing to
    forget (``before`` and ``after`` it): a wait() on 40,000 futures grows it by live locks only, and passes
    at 2k, 4k, ... 64k edges cost ~7% of such a program (bounded all the same: INSTANCE_MAX_EDGES prunes at
    once)."""
    _inst_prune_at[0] = max(INSTANCE_PRUNE_AT, (4 if after * 10 >= before * 9 else 2) * after)


def _instance_edge(a: int, b: int) -> tuple[Held, tuple[Any, ...]] | None:
    """The held entry of ``a`` and the record of the edge ``a -> b``."""
    for run in _runs_into(b):
        if _pred(run, b) == a:
            record = _record(run, b)
            return record[0], record
    return None


def _shortened(
    path: list[int], found: list[tuple[Held, tuple[Any, ...]]]
) -> tuple[list[int], list[tuple[Held, tuple[Any, ...]]]]:
    """The cycle ``path`` (with ``found[i]``, the edge ``path[i] -> path[i + 1]``) without the locks
    taken in between where a lock was still held when a later one was taken (the record's held
    locks): ``a -> b -> c`` becomes ``a -> c`` when ``a`` was held when ``c`` was taken."""
    n = len(path)
    at = {serial: i for i, serial in enumerate(path)}
    keep_path: list[int] = []
    keep_found: list[tuple[Held, tuple[Any, ...]]] = []
    i = 0
    while i < n:
        keep_path.append(path[i])
        jump = None
        held_then: Held | None = None
        for j in range(n - 1, i, -1):  # the farthest edge into path[j + 1] taken while path[i] was held
            if (j + 1) % n == i:
                continue
            record = found[j][1]
            held_then = next((h for h in record[5][: record[6]] if at.get(h[3]) == i), None)
            if held_then is not None:
                jump = j
                break
        if jump is None or held_then is None:
            keep_found.append(found[i])
            i += 1
        else:
            keep_found.append((held_then, found[jump][1]))
            i = jump + 1
    return keep_path, keep_found


def _report_instance_cycle(path: list[int], entry: Held) -> None:
    """Build and record the event of a cycle among locks of one class (``path``: its serials in
    the edges' direction, the last one leading back to the first)."""
    from conctools._lockname import instance_ordinal  # #1, #2 as the deadlock report says

    ordinals: dict[int, Any] = {}

    def name_of(h: Held) -> str:
        serial = h[3]
        if serial not in ordinals:
            prim = h[0]()
            ordinals[serial] = instance_ordinal(prim) if prim is not None else "?"
        return f"{h[2]} #{ordinals[serial]}"

    with _mutex:
        maybe = [_instance_edge(path[i], path[(i + 1) % len(path)]) for i in range(len(path))]
        found = [f for f in maybe if f is not None]
        if len(found) != len(path):
            return
        path, found = _shortened(path, found)
    keys = [f"{entry[1]}#{serial}" for serial in path]
    cycle = _canonical(keys)
    with _mutex:
        if cycle in _reported:
            return
        _reported.add(cycle)
    edges = []
    names: dict[str, str] = {}
    for i, (h, record) in enumerate(found):
        to_entry, stack = record[1], record[4]
        if stack is None and i == len(found) - 1:
            stack = capture_stack(3, limit=32)  # the edge taken now: its own stack, from check()'s caller
        a_name, b_name = name_of(h), name_of(to_entry)
        names[keys[i]] = a_name
        names[keys[(i + 1) % len(keys)]] = b_name
        edges.append(
            LockOrderEdge(
                from_lock=a_name,
                to_lock=b_name,
                from_site=site_text(h[4]),
                to_site=site_text(to_entry[4]),
                thread_name=record[2],
                task_name=record[3],
                stack=stack or (),
            )
        )
    # The event's order: the cycle rotated to its least key, as the class-level cycles are.
    start = keys.index(cycle[0])
    edges = edges[start:] + edges[:start]
    ident = threading.get_ident()
    get_recorder().record(
        LockOrderEvent(
            ts_ns=time.monotonic_ns(),
            thread_id=ident,
            thread_name=threading.current_thread().name,
            task_name=current_task_name(),
            cycle=tuple(names[k] for k in cycle),
            edges=tuple(edges),
        )
    )


_task_stacks: dict[int, list[Held]] = {}
# Empty stacks given back by forget_task(), reused by the next tasks: a program running thousands of
# short tasks that each take a lock once makes no list per task (less work for the garbage collector).
_spare_stacks: list[list[Held]] = []


def task_held_stack(task: object) -> list[Held]:
    """The held locks of an asyncio task (a live list, innermost last)."""
    stack = _task_stacks.get(id(task))
    if stack is None:
        stack = _spare_stacks.pop() if _spare_stacks else []
        _task_stacks[id(task)] = stack
    return stack


def forget_task(task: object) -> None:
    """Drop a task's (empty) held stack, keeping the table bounded by tasks holding locks."""
    stack = _task_stacks.get(id(task))
    if stack is not None and not stack:
        _task_stacks.pop(id(task), None)
        if len(_spare_stacks) < 64:
            _spare_stacks.append(stack)


def note_acquired(held: list[Held], entry: Held) -> None:
    """``entry`` was just acquired by the owner of ``held``: add edges, then push it."""
    if held:
        check(held, entry)
    held.append(entry)


def note_released(held: list[Held], prim: object) -> None:
    """``prim`` was released: drop its newest entry from ``held``."""
    if held and held[-1][0]() is prim:
        del held[-1]
        return
    _settle(held)
    # From both ends: concurrent.futures releases the conditions of wait() and as_completed() in
    # the order it took them (outermost first), which a walk from the top made O(n^2).
    i, j = len(held) - 1, 0
    while i >= j:
        if held[i][0]() is prim:
            del held[i]
            return
        if held[j][0]() is prim:
            del held[j]
            return
        i -= 1
        j += 1


def _new_edge(a: str, b: str, held: Held, entry: Held, a_name: str, b_name: str) -> None:
    stack = capture_stack(1, limit=32)
    edge = LockOrderEdge(
        from_lock=a_name,
        to_lock=b_name,
        from_site=site_text(held[4]),
        to_site=site_text(entry[4]),
        thread_name=threading.current_thread().name,
        task_name=current_task_name(),
        stack=stack,
    )
    with _mutex:
        if (a, b) in _edges:
            return
        if len(_edges) >= MAX_EDGES:
            if not _full[0]:
                _full[0] = True
                _log.warning("conctools: lock-order graph is full (%d edges); new edges are ignored", MAX_EDGES)
            return
        _edges[(a, b)] = edge
        _succ.setdefault(a, set()).add(b)
        _names[a] = a_name
        _names[b] = b_name
        path = _path(b, a)
        if path is None:
            return
        cycle = _canonical(path)  # b ... a, closing with the new edge a -> b
        if cycle in _reported:
            return
        _reported.add(cycle)
        edges = tuple(_edges[(cycle[i], cycle[(i + 1) % len(cycle)])] for i in range(len(cycle)))
    names = tuple(_names.get(k, k) for k in cycle)
    ident = threading.get_ident()
    get_recorder().record(
        LockOrderEvent(
            ts_ns=time.monotonic_ns(),
            thread_id=ident,
            thread_name=threading.current_thread().name,
            task_name=current_task_name(),
            cycle=names,
            edges=edges,
        )
    )


def _path(start: str, goal: str) -> list[str] | None:
    """A path start ->* goal in the graph (caller holds ``_mutex``), by depth-first search."""
    parent: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        node = todo.pop()
        if node == goal:
            out = [node]
            prev = parent[node]
            while prev is not None:
                out.append(prev)
                prev = parent[prev]
            out.reverse()
            return out
        for nxt in _succ.get(node, ()):
            if nxt not in parent:
                parent[nxt] = node
                todo.append(nxt)
    return None


def _canonical(path: list[str]) -> tuple[str, ...]:
    """The cycle ``path`` (first != last; the last links back to the first) rotated to start at its least key."""
    i = path.index(min(path))
    return tuple(path[i:] + path[:i])
