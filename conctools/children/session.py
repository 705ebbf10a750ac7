"""A followed child process: its session, which hands its data to the run.

:class:`ChildSession` owns a followed child's identity, its recorder and the
``conctools-children`` thread that rewrites its record (:mod:`conctools.children.procfile`)
at once, every ``flush_interval_s`` and when it ends (``os._exit``, the interpreter's exit).
When its watchdog finds it deadlocked or hung it writes the record at once and drops a
``.stuck`` file for the run's main process, which decides (the child keeps waiting, as it
would have). How a process becomes one: :mod:`conctools.children.forking` (forks) and
:mod:`conctools.children.bootstrap` (new interpreters).
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import os
import sys
import threading
import time
from types import ModuleType

from conctools._context import frames_of, internal_thread
from conctools._imports import when_imported
from conctools._log import get_logger
from conctools._typing import Any, NoReturn
from conctools.children import reaping
from conctools.children.config import FollowConfig
from conctools.children.procfile import ProcessIdentity, build_record, child_stack, sync_file, write_atomic
from conctools.recorder import Recorder

__all__ = ["ChildSession", "current_session", "install_exit_hooks", "is_followed_child", "state", "wrap_bootstrap"]

_log = get_logger("conctools.children")

THREAD_NAME = "conctools-children"
_STDLIB = os.path.dirname(threading.__file__) + os.sep
_MP = _STDLIB + "multiprocessing" + os.sep
real_exit = os._exit  # the C function: a program's os._exit goes through _child_exit


class _State:
    """What this process knows about the run it belongs to."""

    def __init__(self) -> None:
        self.config: FollowConfig | None = None
        self.session: ChildSession | None = None
        self.root_pid: int | None = None  # the run's main process, when this is it
        self.hooks = False
        self.guard = False  # conctools runs here: a forked child must start clean even when not followed
        self.fork_method = "os.fork"
        self.fork_process: tuple[str | None, str | None] = (None, None)  # (name, target) of the Process forked
        self.fork_filter: Any = None
        self.forkserver = False
        self.stopping = False  # conctools is stopping the program: a child forked now ends at birth
        self.sigterm_held = False  # the forking thread holds SIGTERM back until the fork is done
        self.imports_held: Any = None  # what the forking thread holds until the fork is done (_imports.ForkHold)
        self.imports_cut = False  # a fork went on while a conctools thread imported (after a long wait)


state = _State()


def wrap_bootstrap() -> None:
    """``multiprocessing``'s ``BaseProcess._bootstrap``, which a child runs first: a followed child
    learns its name there (and a spawned one writes its first record with it). The original
    catches everything itself, so the wrapper changes no traceback. Wrapped when the program
    imports ``multiprocessing`` (at once if it has): the run does not import it for a program that
    never uses it."""
    when_imported("multiprocessing.process", _wrap_bootstrap)


def _wrap_bootstrap(process: ModuleType) -> None:
    original = process.BaseProcess.__dict__.get("_bootstrap")
    if original is None or getattr(original, "__conctools__", False):
        return

    def _bootstrap(self: Any, *args: Any, **kwargs: Any) -> Any:
        session = current_session()
        if session is not None:
            try:
                target = reaping.target_name(getattr(self, "_target", None))
                session.identity.target, session.identity.name = target, getattr(self, "_name", None)
                if session.identity.start_method != "fork":
                    session.write()
            except Exception:
                pass
        return original(self, *args, **kwargs)

    _bootstrap.__conctools__ = True  # type: ignore[attr-defined]
    _bootstrap.__wrapped__ = original  # type: ignore[attr-defined]
    process.BaseProcess._bootstrap = _bootstrap  # type: ignore[attr-defined]


def current_session() -> ChildSession | None:
    """The session of this followed child, if it is one."""
    session = state.session
    return session if session is not None and session.identity.pid == os.getpid() else None


def is_followed_child() -> bool:
    """True in a child process that a ``conctools run`` follows."""
    return current_session() is not None


class ChildSession:
    """One followed child: its identity, its recorder and the thread that writes its record."""

    def __init__(self, config: FollowConfig, identity: ProcessIdentity, recorder: Recorder) -> None:
        self.config = config
        self.identity = identity
        self.recorder = recorder
        self.instruments: contextlib.ExitStack | None = None  # what an exec'd child entered
        self.threads: list[Any] = []  # what a forked child restarted (a watchdog, a sampler)
        self.deferred: list[Any] = []  # started by the writer before its second write
        self.first_write_deferred = False
        # A forked child's first record is written while its main thread is still in conctools'
        # after-fork hook: that stack would say nothing about the program, so it is left out.
        self.first_stacks = identity.start_method not in ("fork", "forkserver", "os.fork")
        self._writes = 0
        self._bell = _thread.allocate_lock()  # held: the writer sleeps on it; released: write now
        self._stopping = False
        self._write_lock = _thread.allocate_lock()
        self._thread: threading.Thread | None = None
        self._final = False
        self._had_sync = False
        self._stuck: dict[str, Any] | None = None
        self._interval_s = max(0.05, config.flush_interval_s)

    # ---- the writer thread ----
    def start(self) -> None:
        """Write the first record now and start rewriting it every ``flush_interval_s``."""
        self._bell.acquire()
        self._thread = internal_thread(self._run, THREAD_NAME)
        self._thread.start()

    def ring(self) -> None:
        """Have the writer write soon (something the run wants to know happened: a child reaped)."""
        with contextlib.suppress(RuntimeError):
            self._bell.release()

    def _run(self) -> None:
        if not self.first_write_deferred:
            self.write()  # the run knows this process from its first moment
        while not self._stopping:
            self._bell.acquire(timeout=self._interval_s)
            if self._stopping or not self._run_alive():
                break  # the run is over: nobody reads this process's file any more
            while self.deferred:
                try:
                    self.deferred.pop(0)()
                except Exception:
                    _log.debug("conctools: a child's instrument did not start", exc_info=True)
            began = time.perf_counter()
            self.write()
            # Writing a big recorder costs: keep it under ~5% of a core, losing more on a crash.
            self._interval_s = max(self.config.flush_interval_s, 20 * (time.perf_counter() - began))

    def _run_alive(self) -> bool:
        """Whether the run still reads this process's file: its folder and its main process exist."""
        if not os.path.isdir(self.config.run_dir):
            return False
        try:
            os.kill(self.config.root_pid, 0)
        except ProcessLookupError:
            return False  # the run's main process was killed: this child is an orphan of it
        except OSError:
            pass
        return True

    def write(
        self,
        *,
        final: bool = False,
        exit_status: int | None = None,
        ended_by: str | None = None,
        exit_stack: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Write this process's record (the final one once: later writes are ignored).

        The final one waits at most a few seconds for a write in progress: a process that is
        ending must end, whatever became of its writer.
        """
        if not self._write_lock.acquire(timeout=3.0 if final else -1):
            return False
        try:
            if self._final or os.getpid() != self.identity.pid:
                return False
            try:
                record = build_record(
                    self.identity,
                    self.recorder,
                    final=final,
                    exit_status=exit_status,
                    ended_by=ended_by,
                    reaped=reaping.reaped(),
                    stuck=self._stuck,
                    exit_stack=exit_stack,
                    with_stacks=self._writes > 0 or self.first_stacks or final,
                )
                self._writes += 1
            except Exception:
                _log.debug("conctools: could not build this process's record", exc_info=True)
                return False
            written = write_atomic(self.config.run_dir, self.identity.key + ".json", record)
            shared = record.get("mpsync")
            if shared is not None or self._had_sync:
                # the run's main process reads this small file at each look (locks held across processes)
                self._had_sync = True
                sync = sync_file(self.identity, shared or {}, final=final, exit_status=exit_status)
                write_atomic(self.config.run_dir, self.identity.key + ".sync", sync)
            if final:
                self._final = True
            return written
        finally:
            self._write_lock.release()

    def stuck(self, verdict: str, reason: str) -> None:
        """This process is deadlocked or hung: tell the run at once (the first finding only)."""
        if self._stuck is not None:
            return
        self._stuck = {"verdict": verdict, "reason": reason}
        self.write()
        write_atomic(
            self.config.run_dir,
            self.identity.key + ".stuck",
            {"key": self.identity.key, "pid": self.identity.pid, **self._stuck},
        )

    def on_deadlock(self, event: Any) -> None:
        from conctools.deadlock import describe_cycle

        self.stuck("deadlock", describe_cycle(event.participants))

    def on_hang(self, event: Any) -> None:
        self.stuck("hang", str(event.reason))

    def finish(
        self, exit_status: int | None = None, ended_by: str = "exit", exit_stack: list[dict[str, Any]] | None = None
    ) -> None:
        """The last record: stop the writer, then write it with how the process ended."""
        # No join: a write in progress holds the write lock, and the final record goes after it.
        self._thread = None
        self._stopping = True
        self.ring()
        self.write(final=True, exit_status=exit_status, ended_by=ended_by, exit_stack=exit_stack)

    def close_at_exit(self) -> None:
        """At interpreter exit (an exec'd or a forked child that returns normally)."""
        if os.getpid() != self.identity.pid or self._final:
            return
        stack, self.instruments = self.instruments, None
        for instrument in self.threads:
            with contextlib.suppress(Exception):
                instrument.stop()
        if stack is not None:
            with contextlib.suppress(Exception):
                stack.close()
        self.finish(ended_by="exit")


# ---- ending: os._exit, signals -------------------------------------------------------------


def _child_exit(status: int) -> NoReturn:
    """``os._exit`` in a followed child: the last record first (with the caller's stack when the
    program itself called it), then the real exit."""
    session = current_session()
    if session is not None:
        try:
            caller = sys._getframe(1)
            by_machinery = caller.f_code.co_filename.startswith(_MP)
            stack = None if by_machinery else child_stack(frames_of(caller, limit=48))
            session.finish(exit_status=status, ended_by="os._exit" if stack is not None else "exit", exit_stack=stack)
        except BaseException:
            pass
    real_exit(status)


def install_exit_hooks(session: ChildSession) -> None:
    os._exit = _child_exit
    atexit.register(session.close_at_exit)


@contextlib.contextmanager
def plain_lock_factories() -> Any:
    """``threading.Lock``/``RLock`` as the stdlib's for a moment: what conctools creates then stays
    out of the traced locks (a lock another thread creates in that moment is a plain one too)."""
    saved = threading.Lock, threading.RLock
    threading.Lock, threading.RLock = _thread.allocate_lock, _thread.RLock  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        threading.Lock, threading.RLock = saved  # type: ignore[misc]
