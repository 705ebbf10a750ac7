"""The one event model every conctools producer emits and every reporter reads.

Each event is a frozen, slotted dataclass. Durations carry their unit in the field name
(``duration_s``, ``wait_s``); timestamps are ``time.monotonic_ns()`` values (``ts_ns``), the
clock every producer shares, so events from locks, spans and the loop monitor line up on
one timeline. Every event says who produced it: thread id and name, and the asyncio task
name when it ran inside a task.

Events are plain data: they know how to turn themselves into JSON-able dicts and back
(``to_dict`` / ``event_from_dict``), and nothing else. Formatting lives in ``reporting``.

Hierarchy::

    Event
    ├── SpanEvent              a @traced call or ``with traced()`` block
    ├── LockWaitEvent          a contended acquisition of a traced lock
    ├── LockOrderEvent         a lock-order inversion (potential deadlock)
    ├── DeadlockEvent          a wait-for cycle between threads and/or tasks
    ├── HangEvent              no progress without a cycle: everyone's stack
    ├── SlowCallbackEvent      the event loop was blocked longer than a threshold
    ├── BlockingCallEvent      a known blocking call made on an event loop's thread
    ├── FailureEvent           a thread or task ended with an exception
    ├── ResourceSampleEvent    one psutil sample of the process
    ├── GilSampleEvent         one window of the GIL monitor: threads wanting the GIL, cores used
    ├── MarkEvent              a free-form instant (run start/end, user marks)
    ├── PoolExhaustedEvent     a pool had no item to give while tasks or threads waited: who held them
    └── ProcessStuckEvent      a child process deadlocked or hung, and who waits on it
"""

from __future__ import annotations

import linecache
import sys

from conctools._records import field, field_names, is_record
from conctools._records import record as _record
from conctools._typing import Any, ClassVar

__all__ = [
    "BlockingCallEvent",
    "DeadlockEvent",
    "Event",
    "FailureEvent",
    "Frame",
    "GilSampleEvent",
    "HangEvent",
    "LockOrderEdge",
    "LockOrderEvent",
    "LockWaitEvent",
    "MarkEvent",
    "Participant",
    "PoolExhaustedEvent",
    "PoolHolder",
    "ProcessStuckEvent",
    "ProcessWaitLink",
    "ResourceSampleEvent",
    "SlowCallbackEvent",
    "SpanEvent",
    "WaiterInfo",
    "event_from_dict",
    "frame_at",
    "frame_from_dict",
]

EVENT_TYPES: dict[str, type[Event]] = {}


@_record
class Frame:
    """One stack frame: where code was, as ``file:line in function``."""

    filename: str
    lineno: int
    function: str
    line: str = ""

    @property
    def site(self) -> str:
        """``file.py:LINE``, the short form reports print."""
        return f"{self.filename}:{self.lineno}"

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


# One shared Frame per (file, line, function): long runs record the same few sites over and over
# (a server's slow callbacks and pool holders, every second for hours), and a Frame of its own per
# stack entry (with its own copy of the source line) made memory grow with the run. Frames are
# immutable, so sharing them changes nothing a reader sees.
_SHARED: dict[tuple[str, int, str], Frame] = {}
_SHARED_MAX = 50_000


def frame_at(filename: str, lineno: int, function: str) -> Frame:
    """The :class:`Frame` of ``filename:lineno in function``, with its source line; the same object
    for the same site (a bounded table: past ``_SHARED_MAX`` sites it starts over)."""
    key = (filename, lineno, function)
    frame = _SHARED.get(key)
    if frame is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        frame = _SHARED[key] = Frame(filename, lineno, function, linecache.getline(filename, lineno).strip())
    return frame


def frame_from_dict(data: dict[str, Any]) -> Frame:
    """Rebuild a :class:`Frame` from its JSON form."""
    return Frame(
        filename=str(data["filename"]),
        lineno=int(data["lineno"]),
        function=str(data["function"]),
        line=str(data.get("line", "")),
    )


@_record(kw_only=True)
class Event:
    """Base of every event: when, and who produced it."""

    kind: ClassVar[str] = "event"

    ts_ns: int
    thread_id: int
    thread_name: str
    task_name: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # No super() here: slots=True rebuilds the class, which breaks the zero-arg form.
        # The rebuilt (slotted) class registers last, so it is the one kept.
        if "kind" in cls.__dict__:
            EVENT_TYPES[cls.kind] = cls

    @property
    def who(self) -> str:
        """``thread 'X'`` or ``task 'Y' (thread 'X')``: the producer in words."""
        if self.task_name is not None:
            return f"task {self.task_name!r} (thread {self.thread_name!r})"
        return f"thread {self.thread_name!r}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict with a ``kind`` key; inverse of :func:`event_from_dict`."""
        cls = type(self)
        names = _FIELD_NAMES.get(cls)
        if names is None:
            names = _FIELD_NAMES[cls] = field_names(cls)
        out: dict[str, Any] = {"kind": self.kind}
        for name in names:
            value = getattr(self, name)
            out[name] = value if value is None or type(value) in _SCALARS else _to_jsonable(value)
        return out


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_SCALARS = frozenset({str, int, float, bool})


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Frame):
        return {
            "filename": value.filename,
            "lineno": value.lineno,
            "function": value.function,
            "line": value.line,
        }
    if isinstance(value, type):
        return value
    if is_record(value) or _is_dataclass(value):
        return {name: _to_jsonable(getattr(value, name)) for name in field_names(value)}
    if isinstance(value, (tuple, list)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    return value


@_record(kw_only=True)
class SpanEvent(Event):
    """One traced call or block: its name, duration, outcome and parent span."""

    kind: ClassVar[str] = "span"

    name: str
    span_id: int
    parent_id: int | None
    duration_s: float
    outcome: str  # "ok" | "raised" | "cancelled"
    exc_type: str | None = None
    args: str | None = None


@_record(kw_only=True)
class Participant:
    """A thread or task in a wait-for graph, with what it waits for and what it holds."""

    thread_id: int
    thread_name: str
    task_name: str | None
    waits_for: str  # lock (or other object) name
    waits_for_id: int
    wait_site: str  # file:line where it waits
    held_by: str  # who holds what it waits for, in words
    holds: tuple[str, ...] = ()
    holds_sites: tuple[str, ...] = ()  # file:line where it acquired each held lock
    stack: tuple[Frame, ...] = ()
    wait_s: float = 0.0  # how long it had been waiting when the cycle was reported
    # What kind of wait: "lock" (a traced primitive), "loop" (a suspended task waiting for its
    # event loop's thread), "loop-tasks" (an idle loop's thread waiting for its tasks), "join",
    # "future" (a job or a coroutine of another thread or loop), "await" (another task).
    waits_kind: str = "lock"
    suspended_at: str = ""  # a suspended task: where it is suspended now ("file:line: code")
    # Held by its thread, taken by a task of its event loop that was not recorded (maybe this one).
    thread_holds: tuple[str, ...] = ()
    thread_holds_sites: tuple[str, ...] = ()

    @property
    def who(self) -> str:
        if self.task_name is not None:
            return f"task {self.task_name!r} (thread {self.thread_name!r})"
        return f"thread {self.thread_name!r}"


@_record(kw_only=True)
class LockWaitEvent(Event):
    """A contended acquisition: who waited, for how long, and who held the lock then."""

    kind: ClassVar[str] = "lock_wait"

    lock_id: int
    lock_name: str
    lock_kind: str  # "Lock", "RLock", "aio.Lock", ...
    wait_s: float
    acquired: bool  # False when it timed out or was cancelled
    holder: str | None  # who held it when the wait started (JFR's previousOwner)
    site: str  # file:line of the acquire
    stack: tuple[Frame, ...] = ()


@_record(kw_only=True)
class LockOrderEdge:
    """Lock ``to`` acquired while holding ``from``: one edge of the lock-order graph."""

    from_lock: str
    to_lock: str
    from_site: str  # file:line where ``from_lock`` was acquired
    to_site: str  # file:line where ``to_lock`` was acquired while holding it
    thread_name: str
    task_name: str | None = None
    stack: tuple[Frame, ...] = ()


@_record(kw_only=True)
class LockOrderEvent(Event):
    """A cycle in the lock-order graph: a potential deadlock, reported once per cycle."""

    kind: ClassVar[str] = "lock_order"

    cycle: tuple[str, ...]  # lock (class) names, in order
    edges: tuple[LockOrderEdge, ...]

    def __str__(self) -> str:
        """The report a person reads (``print(event)`` in an ``on_deadlock`` callback)."""
        from conctools.reporting.summary import describe

        return describe(self)


@_record(kw_only=True)
class DeadlockEvent(Event):
    """A wait-for cycle: every participant waits on something another one holds."""

    kind: ClassVar[str] = "deadlock"

    participants: tuple[Participant, ...]
    summary: str = ""  # the blame in one paragraph: who blocks whom, where, and why
    advice: tuple[str, ...] = ()  # how such a cycle is usually avoided

    def __str__(self) -> str:
        """The report a person reads (``print(event)`` in an ``on_deadlock`` callback)."""
        from conctools.reporting.summary import describe

        return describe(self)


@_record(kw_only=True)
class WaiterInfo:
    """A thread or task in a hang dump: its stack and what it waits on."""

    thread_id: int
    thread_name: str
    task_name: str | None
    state: str  # "waiting", "running", "sleeping", "idle", ...
    waits_on: str | None  # "Event 'ready' (nobody sets it)", "lock 'a' held by ..."
    stack: tuple[Frame, ...] = ()
    daemon: bool = False


@_record(kw_only=True)
class HangEvent(Event):
    """No progress for ``stalled_s`` and no lock cycle: every thread and task, and their waits."""

    kind: ClassVar[str] = "hang"

    stalled_s: float
    reason: str
    waiters: tuple[WaiterInfo, ...]
    failures: tuple[FailureEvent, ...] = ()  # threads and tasks that ended with an exception before it


@_record(kw_only=True)
class FailureEvent(Event):
    """A thread or an asyncio task ended with an exception (``task_name`` set for a task).

    ``site`` is where it was raised in the program's code, ``stack`` the traceback (innermost
    first). ``objects`` names the queues, locks, events and futures its code was using, so a
    report can tell who waits on what this party would have produced.
    """

    kind: ClassVar[str] = "failure"

    exc_type: str
    message: str
    site: str
    stack: tuple[Frame, ...] = ()
    objects: tuple[str, ...] = ()
    job: str | None = None  # a thread-pool job (its function): the worker thread lives on

    @property
    def who(self) -> str:
        """``thread 'X'``, ``task 'Y' (thread 'X')`` or ``pool job f()``."""
        if self.job is not None:
            return f"pool job {self.job}"
        if self.task_name is not None:
            return f"task {self.task_name!r} (thread {self.thread_name!r})"
        return f"thread {self.thread_name!r}"

    def __str__(self) -> str:
        """The report a person reads (``print(event)`` in an ``on_deadlock`` callback)."""
        from conctools.reporting.summary import describe

        return describe(self)


@_record(kw_only=True)
class SlowCallbackEvent(Event):
    """The event loop was blocked by one task or callback for ``duration_s``.

    A stall (the loop blocked for ``threshold_s`` or more) is cut into segments, one per task
    or callback (and culprit line) that ran during it; each segment is one event. ``samples``
    are stacks of the loop thread taken while this segment ran; ``culprit`` is the innermost
    frame in user code, the line to look at; ``task_name``/``callback`` name what ran it.
    ``stall_id`` (the stall's start) is shared by the segments of one stall, ``stall_s`` is
    the whole stall, ``segment`` is this one's index among ``segments``.
    ``head_unsampled_s``: the first part of this segment that nobody sampled (other callbacks
    of the same loop iteration may have run then), 0 when it is known to have run from the start.
    """

    kind: ClassVar[str] = "slow_callback"

    loop_id: int
    duration_s: float
    threshold_s: float
    callback: str  # repr of the callback or "Task 'name' (coro qualname)"
    culprit: Frame | None
    samples: tuple[tuple[Frame, ...], ...] = ()
    task_created_at: str | None = None
    detected_after_s: float | None = None  # from the stall's start to the watchdog noticing it
    stall_id: int = 0  # the stall's start (monotonic ns), shared by its segments; 0 = unknown
    stall_s: float = 0.0  # the whole stall; 0 = unknown (an event from before segments: its own duration)
    segment: int = 0
    segments: int = 1
    head_unsampled_s: float = 0.0

    def __str__(self) -> str:
        """The report a person reads (``print(event)`` in an ``on_deadlock`` callback)."""
        from conctools.reporting.summary import describe

        return describe(self)


@_record(kw_only=True)
class BlockingCallEvent(Event):
    """A known blocking call (``time.sleep``, a blocking socket call, a thread wait) made on a
    thread that runs an event loop: ``site`` is the caller's ``file:line``."""

    kind: ClassVar[str] = "blocking_call"

    loop_id: int
    call: str  # "time.sleep", "socket.recv", "threading.Event.wait", ...
    site: str
    duration_s: float
    stack: tuple[Frame, ...] = ()


@_record(kw_only=True)
class ResourceSampleEvent(Event):
    """One psutil sample of this process."""

    kind: ClassVar[str] = "resource_sample"

    cpu_percent: float
    rss_bytes: int
    num_threads: int
    num_fds: int
    ctx_switches_voluntary: int
    ctx_switches_involuntary: int

    def point(self) -> dict[str, Any]:
        """The sample as one point of a resource series (the fields charts and summaries use)."""
        return {
            "ts_ns": self.ts_ns,
            "cpu_percent": self.cpu_percent,
            "rss_bytes": self.rss_bytes,
            "num_threads": self.num_threads,
            "num_fds": self.num_fds,
            "ctx_switches_voluntary": self.ctx_switches_voluntary,
            "ctx_switches_involuntary": self.ctx_switches_involuntary,
        }


@_record(kw_only=True)
class GilSampleEvent(Event):
    """One window of the GIL monitor (``conctools.gil``), ending at ``ts_ns``.

    ``threads_wanting`` is the mean number of threads that wanted to run Python code (one of
    them ran it while the others waited for the GIL), ``threads_waiting`` the mean number that
    waited for it, and ``cores_used`` the process's CPU time over the window's wall time.
    """

    kind: ClassVar[str] = "gil_sample"

    window_s: float
    threads_wanting: float
    threads_waiting: float
    cores_used: float
    gil_enabled: bool = True


@_record(kw_only=True)
class MarkEvent(Event):
    """An instant on the timeline: run start and end, or a user's own mark."""

    kind: ClassVar[str] = "mark"

    name: str
    detail: dict[str, Any] = field(default_factory=dict)


@_record(kw_only=True)
class PoolHolder:
    """Who held one item of a pool while others waited for one, and what it was doing then.

    ``state`` is ``"awaiting"`` (a suspended task; ``call`` is what it awaits), ``"calling"`` (a
    thread; ``call`` is the function it is in), ``"running"``, ``"finished"`` (a task that ended
    without giving the item back), ``"exited"`` (such a thread) or ``"unknown"``.
    """

    who: str  # "task 'Task-7' (thread 'MainThread')", "thread 'worker-2'"
    party: str  # "task" | "thread"
    state: str
    call: str | None  # "fetch_upstream()"
    site: str  # file.py:LINE where it is now (the frame that took the item, when still running)
    function: str
    line: str  # the source line at ``site``
    acquired_at: str  # file.py:LINE where that frame took the item ("" when unknown)
    held_s: float | None  # how long it had held the item (None when unknown)


@_record(kw_only=True)
class PoolExhaustedEvent(Event):
    """A pool ran dry: from the first waiter's start until no one waited any more.

    ``holders`` were captured when the first waiter began to wait (a bounded sample); the
    producer is the first waiter.
    """

    kind: ClassVar[str] = "pool_exhausted"

    pool_name: str
    pool_kind: str  # "asyncio.Queue", "queue.LifoQueue", "aio.Semaphore", "asyncpg.Pool", ...
    items: str  # what the pool hands out, in words: "items", "connections", "slots"
    duration_s: float
    capacity: int  # items known when it ran dry (held + available)
    held: int
    waits: int  # waits that began during the episode
    max_waiters: int
    holders: tuple[PoolHolder, ...] = ()


@_record(kw_only=True)
class ProcessWaitLink:
    """One step of a chain of waits across processes: a thread of process ``pid`` waits on
    other processes (``target_pids``: a child it joins, a pool's workers, the writers of a pipe)."""

    pid: int
    process_name: str
    thread_id: int
    thread_name: str
    waits_on: str  # in words: "multiprocessing.Pool.map() results from its workers (pids 12, 13)"
    site: str  # file:line of the program where it waits
    target_pids: tuple[int, ...] = ()
    timeout_s: float | None = None  # the wait's own timeout, if it has one
    stack: tuple[Frame, ...] = ()


@_record(kw_only=True)
class ProcessStuckEvent(Event):
    """A followed child process deadlocked (``verdict`` "deadlock") or hung ("hang"); ``chain``
    is who waits on it, from the program's main process down to the waiter nearest to it."""

    kind: ClassVar[str] = "process_stuck"

    pid: int
    process_name: str
    verdict: str  # "deadlock" | "hang" | "dead" (a dead child left it waiting) | "ended" (likewise, an exit)
    reason: str  # the child's own finding in one line
    chain: tuple[ProcessWaitLink, ...] = ()


def _build(tp: Any, value: Any) -> Any:
    """Rebuild nested values of ``tp`` (a field's annotation, as a string) from JSON."""
    if value is None:
        return None
    if tp.startswith("Frame"):
        return frame_from_dict(value)
    if tp.startswith("tuple[tuple[Frame"):
        return tuple(tuple(frame_from_dict(f) for f in s) for s in value)
    if tp.startswith("tuple[Frame"):
        return tuple(frame_from_dict(f) for f in value)
    for cls_name, cls in _NESTED.items():
        if tp.startswith(f"tuple[{cls_name}"):
            return tuple(_from_fields(cls, v) for v in value)
    if tp.startswith("tuple["):
        return tuple(value)
    return value


def _is_dataclass(value: Any) -> bool:
    dataclasses = sys.modules.get("dataclasses")  # a dataclass instance exists only once it is imported
    return dataclasses is not None and dataclasses.is_dataclass(value)


def _from_fields(cls: Any, data: dict[str, Any]) -> Any:
    kwargs = {}
    fields = cls.__dict__.get("__record_fields__")
    if fields is None:
        import dataclasses

        fields = dataclasses.fields(cls)
    for f in fields:
        if f.name in data:
            kwargs[f.name] = _build(str(f.type), data[f.name])
    return cls(**kwargs)


_NESTED: dict[str, type] = {
    "FailureEvent": FailureEvent,
    "Participant": Participant,
    "LockOrderEdge": LockOrderEdge,
    "WaiterInfo": WaiterInfo,
    "PoolHolder": PoolHolder,
    "ProcessWaitLink": ProcessWaitLink,
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from :meth:`Event.to_dict` output.

    Raises ``ValueError`` for an unknown kind or missing fields.
    """
    kind = data.get("kind")
    cls = EVENT_TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r}")
    try:
        event: Event = _from_fields(cls, data)
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"malformed {kind} event: {exc}") from None
    return event
