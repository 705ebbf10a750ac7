"""Forked children: ``os.register_at_fork`` hooks that make a fork a followed child.

``multiprocessing``'s fork and forkserver start methods, ``Pool`` and ``ProcessPoolExecutor``
workers and a plain ``os.fork()`` all go through here. The child inherits its parent's patched
lock factories and registry; right after the fork it frees conctools' internal locks
(:mod:`conctools.children.forksafe`), empties the inherited recorder and starts a session of
its own (:class:`~conctools.children.session.ChildSession`); its sampler, GIL monitor and
watchdog start half a second in, with the same options. Any forked child of ``conctools run``,
followed or not, starts clean (:func:`guard_forks`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import warnings

from conctools._imports import (
    balance_logging_hooks,
    forks_wait_for_imports,
    hold_imports_for_fork,
    import_in_background,
    logging_ready,
)
from conctools._log import get_logger
from conctools.children import reaping
from conctools.children.config import ENV_VAR, FollowConfig
from conctools.children.forksafe import forget_parent_sections, own_lock_table, reinit_after_fork
from conctools.children.procfile import ProcessIdentity
from conctools.children.session import (
    ChildSession,
    install_exit_hooks,
    plain_lock_factories,
    real_exit,
    state,
    wrap_bootstrap,
)
from conctools.recorder import get_recorder

__all__ = ["activate", "deactivate", "guard_forks", "start_instruments", "stop_births"]

_log = get_logger("conctools.children")
_STDLIB = os.path.dirname(threading.__file__) + os.sep
_MP = _STDLIB + "multiprocessing" + os.sep


def activate(config: FollowConfig, *, root: bool) -> None:
    """Follow the children this process starts from now on (fork hooks; exec children read the env)."""
    state.config = config
    if root:
        state.root_pid = os.getpid()
    guard_forks()
    wrap_bootstrap()


def guard_forks() -> None:
    """Make every child this process forks start clean, followed or not: conctools' internal
    locks free (a thread of the parent may have held one at the fork), ``threading``'s own
    lock plain, and SIGTERM's default action back (``conctools run``'s handler belongs to the
    program's main process; ``Pool.terminate()`` must end a worker at once)."""
    state.guard = True
    if not state.hooks and hasattr(os, "register_at_fork"):
        # First: its after-hooks run before these (which start the child's threads), its before-hook after.
        forks_wait_for_imports()
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child)
        state.hooks = True


def deactivate() -> None:
    """Stop following forks (the env is the caller's to restore)."""
    state.config = None


def stop_births() -> None:
    """From now on a child this process starts ends at once (conctools is stopping the program):
    forks see it in memory, new interpreters in the environment they inherit."""
    state.stopping = True
    config = state.config
    if config is not None:
        import dataclasses

        os.environ[ENV_VAR] = dataclasses.replace(config, stopping=True).to_env()


# ---- fork ---------------------------------------------------------------------------------

_FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of .*fork\(\) may lead to deadlocks"


def _fork_method() -> str:
    """How this fork is made, from the caller's frames: which start method, or a plain os.fork()."""
    frame = sys._getframe(2)
    depth = 0
    state.fork_process = (None, None)
    while frame is not None and depth < 30:
        filename = frame.f_code.co_filename
        if filename == _MP + "popen_fork.py":
            process = frame.f_locals.get("process_obj") if frame.f_code.co_name == "_launch" else None
            if process is not None:
                state.fork_process = (getattr(process, "_name", None), reaping.launching(process))
            return "fork"
        if filename == _MP + "forkserver.py" or state.forkserver:
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
    if state.config is None and not state.stopping and not state.guard:
        return
    # Not in the middle of an import by a conctools thread (see _imports.background_imports).
    had_logging = logging_ready() is not None
    state.imports_held, done = hold_imports_for_fork()
    state.imports_cut = not done
    if not had_logging:
        balance_logging_hooks()
    _block_sigterm()
    try:
        state.fork_method = _fork_method()
        if sys.version_info >= (3, 12):
            # Python 3.12+ warns that fork() in a multi-threaded process may deadlock the child.
            # When the program alone would not be multi-threaded, conctools' threads must not add
            # a warning (they hold nothing the child needs: see forksafe). The filter is decided
            # here, before every fork (forks are serialised), and stays until the next one: 3.13
            # warns after the after-fork hooks have run.
            if _only_our_threads():
                if state.fork_filter is None:
                    warnings.filterwarnings("ignore", message=_FORK_WARNING, category=DeprecationWarning)
                    state.fork_filter = warnings.filters[0]
            else:
                _drop_fork_filter()
    except Exception:
        pass


def _drop_fork_filter() -> None:
    item, state.fork_filter = state.fork_filter, None
    if item is None:
        return
    try:
        warnings.filters.remove(item)  # type: ignore[attr-defined]
        mutated = getattr(warnings, "_filters_mutated", None)
        if callable(mutated):
            mutated()
    except (ValueError, AttributeError):
        pass


def _block_sigterm() -> None:
    """Hold SIGTERM back from the forking thread until the fork is done (see :func:`_unblock_sigterm`).

    The child inherits ``conctools run``'s SIGTERM handler, a Python one, until its after-fork
    hook gives it the default action back. A SIGTERM that reaches it before then (the parent's
    ``Pool.terminate()`` right after it forked a worker, before the child ran at all) would only
    mark the Python handler as due; once the handler is the default one, Python drops the mark,
    and the child lives on: ``Pool.terminate()`` then waits for it forever. Held back, the signal
    is delivered once the default action is back, and ends the child at once."""
    state.sigterm_held = False
    try:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    except (AttributeError, OSError, ValueError):
        return
    state.sigterm_held = signal.SIGTERM not in held  # this hook blocked it: it unblocks it


def _unblock_sigterm() -> None:
    if not state.sigterm_held:
        return
    state.sigterm_held = False
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    except (AttributeError, OSError, ValueError):
        pass


def _release_imports() -> None:
    hold, state.imports_held = state.imports_held, None
    if hold is not None:
        hold.release()


def _after_fork_parent() -> None:
    _release_imports()
    _unblock_sigterm()


def _after_fork_child() -> None:
    _release_imports()
    _drop_fork_filter()  # the child's own forks decide for themselves
    if state.fork_method == "subprocess" or not (state.guard or state.config is not None):
        _unblock_sigterm()
        return  # subprocess's preexec_fn: the child execs at once
    if state.stopping:
        real_exit(1)  # conctools is stopping the stuck program: nothing it starts now survives it
    try:
        reinit_after_fork()
        lock = getattr(get_recorder(), "_lock", None)
        if lock is not None:
            lock._at_fork_reinit()
    except Exception:
        pass
    _reset_inherited_sigterm()
    _unblock_sigterm()  # a SIGTERM sent during the fork ends the child now, by the default action
    config = state.config
    if config is None:
        return
    try:
        _start_forked(config, state.fork_method)
    except Exception:
        _log.debug("conctools: could not follow a forked child", exc_info=True)


def _start_forked(config: FollowConfig, method: str) -> None:
    """In a forked child: become a followed process of its own (see the module docstring)."""
    reaping.reset_after_fork()
    state.root_pid = None
    state.forkserver = False
    parent = state.session
    if parent is not None:  # the parent was a followed child: its threads did not come along
        parent._thread = None
    recorder = get_recorder()
    recorder.reset_after_fork()
    forget_parent_sections(recorder)
    own_lock_table(recorder)
    identity = ProcessIdentity.here(method, argv=[] if method == "forkserver" else None)
    identity.name, identity.target = state.fork_process
    session = ChildSession(config, identity, recorder)
    state.session = session
    # A pool's worker often lives a fraction of a second: its instruments start a flush
    # interval in, with its second record (a stall is still seen at most that much later), so that
    # a short-lived child pays one thread, not four (the parent reaps its CPU time and status).
    if not state.imports_cut:  # (else their modules may be half made here: the child goes without)
        session.deferred.append(lambda: start_instruments(session))
    reaping.listeners[:] = [session.ring]
    install_exit_hooks(session)
    session.start()


def start_instruments(session: ChildSession) -> None:
    """A followed child's sampler, GIL monitor and watchdog, with the run's options (from its writer
    thread, before its second record: forked and spawned children alike).

    A forked child's parent's GIL monitor did not come along (its copy here is inert: :mod:`conctools.gil`
    stops it at the fork, and :func:`forget_parent_sections` drops its section): the child
    measures its own threads from here on, in a ``gil`` section of its own."""
    options = session.config.options
    interval = options.get("sample_interval_s")
    # Their modules first, never while the process forks (see _imports.background_imports).
    wanted = ["conctools.resources"] if interval else []
    wanted += ["conctools.gil"] if options.get("gil", True) else []
    wanted += ["conctools.deadlock"] if options.get("deadlock_timeout_s") else []
    import_in_background(wanted)
    if interval:
        from conctools.resources import ResourceSampler

        # psutil makes an RLock: a plain one, as in the main process (sampled before trace_locks).
        with contextlib.suppress(Exception), plain_lock_factories():
            sampler = ResourceSampler(float(interval), recorder=session.recorder)
            sampler.start()
            session.threads.append(sampler)
    if options.get("gil", True):
        from conctools.gil import GilMonitor

        try:
            monitor = GilMonitor(recorder=session.recorder).start()
        except Exception:
            _log.debug("conctools: a forked child's GIL monitor did not start", exc_info=True)
        else:
            session.threads.append(monitor)
    timeout = options.get("deadlock_timeout_s")
    if timeout:
        from conctools.deadlock import DeadlockWatchdog

        watchdog = DeadlockWatchdog(
            float(timeout), on_deadlock=session.on_deadlock, on_hang=session.on_hang, recorder=session.recorder
        )
        watchdog.start()
        session.threads.append(watchdog)


def _reset_inherited_sigterm() -> None:
    """A forked child does not keep the handler ``conctools run`` set for its main process: it
    dies by SIGTERM at once, as it would without conctools (``Pool.terminate()`` relies on it)."""
    try:
        handler = signal.getsignal(signal.SIGTERM)
        if str(getattr(handler, "__module__", "")).startswith("conctools."):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError, AttributeError):
        pass
