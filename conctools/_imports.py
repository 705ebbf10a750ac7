"""Patch a module when the program first imports it, not before (:func:`when_imported`).

``conctools run`` imports only what the run needs before the program's first line (issue 12's
start-up target). A patch of a module that the program may never import (asyncio's loop start
and primitives, ``multiprocessing``'s process classes) is put off until the program imports that
module: a finder first on ``sys.meta_path`` watches for the names that have hooks pending, lets
the other finders find the module, and calls the hooks right after the module's code ran, in the
importing thread, before the ``import`` statement returns. The module's ``__loader__`` and
``__spec__.loader`` are the real loader's (the wrapper steps aside before the module runs), and
the finder leaves ``sys.meta_path`` once no hook is pending. A hook that raises is logged and
dropped: the import itself never fails because of conctools. :func:`later` stands for a module
in a namespace until it is imported; ``NO_RUNNING_LOOP`` & co answer asyncio's cheap questions
before asyncio exists.
"""

from __future__ import annotations

import _imp
import _thread
import os
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType

from conctools._log import get_logger
from conctools._typing import Any

__all__ = ["NO_RUNNING_LOOP", "NoCancelledError", "imported", "later", "no_current_task", "when_imported"]

_log = get_logger("conctools")

Hook = Callable[[ModuleType], object]

_mutex = _thread.RLock()  # plain: trace_locks() may have patched threading

# Held by a conctools thread while it imports modules as the program runs (the modules of a followed
# child's deferred instruments, the dump agent's preload: import_in_background; ``logging`` at the first
# use of a conctools logger: _log._logging), and a fork waits for it (the at-fork hook below, and
# ``children.forking._before_fork`` under ``conctools run``): a child forked in the middle of such an
# import would have the module half made, its import lock held by a thread it does not have, and the
# first import of it there (its own deferred instruments, the program's own ``import logging``) would
# wait forever. Re-entrant: an import made under it can log.
background_imports = _thread.RLock()
BACKGROUND_IMPORT_WAIT_S = 5.0  # a fork waits at most this long (no such import takes that long)

_fork_hook = [False]  # the at-fork hook is registered (once per process: children inherit it)
_fork_holds: dict[int, ForkHold] = {}  # forking thread -> what its before-hook holds


class ForkHold:
    """What a before-fork hook holds until the fork is done, in the parent and in the child (the
    forking thread, with the same ident): ``background_imports``, and the interpreter's import lock."""

    __slots__ = ("background", "import_lock")

    def __init__(self) -> None:
        self.background = False
        self.import_lock = False

    def release(self) -> None:
        if self.import_lock:
            self.import_lock = False
            try:
                _imp.release_lock()
            except RuntimeError:  # (a child whose interpreter reset the lock at the fork)
                pass
        if self.background:
            self.background = False
            background_imports.release()


def _before_fork() -> None:
    had_logging = logging_ready() is not None
    _fork_holds[_thread.get_ident()], _ = hold_imports_for_fork()
    if not had_logging:
        balance_logging_hooks()


def _after_fork_parent() -> None:
    hold = _fork_holds.pop(_thread.get_ident(), None)
    if hold is not None:
        hold.release()


def _after_fork_child() -> None:  # the forking thread, with the same ident
    hold = _fork_holds.pop(_thread.get_ident(), None)
    held = hold is not None and hold.background
    if hold is not None:
        hold.release()
    if not held:  # the wait timed out: held by a thread the child does not have (its imports are cut)
        background_imports._at_fork_reinit()  # type: ignore[attr-defined]
    _fork_holds.clear()


def hold_imports_for_fork() -> tuple[ForkHold, bool]:
    """Before a fork: wait, at most ``BACKGROUND_IMPORT_WAIT_S``, until no conctools thread is in the
    middle of an import, and keep it so until the fork is done. Returns what is held (the caller
    releases it after the fork, in both processes: :meth:`ForkHold.release`) and whether the wait
    ended in time.

    Two kinds of import are waited for: those made under ``background_imports`` (the lock), and any
    other import a conctools thread is making (its first use of a module imported lazily): the owners
    of the interpreter's module import locks are looked at while the interpreter's import lock is
    held, and it stays held until the fork is done, so that no thread starts an import in between (a
    thread in the middle of one goes on; one starting one waits for the fork, as it would for the
    interpreter's own hold of that lock across ``fork()``). The program's own threads' imports are
    the program's business, as without conctools."""
    hold = ForkHold()
    deadline = time.monotonic() + BACKGROUND_IMPORT_WAIT_S
    while True:
        hold.background = background_imports.acquire(timeout=max(0.0, deadline - time.monotonic()))
        _imp.acquire_lock()
        if not _our_import_under_way():
            hold.import_lock = True
            return hold, hold.background
        # Let both go while the import goes on: it may need either (a nested import needs the import
        # lock; conctools' first log line takes background_imports: _log._logging), and logging's lock.
        _imp.release_lock()
        if hold.background:
            hold.background = False
            background_imports.release()
        if time.monotonic() >= deadline:
            return hold, False
        logging_lock = _let_go_of_logging()
        time.sleep(0.0005)
        _take_back(logging_lock)


def _let_go_of_logging() -> Any:
    """``logging``'s own before-fork hook runs first when ``logging`` was imported after conctools
    registered its hook, and takes logging's lock in the forking thread: the import waited for may
    need that lock (``concurrent.futures`` makes its logger as it is imported). Let go of it, if this
    thread holds it, while that import goes on; returns what :func:`_take_back` needs."""
    lock = getattr(sys.modules.get("logging"), "_lock", None)
    try:
        if lock is None or not lock._is_owned():
            return None
        return lock, lock._release_save()
    except Exception:  # (a lock without those methods: keep it)
        return None


def _take_back(saved: Any) -> None:
    if saved is not None:
        lock, state = saved
        lock._acquire_restore(state)


def forks_wait_for_imports() -> None:
    """From now on a fork of this process waits for an import made in the background (once)."""
    if not _fork_hook[0] and hasattr(os, "register_at_fork"):
        _fork_hook[0] = True
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child)


def _our_import_under_way() -> bool:
    """True while a conctools thread (other than this one) holds a module's import lock."""
    try:
        locks = getattr(sys.modules.get("_frozen_importlib"), "_module_locks", None)
        if not locks:
            return False
        me = _thread.get_ident()
        owners = set()
        for ref in list(locks.values()):
            lock = ref() if callable(ref) else None
            if lock is None:
                continue
            owner = getattr(lock, "owner", None)
            if owner is None:  # made, not taken yet (or just let go): its thread goes on without the
                return True  # interpreter's import lock, so it is waited for until it is taken or gone
            if owner != me:
                owners.add(owner)
        if not owners:
            return False
        threading = sys.modules.get("threading")
        active = dict(getattr(threading, "_active", None) or {})
        return any(str(getattr(active.get(o), "name", "")).startswith("conctools-") for o in owners)
    except Exception:  # (the import system's internals differ between versions: never fail a fork)
        return False


def logging_ready() -> Any:
    """``logging``, if its module has run whole (and so registered its at-fork hooks)."""
    logging = sys.modules.get("logging")
    spec = getattr(logging, "__spec__", None)
    if logging is None or spec is None or getattr(spec, "_initializing", False):
        return None
    return logging


def balance_logging_hooks() -> None:
    """``logging``, imported while a fork waited (by the conctools thread it waited for), has
    registered its at-fork hooks too late for its ``before`` (which takes logging's lock) to run for
    this fork, yet its ``after`` hooks (which release it) will: take the lock as its ``before``
    would have, once its module has run whole (a module still running has registered nothing)."""
    logging = logging_ready()
    if logging is None:
        return
    before = getattr(logging, "_prepareFork", None) or getattr(logging, "_acquireLock", None)
    if callable(before):
        try:
            before()
        except Exception:
            pass


def import_in_background(names: Sequence[str]) -> None:
    """Import ``names`` from a conctools thread, never while the process forks."""
    import importlib

    forks_wait_for_imports()
    with background_imports:
        for name in names:
            importlib.import_module(name)


def imported(name: str) -> ModuleType:
    """The module ``name``, imported now if it is not yet (by any thread: a conctools one, or the
    program's when conctools code runs in it), never while the process forks. A module a followed
    child's start does without is imported this way where first needed (issue 14). A fork holds
    :data:`background_imports` for a moment only; should it stay held (the forking thread's own
    hooks asking), the import goes on after ``BACKGROUND_IMPORT_WAIT_S`` rather than wait forever."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    import importlib

    forks_wait_for_imports()
    held = background_imports.acquire(timeout=BACKGROUND_IMPORT_WAIT_S)
    try:
        return importlib.import_module(name)
    finally:
        if held:
            background_imports.release()


_pending: dict[str, list[Hook]] = {}


def when_imported(name: str, hook: Hook) -> Callable[[], None]:
    """Call ``hook(module)`` once the module ``name`` is imported: at once when it already is,
    else right after the program's import of it has run the module's code. Returns a function
    that cancels the hook if it has not been called yet."""
    module = sys.modules.get(name)
    if module is not None:
        hook(module)
        return _nothing
    with _mutex:
        hooks = _pending.setdefault(name, [])
        if hook not in hooks:  # the same patch asked for twice is made once
            hooks.append(hook)
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)

    def cancel() -> None:
        with _mutex:
            hooks = _pending.get(name)
            if hooks is not None and hook in hooks:
                hooks.remove(hook)
                if not hooks:
                    del _pending[name]
            _leave_when_idle()

    return cancel


def later(name: str, namespace: dict[str, Any], key: str | None = None) -> Any:
    """What a module keeps in ``namespace[key]`` (``key`` defaults to ``name``) for the module
    ``name``: the module itself when it is imported already; else a stand-in that imports it on
    the first use of one of its attributes (correct, just not cheap), replaced in ``namespace``
    by the module itself as soon as the program imports it. Use it where an attribute is only
    needed once the program has the module's objects (a loop, a task), under
    ``if TYPE_CHECKING: import name``."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    stand_in = _Later(name)
    slot = key or name

    def bind(module: ModuleType) -> None:
        if namespace.get(slot) is stand_in:
            namespace[slot] = module

    when_imported(name, bind)
    return stand_in


class _Later:
    """A module not imported yet: imported on the first use of an attribute."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import importlib

        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<module {self._name!r}, imported on first use>"


# asyncio's cheap questions before the program imports asyncio: no loop can run in any thread
# then (every loop, uvloop's too, is one of asyncio's). The bound ``clear`` of a private empty
# list is a C function of no arguments that returns ``None``: the C lock paths call it as cheaply
# as ``asyncio._get_running_loop`` (they take the direct path for such a function).
NO_RUNNING_LOOP: Callable[[], Any] = [].clear


def no_current_task(loop: Any = None) -> Any:
    """``asyncio.current_task()`` before asyncio is imported: no loop runs, so it raises as it would."""
    if loop is None:
        raise RuntimeError("no running event loop")
    return None


class NoCancelledError(BaseException):
    """Stands for ``asyncio.CancelledError`` until asyncio is imported: nothing raises it."""


def pending() -> list[str]:
    """The module names that hooks still wait for (for tests)."""
    with _mutex:
        return sorted(_pending)


def _nothing() -> None:
    pass


def _leave_when_idle() -> None:
    if not _pending:
        try:
            sys.meta_path.remove(_FINDER)
        except ValueError:
            pass


def _fire(name: str, module: ModuleType) -> None:
    with _mutex:
        hooks = _pending.pop(name, [])
        _leave_when_idle()
    for hook in hooks:
        try:
            hook(module)
        except Exception:
            _log.exception("conctools: the hook on the import of %s failed", name)


class _Finder:
    """First on ``sys.meta_path`` while hooks are pending; finds nothing itself."""

    @staticmethod
    def find_spec(fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None) -> Any:
        if fullname not in _pending:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is _FINDER or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _Loader(spec.loader)
            return spec
        return None


class _Loader:
    """The real loader, plus the hooks once the module's code has run."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        loader = self.loader
        spec: Any = module.__spec__
        if spec is not None and spec.loader is self:
            spec.loader = loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = loader
        loader.exec_module(module)
        _fire(spec.name if spec is not None else module.__name__, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


_FINDER = _Finder()
