"""Loggers that import ``logging`` when first used: :func:`get_logger`.

conctools' modules log only when something fails (``_log.debug(..., exc_info=True)``), but an
``import logging`` costs a new interpreter ~6 ms, and every followed child imports the modules that
lock tracing and the record writer need before its program's first line (issue 14). The proxy is
the same logger once used: ``logging.getLogger(name)``, its level, handlers and propagation.
"""

from __future__ import annotations

import _thread
import sys
import threading

from conctools._typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import logging

__all__ = ["get_logger"]


class _LazyLogger:
    """Stands for ``logging.getLogger(name)``; every attribute is the real logger's."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        logger = self._logger
        if logger is None:
            logger = self._logger = _logging().getLogger(self._name)
        return getattr(logger, attr)

    def __repr__(self) -> str:
        return f"<lazy logger {self._name!r}>"


def _logging() -> Any:
    """``logging``; imported by conctools itself, its own lock stays a plain one, as when conctools
    imports it before ``trace_locks()`` patches ``threading`` (as ``conctools run``'s main process does).

    The first use can come from any thread, a conctools one included, while the program runs: the
    import holds ``_imports.background_imports``, which a fork waits for (``children.forking``), so
    that no child is forked with ``logging`` half made (its first ``import logging`` would wait
    forever on an import lock held by a thread it does not have)."""
    module = sys.modules.get("logging")
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        return module
    imports: Any = sys.modules.get("conctools._imports")  # it imports this module: looked up, not imported
    guard = getattr(imports, "background_imports", None)
    held = False
    if guard is not None:
        imports.forks_wait_for_imports()
        held = guard.acquire(timeout=imports.BACKGROUND_IMPORT_WAIT_S)
    try:
        if "logging" in sys.modules:  # being imported by another thread: wait for it, as ``import`` does
            import logging
        else:
            saved = threading.Lock, threading.RLock
            threading.Lock, threading.RLock = _thread.allocate_lock, _thread.RLock  # type: ignore[misc,assignment]
            try:
                import logging
            finally:
                threading.Lock, threading.RLock = saved  # type: ignore[misc]
    finally:
        if held:
            guard.release()  # type: ignore[union-attr]
    return logging


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, imported on first use."""
    return cast("logging.Logger", _LazyLogger(name))
