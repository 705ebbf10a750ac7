"""New interpreters: a followed child started by exec (spawn, the forkserver process,
``subprocess`` or ``os.exec*`` of ``sys.executable``).

The run puts a folder holding only a bootstrap ``sitecustomize.py`` first on ``PYTHONPATH`` and
its options in ``CONCTOOLS_FOLLOW``; the bootstrap calls :func:`start_from_env` before the
program's first line, which enters the same instruments ``conctools run`` uses
(:func:`conctools.runner.instrumented`) and starts the child's session.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys

from conctools.children import reaping
from conctools.children.config import BOOT_DIR, ENV_VAR, FollowConfig
from conctools.children.forking import activate
from conctools.children.procfile import ProcessIdentity
from conctools.children.session import ChildSession, current_session, install_exit_hooks, real_exit, state
from conctools.recorder import Recorder

__all__ = ["start_from_env"]

_log = logging.getLogger("conctools.children")


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
        real_exit(1)
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
        gil=bool(options.get("gil", True)),
    )
    threshold = options.get("lock_wait_threshold_s")
    if threshold is not None:  # --lock-wait-threshold (else RunOptions' default)
        run_options.lock_wait_threshold_s = float(threshold)
    if method == "spawn" or method.startswith("forkserver"):
        from conctools.children import mpsync

        mpsync.install()  # before the program's shared locks are unpickled (forkserver's forks inherit it)
    stack = contextlib.ExitStack()
    stack.enter_context(instrumented(run_options, recorder, on_deadlock=session.on_deadlock, on_hang=session.on_hang))
    session.instruments = stack
    state.session = session
    activate(config, root=False)
    reaping.install()
    reaping.listeners[:] = [session.ring]
    if method.startswith("forkserver"):
        state.forkserver = True
        reaping.wrap_waitpid()
    install_exit_hooks(session)
    session.start()
    from conctools.runner import freeze_startup_heap

    freeze_startup_heap()  # as conctools run does before the program's first line
