"""The watchdog thread: scans the program, reports deadlocks and hangs, raises in main if asked."""

from __future__ import annotations

import gc
import linecache
import os
import signal
import threading
import time
import types
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import FrameType

from conctools import casualties, registry, taskdump
from conctools._context import current_frames, internal_thread, wait_lock
from conctools._log import get_logger
from conctools._records import replace
from conctools._typing import Any, Literal
from conctools.deadlock.blame import explain
from conctools.deadlock.graph import (
    PartyKey,
    WaitEdge,
    WaitGraph,
    _is_sync_kind,
    build_wait_graph,
    cycle_key,
    describe_cycle,
    find_deadlocks,
    participants_of,
    short_file,
    stuck_parties,
)
from conctools.deadlock.threads import _SELECTORS_PY, ThreadState, _stack, classify_thread
from conctools.deadlock.waits import SinceTracker, WaitReader, _chained_source
from conctools.events import DeadlockEvent, Frame, HangEvent, Participant, WaiterInfo
from conctools.recorder import Recorder, get_recorder
from conctools.registry import Party, PrimitiveState

__all__ = ["EXIT_DEADLOCK", "EXIT_HANG", "DeadlockError", "DeadlockWatchdog", "HangError", "watch_deadlocks"]

_log = get_logger("conctools.deadlock")
_WARNING, _DEBUG = 30, 10  # logging's levels, without importing logging (a followed child's watchdog does without)

#: Exit status of ``conctools run`` when it found a deadlock (and printed the report).
EXIT_DEADLOCK = 86
#: Exit status of ``conctools run`` when it found a hang without a cycle (and printed the report).
EXIT_HANG = 87

WATCHDOG_THREAD_NAME = "conctools-watchdog"
_STDLIB_PREFIX = os.path.dirname(threading.__file__) + os.sep
_MAX_KEPT = 1000  # events kept in ``deadlocks`` / ``hangs`` (the recorder keeps its own)


class DeadlockError(RuntimeError):
    """A wait-for cycle: raised in the main thread by ``watch_deadlocks(raise_in="main")``.

    ``cycle`` holds the participants (each with what it waits for, who holds it and where),
    ``event`` the recorded :class:`~conctools.events.DeadlockEvent`.
    """

    def __init__(self, cycle: tuple[Participant, ...], event: DeadlockEvent) -> None:
        self.cycle = cycle
        self.event = event
        super().__init__(describe_cycle(cycle))


class HangError(DeadlockError):
    """A hang (no cycle conctools can prove, e.g. a deadlock among locks it does not trace):
    raised in the main thread by ``watch_deadlocks(raise_in="main")``.

    ``cycle`` is empty; ``event`` is the recorded :class:`~conctools.events.HangEvent`.
    """

    def __init__(self, event: HangEvent) -> None:  # type: ignore[override]
        self.cycle = ()
        self.event = event  # type: ignore[assignment]
        RuntimeError.__init__(self, f"hang: {event.reason}")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _holder_notes(cycle: Sequence[WaitEdge], graph: WaitGraph, reader: WaitReader) -> list[str]:
    """What a self-wait's report should add about who really holds the lock: the suspended
    task of the same loop, or the suspended generator, whose code took it (a best guess, said so)."""
    edge = cycle[0]
    prim = edge.prim
    if len(cycle) != 1 or prim is None:
        return []
    site = next((h.site for p, h in graph.holds.get(edge.waiter_key, ()) if p.prim_id == prim.prim_id), "?")
    if not site or site == "?":
        return []
    filename, _, line = site.rpartition(":")
    if not line.isdigit():
        return []
    lineno = int(line)
    notes = []
    if edge.waiter.task_name is not None:
        for loop, tid in reader.loops():
            if tid != edge.waiter.thread_id:
                continue
            for task in taskdump.pending_tasks(loop):
                if id(task) == edge.waiter.task_id:
                    continue
                frame = _frame_inside(taskdump._await_frames(taskdump._task_coro(task)), filename, lineno)
                if frame is not None:
                    name = getattr(task, "get_name", lambda: "?")()
                    notes.append(
                        f"Task {name!r} is suspended at {_frame_words(frame)}, inside {frame.f_code.co_name}(),"
                        f" the code that took it at {site}: it probably holds it."
                    )
    else:
        for gen in _suspended_generators(filename):
            frame = _frame_inside([gen.gi_frame], filename, lineno)
            if frame is not None:
                notes.append(
                    f"That was inside generator {frame.f_code.co_name}(), which is suspended at"
                    f" {_frame_words(frame)} and was never resumed: the lock stays held while the generator waits."
                )
    return notes[:3]


def _has_producer(reader: WaitReader, fut: Any) -> bool:
    """conctools knows who completes the executor job behind an asyncio future."""
    source = _chained_source(fut)
    return source is not None and reader.future_producers(source) is not None


def _condition_locks() -> dict[int, str]:
    """Traced locks that are a traced Condition's lock: id -> ``Condition 'name'`` (a lock-order
    inversion through a Condition then says so)."""
    out: dict[int, str] = {}
    try:
        for prim in registry.live():
            lock = getattr(prim, "_lock", None)
            if type(prim).__name__ == "Condition" and lock is not None and hasattr(lock, "_conctools_state"):
                out[id(lock)] = f"Condition {getattr(prim, '_ct_name', '?')!r}"
    except Exception:  # a name is a nicety: the report goes out without it
        _log.debug("conctools: could not list the conditions' locks", exc_info=True)
    return out


def _frame_inside(frames: Iterable[FrameType | None], filename: str, lineno: int) -> FrameType | None:
    """The frame of ``frames`` whose code holds line ``lineno`` of ``filename``, now past it."""
    for frame in frames:
        if frame is None or filename not in (frame.f_code.co_filename, short_file(frame.f_code.co_filename)):
            continue
        lines = {ln for _, _, ln in frame.f_code.co_lines() if ln is not None}
        if lineno in lines and (frame.f_lineno or 0) >= lineno:
            return frame
    return None


def _frame_words(frame: FrameType) -> str:
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno or 0).strip()
    where = f"{short_file(frame.f_code.co_filename)}:{frame.f_lineno}"
    return f"{where} ({line})" if line else where


def _suspended_generators(filename: str) -> list[Any]:
    """Suspended generators whose code is in ``filename`` (a walk of the heap: only for a report)."""
    out = []
    for obj in gc.get_objects():
        if isinstance(obj, types.GeneratorType):
            frame = obj.gi_frame
            if (
                frame is not None
                and not obj.gi_running
                and short_file(frame.f_code.co_filename) in (filename, short_file(filename))
            ):
                out.append(obj)
                if len(out) >= 50:
                    break
    return out


# Handlers of tools watching the program, not of the program: a deadline is not a wake-up.
_TOOL_HANDLER_MODULES = ("conctools", "pytest_timeout", "_pytest", "pytest")
_TIMER_SIGNALS = {
    getattr(signal, name): getattr(signal, timer)
    for name, timer in (("SIGALRM", "ITIMER_REAL"), ("SIGVTALRM", "ITIMER_VIRTUAL"), ("SIGPROF", "ITIMER_PROF"))
    if hasattr(signal, name) and hasattr(signal, timer)
}


def _program_signal_handlers() -> list[int]:
    """Signals the program handles in Python and that may still arrive.

    Such a handler runs in the main thread and may release what everyone waits for, so a
    program waiting for one (a server parked until SIGTERM) is idle, not hung. SIGINT (Ctrl-C
    is how a person stops a hung program, whoever handles it: asyncio.run does), the
    handlers of conctools and test tools, and timer signals whose timer is not armed do not
    count.
    """
    out = []
    for signum in signal.valid_signals():
        if signum == signal.SIGINT:
            continue
        try:
            handler = signal.getsignal(signum)
        except (ValueError, OSError):
            continue
        if not callable(handler) or handler is signal.default_int_handler:
            continue
        if str(getattr(handler, "__module__", "") or "").startswith(_TOOL_HANDLER_MODULES):
            continue
        timer = _TIMER_SIGNALS.get(signum)
        if timer is not None:
            try:
                if signal.getitimer(timer) == (0.0, 0.0):
                    continue  # nothing will send it
            except (OSError, AttributeError):
                pass
        out.append(int(signum))
    return out


DeadlockCallback = Callable[[DeadlockEvent], object]
HangCallback = Callable[[HangEvent], object]


def _frame_signature(frame: FrameType | None) -> tuple[int, int, int]:
    """Where a thread is, precisely enough to notice that it moved between two scans."""
    if frame is None:
        return (0, 0, 0)
    return (id(frame.f_code), frame.f_lasti, id(frame))


def _pick_signal() -> int | None:
    """A signal to wake the main thread with (a spare real-time one, else SIGUSR2)."""
    rtmin = getattr(signal, "SIGRTMIN", None)
    if rtmin is not None:
        return int(rtmin) + 3
    usr2 = getattr(signal, "SIGUSR2", None)
    return int(usr2) if usr2 is not None else None


def _who_waits(threads: int, tasks: int) -> str:
    """The hang's reason in words: one waiter waits for what nobody will do; several wait on each other."""
    parts = [f"{n} {what}{'' if n == 1 else 's'}" for n, what in ((threads, "thread"), (tasks, "task")) if n]
    if threads + tasks == 1:
        return f"the only {'thread' if threads else 'task'} waits forever on something nothing left running will do"
    return f"all {' and '.join(parts)} wait forever on something only another waiting one could release"


class _RegistryWaits:
    """What each thread waits on in the registry (a traced threading primitive), read during one
    scan: each primitive's state is built once, however many threads wait on it. (Built per thread,
    1,000 threads parked on one Event cost a million waiter records a scan: 6 s.)"""

    __slots__ = ("_keys", "_states", "_waiting")

    def __init__(self) -> None:
        self._keys: dict[int, list[tuple[int, int | None]]] | None = None
        self._waiting: dict[tuple[int, int | None], Any] = {}
        self._states: dict[int, tuple[PrimitiveState | None, dict[int, Party]]] = {}

    def _index(self) -> dict[int, list[tuple[int, int | None]]]:
        # (no registry.promote_waits(): the waits not yet in _waiting are tasks', which this index skips)
        waiting = getattr(registry, "_waiting", None)
        index: dict[int, list[tuple[int, int | None]]] = {}
        if isinstance(waiting, dict):
            self._waiting = waiting
            try:
                keys = list(waiting)
            except RuntimeError:  # changed size while copied: nothing known this scan
                keys = []
            for key in keys:
                index.setdefault(key[0], []).append(key)
        self._keys = index
        return index

    def __call__(self, thread_id: int) -> tuple[Party, PrimitiveState] | None:
        """The threading primitive ``thread_id`` waits on now (any task of it), if it is traced."""
        index = self._keys if self._keys is not None else self._index()
        for key in index.get(thread_id) or ((thread_id, None),):
            prim = self._waiting.get(key)
            if isinstance(prim, weakref.ref):  # (an entry made by an older writer)
                prim = prim()
            if prim is None:
                continue
            # The tasks of a busy loop wait on asyncio primitives (thousands on one semaphore): each
            # is skipped by its kind, before building its state.
            kind = registry.kind_of(prim)
            if kind is not None and not _is_sync_kind(kind):
                continue
            known = self._states.get(id(prim))
            if known is None:
                state = registry.state_of(prim)
                parties: dict[int, Party] = {}
                if state is not None and _is_sync_kind(state.kind):
                    for party in state.waiters:
                        parties.setdefault(party.thread_id, party)
                known = self._states[id(prim)] = (state, parties)
            found = known[1].get(thread_id)
            if found is not None and known[0] is not None:
                return found, known[0]
        return None


def _safely(predicate: Callable[[FrameType], bool], frame: FrameType) -> bool:
    try:
        return bool(predicate(frame))
    except Exception:
        return False


class DeadlockWatchdog:
    """A daemon thread that finds deadlocks and hangs; see the module docstring.

    ``deadlocks`` and ``hangs`` list what it found (each deadlock once). ``on_deadlock`` and
    ``on_hang`` are called from the watchdog thread (an exception there is logged, never
    raised). With ``raise_in="main"`` (started from the main thread, POSIX) a deadlock also
    raises :class:`DeadlockError` in the main thread, even when it is blocked in a wait.

    >>> watchdog = DeadlockWatchdog(timeout_s=5.0)
    >>> watchdog.start(); watchdog.stop()
    >>> watchdog.hangs
    []
    """

    def __init__(
        self,
        timeout_s: float = 10.0,
        *,
        on_deadlock: DeadlockCallback | None = None,
        on_hang: HangCallback | None = None,
        raise_in: Literal["main"] | None = None,
        recorder: Recorder | None = None,
        detect_hangs: bool = True,
        interval_s: float | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if raise_in not in (None, "main"):
            raise ValueError(f"raise_in must be None or 'main', got {raise_in!r}")
        self.timeout_s = float(timeout_s)
        self.interval_s = interval_s if interval_s is not None else min(1.0, max(0.05, self.timeout_s / 4))
        self.on_deadlock = on_deadlock
        self.on_hang = on_hang
        self.raise_in = raise_in
        self.detect_hangs = detect_hangs
        self.deadlocks: list[DeadlockEvent] = []
        self.hangs: list[HangEvent] = []
        self._recorder = recorder
        self._stop_lock = wait_lock()
        self._thread: threading.Thread | None = None
        self._seen: set[frozenset[tuple[PartyKey, int]]] = set()
        self._live_cycles: set[frozenset[tuple[PartyKey, int]]] = set()
        self._signatures: dict[int, Hashable] = {}
        self._wait_seen: dict[tuple[int, int | None], int] = {}
        self._frame_seen: dict[int, Hashable] = {}
        self._all_blocked_since_ns: int | None = None
        self._hang_reported = False
        self._pending_raise: DeadlockError | None = None
        self._signal: int | None = None
        self._previous_handler: Any = None
        self._since = SinceTracker()
        self._parked: dict[int, tuple[Hashable, int]] = {}
        self._stuck_threads: frozenset[int] = frozenset()
        # Threads that are not the program's (a test runner's channel to its controller): True for
        # a thread's innermost frame means it is left out of the hang check. Set by the pytest plugin.
        self.not_the_programs: Callable[[FrameType], bool] | None = None
        self._loop_undo: dict[int, tuple[weakref.ref[Any], Callable[[], None]]] = {}

    # ---- control ----
    def start(self) -> None:
        """Start the watchdog thread (idempotent)."""
        if self._thread is not None:
            return
        if self._recorder is None:
            self._recorder = get_recorder()
        if self.raise_in == "main":
            self._install_raiser()
        casualties.install(self._recorder)
        self._stop_lock.acquire()
        thread = internal_thread(self._run, WATCHDOG_THREAD_NAME)
        self._thread = thread
        thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the watchdog thread and wait for it (promptly: it sleeps on a lock we release)."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        try:
            self._stop_lock.release()
        except RuntimeError:
            pass
        if thread is not threading.current_thread():
            thread.join(timeout_s)
        self._uninstall_raiser()
        casualties.uninstall()
        for _ref, undo in list(self._loop_undo.values()):
            undo()
        self._loop_undo.clear()

    def __enter__(self) -> DeadlockWatchdog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop_lock.acquire(timeout=self.interval_s):
            try:
                self.scan()
            except Exception:  # the watchdog must survive anything the program does
                _log.exception("conctools: watchdog scan failed")
        self._stop_lock.release()

    # ---- one scan ----
    def scan(self) -> tuple[list[DeadlockEvent], HangEvent | None]:
        """Look once: new deadlocks (each reported once) and a new hang, if any.

        The watchdog thread calls this every ``interval_s``; tests and tools may call it too.
        """
        now = time.monotonic_ns()
        frames = current_frames()
        threads = {t.ident: t for t in threading.enumerate() if t.ident is not None}
        self._note_parked(frames, now)
        # Loops are looked up only while one idles in select(): a busy program pays nothing here.
        loops = taskdump.running_loops() if any(f.f_code.co_filename == _SELECTORS_PY for f in frames.values()) else []
        self._watch_loop_failures(loops)
        new_deadlocks: list[DeadlockEvent] = []
        # The full graph only when some wait has lasted the timeout: cheap for a healthy program.
        if self._long_waits(now) or self._parked_in_a_wait(frames, now) or self._idle_loop_with_tasks(loops):
            reader = WaitReader(frames, threads, now, self._since, parked_since=self._parked_since())
            self._since.begin()
            try:
                deps = reader.dependencies()
            finally:
                self._since.end()
            graph = build_wait_graph(registry.primitives(), deps)
            stuck = stuck_parties(graph, now_ns=now, min_wait_s=self.timeout_s)
            self._stuck_threads = frozenset(k[1] for k in stuck if k[0] == "thread")
            new_deadlocks = self._check_deadlocks(graph, frames, now, reader)
        else:
            self._live_cycles = set()
            self._stuck_threads = frozenset()
        hang = None
        if self.detect_hangs:
            hang = self._check_hang(frames, now)
        return new_deadlocks, hang

    def _note_parked(self, frames: Mapping[int, FrameType], now: int) -> None:
        """Since when each thread has been exactly where it is (waits read from frames have no
        start time of their own)."""
        parked = {}
        for tid, frame in frames.items():
            signature = _frame_signature(frame)
            previous = self._parked.get(tid)
            parked[tid] = previous if previous is not None and previous[0] == signature else (signature, now)
        self._parked = parked

    def _parked_since(self) -> dict[int, int]:
        return {tid: since for tid, (_, since) in self._parked.items()}

    def _parked_in_a_wait(self, frames: Mapping[int, FrameType], now: int) -> bool:
        """Some thread has sat in ``Thread.join()`` or ``Future.result()`` for the timeout."""
        limit = self.timeout_s * 1e9
        for tid, (_, since) in self._parked.items():
            if now - since < limit:
                continue
            frame = frames.get(tid)
            depth = 0
            while frame is not None and depth < 4:
                code = frame.f_code
                if code.co_name in ("join", "_wait_for_tstate_lock", "result") and code.co_filename.startswith(
                    _STDLIB_PREFIX
                ):
                    return True
                frame = frame.f_back
                depth += 1
        return False

    @staticmethod
    def _idle_loop_with_tasks(loops: Iterable[Any]) -> bool:
        """An event loop sits in select() with tasks but nothing of its own to wake them: its
        tasks may wait on jobs or coroutines of other threads (followed in the full graph)."""
        for loop in loops:
            try:
                if taskdump.loop_idle_forever(loop, allow_futures=True):
                    return True
            except Exception:
                continue
        return False

    def _watch_loop_failures(self, loops: Iterable[Any]) -> None:
        """Note the tasks that die unretrieved on every running loop (once per loop; the loop
        monitor does it from the loop's start under ``conctools run``)."""
        if len(self._loop_undo) > 256:
            self._loop_undo.clear()
        for loop in loops:
            if id(loop) in self._loop_undo:
                continue
            try:
                self._loop_undo[id(loop)] = (weakref.ref(loop), casualties.watch_loop_failures(loop))
            except Exception:
                _log.debug("conctools: could not watch a loop's failures", exc_info=True)

    def _long_waits(self, now: int) -> bool:
        """True when some party has been waiting on a traced primitive for ``timeout_s``.

        Reads the registry's table of current waits (keys only, O(waiters)), so a scan of a
        program with thousands of locks and no long wait stays cheap.
        """
        # Waits younger than a scan's interval stay out of the tables: none of them can have lasted the
        # timeout, and a healthy program's short waits then cost no table insertions at all.
        registry.promote_waits(self.interval_s)
        waiting = getattr(registry, "_waiting", None)
        if not isinstance(waiting, dict):
            return True  # no cheap view: build the graph every time
        for _ in range(10):
            try:
                keys = list(waiting)
                break
            except RuntimeError:  # changed size during the copy
                continue
        else:
            return True
        # A task's wait (k[1], its task) is seen at least interval_s after it began (promoted above):
        # counted from then, its timeout is reached at the same scan as a thread's registered at once.
        young = now - int(self.interval_s * 1e9)
        seen = self._wait_seen
        first_seen = {k: seen.get(k, now if k[1] is None else young) for k in keys}
        self._wait_seen = first_seen
        limit = self.timeout_s * 1e9
        return any(now - t >= limit for t in first_seen.values())

    def _check_deadlocks(
        self, graph: WaitGraph, frames: Mapping[int, FrameType], now: int, reader: WaitReader
    ) -> list[DeadlockEvent]:
        if not graph.edges:
            self._live_cycles = set()
            return []
        cycles = find_deadlocks(graph, now_ns=now, min_wait_s=self.timeout_s)
        self._live_cycles = {cycle_key(c) for c in cycles}
        fresh = [c for c in cycles if cycle_key(c) not in self._seen]
        if not fresh:
            return []
        tasks = {t.task_id: t for t in taskdump.dump_tasks()}
        out = []
        for cycle in fresh:
            if len(self._seen) >= _MAX_KEPT * 10:  # bounded memory in a program that deadlocks for days
                self._seen.clear()
            self._seen.add(cycle_key(cycle))
            stacks = {}
            for edge in cycle:
                stacks[edge.waiter_key] = self._stack_of(edge, frames, tasks)
            participants = participants_of(cycle, graph, stacks, now_ns=now, aliases=_condition_locks())
            try:
                notes = _holder_notes(cycle, graph, reader)
            except Exception:
                _log.debug("conctools: could not look for the holder", exc_info=True)
                notes = []
            summary, advice = explain(participants, notes)
            first = participants[0]
            event = DeadlockEvent(
                ts_ns=now,
                thread_id=first.thread_id,
                thread_name=first.thread_name,
                task_name=first.task_name,
                participants=participants,
                summary=summary,
                advice=advice,
            )
            out.append(event)
            self._report_deadlock(event)
        return out

    @staticmethod
    def _stack_of(edge: WaitEdge, frames: Mapping[int, FrameType], tasks: Mapping[int, Any]) -> tuple[Frame, ...]:
        """A thread's stack (also when a task of it blocks it); a suspended task's await stack."""
        party = edge.waiter
        if party.task_id is not None and edge.waiter_key[0] == "task":
            info = tasks.get(party.task_id)
            if info is not None:
                stack: tuple[Frame, ...] = info.stack
                return stack
        return _stack(frames.get(party.thread_id))

    def _report_deadlock(self, event: DeadlockEvent) -> None:
        self.deadlocks.append(event)
        del self.deadlocks[:-_MAX_KEPT]
        if self._recorder is not None:
            self._recorder.record(event)
        # Logged loudly only when nobody else is told (a callback prints its own report).
        level = _WARNING if self.on_deadlock is None else _DEBUG
        _log.log(level, "conctools: %s", describe_cycle(event.participants))
        if self.on_deadlock is not None:
            try:
                self.on_deadlock(event)
            except Exception:
                _log.exception("conctools: on_deadlock callback failed")
        self._raise_in_main(DeadlockError(event.participants, event))

    def _raise_in_main(self, error: DeadlockError) -> None:
        if self.raise_in == "main" and self._signal is not None:
            self._pending_raise = error
            try:
                signal.pthread_kill(threading.main_thread().ident or 0, self._signal)
            except Exception:
                _log.exception("conctools: could not interrupt the main thread")

    def _check_hang(self, frames: Mapping[int, FrameType], now: int) -> HangEvent | None:
        threads = {t.ident: t for t in threading.enumerate() if t.ident is not None}
        outside = self.not_the_programs
        watched = {
            tid: frame
            for tid, frame in frames.items()
            if not getattr(threads.get(tid), "name", "").startswith("conctools-")
            and not (outside is not None and _safely(outside, frame))
        }
        loops: dict[int, tuple[bool, str]] = {}
        loop_signatures: dict[int, Hashable] = {}
        waiting_loops: dict[int, Any] = {}
        if any(f.f_code.co_filename == _SELECTORS_PY for f in watched.values()):
            loops, loop_signatures, waiting_loops = self._loop_states()
        registry_wait = _RegistryWaits()
        # Stop at the first thread that is not blocked: a healthy program costs little.
        previous, self._frame_seen = self._frame_seen, {tid: _frame_signature(f) for tid, f in watched.items()}
        states: dict[int, ThreadState] = {}
        stuck_threads = set(self._stuck_threads)
        conditional: list[int] = []
        for tid, frame in watched.items():
            still = previous.get(tid) == self._frame_seen[tid]
            state = classify_thread(tid, frame, registry_wait(tid), loops, with_stack=False, read_bytecode=still)
            if not state.blocked and tid not in stuck_threads:
                if tid in waiting_loops:  # idle but for jobs of other threads: blocked if they are
                    conditional.append(tid)
                else:
                    self._all_blocked_since_ns = None
                    self._hang_reported = False
                    return None
            states[tid] = state
        if not states:
            return None
        if conditional:
            reader = WaitReader(frames, threads, now, self._since, parked_since=self._parked_since())
            for tid in conditional:
                if not self._jobs_blocked(reader, waiting_loops[tid], tid, states):
                    self._all_blocked_since_ns = None
                    self._hang_reported = False
                    return None
                stuck_threads.add(tid)
        if _program_signal_handlers():  # a handler (say, SIGTERM's) may set what main waits for
            self._all_blocked_since_ns = None
            return None
        # Where everyone is, to notice movement between scans. An idle loop's thread leaves
        # select() whenever something pokes its self-pipe (a loop monitor's probe): its tasks'
        # positions say whether it progressed, not its frames.
        signatures: dict[int, Hashable] = {}
        for tid, frame in watched.items():
            if states[tid].state == "loop idle forever" and tid in loop_signatures:
                signatures[tid] = loop_signatures[tid]
            elif tid in stuck_threads and not states[tid].blocked:
                signatures[tid] = ("stuck", loop_signatures.get(tid))
            else:
                signatures[tid] = _frame_signature(frame)
        moved = signatures != self._signatures
        self._signatures = signatures
        if moved:
            self._all_blocked_since_ns = now
            return None
        if self._all_blocked_since_ns is None:
            self._all_blocked_since_ns = now
        stalled_since = max(self._all_blocked_since_ns, registry.last_progress_ns())
        if now - stalled_since < self.timeout_s * 1e9 or self._hang_reported:
            return None
        if self._live_cycles:  # a deadlock explains it, and was reported as one
            return None
        self._hang_reported = True
        # Now the stacks (left out of the cheap pass above).
        states = {tid: classify_thread(tid, frame, registry_wait(tid), loops) for tid, frame in watched.items()}
        reader = WaitReader(frames, threads, now, self._since, parked_since=self._parked_since())
        event = self._hang_event(states, threads, now, (now - stalled_since) / 1e9, reader, frozenset(stuck_threads))
        self.hangs.append(event)
        del self.hangs[:-_MAX_KEPT]
        if self._recorder is not None:
            self._recorder.record(event)
        _log.log(_WARNING if self.on_hang is None else _DEBUG, "conctools: %s", event.reason)
        if self.on_hang is not None:
            try:
                self.on_hang(event)
            except Exception:
                _log.exception("conctools: on_hang callback failed")
        self._raise_in_main(HangError(event))
        return event

    @staticmethod
    def _loop_states(
        dumped: Mapping[int, Sequence[taskdump.TaskInfo]] | None = None,
    ) -> tuple[dict[int, tuple[bool, str]], dict[int, Hashable], dict[int, Any]]:
        """Per loop thread: (idle forever?, in words), where its tasks are when idle, and the loops
        idle but for jobs of other threads (executor jobs: idle forever if those threads are stuck).
        ``dumped``: each loop's tasks (by loop id) when the caller has just read them (``conctools
        dump`` of 10,000 tasks walked them twice)."""
        out: dict[int, tuple[bool, str]] = {}
        signatures: dict[int, Hashable] = {}
        waiting: dict[int, Any] = {}
        for loop in taskdump.running_loops():
            tid = taskdump.loop_thread_id(loop)
            if tid is None:
                continue
            idle = taskdump.loop_idle_forever(loop)
            tasks: Sequence[taskdump.TaskInfo] = []
            if idle or taskdump.loop_idle_forever(loop, allow_futures=True):
                tasks = dumped.get(id(loop), ()) if dumped is not None else taskdump.dump_tasks(loop)
            signatures[tid] = tuple((t.task_id, t.state, t.stack[:1]) for t in tasks)
            if idle:
                n = len(tasks)
                text = f"its event loop: {_plural(n, 'pending task')}, and no timer, I/O or ready callback to wake them"
            elif tasks:
                text = "its event loop: no timer, I/O or ready callback; its tasks wait for jobs of other threads"
                waiting[tid] = loop
            else:
                text = "its event loop: waiting for I/O or timers"
            out[tid] = (idle, text)
        return out, signatures, waiting

    @staticmethod
    def _jobs_blocked(reader: WaitReader, loop: Any, tid: int, states: Mapping[int, ThreadState]) -> bool:
        """Every job a waiting loop's tasks await runs on (or is queued for) a thread that is
        itself blocked: the loop can never be woken (unknown producers: it might be)."""
        found = False
        for dep in reader.loop_dependencies(loop, tid):
            if dep.kind != "future":
                continue
            found = True
            for party in dep.on:
                state = states.get(party.thread_id)
                if state is None or not state.blocked:
                    return False
        for task in taskdump.pending_tasks(loop):  # a job nobody could be found for: maybe alive
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is not None and taskdump._is_executor_future(waiter) and not _has_producer(reader, waiter):
                return False
        return found

    @staticmethod
    def _hang_event(
        states: Mapping[int, ThreadState],
        threads: Mapping[int, threading.Thread],
        now: int,
        stalled_s: float,
        reader: WaitReader,
        stuck_threads: frozenset[int] = frozenset(),
    ) -> HangEvent:
        def name_of(tid: int) -> str:
            t = threads.get(tid)
            return t.name if t is not None else f"thread-{tid}"

        casualties.failed_tasks()  # failed tasks and pool jobs still referenced count too
        casualties.failed_jobs()
        waiters = []
        main_id = threading.main_thread().ident
        for tid in sorted(states, key=lambda t: (t != main_id, name_of(t))):
            s = states[tid]
            waits_on = s.waits_on
            if s.join_target is not None:
                target = states.get(s.join_target)
                if target is not None and target.waits_on:
                    waits_on = f"{waits_on}, which waits on {target.waits_on}"
                elif target is None and s.join_target not in threads:
                    waits_on = f"{waits_on} (already finished)"
            try:
                detail = reader.thread_detail(tid, reader.frames.get(tid))
            except Exception:
                _log.debug("conctools: could not describe a wait", exc_info=True)
                detail = ""
            if detail:
                waits_on = f"{waits_on}; {detail}" if waits_on else detail
            t = threads.get(tid)
            state = s.state
            if not s.blocked and tid in stuck_threads:
                state = "waiting (through other threads)"
            waiters.append(
                WaiterInfo(
                    thread_id=tid,
                    thread_name=name_of(tid),
                    task_name=None,
                    state=state,
                    waits_on=waits_on,
                    stack=s.stack,
                    daemon=bool(t.daemon) if t is not None else True,
                )
            )
        tasks = taskdump.dump_tasks()
        objects = {id(t): t for t in taskdump.pending_tasks()}
        for info in tasks:
            waiter = info.as_waiter_info()
            task = objects.get(info.task_id)
            try:
                detail = reader.task_detail(task) if task is not None else ""
            except Exception:
                _log.debug("conctools: could not describe a task's wait", exc_info=True)
                detail = ""
            if detail:
                waiter = replace(waiter, waits_on=f"{waiter.waits_on}; {detail}" if waiter.waits_on else detail)
            waiters.append(waiter)
        failures = tuple(casualties.failures()[-10:])
        reason = f"nothing progressed for {stalled_s:.1f}s: {_who_waits(len(states), len(tasks))}"
        for cycle in taskdump.task_cycles(tasks):  # tasks awaiting each other: a deadlock without locks
            names = " -> ".join(repr(t.name) for t in [*cycle, cycle[0]])
            reason += f"; await cycle: {names}"
        if failures:
            reason += f"; {_plural(len(failures), 'thread or task')} ended with an exception before (listed below)"
        main = threading.main_thread()
        return HangEvent(
            ts_ns=now,
            thread_id=main.ident or 0,
            thread_name=main.name,
            stalled_s=stalled_s,
            reason=reason,
            waiters=tuple(waiters),
            failures=failures,
        )

    # ---- raising in the main thread ----
    def _install_raiser(self) -> None:
        """Install a handler that raises the pending DeadlockError in the main thread.

        A signal interrupts the main thread's blocking wait (lock acquires, joins and
        select() are interruptible), and Python runs the handler there: its exception
        propagates out of that wait.
        """
        if threading.current_thread() is not threading.main_thread():
            _log.warning("conctools: raise_in='main' needs the watchdog started in the main thread; ignored")
            return
        signum = _pick_signal()
        if signum is None or not hasattr(signal, "pthread_kill"):
            _log.warning("conctools: raise_in='main' is not supported on this platform; ignored")
            return
        try:
            previous = signal.getsignal(signum)
            if previous not in (signal.SIG_DFL, None):
                _log.warning("conctools: signal %d is in use; raise_in='main' ignored", signum)
                return
            signal.signal(signum, self._raise_pending)
        except (ValueError, OSError):
            _log.warning("conctools: could not install the raise_in='main' handler", exc_info=True)
            return
        self._signal = signum
        self._previous_handler = previous

    def _raise_pending(self, signum: int, frame: FrameType | None) -> None:
        error, self._pending_raise = self._pending_raise, None
        if error is not None:
            raise error

    def _uninstall_raiser(self) -> None:
        if self._signal is None:
            return
        try:
            if threading.current_thread() is threading.main_thread():
                signal.signal(self._signal, self._previous_handler or signal.SIG_DFL)
                self._signal = None
        except (ValueError, OSError):
            _log.debug("conctools: could not restore signal %s", self._signal, exc_info=True)


@contextmanager
def watch_deadlocks(
    timeout_s: float = 10.0,
    *,
    on_deadlock: DeadlockCallback | None = None,
    on_hang: HangCallback | None = None,
    raise_in: Literal["main"] | None = None,
    recorder: Recorder | None = None,
    detect_hangs: bool = True,
) -> Iterator[DeadlockWatchdog]:
    """Watch the block for deadlocks and hangs (a :class:`DeadlockWatchdog` thread).

    Waits are seen on traced primitives (``conctools.Lock`` & co, or everything created
    under :func:`conctools.trace_locks`); joins, pool workers and stdlib waits are also
    recognised from the threads' frames for hang detection. Enter it before
    ``trace_locks()`` so that its own thread's internals stay plain stdlib primitives.

    >>> import conctools
    >>> with conctools.watch_deadlocks(timeout_s=2.0, on_deadlock=print) as wd, conctools.trace_locks():
    ...     pass
    >>> wd.deadlocks, wd.hangs
    ([], [])
    """
    watchdog = DeadlockWatchdog(
        timeout_s,
        on_deadlock=on_deadlock,
        on_hang=on_hang,
        raise_in=raise_in,
        recorder=recorder,
        detect_hangs=detect_hangs,
    )
    watchdog.start()
    try:
        yield watchdog
    finally:
        watchdog.stop()
