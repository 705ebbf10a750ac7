"""A followed child process: it runs under the run's options and hands its data to the run.

Two ways in:

* **fork** (``multiprocessing``'s fork and forkserver start methods, ``Pool`` and
  ``ProcessPoolExecutor`` workers, a plain ``os.fork()``): ``os.register_at_fork`` hooks. The
  child inherits the parent's patched lock factories and registry; right after the fork it
  frees conctools' internal locks, empties the inherited recorder, and starts its own threads
  (watchdog, sampler, the ``conctools-children`` writer) with the same options.
* **exec** (the spawn start method, the forkserver process, ``subprocess``/``os.exec*`` of
  ``sys.executable``): the bootstrap ``sitecustomize`` on ``PYTHONPATH`` calls
  :func:`start_from_env`, which enters the same instruments ``conctools run`` uses
  (:func:`conctools.runner.instrumented`) before the program's first line.

Either way the child writes its record (:mod:`conctools.children.procfile`) at once, every
``flush_interval_s``, and when it ends (``os._exit``, the interpreter's exit); when its
watchdog finds it deadlocked or hung, it writes it at once and drops a ``.stuck`` file for the
run's main process, which decides (the child itself keeps waiting, as it would have).
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
import warnings
from typing import Any, NoReturn

from conctools._context import frames_of, internal_thread
from conctools.children import reaping
from conctools.children.config import BOOT_DIR, ENV_VAR, FollowConfig
from conctools.children.forksafe import own_lock_table, reinit_after_fork
from conctools.children.procfile import ProcessIdentity, build_record, child_stack, write_atomic
from conctools.recorder import Recorder, get_recorder

__all__ = [
    "ChildSession",
    "activate",
    "current_session",
    "deactivate",
    "guard_forks",
    "is_followed_child",
    "start_from_env",
]

_log = logging.getLogger("conctools.children")

THREAD_NAME = "conctools-children"
_STDLIB = os.path.dirname(threading.__file__) + os.sep
_MP = _STDLIB + "multiprocessing" + os.sep
_real_exit = os._exit  # the C function: a program's os._exit goes through _child_exit


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


_state = _State()


def activate(config: FollowConfig, *, root: bool) -> None:
    """Follow the children this process starts from now on (fork hooks; exec children read the env)."""
    _state.config = config
    if root:
        _state.root_pid = os.getpid()
    guard_forks()
    _wrap_bootstrap()


def guard_forks() -> None:
    """Make every child this process forks start clean, followed or not: conctools' internal
    locks free (a thread of the parent may have held one at the fork), ``threading``'s own
    lock plain, and SIGTERM's default action back (``conctools run``'s handler belongs to the
    program's main process; ``Pool.terminate()`` must end a worker at once)."""
    _state.guard = True
    if not _state.hooks and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child)
        _state.hooks = True


def _wrap_bootstrap() -> None:
    """``multiprocessing``'s ``BaseProcess._bootstrap``, which a child runs first: a followed child
    learns its name there (and a spawned one writes its first record with it). The original
    catches everything itself, so the wrapper changes no traceback."""
    from multiprocessing import process

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


def deactivate() -> None:
    """Stop following forks (the env is the caller's to restore)."""
    _state.config = None


def stop_births() -> None:
    """From now on a child this process starts ends at once (conctools is stopping the program):
    forks see it in memory, new interpreters in the environment they inherit."""
    _state.stopping = True
    config = _state.config
    if config is not None:
        import dataclasses

        os.environ[ENV_VAR] = dataclasses.replace(config, stopping=True).to_env()


def current_session() -> ChildSession | None:
    """The session of this followed child, if it is one."""
    session = _state.session
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
            if self._stopping or not os.path.isdir(self.config.run_dir):
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

    def write(
        self,
        *,
        final: bool = False,
        exit_status: int | None = None,
        ended_by: str | None = None,
        exit_stack: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Write this process's record (the final one once: later writes are ignored)."""
        with self._write_lock:
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
            if final:
                self._final = True
            return written

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
    _real_exit(status)


def _install_exit_hooks(session: ChildSession) -> None:
    os._exit = _child_exit
    atexit.register(session.close_at_exit)


# ---- fork ---------------------------------------------------------------------------------

_FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of .*fork\(\) may lead to deadlocks"


def _fork_method() -> str:
    """How this fork is made, from the caller's frames: which start method, or a plain os.fork()."""
    frame = sys._getframe(2)
    depth = 0
    _state.fork_process = (None, None)
    while frame is not None and depth < 30:
        filename = frame.f_code.co_filename
        if filename == _MP + "popen_fork.py":
            process = frame.f_locals.get("process_obj") if frame.f_code.co_name == "_launch" else None
            if process is not None:
                _state.fork_process = (
                    getattr(process, "_name", None),
                    reaping.target_name(getattr(process, "_target", None)),
                )
            return "fork"
        if filename == _MP + "forkserver.py" or _state.forkserver:
            return "forkserver"
        if filename == _STDLIB + "subprocess.py":
            return "subprocess"  # preexec_fn: the child execs at once
        frame = frame.f_back  # type: ignore[assignment]
        depth += 1
    return "os.fork"


def _only_our_threads() -> bool:
    """True when conctools' own threads are all that make this process multi-threaded."""
    threads = threading.enumerate()
    if sum(1 for t in threads if not t.name.startswith("conctools-")) != 1:
        return False
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[17]) == len(threads)  # no thread that threading does not know
    except (OSError, ValueError, IndexError):
        return False


def _before_fork() -> None:
    if _state.config is None and not _state.stopping and not _state.guard:
        return
    try:
        _state.fork_method = _fork_method()
        if sys.version_info >= (3, 12):
            # Python 3.12+ warns that fork() in a multi-threaded process may deadlock the child.
            # When the program alone would not be multi-threaded, conctools' threads must not add
            # a warning (they hold nothing the child needs: see forksafe). The filter is decided
            # here, before every fork (forks are serialised), and stays until the next one: 3.13
            # warns after the after-fork hooks have run.
            if _only_our_threads():
                if _state.fork_filter is None:
                    warnings.filterwarnings("ignore", message=_FORK_WARNING, category=DeprecationWarning)
                    _state.fork_filter = warnings.filters[0]
            else:
                _drop_fork_filter()
    except Exception:
        pass


def _drop_fork_filter() -> None:
    item, _state.fork_filter = _state.fork_filter, None
    if item is None:
        return
    try:
        warnings.filters.remove(item)  # type: ignore[attr-defined]
        mutated = getattr(warnings, "_filters_mutated", None)
        if callable(mutated):
            mutated()
    except (ValueError, AttributeError):
        pass


def _after_fork_parent() -> None:
    pass


def _after_fork_child() -> None:
    _drop_fork_filter()  # the child's own forks decide for themselves
    if _state.fork_method == "subprocess" or not (_state.guard or _state.config is not None):
        return  # subprocess's preexec_fn: the child execs at once
    if _state.stopping:
        _real_exit(1)  # conctools is stopping the stuck program: nothing it starts now survives it
    try:
        reinit_after_fork()
        lock = getattr(get_recorder(), "_lock", None)
        if lock is not None:
            lock._at_fork_reinit()
        _reset_inherited_sigterm()
    except Exception:
        pass
    config = _state.config
    if config is None:
        return
    try:
        _start_forked(config, _state.fork_method)
    except Exception:
        _log.debug("conctools: could not follow a forked child", exc_info=True)


def _start_forked(config: FollowConfig, method: str) -> None:
    """In a forked child: become a followed process of its own (see the module docstring)."""
    reaping.reset_after_fork()
    _state.root_pid = None
    _state.forkserver = False
    parent = _state.session
    if parent is not None:  # the parent was a followed child: its threads did not come along
        parent._thread = None
    recorder = get_recorder()
    recorder.reset_after_fork()
    recorder.remove_section("processes")  # only the run's main process merges the others
    own_lock_table(recorder)
    identity = ProcessIdentity.here(method, argv=[] if method == "forkserver" else None)
    identity.name, identity.target = _state.fork_process
    session = ChildSession(config, identity, recorder)
    _state.session = session
    # A pool's worker often lives a fraction of a second: its sampler and watchdog start a flush
    # interval in, with its second record (a stall is still seen at most that much later), so that
    # a short-lived child pays one thread, not three (the parent reaps its CPU time and status).
    session.deferred.append(lambda: _start_instruments(session))
    reaping.listeners[:] = [session.ring]
    _install_exit_hooks(session)
    session.start()


def _start_instruments(session: ChildSession) -> None:
    """A forked child's sampler and watchdog, with the run's options (from its writer thread)."""
    options = session.config.options
    interval = options.get("sample_interval_s")
    if interval:
        from conctools.resources import ResourceSampler

        # psutil makes an RLock: a plain one, as in the main process (sampled before trace_locks).
        with contextlib.suppress(Exception), _plain_lock_factories():
            sampler = ResourceSampler(float(interval), recorder=session.recorder)
            sampler.start()
            session.threads.append(sampler)
    timeout = options.get("deadlock_timeout_s")
    if timeout:
        from conctools.deadlock import DeadlockWatchdog

        watchdog = DeadlockWatchdog(
            float(timeout), on_deadlock=session.on_deadlock, on_hang=session.on_hang, recorder=session.recorder
        )
        watchdog.start()
        session.threads.append(watchdog)


@contextlib.contextmanager
def _plain_lock_factories() -> Any:
    """``threading.Lock``/``RLock`` as the stdlib's for a moment: what conctools creates then stays
    out of the traced locks (a lock another thread creates in that moment is a plain one too)."""
    saved = threading.Lock, threading.RLock
    threading.Lock, threading.RLock = _thread.allocate_lock, _thread.RLock  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        threading.Lock, threading.RLock = saved  # type: ignore[misc]


def _reset_inherited_sigterm() -> None:
    """A forked child does not keep the handler ``conctools run`` set for its main process: it
    dies by SIGTERM at once, as it would without conctools (``Pool.terminate()`` relies on it)."""
    try:
        handler = signal.getsignal(signal.SIGTERM)
        if str(getattr(handler, "__module__", "")).startswith("conctools."):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError, AttributeError):
        pass


# ---- exec ---------------------------------------------------------------------------------


def _runs_conctools(argv: list[str]) -> bool:
    """A nested ``conctools`` command (``python -m conctools ...``): it is a run of its own."""
    for i, arg in enumerate(argv[1:], 1):
        if arg == "-m" and i + 1 < len(argv):
            return argv[i + 1].split(".")[0] == "conctools"
        if arg.startswith("-m") and len(arg) > 2:
            return arg[2:].split(".")[0] == "conctools"
        if not arg.startswith("-"):
            return os.path.basename(arg) == "conctools"
    return False


def _start_method_of(argv: list[str]) -> str | None:
    """How this interpreter was started, from its command line; ``None`` for a process not to follow."""
    joined = " ".join(argv)
    if "multiprocessing.resource_tracker" in joined:
        return None  # multiprocessing's own bookkeeping process, not the program's
    if re.search(r"multiprocessing\.spawn import spawn_main", joined) and "--multiprocessing-fork" in argv:
        return "spawn"
    if "multiprocessing.forkserver import main" in joined:
        return "forkserver (server)"
    return "exec"


def start_from_env() -> None:
    """Follow this freshly exec'd interpreter, when a ``conctools run`` asked for it (the bootstrap
    ``sitecustomize`` calls this before the program's first line). Never raises."""
    try:
        _start_from_env()
    except Exception:
        _log.debug("conctools: could not follow this process", exc_info=True)


def _start_from_env() -> None:
    config = FollowConfig.from_env(os.environ.get(ENV_VAR))
    if config is None or current_session() is not None:
        return
    if config.stopping:  # conctools is stopping the stuck program: nothing it starts now survives it
        _real_exit(1)
    while BOOT_DIR in sys.path:  # the program's sys.path is its own
        sys.path.remove(BOOT_DIR)
    if config.python != "{}.{}".format(*sys.version_info[:2]):
        return
    argv = list(getattr(sys, "orig_argv", sys.argv))
    method = _start_method_of(argv)
    if method is None or _runs_conctools(argv):
        return
    from conctools.runner import RunOptions, instrumented

    options = config.options
    recorder = Recorder(capacity=int(options.get("capacity") or 100_000))
    recorder.meta["command"] = " ".join(sys.argv)
    identity = ProcessIdentity.here(method, argv=[] if method != "exec" else None)
    if method.startswith("forkserver"):
        identity.name = "forkserver"
    session = ChildSession(config, identity, recorder)
    run_options = RunOptions(
        capacity=recorder.capacity,
        report=False,
        log_level=options.get("log_level"),
        sample_interval_s=options.get("sample_interval_s"),
        deadlock_timeout_s=options.get("deadlock_timeout_s"),
        exit_on_deadlock=False,
        loop_threshold_s=options.get("loop_threshold_s"),
        detect_blocking=bool(options.get("detect_blocking")),
        trace_locks=bool(options.get("trace_locks", True)),
        lock_order=bool(options.get("lock_order", True)),
    )
    stack = contextlib.ExitStack()
    stack.enter_context(instrumented(run_options, recorder, on_deadlock=session.on_deadlock, on_hang=session.on_hang))
    session.instruments = stack
    _state.session = session
    activate(config, root=False)
    reaping.install()
    reaping.listeners[:] = [session.ring]
    if method.startswith("forkserver"):
        _state.forkserver = True
        reaping.wrap_waitpid()
    _install_exit_hooks(session)
    session.start()
