"""One pool's counters, live holders and findings, and the list of pools kept for the report."""

from __future__ import annotations

import _thread
import os
import sys
import threading
import time
import weakref
from types import FrameType, ModuleType

from conctools import recorder as _recorder
from conctools._context import current_frames
from conctools._imports import NO_RUNNING_LOOP, when_imported
from conctools._layout import own_dict
from conctools._log import get_logger
from conctools._typing import Any
from conctools.events import PoolExhaustedEvent, PoolHolder
from conctools.pools._holders import (
    MAX_DESCRIBED,
    TakeFrame,
    describe_semaphore,
    describe_task,
    describe_thread,
    take_frames,
    task_now,
    thread_who,
    user_stack,
)
from conctools.pools._looker import LOOKER
from conctools.recorder import Histogram, get_recorder

_log = get_logger("conctools.pools")

MAX_POOLS = 256  # pools kept for the report (those that were waited on); others are not listed
MAX_HELD = 1024  # live items whose holder is remembered, per pool
CHANNEL_AFTER = 256  # a queue that handed out this many items and got none back is a channel
SNAPSHOT_EVERY_S = 0.1  # at most one look at the holders per pool per this long as waits begin ...
EPISODE_SNAPSHOT_EVERY_S = 0.02  # ... or per this long when a new exhaustion begins
MAX_BLAME = 32  # distinct (state, site) groups tallied per pool
REPEAT_MIN = 10  # takes in a row by one task or thread from the same lines: an N+1 pattern
REPEAT_GAP_S = 0.5  # ... each begun within this long of its previous give-back (waits for the pool aside)
MAX_RUNS = 512  # parties whose current run of takes is followed, per pool
MAX_REPEATS = 16  # N+1 sites kept per pool
DEFAULT_THRESHOLD_S = 0.1

_mono = time.monotonic_ns
_get_running_loop: Any = NO_RUNNING_LOOP  # asyncio's once the program imports it (_bind_asyncio)
_get_ident = _thread.get_ident
_current_thread = threading.current_thread
_allocate_lock = _thread.allocate_lock
_wref = weakref.ref
# On 3.11 asyncio.current_task() costs a getpid(): the current task is read from asyncio's own
# loop -> task dict instead, keyed by the loop the queue last ran on (as conctools.aio does).
_tasks_get: Any = None


def _bind_asyncio(asyncio: ModuleType) -> None:
    global _get_running_loop, _tasks_get
    _get_running_loop = asyncio._get_running_loop
    if sys.version_info < (3, 12):
        current_tasks = getattr(asyncio.tasks, "_current_tasks", None)
        _tasks_get = current_tasks.get if isinstance(current_tasks, dict) else None


when_imported("asyncio", _bind_asyncio)

Holding = tuple[int, Any, Any, tuple[TakeFrame, ...], tuple[bool, Any]]


def _keep(item: Any) -> tuple[bool, Any]:
    if type(item).__weakrefoffset__:  # its type takes weak references (a try/except costs more)
        try:
            return (True, _wref(item))
        except TypeError:
            pass
    return (False, item)


def _same(keep: tuple[bool, Any], item: Any) -> bool:
    return (keep[1]() if keep[0] else keep[1]) is item


class _Run:
    """One party's current run of takes from the same lines (the N+1 detector)."""

    __slots__ = ("count", "last_ns", "party", "sig", "waiting_since")

    def __init__(self, sig: tuple[Any, ...], party: Any, now: int) -> None:
        self.sig = sig
        self.party = party  # a weak reference to the task or thread
        self.count = 1
        self.last_ns = now  # its last take or give-back
        self.waiting_since = 0  # when its current take began to wait for the pool (0: it did not)


def _speedups_module() -> Any:
    """``conctools._speedups`` where the C extension is built and up to date (it has ``PoolCounters``), else
    ``None`` (and under ``CONCTOOLS_PURE_PYTHON=1``)."""
    if os.environ.get("CONCTOOLS_PURE_PYTHON"):
        return None
    try:
        from conctools import _speedups
    except ImportError:
        return None
    return _speedups if isinstance(getattr(_speedups, "PoolCounters", None), type) else None


# The C extension, or None. PoolState's base is its PoolCounters (the wait counters, ``takes`` and
# ``identities`` are C fields, which the C hooks of an asyncio semaphore's waits and the C
# asyncio.Queue.get_nowait add to in place: issue 12; Python reads and writes them as attributes, as ever),
# else ``object``.
SPEEDUPS: Any = _speedups_module()
_CountersBase: Any = SPEEDUPS.PoolCounters if SPEEDUPS is not None else object
# The waits that the C hooks counted but did not add to wait_hist yet (see PoolState._sync_hist); None: there
# are none (pure Python, or a build before API 34, whose hooks add to wait_hist themselves).
_TAKE_HIST: Any = getattr(_CountersBase, "_take_hist", None)


class PoolState(_CountersBase):  # type: ignore[misc]
    """Counters, live holders and findings of one pool. Updated under its own plain lock."""

    def __init__(
        self, kind: str, items: str, name: str | None, created_at: str, obj: Any, in_loop: bool = False
    ) -> None:
        super().__init__()
        self.mutex = _allocate_lock()
        self.in_loop = in_loop  # an asyncio pool: it is looked at on its event loop
        self._loop: Any = None  # the loop it last ran on, and that loop's thread (see _task)
        self._loop_ident = 0
        self.kind = kind
        self.items = items
        self.name = name
        self.created_at = created_at
        try:
            self.ref: Any = _wref(obj)
        except TypeError:
            self.ref = None
        self.semaphore = kind.endswith("Semaphore")
        self.takes = 0
        self.returns = 0
        self.waits = 0
        self.wait_hist = Histogram()
        self.waiters = 0
        self.episodes = 0
        self.long_episodes = 0
        self.exhausted_ns = 0
        self.episode_start_ns = 0
        self.episode_waits = 0
        self.episode_max = 0
        self.episode_who: tuple[int, str, str | None] = (0, "", None)
        self.episode_snapshot: tuple[tuple[PoolHolder, ...], int, int] | None = None
        self.last_snapshot_ns = 0
        self.longest: dict[str, Any] | None = None
        self.capacity = 0
        self.samples = 0
        self.blame: dict[tuple[str, ...], list[Any]] = {}
        self.held: dict[int, Any] = {}
        self.identities = True
        self.runs: dict[int, _Run] = {}
        self.repeats: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.listed = False
        own_dict(self)  # (3.13+: its C base rules out inline values; see conctools._layout)

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # A queue that is pickled or deep-copied must stay so: its copy starts without a state.
        return (_no_state, ())

    @property
    def display_name(self) -> str:
        return self.name or self.created_at

    def _sync_hist(self) -> None:
        """Add the waits that the C hooks counted since the last call to ``wait_hist`` (caller holds the mutex).

        A wait that ends in an exhaustion's middle is counted in C (PoolCounters' buckets, no Python int made);
        everything that reads or adds to ``wait_hist`` calls this first: the last waiter of an exhaustion
        (:meth:`wait_ended`), the pool table (:meth:`reset` forgets them with the rest)."""
        taken = _TAKE_HIST(self) if _TAKE_HIST is not None else None
        if taken is not None:
            pending = Histogram()
            pending.buckets, pending.count, pending.total_ns, pending.max_ns = taken
            self.wait_hist.merge(pending)

    def reset(self) -> None:
        with self.mutex:
            self.takes = self.returns = self.waits = 0
            if _TAKE_HIST is not None:
                _TAKE_HIST(self)  # the waits counted in C and not handed on yet: forgotten with the rest
            self.wait_hist = Histogram()
            self.episodes = self.long_episodes = self.exhausted_ns = 0
            self.longest = None
            self.samples = 0
            self.blame.clear()
            self.repeats.clear()
            self.runs.clear()
            self.capacity = 0
            self.listed = False

    # ---- takes and returns (queues) ----
    def _task(self) -> Any:
        """The running task (3.11: the loop this queue last ran on is remembered, as conctools.aio does,
        because ``asyncio.current_task()`` costs a ``getpid()`` there)."""
        if _tasks_get is not None and self.in_loop:
            if self._loop_ident == _get_ident():
                task = _tasks_get(self._loop)
                if task is not None:
                    return task
            loop = _get_running_loop()
            if loop is None:
                return None
            self._loop, self._loop_ident = loop, _get_ident()
            return _tasks_get(loop)
        return task_now()

    def take(self, item: Any, frame: FrameType | None) -> None:
        try:
            if not self.identities:
                with self.mutex:
                    self.takes += 1
                return
            now = _mono()
            taken = take_frames(frame)
            thread = _current_thread()
            task = self._task()
            holding: Holding = (now, thread, _wref(task) if task is not None else None, taken, _keep(item))
            report_repeat = None
            with self.mutex:
                self.takes += 1
                key = id(item)
                prev = self.held.get(key)
                if prev is None:
                    self.held[key] = holding
                elif isinstance(prev, list):
                    prev.append(holding)
                else:
                    self.held[key] = [prev, holding]
                if len(self.held) > MAX_HELD:
                    del self.held[next(iter(self.held))]
                if self.returns == 0 and self.takes >= CHANNEL_AFTER:
                    self.identities = False  # a channel: items never come back
                    self.held.clear()
                    self.runs.clear()
                    return
                report_repeat = self._note_run(task if task is not None else thread, holding[2], taken, now)
            if report_repeat is not None:
                self._record_repeat(report_repeat, frame, task, thread)
        except Exception:
            _log.debug("conctools: recording a pool take failed", exc_info=True)

    def _note_run(self, party: Any, party_ref: Any, taken: tuple[TakeFrame, ...], now: int) -> tuple[Any, ...] | None:
        """Count takes in a row from the same lines by one party (caller holds the mutex)."""
        if not taken:
            return None
        first = taken[0]
        if len(taken) > 1:
            second = taken[1]
            sig: tuple[Any, ...] = (id(first[1]), first[2], id(second[1]), second[2])
        else:
            sig = (id(first[1]), first[2])
        key = id(party)
        run = self.runs.get(key)
        # The gap is measured to when this take began: time spent waiting for the pool is not a pause.
        began = run.waiting_since if run is not None and run.waiting_since else now
        if run is not None and run.party() is party and run.sig == sig and began - run.last_ns <= REPEAT_GAP_S * 1e9:
            run.count += 1
            run.last_ns = now
            run.waiting_since = 0
            entry = self.repeats.get(sig)
            if entry is not None and run.count > entry["max_run"]:
                entry["max_run"] = run.count
            return sig if run.count == REPEAT_MIN else None
        if run is None and len(self.runs) >= MAX_RUNS:
            del self.runs[next(iter(self.runs))]
        self.runs[key] = _Run(sig, party_ref if party_ref is not None else _wref(party), now)
        return None

    def _record_repeat(self, sig: tuple[Any, ...], frame: FrameType | None, task: Any, thread: Any) -> None:
        stack, loop_index = user_stack(frame)
        if loop_index < 0:
            return  # the same lines, but not from a loop: straight-line code that queries a few times
        if task is not None:
            try:
                who = f"task {task.get_name()!r}"
            except Exception:
                who = "a task"
        else:
            who = thread_who(thread)
        with self.mutex:
            entry = self.repeats.get(sig)
            if entry is None:
                if len(self.repeats) >= MAX_REPEATS:
                    return
                self.repeats[sig] = {
                    "runs": 1,
                    "max_run": REPEAT_MIN,
                    "stack": stack,
                    "loop_frame": loop_index,
                    "who": who,
                }
            else:
                entry["runs"] += 1
            list_state(self)

    def give_back(self, item: Any) -> Any:
        """An item is put back: forget its holder; returns the holding (for :meth:`undo`)."""
        if not self.identities and not self.held:
            return None  # a channel holds nobody's items (take() keeps none once it is one): no lock per put
        try:
            with self.mutex:
                key = id(item)
                found = self.held.pop(key, None)
                if found is None:
                    return None
                if type(found) is tuple:  # one holder: the common case
                    if not _same(found[4], item):
                        return None  # the holder's item died: this is a new object at its address
                    held = found
                else:
                    live = [h for h in found if _same(h[4], item)]
                    if not live:
                        return None
                    held = _mine(live)
                    rest = [h for h in live if h is not held]
                    if rest:
                        self.held[key] = rest if len(rest) > 1 else rest[0]
                self.returns += 1
                party = held[2]() if held[2] is not None else held[1]
                run = self.runs.get(id(party)) if party is not None else None
                if run is not None and run.party() is party:
                    run.last_ns = _mono()
                return held
        except Exception:
            _log.debug("conctools: recording a pool return failed", exc_info=True)
            return None

    def undo(self, item: Any, holding: Any) -> None:
        """The put that :meth:`give_back` announced failed (a full queue): the holder keeps it."""
        with self.mutex:
            self.returns -= 1
            self.held.setdefault(id(item), holding)

    # ---- waits ----
    def wait_started(self, obj: Any) -> int:
        """Someone must wait for an item. Returns the wait's start (``0``: not recorded)."""
        try:
            now = _mono()
            snapshot = False
            with self.mutex:
                self.waits += 1
                self.waiters += 1
                if self.waiters == 1:
                    self.episode_start_ns = now
                    self.episode_waits = 0
                    self.episode_max = 0
                    self.episode_snapshot = None
                    thread = _current_thread()
                    task = task_now()
                    self.episode_who = (
                        thread.ident or 0,
                        thread.name,
                        task.get_name() if task is not None else None,
                    )
                    if self.identities or self.semaphore:
                        loop = _get_running_loop() if self.in_loop else None
                        LOOKER.watch(self, loop, now)  # later looks while it stays exhausted
                self.episode_waits += 1
                if self.waiters > self.episode_max:
                    self.episode_max = self.waiters
                if self.runs:  # a run of takes (N+1) goes on even when this take must wait
                    me = task_now() or _current_thread()
                    run = self.runs.get(id(me))
                    if run is not None and run.party() is me:
                        run.waiting_since = now
                since = now - self.last_snapshot_ns
                if (self.identities or self.semaphore) and (
                    since >= SNAPSHOT_EVERY_S * 1e9
                    or (self.episode_snapshot is None and since >= EPISODE_SNAPSHOT_EVERY_S * 1e9)
                ):
                    self.last_snapshot_ns = now
                    snapshot = True
                if not self.listed:
                    list_state(self)
            if snapshot:
                self.look(obj, now)
            return now
        except Exception:
            _log.debug("conctools: recording a pool wait failed", exc_info=True)
            return 0

    def wait_ended(self, start_ns: int) -> None:
        """A wait that :meth:`wait_started` returned ``start_ns`` for is over (got, timed out, cancelled)."""
        if not start_ns:
            return
        try:
            now = _mono()
            event = None
            with self.mutex:
                self._sync_hist()
                _recorder.hist_add(self.wait_hist, now - start_ns)  # (the C one once conctools.locks loaded it)
                if self.waiters > 1:
                    self.waiters -= 1
                else:
                    self.waiters = 0
                    event = self._episode_over(now)
            if event is not None:
                get_recorder().record(event)
        except Exception:
            _log.debug("conctools: recording a pool wait's end failed", exc_info=True)

    def _episode_over(self, now: int) -> PoolExhaustedEvent | None:
        """The last waiter got its item: close the episode (caller holds the mutex)."""
        duration = now - self.episode_start_ns
        self.episodes += 1
        self.exhausted_ns += duration
        holders, capacity, held = self.episode_snapshot or ((), 0, 0)
        if self.longest is None or duration > self.longest["duration_ns"]:
            self.longest = {
                "start_ns": self.episode_start_ns,
                "duration_ns": duration,
                "capacity": capacity,
                "held": held,
                "waits": self.episode_waits,
                "max_waiters": self.episode_max,
                "holders": holders,
            }
        if duration < threshold_ns[0] or (self.returns == 0 and not self.semaphore):
            return None
        self.long_episodes += 1
        tid, tname, task_name = self.episode_who
        return PoolExhaustedEvent(
            ts_ns=self.episode_start_ns,
            thread_id=tid,
            thread_name=tname,
            task_name=task_name,
            pool_name=self.display_name,
            pool_kind=self.kind,
            items=self.items,
            duration_s=duration / 1e9,
            capacity=capacity,
            held=held,
            waits=self.episode_waits,
            max_waiters=self.episode_max,
            holders=holders,
        )

    # ---- who holds the items now ----
    def look(self, obj: Any, now: int) -> None:
        """Describe the holders now: as a wait begins, and a few times while the pool stays exhausted
        (see :mod:`conctools.pools._looker`). The tally counts every look; the exhaustion keeps its latest."""
        holders, capacity, held = self._describe_queue(obj, now) if not self.semaphore else describe_semaphore(obj)
        with self.mutex:
            self.samples += 1
            self.capacity = max(self.capacity, capacity)
            # The exhaustion keeps its latest look, preferring those with every item out (a look can land
            # between a give-back and the woken waiter's take). A semaphore's look counts its holders only
            # (capacity = held): one that lands while every slot is being handed on sees none, "0 of 0",
            # which is not a full look and must not replace one that saw them all.
            kept = self.episode_snapshot
            full = capacity > 0 and held >= capacity
            kept_full = kept is not None and kept[1] > 0 and kept[2] >= kept[1]
            if self.waiters > 0 and (not kept_full or (full and kept is not None and held >= kept[2])):
                self.episode_snapshot = (holders, capacity, held)
            for h in holders:
                key = (h.party, h.state, h.call or "", h.site, h.function, h.acquired_at)
                entry = self.blame.get(key)
                if entry is None:
                    if len(self.blame) >= MAX_BLAME:
                        continue
                    entry = self.blame[key] = [0, h.line]
                entry[0] += 1

    def _describe_queue(self, q: Any, now: int) -> tuple[tuple[PoolHolder, ...], int, int]:
        with self.mutex:
            holdings: list[Holding] = []
            for h in self.held.values():
                if isinstance(h, list):
                    holdings.extend(h)
                else:
                    holdings.append(h)
        try:
            available = int(q.qsize())
        except Exception:
            available = 0
        frames_now: dict[int, FrameType] | None = None
        out = []
        for since, thread, task_ref, taken, _keep_ref in holdings[:MAX_DESCRIBED]:
            held_s = (now - since) / 1e9
            if task_ref is not None:
                out.append(describe_task(task_ref(), getattr(thread, "name", "?"), taken, held_s))
            else:
                if frames_now is None:
                    frames_now = current_frames(own_from=1)
                out.append(describe_thread(thread, getattr(thread, "name", "?"), taken, held_s, frames_now))
        return tuple(out), len(holdings) + available, len(holdings)


def _no_state() -> None:
    return None


def _mine(holdings: list[Any]) -> Any:
    """Of several holders of equal items (small ints, None tokens), the caller's, else the oldest."""
    me_thread = _current_thread()
    me_task = task_now()
    for h in holdings:
        if (me_task is not None and h[2] is not None and h[2]() is me_task) or (h[2] is None and h[1] is me_thread):
            return h
    return holdings[0]


registry_mutex = _allocate_lock()
listed: list[PoolState] = []  # pools that were waited on (or showed an N+1 run), for the report
threshold_ns = [int(DEFAULT_THRESHOLD_S * 1e9)]


def list_state(state: PoolState) -> None:
    """Keep ``state`` for the report (caller may hold ``state.mutex``; this takes ``registry_mutex``)."""
    if state.listed:
        return
    with registry_mutex:
        if not state.listed and len(listed) < MAX_POOLS:
            state.listed = True
            listed.append(state)


def reset() -> None:
    """Forget every pool's statistics (the pools themselves keep working)."""
    with registry_mutex:
        states = list(listed)
        listed.clear()
    for state in states:
        state.reset()
