"""The pytest plugin: fail tests that deadlock, hang, block the event loop, invert lock order or leak.

Installed with conctools as a ``pytest11`` entry point and inert until switched on, for the
whole run (``--conctools`` or ini ``conctools = true``) or per test
(``@pytest.mark.conctools(...)``). For each test it is on for, it enters, around setup, call
and teardown, the same instruments ``conctools run`` uses (lock tracing for the locks created
during the test, lock-order checking, the deadlock/hang watchdog and the event-loop monitor)
with a recorder of the test's own, and after teardown it checks that the test left no thread
or asyncio task running.

Settings (each is a flag, an ini key and a marker argument; the marker wins over the flag,
the flag over the ini file)::

    --conctools / --conctools-off            conctools = true            @pytest.mark.conctools(enabled=...)
    --conctools-deadlock-timeout SECONDS     conctools_deadlock_timeout  deadlock_timeout=...   (default 10, 0 = off)
    --conctools-loop-threshold SECONDS       conctools_loop_threshold    loop_threshold=...     (default 0.1, 0 = off)
    --conctools-no-leak-check / --conctools-leak-check
                                             conctools_leak_check        leak_check=...         (default on)
    --conctools-strict-tasks / --conctools-no-strict-tasks
                                             conctools_strict_tasks      strict_tasks=...       (default off)

What is a leak: a thread the test started that still runs after its teardown (joined for up to
a second first), or an asyncio task still pending then. Two kinds of leftovers are not the
test's leaks. A thread started during a test that uses a wider-scoped fixture of the project
(a session fixture whose object starts its worker lazily, on first use) belongs, for the time
being, to that fixture: it is checked, without any wait, when the fixture is torn down, and
reported then, naming the fixture and the test it started in. A task that the test left for
``asyncio.run`` (or ``asyncio.Runner``, pytest-asyncio's loops) to cancel is done and
cancelled before the test ends: it fails the test only with ``strict_tasks``, in a section of
its own.

A deadlock or hang found while the test's main thread is stuck interrupts that thread (a
signal whose handler raises, as pytest-timeout's signal method does), so the test fails
with the report and the next tests run; threads that stay stuck are left behind as daemons
of a kind (they no longer hold up interpreter exit).

This is a wiring module: it imports producers and reporters alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, overload

import pytest

from conctools._context import current_frames, frames_of
from conctools._frames import hidden_note, hide_own_frames
from conctools._log import get_logger
from conctools.events import (
    DeadlockEvent,
    Event,
    Frame,
    HangEvent,
    LockOrderEvent,
    SlowCallbackEvent,
)
from conctools.recorder import Recorder, Snapshot, use_recorder

if TYPE_CHECKING:
    from conctools.deadlock import DeadlockWatchdog

__all__ = ["ConctoolsFailure", "Settings", "SlowCallbacks"]

_log = get_logger("conctools.pytest")

DEFAULT_DEADLOCK_TIMEOUT_S = 10.0
DEFAULT_LOOP_THRESHOLD_S = 0.1
# How long a thread started by the test may take to finish after teardown before it counts as
# leaked: threads that were told to stop usually need a moment to notice.
LEAK_GRACE_S = 1.0
# The signal that interrupts a stuck test thread: a real-time one where there are some, since
# programs under test rarely use them (pytest-timeout owns SIGALRM).
_INTERRUPT_SIGNAL: int | None = (
    int(signal.SIGRTMAX) - 2 if hasattr(signal, "SIGRTMAX") else getattr(signal, "SIGUSR2", None)
)
# The events that fail a test, with their report priorities (``conctools.reporting.text.SECTIONS``);
# statistics sections come from 45 on.
_PRIORITY_OF_KIND: dict[type[Event], int] = {
    DeadlockEvent: 10,
    LockOrderEvent: 20,
    HangEvent: 30,
    SlowCallbackEvent: 40,
}
_PROBLEM_KINDS = tuple(_PRIORITY_OF_KIND)
_STATISTICS_PRIORITY = 45
_MARKER_KEYS = ("enabled", "deadlock_timeout", "loop_threshold", "leak_check", "strict_tasks")


_EXECNET = f"{os.sep}execnet{os.sep}"


def _runner_channel(frame: FrameType) -> bool:
    """True for the thread of a pytest-xdist worker that reads its controller's channel (execnet's
    receiver): it waits on a pipe whatever the test does, so counting it would make every hang of
    a test look like a program that may still progress, and under xdist none was ever found."""
    f: FrameType | None = frame
    depth = 0
    while f is not None and depth < 64:
        if f.f_code.co_name == "_thread_receiver" and _EXECNET in f.f_code.co_filename:
            return True
        f = f.f_back
        depth += 1
    return False


class ConctoolsFailure(pytest.fail.Exception):  # type: ignore[name-defined,misc]
    """A test failed a conctools check: the message says what in one line per problem,
    ``report`` is the full report (it lands in the test's ``conctools report`` section)."""

    def __init__(self, summary: str, report: str = "") -> None:
        super().__init__(summary, pytrace=False)
        self.report = report


# Short test summaries print "ConctoolsFailure: ...", not the dotted path (pytest does the same for Failed).
ConctoolsFailure.__module__ = "builtins"


# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What the plugin does for one test (resolved marker > flag > ini > default)."""

    enabled: bool = False
    deadlock_timeout_s: float = DEFAULT_DEADLOCK_TIMEOUT_S  # 0 switches the watchdog off
    loop_threshold_s: float = DEFAULT_LOOP_THRESHOLD_S  # 0 switches the loop monitor off
    leak_check: bool = True
    strict_tasks: bool = False  # also fail tests that leave tasks for asyncio.run / the loop's runner to cancel


def _seconds(value: object, what: str) -> float:
    """A finite, non-negative number of seconds (as ``conctools run`` takes them), or ``ValueError`` naming ``what``."""
    import argparse

    from conctools.cli import non_negative_seconds

    if isinstance(value, bool):  # float(True) is 1.0: a marker's True is not a duration
        raise ValueError(f"{what}: expected a number of seconds, got {value!r}")
    try:
        return non_negative_seconds(str(value).strip())
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _flag_seconds(text: str) -> float:
    """The argparse type of the ``SECONDS`` flags (imported late: the plugin loads in every pytest run)."""
    from conctools.cli import non_negative_seconds

    return non_negative_seconds(text)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--conctools*`` flags and the ``conctools*`` ini keys."""
    group = parser.getgroup("conctools", "conctools: fail tests that deadlock, hang, block the loop or leak")
    group.addoption(
        "--conctools",
        action="store_true",
        default=None,
        dest="conctools",
        help="check every test for deadlocks, hangs, blocked event loops, lock-order inversions and leaks",
    )
    group.addoption(
        "--conctools-off",
        action="store_false",
        default=None,
        dest="conctools",
        help="switch conctools off (overrides the ini)",
    )
    group.addoption(
        "--conctools-deadlock-timeout",
        type=_flag_seconds,
        default=None,
        metavar="SECONDS",
        dest="conctools_deadlock_timeout",
        help="fail a test whose threads or tasks make no progress for this long "
        f"(default {DEFAULT_DEADLOCK_TIMEOUT_S:g}; 0 = off)",
    )
    group.addoption(
        "--conctools-loop-threshold",
        type=_flag_seconds,
        default=None,
        metavar="SECONDS",
        dest="conctools_loop_threshold",
        help=f"fail a test that blocks its event loop this long (default {DEFAULT_LOOP_THRESHOLD_S:g}; 0 = off)",
    )
    group.addoption(
        "--conctools-no-leak-check",
        action="store_false",
        default=None,
        dest="conctools_leak_check",
        help="do not fail tests that leave threads or asyncio tasks running",
    )
    group.addoption(
        "--conctools-leak-check",
        action="store_true",
        default=None,
        dest="conctools_leak_check",
        help="fail tests that leave threads or asyncio tasks running (the default; overrides the ini)",
    )
    group.addoption(
        "--conctools-strict-tasks",
        action="store_true",
        default=None,
        dest="conctools_strict_tasks",
        help="also fail tests that leave asyncio tasks for asyncio.run (or the loop's runner) to cancel",
    )
    group.addoption(
        "--conctools-no-strict-tasks",
        action="store_false",
        default=None,
        dest="conctools_strict_tasks",
        help="tasks left for asyncio.run to cancel are not leaks (the default; overrides the ini)",
    )
    parser.addini("conctools", "switch conctools' checks on for every test", type="bool", default=False)
    parser.addini(
        "conctools_deadlock_timeout", f"deadlock/hang timeout in seconds (default {DEFAULT_DEADLOCK_TIMEOUT_S:g})"
    )
    parser.addini(
        "conctools_loop_threshold", f"slow-callback threshold in seconds (default {DEFAULT_LOOP_THRESHOLD_S:g})"
    )
    parser.addini("conctools_leak_check", "fail tests that leak threads or tasks", type="bool", default=True)
    parser.addini(
        "conctools_strict_tasks",
        "also fail tests that leave tasks for asyncio.run to cancel",
        type="bool",
        default=False,
    )


def _config_settings(config: pytest.Config) -> Settings:
    """The run-wide settings: flag > ini > default; ``pytest.UsageError`` for a bad ini value."""

    def pick(dest: str, ini: str, default: Any, parse: Callable[[Any], Any]) -> Any:
        flag = config.getoption(dest, None)
        if flag is not None:
            return flag
        raw = config.getini(ini)
        if raw in ("", None):
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            raise pytest.UsageError(f"ini option {exc}") from None

    return Settings(
        enabled=bool(pick("conctools", "conctools", False, bool)),
        deadlock_timeout_s=pick(
            "conctools_deadlock_timeout",
            "conctools_deadlock_timeout",
            DEFAULT_DEADLOCK_TIMEOUT_S,
            lambda raw: _seconds(raw, "conctools_deadlock_timeout"),
        ),
        loop_threshold_s=pick(
            "conctools_loop_threshold",
            "conctools_loop_threshold",
            DEFAULT_LOOP_THRESHOLD_S,
            lambda raw: _seconds(raw, "conctools_loop_threshold"),
        ),
        leak_check=bool(pick("conctools_leak_check", "conctools_leak_check", True, bool)),
        strict_tasks=bool(pick("conctools_strict_tasks", "conctools_strict_tasks", False, bool)),
    )


def _item_settings(item: pytest.Item, base: Settings) -> Settings:
    """``base`` overridden by the item's ``conctools`` markers (the closest wins); ``ValueError`` if bad."""
    markers = list(item.iter_markers("conctools"))
    if not markers:
        return base
    merged: dict[str, Any] = {}
    for mark in reversed(markers):  # farthest first, so the closest marker overrides
        if len(mark.args) > 1:
            raise ValueError(f"takes at most one positional argument (enabled), got {len(mark.args)}")
        unknown = sorted(set(mark.kwargs) - set(_MARKER_KEYS))
        if unknown:
            raise ValueError(f"unknown argument {unknown[0]!r} (expected one of {', '.join(_MARKER_KEYS)})")
        if mark.args:
            merged["enabled"] = mark.args[0]
        merged.update(mark.kwargs)
    changes: dict[str, Any] = {"enabled": True}
    for key in ("enabled", "leak_check", "strict_tasks"):
        if key in merged:
            if not isinstance(merged[key], bool):
                raise ValueError(f"{key} must be True or False, got {merged[key]!r}")
            changes[key] = merged[key]
    for key in ("deadlock_timeout", "loop_threshold"):
        if key in merged:
            changes[f"{key}_s"] = _seconds(merged[key], key)
    return dataclasses.replace(base, **changes)


_SETTINGS = pytest.StashKey[Settings]()
_RUNTIME = pytest.StashKey["_Runtime"]()
_RUN = pytest.StashKey["_TestRun"]()


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, resolve the run-wide settings, start the runtime if they switch it on."""
    config.addinivalue_line(
        "markers",
        "conctools(enabled=True, deadlock_timeout=SECONDS, loop_threshold=SECONDS, leak_check=True, "
        "strict_tasks=False): "
        "check this test for deadlocks, hangs, blocked event loops, lock-order inversions and leaks",
    )
    settings = _config_settings(config)
    config.stash[_SETTINGS] = settings
    if settings.enabled:
        _start_runtime(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With conctools off for the run, start the runtime only if some test carries the marker."""
    if _RUNTIME not in config.stash and any(item.get_closest_marker("conctools") for item in items):
        _start_runtime(config)


def _start_runtime(config: pytest.Config) -> None:
    runtime = _Runtime(config)
    runtime.install_interrupt()
    config.stash[_RUNTIME] = runtime
    config.pluginmanager.register(runtime, "conctools-runtime")


# -- leaks ---------------------------------------------------------------------------------------


def _program_threads() -> list[threading.Thread]:
    """Live threads that belong to the program (not conctools' own, not foreign dummies)."""
    return [
        t
        for t in threading.enumerate()
        if t.is_alive() and not t.name.startswith("conctools-") and not isinstance(t, threading._DummyThread)
    ]


def _worker_of_live_pool(thread: threading.Thread) -> bool:
    """A ``ThreadPoolExecutor`` worker whose pool is still alive and open (an event loop's default
    executor, a module's pool): it belongs to that pool, not to the test. A pool the test made and
    dropped is garbage collected, and its idle workers exit by themselves within the grace period."""
    import concurrent.futures.thread as pool_module

    if getattr(thread, "_target", None) is not getattr(pool_module, "_worker", None):
        return False
    args = getattr(thread, "_args", ())
    executor = args[0]() if args and isinstance(args[0], weakref.ref) else None
    return executor is not None and not getattr(executor, "_shutdown", True)


def _pending_tasks() -> list[asyncio.Future[Any]]:
    """Every pending asyncio task of every loop."""
    from conctools.taskdump import pending_tasks

    try:
        return pending_tasks(None)
    except Exception:
        _log.exception("conctools: could not list asyncio tasks")
        return []


def _thread_report(thread: threading.Thread, frames: dict[int, FrameType]) -> str:
    head = f"  thread {thread.name!r} (daemon={thread.daemon})"
    target = getattr(thread, "_target", None)
    if target is not None:
        head += f" running {getattr(target, '__qualname__', repr(target))}"
    frame = frames.get(thread.ident or -1)
    stack, hidden = hide_own_frames(frames_of(frame) if frame is not None else ())
    lines = [head]
    for f in stack[:8]:
        lines.append(f"      {f}" + (f"\n        {f.line}" if f.line else ""))
    if hidden:
        lines.append(f"      {hidden_note(hidden)}")
    return "\n".join(lines)


def _describe_tasks(tasks: Sequence[asyncio.Future[Any]]) -> list[str]:
    """Each task's dump (name, what it awaits, its await stack), taken now while it is still pending."""
    from conctools.taskdump import dump_tasks, format_task_dump

    wanted = {id(t) for t in tasks}
    loops = {id(t.get_loop()): t.get_loop() for t in tasks}
    infos = {info.task_id: info for loop in loops.values() for info in dump_tasks(loop) if info.task_id in wanted}
    out = []
    for task in tasks:
        info = infos.get(id(task))
        text = format_task_dump([info]) if info is not None else repr(task)
        out.append("\n".join("  " + line for line in text.splitlines()))
    return out


def _package_dir(module: Any) -> str:
    return os.path.dirname(os.path.abspath(str(module.__file__))) + os.sep


def _pytest_dirs() -> tuple[str, ...]:
    import _pytest
    import pluggy

    dirs = [_package_dir(_pytest), _package_dir(pluggy), _package_dir(pytest)]
    with contextlib.suppress(ImportError):
        import pytest_asyncio

        dirs.append(_package_dir(pytest_asyncio))
    return tuple(dirs)


def _fixture_file(fixturedef: Any) -> str:
    import inspect

    func: Any = getattr(fixturedef, "func", None)
    try:
        func = inspect.unwrap(func) if callable(func) else func
        code = getattr(func, "__code__", None) or getattr(getattr(func, "__func__", None), "__code__", None)
    except Exception:
        return ""
    return str(getattr(code, "co_filename", "") or "")


def _wider_fixtures_in_use(item: pytest.Item) -> dict[int, str]:
    """The live fixtures wider than the function that ``item`` uses and that the project (not
    pytest or its async plugin) defines, as ``{id(fixturedef): "name (scope scope)"}``."""
    info = getattr(item, "_fixtureinfo", None)
    name2defs = getattr(info, "name2fixturedefs", None) or {}
    machinery = _pytest_dirs()
    found: dict[int, str] = {}
    for name in getattr(info, "names_closure", ()) or ():
        defs = name2defs.get(name) or ()
        if not defs:
            continue
        fixturedef = defs[-1]
        scope = str(getattr(fixturedef, "scope", "function"))
        if scope == "function" or getattr(fixturedef, "cached_result", None) is None:
            continue
        if _fixture_file(fixturedef).startswith(machinery):
            continue
        found[id(fixturedef)] = f"{name!r} ({scope} scope)"
    return found


@dataclass(slots=True)
class _Deferred:
    """A thread or task a test left running while it used wider-scoped fixtures: theirs until they end."""

    thing: threading.Thread | asyncio.Future[Any]
    nodeid: str
    owners: dict[int, str]  # id(fixturedef) -> its name, for the fixtures not torn down yet
    names: tuple[str, ...]  # every owner's name, for the report

    def alive(self) -> bool:
        thing = self.thing
        return thing.is_alive() if isinstance(thing, threading.Thread) else not thing.done()


def _trim(value: Any, machinery: tuple[str, ...]) -> Any:
    """``value`` with every stack cut where pytest's own frames begin (they say nothing about the test)."""
    if isinstance(value, tuple) and value and all(isinstance(f, Frame) for f in value):
        for i, f in enumerate(value):
            if i and f.filename.startswith(machinery):
                return value[:i]
        return value
    if isinstance(value, tuple):
        return tuple(_trim(v, machinery) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, (type, Frame)):
        changes = {}
        for f in dataclasses.fields(value):
            if not f.init:
                continue
            old = getattr(value, f.name)
            new = _trim(old, machinery)
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    return value


# -- one test ------------------------------------------------------------------------------------


class _TestRun:
    """The instruments, recorder and bookkeeping of one test, from setup to teardown."""

    def __init__(self, runtime: _Runtime, item: pytest.Item, settings: Settings) -> None:
        self.runtime = runtime
        self.item = item
        self.settings = settings
        self.recorder = Recorder()
        self.recorder.meta["command"] = f"pytest {item.nodeid}"
        self.recorder.meta["conctools_settings"] = dataclasses.asdict(settings)
        self.stack = contextlib.ExitStack()  # the test's instruments, setup to teardown
        self.phase_stack = contextlib.ExitStack()  # the loop monitor, one phase at a time
        self.threads_before: weakref.WeakSet[threading.Thread] = weakref.WeakSet(_program_threads())
        self.tasks_before: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()
        if settings.leak_check:
            self.tasks_before.update(_pending_tasks())
        self.leaked_tasks: list[asyncio.Future[Any]] = []
        self.leaked_reports: list[str] = []  # taken when each was found, before a runner cancels it
        self.cancelled_tasks: list[asyncio.Future[Any]] = []  # left for asyncio.run / a Runner to cancel
        self.cancelled_reports: list[str] = []
        self.reported: dict[int, Event] = {}  # problems already reported in an earlier phase
        self.stuck = False  # a deadlock or hang was reported: what it left running is no news
        self.acknowledged_ns = 0  # slow callbacks up to here were consumed by the test (fixture .clear())
        self.stuck_threads: set[int] = set()  # participants of a reported deadlock or hang
        self.test_thread = threading.get_ident()
        self.armed = False  # the test's code is running: an interrupt may be delivered
        self.interrupt_reason: str | None = None
        self.started = False

    # ---- instruments ----
    def start(self) -> None:
        """Enter every instrument; a failing instrument is logged and left out."""
        self.started = True
        # Lock tables count this test only: forget the classes (creation sites) of earlier tests.
        # Locks made before keep counting into their old, now unlisted, entries.
        with contextlib.suppress(Exception):
            from conctools.locks import reset_stats

            reset_stats()
        if self.settings.leak_check and self.settings.strict_tasks:
            self.stack.enter_context(self._catch_runner_leftovers())
        for name, instrument in self.runtime.instruments(self):
            try:
                self.stack.enter_context(instrument)
            except Exception:
                _log.exception("conctools: could not start %s for %s", name, self.item.nodeid)

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        try:
            self.stack.close()
        except Exception:
            _log.exception("conctools: could not stop the instruments of %s", self.item.nodeid)

    @contextlib.contextmanager
    def _catch_runner_leftovers(self) -> Iterator[None]:
        """Note the tasks ``asyncio.run`` / ``asyncio.Runner`` cancel because they were still pending.

        The runner cancels them (and waits for them) before the test ends: with ``strict_tasks``
        they fail the test, as a category of their own, caught here just before they are cancelled.
        """
        import asyncio.runners as runners

        original = runners._cancel_all_tasks  # type: ignore[attr-defined]
        run = self

        def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
            try:
                run.note_cancelled_tasks([t for t in asyncio.all_tasks(loop) if not t.done()])
            except Exception:
                _log.exception("conctools: could not list the tasks left on %r", loop)
            original(loop)

        runners._cancel_all_tasks = _cancel_all_tasks  # type: ignore[attr-defined]
        try:
            yield
        finally:
            runners._cancel_all_tasks = original  # type: ignore[attr-defined]

    def _new_tasks(self, tasks: Sequence[asyncio.Future[Any]]) -> list[asyncio.Future[Any]]:
        known = (self.tasks_before, self.runtime.wider_tasks)
        seen = {id(t) for t in (*self.leaked_tasks, *self.cancelled_tasks)}
        return [t for t in tasks if id(t) not in seen and not any(t in group for group in known)]

    def note_leaked_tasks(self, tasks: Sequence[asyncio.Future[Any]]) -> None:
        leaked = self._new_tasks(tasks)
        if leaked:
            self.leaked_tasks.extend(leaked)
            self.leaked_reports.extend(_describe_tasks(leaked))

    def note_cancelled_tasks(self, tasks: Sequence[asyncio.Future[Any]]) -> None:
        left = self._new_tasks(tasks)
        if left:
            self.cancelled_tasks.extend(left)
            self.cancelled_reports.extend(_describe_tasks(left))

    # ---- one phase (setup, call, teardown) ----
    def begin_phase(self) -> None:
        """Arm the interrupt and watch every event loop that runs during the phase."""
        self.armed = True
        self._start_loop_monitor()

    def end_phase(self) -> None:
        """Disarm; stop the loop monitors, which records every stall of the phase before it is checked."""
        self.armed = False
        self._stop_loop_monitor()

    def settle(self) -> None:
        """Record the stalls that already ended (the monitors record them late, from their own thread)."""
        if self.armed:
            self._stop_loop_monitor()
            self._start_loop_monitor()

    def _start_loop_monitor(self) -> None:
        if self.settings.loop_threshold_s <= 0:
            return
        from conctools.loopmon import monitor_all_loops

        try:
            self.phase_stack.enter_context(monitor_all_loops(self.settings.loop_threshold_s, recorder=self.recorder))
        except Exception:
            _log.exception("conctools: could not start the loop monitor for %s", self.item.nodeid)

    def _stop_loop_monitor(self) -> None:
        try:
            self.phase_stack.close()
        except Exception:
            _log.exception("conctools: could not stop the loop monitor for %s", self.item.nodeid)

    # ---- interrupting a stuck test ----
    def on_problem(self, event: Event) -> None:
        """Watchdog callback (its own thread): the test is stuck; interrupt it if it is waiting."""
        if isinstance(event, DeadlockEvent) and self.runtime.is_stale(event):
            return
        self.interrupt(f"conctools: {event.kind} detected")

    def interrupt(self, reason: str) -> None:
        if not self.armed or self.interrupt_reason is not None:
            return
        self.interrupt_reason = reason
        if self.runtime.interrupt_installed and _INTERRUPT_SIGNAL is not None:
            try:
                signal.pthread_kill(self.test_thread, _INTERRUPT_SIGNAL)
            except Exception:
                _log.exception("conctools: could not interrupt the test thread")

    # ---- checks ----
    def problems(self) -> Snapshot | None:
        """A snapshot holding the problems recorded since the last call, or ``None`` if there are none."""
        fresh = []
        for event in self.recorder.events():
            if not isinstance(event, _PROBLEM_KINDS) or id(event) in self.reported:
                continue
            if isinstance(event, SlowCallbackEvent) and event.ts_ns <= self.acknowledged_ns:
                continue
            if isinstance(event, DeadlockEvent) and self.runtime.is_stale(event):
                continue
            fresh.append(event)
        if not fresh:
            return None
        fresh.sort(key=lambda e: _PRIORITY_OF_KIND.get(type(e), 99))  # the worst first, as the report orders them
        for event in fresh:
            self.reported[id(event)] = event  # keeps it alive, so its id stays unique
            if isinstance(event, DeadlockEvent):
                self.runtime.mark_stale(event)
                self.stuck_threads.update(p.thread_id for p in event.participants if p.task_name is None)
            elif isinstance(event, HangEvent):
                self.stuck_threads.update(w.thread_id for w in event.waiters if w.task_name is None)
            if isinstance(event, (DeadlockEvent, HangEvent)):
                self.stuck = True
        machinery = _pytest_dirs()
        return dataclasses.replace(self.recorder.snapshot(), events=tuple(_trim(e, machinery) for e in fresh))

    def leaks(self) -> str | None:
        """The leak report (threads and tasks the test left running), or ``None``."""
        if not self.settings.leak_check or self.stuck:
            return None
        me = threading.current_thread()
        candidates = [
            t
            for t in _program_threads()
            if t is not me
            and t not in self.threads_before
            and t not in self.runtime.wider_threads
            and not _worker_of_live_pool(t)
        ]
        pending = self._new_tasks(_pending_tasks())
        owners = _wider_fixtures_in_use(self.item) if candidates or pending else {}
        if owners:
            # A wider-scoped fixture the test uses may own them (a worker started lazily, on
            # first use, or a task on its loop): they are checked, without a wait, when that
            # fixture is torn down.
            self.runtime.defer([*candidates, *pending], owners, self.item.nodeid)
            candidates, pending = [], []
        deadline = time.monotonic() + LEAK_GRACE_S
        for t in candidates:
            t.join(max(0.0, deadline - time.monotonic()))
        threads = [t for t in candidates if t.is_alive()]
        self.note_leaked_tasks(pending)
        tasks = self.leaked_tasks
        cancelled = self.cancelled_tasks if self.settings.strict_tasks else []
        if not threads and not tasks and not cancelled:
            return None
        parts = []
        if threads:
            frames = current_frames()
            parts.append(
                f"Leaked threads ({len(threads)}): still running {LEAK_GRACE_S:g} s after the test ended\n"
                + "\n".join(_thread_report(t, frames) for t in threads)
            )
        if tasks:
            parts.append(
                f"Leaked asyncio tasks ({len(tasks)}): still pending after the test ended\n"
                + "\n".join(self.leaked_reports)
            )
        if cancelled:
            parts.append(
                f"Tasks left for the runner to cancel ({len(cancelled)}): still pending when asyncio.run "
                "(or the loop's asyncio.Runner) closed the loop, which cancelled them (strict_tasks)\n"
                + "\n".join(self.cancelled_reports)
            )
        return "\n\n".join(parts)


# -- the per-session runtime ---------------------------------------------------------------------


def _render_problems(snapshot: Snapshot) -> str:
    """The problem sections of the text report (deadlocks, inversions, hangs, slow callbacks)."""
    from conctools.reporting.text import SECTIONS, render_sections

    parts = render_sections(snapshot, priorities=lambda p: p < _STATISTICS_PRIORITY)
    registered = {priority for priority, _ in SECTIONS}
    for kind, priority in _PRIORITY_OF_KIND.items():  # a kind no reporter renders yet: plain lines
        if priority not in registered:
            parts.extend(_plain_event(e) for e in snapshot.of_kind(kind))
    return "\n\n".join(parts)


def _render_statistics(snapshot: Snapshot) -> str | None:
    """The statistics sections of the text report (locks, spans, ...), brief; ``None`` if empty."""
    from conctools.reporting.text import render_sections

    return "\n\n".join(render_sections(snapshot, brief=True, priorities=lambda p: p >= _STATISTICS_PRIORITY)) or None


def _plain_event(event: Event) -> str:
    if isinstance(event, LockOrderEvent):
        lines = [f"Potential deadlock: lock-order inversion {' -> '.join([*event.cycle, event.cycle[0]])}"]
        for edge in event.edges:
            who = f"task {edge.task_name!r}" if edge.task_name else f"thread {edge.thread_name!r}"
            lines.append(
                f"  {who} took {edge.to_lock!r} at {edge.to_site} "
                f"while holding {edge.from_lock!r} (taken at {edge.from_site})"
            )
        return "\n".join(lines)
    if isinstance(event, SlowCallbackEvent):
        where = f"\n    at {event.culprit}\n      {event.culprit.line}" if event.culprit else ""
        return f"Slow callback: {event.callback} blocked the loop for {event.duration_s:.3f} s{where}"
    return f"{event.kind}: {event!r}"


def _relative(path: str) -> str:
    with contextlib.suppress(ValueError):  # another drive (Windows): keep it absolute
        relative = os.path.relpath(path)
        return path if relative.startswith("..") else relative
    return path


def _called_from(stack: Sequence[Frame], test_file: str | None, site: str | None) -> str:
    """`` (called from test_x.py:12)``: the test's own line that led to ``site`` (the innermost frame
    of the test's file in ``stack``), or ``""`` when ``site`` is already in the test's file."""
    if not test_file or not stack:
        return ""
    for frame in stack:
        if frame.filename == test_file:
            path, _, line = (site or "").rpartition(":")
            if line == str(frame.lineno) and os.path.basename(path) == os.path.basename(frame.filename):
                return ""
            return f" (called from {_relative(frame.filename)}:{frame.lineno})"
    return ""


def _one_line(event: Event, test_file: str | None = None) -> str:
    """A one-line summary of a problem, for the terminal summary; a culprit outside the test's file
    (``test_file``) also names the test's line that made the call."""
    if isinstance(event, DeadlockEvent):
        who = ", ".join(
            f"{p.who} waits for {p.waits_for} at {p.wait_site}{_called_from(p.stack, test_file, p.wait_site)}"
            for p in event.participants
        )
        return f"deadlock: {who}"
    if isinstance(event, LockOrderEvent):
        return f"lock-order inversion: {' -> '.join(event.cycle)} -> {event.cycle[0] if event.cycle else ''}"
    if isinstance(event, HangEvent):
        return f"hang: {event.reason}"
    if isinstance(event, SlowCallbackEvent):
        site = ""
        if event.culprit is not None:
            site = f" at {_relative(event.culprit.filename)}:{event.culprit.lineno}"
            culprit = event.culprit
            stack = next((s for s in event.samples if any(f.site == culprit.site for f in s)), ())
            site += _called_from(stack, test_file, culprit.site)
        return f"blocked event loop: {event.callback} for {event.duration_s:.3f} s{site}"
    return event.kind


class _CurrentTestRecorder(Recorder):
    """What session-long instruments record into: each event goes to the running test's recorder."""

    def __init__(self, runtime: _Runtime) -> None:
        super().__init__(capacity=1)
        self._runtime = runtime

    def record(self, event: Event) -> None:
        run = self._runtime.current
        if run is not None and run.started:
            run.recorder.record(event)


class _Runtime:
    """The plugin object registered when conctools is on for some test: the per-test hooks."""

    def __init__(self, config: pytest.Config) -> None:
        self.base = config.stash[_SETTINGS]
        self.wider_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self.wider_tasks: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()
        self.stale_waits: set[tuple[int, str | None, int]] = set()
        self.failures: list[tuple[str, str, list[str]]] = []  # (nodeid, phase, one-line summaries)
        self.current: _TestRun | None = None
        self.watchdog: DeadlockWatchdog | None = None  # the session's, started by the first test that wants one
        self.interrupt_installed = False
        self.previous_handler: Any = None
        self.exit_status = 0
        self._released: list[threading.Thread] = []
        self.deferred: list[_Deferred] = []  # threads and tasks wider fixtures may own, checked at their teardown
        self.fixture_leaks: list[str] = []  # reports of those still running then, not reported yet
        self.gil_notes: list[tuple[str, str]] = []  # (nodeid, headline) of tests whose threads waited for the GIL

    # ---- threads wider-scoped fixtures may own ----
    def defer(
        self, things: Sequence[threading.Thread | asyncio.Future[Any]], owners: dict[int, str], nodeid: str
    ) -> None:
        self.deferred = [d for d in self.deferred if d.alive()]
        known = {id(d.thing) for d in self.deferred}
        for thing in things:
            if id(thing) not in known:
                d = _Deferred(thing, nodeid, dict(owners), tuple(owners.values()))
                if d.alive():
                    self.deferred.append(d)

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> None:
        """A wider-scoped fixture was torn down: the threads and tasks it may have owned must have ended now."""
        if not self.deferred or str(getattr(fixturedef, "scope", "function")) == "function":
            return
        key = id(fixturedef)
        due = []
        for d in self.deferred:
            if d.owners.pop(key, None) is not None and not d.owners:
                due.append(d)
        if not due:
            return
        self.deferred = [d for d in self.deferred if d.owners and d.alive()]
        deadline = time.monotonic() + LEAK_GRACE_S
        for d in due:
            if isinstance(d.thing, threading.Thread):
                d.thing.join(max(0.0, deadline - time.monotonic()))
        while any(d.alive() for d in due) and time.monotonic() < deadline:  # tasks: their loop may need a moment
            time.sleep(0.01)
        alive = [d for d in due if d.alive()]
        if not alive:
            return
        frames = current_frames()
        threads = [d for d in alive if isinstance(d.thing, threading.Thread)]
        tasks = [d for d in alive if not isinstance(d.thing, threading.Thread)]
        parts = []
        for group, what, state in ((threads, "threads", "running"), (tasks, "asyncio tasks", "pending")):
            if not group:
                continue
            fixtures = ", ".join(dict.fromkeys(n for d in group for n in d.names))
            lines = [
                f"Leaked {what} ({len(group)}): still {state} {LEAK_GRACE_S:g} s after the teardown of "
                f"fixture {fixtures}, which the test that started them used"
            ]
            for d in group:
                if isinstance(d.thing, threading.Thread):
                    text = _thread_report(d.thing, frames)
                else:
                    text = "\n".join(_describe_tasks([d.thing]))
                lines.append(text + f"\n      started during {d.nodeid}")
            parts.append("\n".join(lines))
        self.fixture_leaks.append("\n\n".join(parts))

    # ---- what a test's instruments are ----
    def instruments(self, run: _TestRun) -> list[tuple[str, contextlib.AbstractContextManager[Any]]]:
        """The instruments for one test, as (name, context manager), entered in this order.

        ``conctools run``'s own :func:`~conctools.runner.instrumented` (the test's recorder made
        current, lock tracing with lock-order checking), so a test is observed as a program is.
        Two instruments live elsewhere, for cost: the deadlock watchdog runs for the session (a
        thread started and joined per test cost ~7 ms a test) and writes to the current test's
        recorder; the loop monitor runs per phase, so that each phase's stalls are recorded by its end.
        """
        from conctools.runner import RunOptions, instrumented

        options = RunOptions(sample_interval_s=None, deadlock_timeout_s=None, loop_threshold_s=None)
        out: list[tuple[str, contextlib.AbstractContextManager[Any]]] = [
            ("the instruments", instrumented(options, run.recorder))
        ]
        if run.settings.deadlock_timeout_s > 0:
            out.append(("the deadlock watchdog", self._watchdog_for(run.settings.deadlock_timeout_s)))
        return out

    @contextlib.contextmanager
    def _watchdog_for(self, timeout_s: float) -> Iterator[None]:
        """Make sure the session's watchdog runs with ``timeout_s`` (a new one only when it changes)."""
        from conctools.deadlock import DeadlockWatchdog

        if self.watchdog is not None and self.watchdog.timeout_s != timeout_s:
            self.watchdog.stop()
            self.watchdog = None
        if self.watchdog is None:
            watchdog = DeadlockWatchdog(
                timeout_s, on_deadlock=self._on_stuck, on_hang=self._on_stuck, recorder=_CurrentTestRecorder(self)
            )
            watchdog.not_the_programs = _runner_channel
            watchdog.start()
            self.watchdog = watchdog
        yield

    def _on_stuck(self, event: DeadlockEvent | HangEvent) -> None:
        run = self.current
        if run is not None and run.started:
            run.on_problem(event)

    # ---- deadlocks already reported ----
    @staticmethod
    def _wait_keys(event: DeadlockEvent) -> set[tuple[int, str | None, int]]:
        return {(p.thread_id, p.task_name, p.waits_for_id) for p in event.participants}

    def is_stale(self, event: DeadlockEvent) -> bool:
        """True for a deadlock an earlier test already reported (its threads are still stuck in it)."""
        return bool(event.participants) and self._wait_keys(event) <= self.stale_waits

    def mark_stale(self, event: DeadlockEvent) -> None:
        self.stale_waits |= self._wait_keys(event)

    # ---- threads stuck for good ----
    def release_at_exit(self, threads: Sequence[threading.Thread]) -> None:
        """Do not let threads stuck for good hold up interpreter exit (they were reported)."""
        main = threading.main_thread()
        stuck = [t for t in threads if t is not main and not t.daemon and t.is_alive()]
        if not stuck:
            return
        shutdown_locks = getattr(threading, "_shutdown_locks", None)
        guard = getattr(threading, "_shutdown_locks_lock", None)
        if shutdown_locks is not None and guard is not None:  # Python <= 3.12
            with guard:
                for t in stuck:
                    shutdown_locks.discard(getattr(t, "_tstate_lock", None))
            return
        # Python 3.13+ joins non-daemon threads in C: leave at exit without joining them.
        if not self._released:
            threading._register_atexit(self._exit_without_stuck_threads)  # type: ignore[attr-defined]
        self._released.extend(stuck)

    def _exit_without_stuck_threads(self) -> None:
        if any(t.is_alive() for t in self._released):
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(self.exit_status)

    # ---- the interrupt signal ----
    def install_interrupt(self) -> None:
        """Install the handler that lets the watchdog interrupt a stuck test (main thread only)."""
        if _INTERRUPT_SIGNAL is None or threading.current_thread() is not threading.main_thread():
            return
        try:
            current = signal.getsignal(_INTERRUPT_SIGNAL)
            if current not in (signal.SIG_DFL, None):
                _log.warning("conctools: signal %d is in use; stuck tests cannot be interrupted", _INTERRUPT_SIGNAL)
                return
            self.previous_handler = current
            signal.signal(_INTERRUPT_SIGNAL, self._handle_interrupt)
            self.interrupt_installed = True
        except (ValueError, OSError):
            _log.debug("conctools: cannot install the interrupt handler", exc_info=True)

    def _handle_interrupt(self, signum: int, frame: FrameType | None) -> None:
        run = self.current
        if run is None or not run.armed:
            return
        run.armed = False
        raise ConctoolsFailure(run.interrupt_reason or "conctools: interrupted")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.exit_status = int(exitstatus)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        if self.interrupt_installed and _INTERRUPT_SIGNAL is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(_INTERRUPT_SIGNAL, self.previous_handler or signal.SIG_DFL)
            self.interrupt_installed = False

    # ---- the test protocol ----
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
        try:
            settings = _item_settings(item, self.base)
            bad_marker = None
        except ValueError as exc:
            settings, bad_marker = self.base, f"@pytest.mark.conctools: {exc}"
        if not settings.enabled and bad_marker is None:
            return (yield)
        run = _TestRun(self, item, settings)
        item.stash[_RUN] = run
        self.current = run
        if bad_marker is not None:
            run.interrupt_reason = bad_marker  # the setup phase fails with it
        else:
            run.start()
        try:
            return (yield)
        finally:
            run.stop()
            self.current = None
            del item.stash[_RUN]

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        run = item.stash.get(_RUN, None)
        if run is not None and not run.started and run.interrupt_reason:  # a bad marker fails the setup
            yield
            raise ConctoolsFailure(run.interrupt_reason)
        return (yield from self._phase(run, "setup"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._phase(item.stash.get(_RUN, None), "call"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
        return (yield from self._phase(item.stash.get(_RUN, None), "teardown"))

    def _phase(self, run: _TestRun | None, phase: str) -> Generator[None, None, None]:
        """Run one phase armed for interrupts; fail it with the report of what went wrong in it."""
        if run is None or not run.started:
            return (yield)
        run.begin_phase()
        try:
            yield
        except (KeyboardInterrupt, SystemExit):
            run.end_phase()
            raise
        except BaseException:
            run.end_phase()
            self._check(run, phase)  # a conctools report replaces the test's own error
            raise
        run.end_phase()
        self._check(run, phase)
        return None

    def _check(self, run: _TestRun, phase: str) -> None:
        """Raise :class:`ConctoolsFailure` with the report of what went wrong in this phase, if anything did."""
        texts: list[str] = []
        summaries: list[str] = []
        snapshot = run.problems()
        if snapshot is not None:
            texts.append(_render_problems(snapshot))
            test_file = str(getattr(run.item, "path", "") or "")
            summaries.extend(_one_line(e, test_file) for e in snapshot.events)
            self.release_at_exit([t for t in threading.enumerate() if t.ident in run.stuck_threads])
        if phase == "teardown":
            leaks = run.leaks()
            if leaks is not None:
                texts.append(leaks)
                summaries.append(leaks.splitlines()[0])
        if self.fixture_leaks and run.settings.leak_check:
            for text in self.fixture_leaks:
                texts.append(text)
                summaries.append(text.splitlines()[0])
            self.fixture_leaks.clear()
        if not texts:
            return
        self.failures.append((run.item.nodeid, phase, summaries))
        statistics = _render_statistics(run.recorder.snapshot())
        if statistics:
            texts.append(statistics)
        from conctools.reporting._safe import neutralise  # names from the program are shown, never obeyed

        raise ConctoolsFailure(
            neutralise("\n".join(f"conctools: {s}" for s in summaries)), neutralise("\n\n".join(texts))
        ) from None

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
        """Threads and tasks a wider-scoped fixture starts may outlive the test: they are not leaks."""
        run = self.current
        if run is None or not run.started or fixturedef.scope == "function":
            return (yield)
        threads = set(_program_threads())
        tasks = set(_pending_tasks()) if run.settings.leak_check else set()
        try:
            return (yield)
        finally:
            self.wider_threads.update(t for t in _program_threads() if t not in threads)
            if run.settings.leak_check:
                self.wider_tasks.update(t for t in _pending_tasks() if t not in tasks)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        report: pytest.TestReport = yield
        error = call.excinfo.value if call.excinfo is not None else None
        if isinstance(error, ConctoolsFailure) and error.report:
            report.sections.append((f"conctools report ({call.when})", error.report))
        if call.when == "call":
            self._note_gil(item, report)
        return report

    def _note_gil(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """A test whose threads waited for the GIL gets a "CPU-bound threads" section and a summary line."""
        run = item.stash.get(_RUN, None)
        if run is None or not run.started:
            return
        try:
            from conctools.gil import active_monitor
            from conctools.reporting.gil_text import format_gil

            monitor = active_monitor(run.recorder)
            text = format_gil(monitor.summary(), brief=True) if monitor is not None else None
        except Exception:
            _log.exception("conctools: could not read the GIL monitor of %s", item.nodeid)
            return
        if text:
            report.sections.append(("conctools: CPU-bound threads", text))
            self.gil_notes.append((item.nodeid, text.splitlines()[0]))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from conctools.reporting._safe import neutralise

        for text in self.fixture_leaks:  # found while no test with conctools on was running
            self.failures.append(("(session)", "teardown", [text.splitlines()[0]]))
        self.fixture_leaks.clear()
        if self.gil_notes:
            terminalreporter.write_sep("=", "conctools: CPU-bound threads")
            for nodeid, line in self.gil_notes:
                terminalreporter.write_line(neutralise(f"{nodeid}: {line}"))
        if not self.failures:
            return
        terminalreporter.write_sep("=", "conctools summary")
        for nodeid, phase, summaries in self.failures:
            where = "" if phase == "call" else f" (at {phase})"
            for line in summaries:
                terminalreporter.write_line(neutralise(f"{nodeid}{where}: {line}"))


# -- fixtures ------------------------------------------------------------------------------------


def _current_run(request: pytest.FixtureRequest) -> _TestRun | None:
    node: pytest.Item = request.node
    return node.stash.get(_RUN, None)


@pytest.fixture
def conctools_recorder(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    """The recorder of the current test (a fresh current one when conctools is off for it)."""
    run = _current_run(request)
    if run is not None:
        yield run.recorder
        return
    with use_recorder() as recorder:
        yield recorder


class SlowCallbacks(Sequence[SlowCallbackEvent]):
    """The slow callbacks recorded so far in the current test, read live.

    ``clear()`` marks the ones recorded so far as expected: they no longer fail the test.
    """

    def __init__(self, recorder: Recorder, run: _TestRun | None) -> None:
        self._recorder = recorder
        self._run = run
        self._cleared_ns = 0

    def _events(self) -> list[SlowCallbackEvent]:
        if self._run is not None:
            self._run.settle()
        return [e for e in self._recorder.events() if isinstance(e, SlowCallbackEvent) and e.ts_ns > self._cleared_ns]

    @overload
    def __getitem__(self, index: int) -> SlowCallbackEvent: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SlowCallbackEvent]: ...
    def __getitem__(self, index: int | slice) -> SlowCallbackEvent | Sequence[SlowCallbackEvent]:
        return self._events()[index]

    def __len__(self) -> int:
        return len(self._events())

    def __repr__(self) -> str:
        return f"SlowCallbacks({self._events()!r})"

    def clear(self) -> None:
        """Forget the slow callbacks recorded so far, and do not fail the test for them."""
        events = self._recorder.events()
        self._cleared_ns = max((e.ts_ns for e in events), default=time.monotonic_ns())
        if self._run is not None:
            self._run.acknowledged_ns = max(self._run.acknowledged_ns, self._cleared_ns)


@pytest.fixture
def conctools_slow_callbacks(conctools_recorder: Recorder, request: pytest.FixtureRequest) -> SlowCallbacks:
    """The slow callbacks of the current test (a live sequence of ``SlowCallbackEvent``)."""
    return SlowCallbacks(conctools_recorder, _current_run(request))


@pytest.fixture
def conctools_locks(conctools_recorder: Recorder) -> Callable[[], list[dict[str, Any]]]:
    """A function returning the current test's lock table: one row per lock class created during the
    test (name, kind, created_at, acquisitions, contentions, wait and hold percentiles, ...)."""

    def lock_table() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = conctools_recorder.snapshot().sections.get("locks", [])
        return rows

    return lock_table
