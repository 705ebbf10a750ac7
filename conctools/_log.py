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
    imports it before ``trace_locks()`` patches ``threading`` (as ``conctools run``'s main process does)."""
    module = sys.modules.get("logging")
    if module is not None:
        return module
    saved = threading.Lock, threading.RLock
    threading.Lock, threading.RLock = _thread.allocate_lock, _thread.RLock  # type: ignore[misc,assignment]
    try:
        import logging
    finally:
        threading.Lock, threading.RLock = saved  # type: ignore[misc]
    return logging


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, imported on first use."""
    return cast("logging.Logger", _LazyLogger(name))
