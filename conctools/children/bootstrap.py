"""New interpreters: a followed child started by exec (spawn, the forkserver process,
``subprocess`` or ``os.exec*`` of ``sys.executable``).

The run puts a folder holding only a bootstrap ``sitecustomize.py`` first on ``PYTHONPATH`` and
its options in ``CONCTOOLS_FOLLOW``; the bootstrap calls :func:`start_from_env` before the
program's first line, which enters the same instruments ``conctools run`` uses
(:func:`conctools.runner.instrumented`) and starts the child's session.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys

from conctools._log import get_logger
from conctools._typing import Any
from conctools.children import reaping
from conctools.children.config import BOOT_DIR, ENV_VAR, FollowConfig
from conctools.children.forking import activate, start_instruments
from conctools.children.procfile import ProcessIdentity
from conctools.children.session import ChildSession, current_session, install_exit_hooks, real_exit, state
from conctools.recorder import Recorder, use_recorder

__all__ = ["start_from_env"]

_log = get_logger("conctools.children")

_DEFAULT_WAIT_THRESHOLD_S = 0.001  # RunOptions.lock_wait_threshold_s (the runner is not imported here)


# ---- exec ---------------------------------------------------------------------------------


# Interpreter options whose value is the next argument (``-W error``, ``-X dev``).
_TAKES_VALUE = frozenset({"-W", "-X", "--check-hash-based-pycs"})


def _runs_conctools(argv: list[str]) -> bool:
    """A nested ``conctools`` command (``python -m conctools ...``, the ``conctools`` script): a run
    of its own, which follows its own children."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m" and i + 1 < len(argv):
            return argv[i + 1].split(".")[0] == "conctools"
        if arg.startswith("-m") and len(arg) > 2:
            return arg[2:].split(".")[0] == "conctools"
        if arg == "-c" or arg.startswith("-c") or arg == "-":
            return False
        if not arg.startswith("-"):
            return os.path.basename(arg) == "conctools"
        i += 2 if arg in _TAKES_VALUE else 1
    return False


def _start_method_of(argv: list[str]) -> str | None:
    """How this interpreter was started, from its command line; ``None`` for a process not to follow."""
    joined = " ".join(argv)
    if "multiprocessing.resource_tracker" in joined:
        return None  # multiprocessing's own bookkeeping process, not the program's
    if "multiprocessing.spawn import spawn_main" in joined and "--multiprocessing-fork" in argv:
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
        real_exit(1)
    while BOOT_DIR in sys.path:  # the program's sys.path is its own
        sys.path.remove(BOOT_DIR)
    if config.python != "{}.{}".format(*sys.version_info[:2]):
        return
    argv = list(getattr(sys, "orig_argv", sys.argv))
    method = _start_method_of(argv)
    if method is None or _runs_conctools(argv):
        return
    options = config.options
    recorder = Recorder(capacity=int(options.get("capacity") or 100_000))
    recorder.meta["command"] = " ".join(sys.argv)
    identity = ProcessIdentity.here(method, argv=[] if method != "exec" else None)
    if method.startswith("forkserver"):
        identity.name = "forkserver"
    session = ChildSession(config, identity, recorder)
    if method == "spawn" or method.startswith("forkserver"):
        from conctools.children import mpsync

        mpsync.install()  # before the program's shared locks are unpickled (forkserver's forks inherit it)
    session.instruments = _enter_instruments(options, recorder)
    # The sampler (psutil), the GIL monitor and the watchdog start with the second record, half a
    # second in, as in a forked child: a spawned worker that lives less pays for none of them.
    session.deferred.append(lambda: start_instruments(session))
    state.session = session
    activate(config, root=False)
    reaping.install()
    reaping.listeners[:] = [session.ring]
    if method.startswith("forkserver"):
        state.forkserver = True
        reaping.wrap_waitpid()
    install_exit_hooks(session)
    session.start()
    gc.freeze()  # as conctools run does before the program's first line (runner.freeze_startup_heap)


def _enter_instruments(options: dict[str, Any], recorder: Recorder) -> contextlib.ExitStack:
    """What must be live at the program's first line, with the run's options: the recorder, lock
    tracing (locks the program makes from its first line on are traced ones) with lock order, the
    pools, and the loop monitor's hooks (cheap: it starts with the first loop). The same as
    :func:`conctools.runner.instrumented` but for the instruments :func:`start_instruments` starts
    later, and without importing the runner (a new interpreter pays for every import)."""
    stack = contextlib.ExitStack()
    stack.enter_context(use_recorder(recorder))
    log_level = options.get("log_level")
    if log_level:
        from conctools.runner import _stderr_logging

        stack.enter_context(_stderr_logging(str(log_level)))
    if options.get("trace_locks", True):
        from conctools.locks import trace_locks
        from conctools.pools import track_pools

        threshold = options.get("lock_wait_threshold_s")
        stack.enter_context(
            trace_locks(
                lock_order=bool(options.get("lock_order", True)),
                recorder=recorder,
                wait_threshold_s=_DEFAULT_WAIT_THRESHOLD_S if threshold is None else float(threshold),
            )
        )
        stack.enter_context(track_pools(recorder=recorder))
    loop_threshold_s = options.get("loop_threshold_s")
    if loop_threshold_s:
        from conctools.loopmon import monitor_all_loops

        stack.enter_context(
            monitor_all_loops(
                float(loop_threshold_s), detect_blocking=bool(options.get("detect_blocking")), recorder=recorder
            )
        )
    return stack
