"""``@traced`` and ``traced()``: named spans around user code, in threads and tasks.

One object serves every form::

    @traced                      # span named after the function's __qualname__
    @traced("fetch")             # explicit name
    @traced(name="fetch", level=logging.INFO, threshold_s=0.5, log_args=True)
    with traced("phase"): ...
    async with traced("phase"): ...

Each call or block becomes a span: name, thread, task, start, duration, outcome
(``ok`` / ``raised`` / ``cancelled``) and parent span. Nesting follows a ``ContextVar``, so
it crosses ``await``, ``asyncio.create_task`` and ``asyncio.to_thread`` (which copy the
context). Spans go to the current recorder and to the ``conctools.traced`` logger.

The hot path is shaped by what things cost: ``threading.get_ident``,
``asyncio._get_running_loop`` and ``ContextVar`` operations are cheap; thread names, task
lookups off-loop and event objects are not, so names are resolved when a snapshot is
taken and events are built only when someone reads them.

Where the optional extension ``conctools._ctracing`` is built (``pip install`` builds it where a
compiler exists), sync and async functions are wrapped by its ``TracedFunction`` (no Python frame
of its own; an async function's calls return a ``TracedCoroutine`` that drives the function's
coroutine and records the span when it ends), and raw spans are kept as C rows (``SpanChunk``).
Generators, async generators and ``with traced()`` blocks stay in Python. Without it, or with
``CONCTOOLS_PURE_PYTHON=1``, the pure-Python wrappers below do the same, slower.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import reprlib
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from contextvars import ContextVar
from types import CodeType, ModuleType, TracebackType
from typing import Any, TypeVar, overload

from conctools._context import current_task_name
from conctools._imports import NO_RUNNING_LOOP, NoCancelledError, no_current_task, when_imported
from conctools._log import get_logger
from conctools._units import format_duration
from conctools.recorder import SPAN_CHUNK, _ctracing, _current, _sinks_anywhere, _SpanShard

__all__ = ["ActiveSpan", "ContextFilter", "Traced", "current_span", "traced"]

F = TypeVar("F", bound=Callable[..., Any])

_log = get_logger("conctools.traced")
_internal_log = logging.getLogger("conctools.tracing")

# (span_id, name) of the innermost active span in this context.
_span_var: ContextVar[tuple[int, str] | None] = ContextVar("conctools_span", default=None)
# Stack of active ``with traced()`` blocks in this context: (Traced, state, next).
_block_var: ContextVar[tuple[Any, ...] | None] = ContextVar("conctools_blocks", default=None)

_next_id = itertools.count(1).__next__
_now = time.monotonic_ns
# asyncio's once the program imports it (bound by _bind_asyncio below; conctools run does not
# import asyncio for a program that never uses it): until then no loop runs, no task is current.
_get_running_loop: Callable[[], Any] = NO_RUNNING_LOOP
_current_task: Callable[..., Any] = no_current_task
_CancelledError: type[BaseException] = NoCancelledError

_arg_repr = reprlib.Repr()
_arg_repr.maxstring = 60
_arg_repr.maxother = 60
_arg_repr.maxlevel = 2
_ARGS_MAX = 240


def _log_record_failure(name: str, exc: BaseException) -> None:
    """How the C path reports a span it could not record (the Python path logs the same line)."""
    _internal_log.error("conctools: failed to record span %r", name, exc_info=exc)


SPEEDUPS = _ctracing is not None  # the C fast path is in use
if _ctracing is not None:
    _next_id = _ctracing.next_id  # one counter for the C and the Python paths


async def _coroutine_marker() -> None:
    """Its code marks a C-wrapped async function as one, for 3.11's inspect.iscoroutinefunction."""


_coroutine_code = _coroutine_marker.__code__


def current_span() -> tuple[int, str] | None:
    """``(span_id, name)`` of the innermost active span here, or ``None``."""
    return _span_var.get()


def _format_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    try:
        parts = [_arg_repr.repr(a) for a in args]
        parts += [f"{k}={_arg_repr.repr(v)}" for k, v in kwargs.items()]
        text = ", ".join(parts)
    except Exception:  # a user __repr__ that raises must not break the call
        text = "<unrepresentable>"
    if len(text) > _ARGS_MAX:
        text = text[: _ARGS_MAX - 3] + "..."
    return text


class ActiveSpan:
    """What ``with traced(...) as span`` gives: the span's name, id and parent id."""

    __slots__ = ("name", "parent_id", "span_id")

    def __init__(self, name: str, span_id: int, parent_id: int | None) -> None:
        self.name = name
        self.span_id = span_id
        self.parent_id = parent_id

    def __repr__(self) -> str:
        return f"<ActiveSpan {self.name!r} id={self.span_id} parent={self.parent_id}>"


def _outcome_of(exc: BaseException | None) -> tuple[str, str | None]:
    if exc is None:
        return "ok", None
    if isinstance(exc, _CancelledError):
        return "cancelled", None
    return "raised", type(exc).__qualname__


class Traced:
    """A span definition: decorates functions and serves as a (async) context manager.

    Build it with :func:`traced`. One instance may be entered concurrently from many
    threads and tasks: per-entry state lives in the caller's context, not on the object.
    """

    __slots__ = ("level", "log_args", "logger", "name", "threshold_ns", "threshold_s")

    def __init__(
        self,
        name: str,
        *,
        level: int | str = logging.DEBUG,
        threshold_s: float | None = None,
        log_args: bool = False,
        logger: logging.Logger | None = None,
    ) -> None:
        if isinstance(level, str):
            resolved = logging.getLevelName(level.upper())
            if not isinstance(resolved, int):
                raise ValueError(f"unknown logging level {level!r}")
            level = resolved
        if threshold_s is not None and (threshold_s != threshold_s or threshold_s < 0):
            raise ValueError(f"threshold_s must be a non-negative number of seconds, got {threshold_s!r}")
        self.name = name
        self.level = int(level)
        self.threshold_s = threshold_s
        self.threshold_ns = None if threshold_s is None else int(threshold_s * 1e9)
        self.log_args = log_args
        self.logger = logger if logger is not None else _log

    def __repr__(self) -> str:
        return f"<Traced {self.name!r}>"

    # ---- finishing a span (shared by every form) ----
    def _finish(
        self,
        span_id: int,
        parent: tuple[int, str] | None,
        start_ns: int,
        end_ns: int,
        outcome: str,
        exc_type: str | None,
        task_name: str | None,
        args_text: str | None,
    ) -> None:
        try:
            parent_id = parent[0] if parent is not None else None
            _current[0].record_span(
                self.name, span_id, parent_id, start_ns, end_ns, outcome, exc_type, task_name, args_text
            )
            threshold = self.threshold_ns
            if threshold is None:
                if not self.logger.isEnabledFor(self.level):
                    return
                level = self.level
            else:
                if end_ns - start_ns < threshold:
                    return
                level = logging.WARNING
                if not self.logger.isEnabledFor(level):
                    return
            self._log(level, span_id, parent_id, end_ns - start_ns, outcome, exc_type, task_name, args_text)
        except Exception:  # observation never raises into user code
            _internal_log.exception("conctools: failed to record span %r", self.name)

    def _log(
        self,
        level: int,
        span_id: int,
        parent_id: int | None,
        duration_ns: int,
        outcome: str,
        exc_type: str | None,
        task_name: str | None,
        args_text: str | None,
    ) -> None:
        duration_s = duration_ns / 1e9
        what = outcome if exc_type is None else f"raised {exc_type}"
        where = f"thread {threading.current_thread().name!r}"
        if task_name is not None:
            where += f", task {task_name!r}"
        call = f"{self.name}({args_text})" if args_text is not None else self.name
        slow = ""
        if self.threshold_s is not None:
            slow = f" (over {format_duration(self.threshold_s)})"
        self.logger.log(
            level,
            "%s %s in %s%s [%s]",
            call,
            what,
            format_duration(duration_s),
            slow,
            where,
            extra={
                "span": self.name,
                "span_id": span_id,
                "parent_span_id": parent_id,
                "duration_s": duration_s,
                "outcome": outcome,
            },
            stacklevel=1,
        )

    # ---- decorator ----
    def __call__(self, fn: F) -> F:
        if isinstance(fn, classmethod):
            return classmethod(self(fn.__func__))  # type: ignore[return-value]
        if isinstance(fn, staticmethod):
            return staticmethod(self(fn.__func__))  # type: ignore[return-value]
        if not callable(fn):
            raise TypeError(f"traced() wraps functions, not {type(fn).__name__}")
        if inspect.isasyncgenfunction(fn):
            return self._wrap_async_gen(fn)  # type: ignore[return-value]
        if inspect.iscoroutinefunction(fn):
            return self._wrap_async(fn)  # type: ignore[return-value]
        if inspect.isgeneratorfunction(fn):
            return self._wrap_gen(fn)  # type: ignore[return-value]
        return self._wrap_sync(fn)  # type: ignore[return-value]

    def _ctracer(self) -> Any:
        """The C side of this definition: name, the general path, and whether the silent path applies."""
        cache = getattr(self.logger, "_cache", None)
        silent_ok = cache if isinstance(cache, dict) and self.threshold_ns is None else None
        return _ctracing.Tracer(self.name, self._finish, silent_ok, self.level, self.log_args)

    def _wrap_sync(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if _ctracing is not None:
            return functools.update_wrapper(self._ctracer().wrap(fn), fn)  # type: ignore[no-any-return]
        var_get, var_set, var_reset = _span_var.get, _span_var.set, _span_var.reset
        name, finish, log_args, now, next_id = self.name, self._finish, self.log_args, _now, _next_id
        current = _current
        logger, level, threshold = self.logger, self.level, self.threshold_ns
        cache = getattr(logger, "_cache", None)
        cache_get = cache.get if isinstance(cache, dict) and threshold is None else None

        # asyncio's getters are read at each call (module globals): a function wrapped before the
        # program imports asyncio still sees its loops and tasks after (_bind_asyncio).
        @functools.wraps(fn)
        def traced_call(*args: Any, **kwargs: Any) -> Any:
            parent = var_get()
            span_id = next_id()
            token = var_set((span_id, name))
            task_name = current_task_name() if _get_running_loop() is not None else None
            args_text = _format_args(args, kwargs) if log_args else None
            start = now()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                end = now()
                var_reset(token)
                finish(span_id, parent, start, end, *_outcome_of(exc), task_name, args_text)
                raise
            end = now()
            var_reset(token)
            # The success path, inlined: one Python-level call (the recorder) per traced call.
            if cache_get is not None and cache_get(level) is False and not args_text:
                try:  # Recorder.record_span, inlined
                    rec = current[0]
                    try:
                        shard = rec._local.shard
                    except AttributeError:
                        shard = rec._new_shard()
                    chunk = shard.chunk
                    chunk.append(
                        (start, end, name, span_id, parent[0] if parent else None, "ok", None, task_name, None)
                    )
                    if len(chunk) >= SPAN_CHUNK or rec._sinks:
                        rec._after_span(shard)
                except Exception:
                    _internal_log.exception("conctools: failed to record span %r", name)
            else:
                finish(span_id, parent, start, end, "ok", None, task_name, args_text)
            return result

        return traced_call

    def _wrap_async(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if _ctracing is not None:
            return self._wrap_async_c(fn)
        var_get, var_set, var_reset = _span_var.get, _span_var.set, _span_var.reset
        name, finish, log_args, now, next_id = self.name, self._finish, self.log_args, _now, _next_id
        current = _current
        logger, level, threshold = self.logger, self.level, self.threshold_ns
        cache = getattr(logger, "_cache", None)
        cache_get = cache.get if isinstance(cache, dict) and threshold is None else None

        @functools.wraps(fn)
        async def traced_coro(*args: Any, **kwargs: Any) -> Any:
            parent = var_get()
            span_id = next_id()
            token = var_set((span_id, name))
            loop = _get_running_loop()  # read at each call, as in _wrap_sync
            task = _current_task(loop) if loop is not None else None
            task_name = task.get_name() if task is not None else None
            args_text = _format_args(args, kwargs) if log_args else None
            start = now()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                end = now()
                _reset(token, parent)
                finish(span_id, parent, start, end, *_outcome_of(exc), task_name, args_text)
                raise
            end = now()
            try:
                var_reset(token)
            except ValueError:  # the coroutine was driven from another context
                var_set(parent)
            if cache_get is not None and cache_get(level) is False and not args_text:
                try:  # Recorder.record_span, inlined
                    rec = current[0]
                    try:
                        shard = rec._local.shard
                    except AttributeError:
                        shard = rec._new_shard()
                    chunk = shard.chunk
                    chunk.append(
                        (start, end, name, span_id, parent[0] if parent else None, "ok", None, task_name, None)
                    )
                    if len(chunk) >= SPAN_CHUNK or rec._sinks:
                        rec._after_span(shard)
                except Exception:
                    _internal_log.exception("conctools: failed to record span %r", name)
            else:
                finish(span_id, parent, start, end, "ok", None, task_name, args_text)
            return result

        return traced_coro

    def _wrap_async_c(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """The C wrapper of an async function, marked as a coroutine function for ``inspect``."""
        wrapper: Any = functools.update_wrapper(self._ctracer().wrap_async(fn), fn)
        if hasattr(inspect, "markcoroutinefunction"):  # 3.12+
            inspect.markcoroutinefunction(wrapper)
        else:  # 3.11's inspect reads the flags of a function-like object's __code__
            code = getattr(fn, "__code__", None)
            wrapper.__code__ = code if isinstance(code, CodeType) else _coroutine_code
            wrapper.__defaults__ = None
            wrapper.__kwdefaults__ = None
        return wrapper  # type: ignore[no-any-return]

    def _wrap_gen(self, fn: Callable[..., Generator[Any, Any, Any]]) -> Callable[..., Any]:
        name, finish, log_args, next_id = self.name, self._finish, self.log_args, _next_id

        @functools.wraps(fn)
        def traced_gen(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            gen = fn(*args, **kwargs)
            parent = _span_var.get()
            span_id = next_id()
            mine = (span_id, name)
            task_name = current_task_name()
            args_text = _format_args(args, kwargs) if log_args else None
            start = _now()
            error: BaseException | None = None
            to_send: Any = None
            to_throw: BaseException | None = None
            try:
                while True:
                    token = _span_var.set(mine)
                    try:
                        if to_throw is not None:
                            exc, to_throw = to_throw, None
                            value = gen.throw(exc)
                        else:
                            value = gen.send(to_send)
                    except StopIteration as stop:
                        return stop.value
                    finally:
                        _reset(token, parent)
                    try:
                        to_send = yield value
                    except GeneratorExit:
                        token = _span_var.set(mine)
                        try:
                            gen.close()
                        finally:
                            _reset(token, parent)
                        raise
                    except BaseException as exc:
                        to_throw = exc
            except GeneratorExit:
                raise
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(span_id, parent, start, _now(), *_outcome_of(error), task_name, args_text)

        return traced_gen

    def _wrap_async_gen(self, fn: Callable[..., AsyncGenerator[Any, Any]]) -> Callable[..., Any]:
        name, finish, log_args, next_id = self.name, self._finish, self.log_args, _next_id

        @functools.wraps(fn)
        async def traced_agen(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            agen = fn(*args, **kwargs)
            parent = _span_var.get()
            span_id = next_id()
            mine = (span_id, name)
            task_name = current_task_name()
            args_text = _format_args(args, kwargs) if log_args else None
            start = _now()
            error: BaseException | None = None
            to_send: Any = None
            to_throw: BaseException | None = None
            try:
                while True:
                    token = _span_var.set(mine)
                    try:
                        if to_throw is not None:
                            exc, to_throw = to_throw, None
                            value = await agen.athrow(exc)
                        else:
                            value = await agen.asend(to_send)
                    except StopAsyncIteration:
                        return
                    finally:
                        _reset(token, parent)
                    try:
                        to_send = yield value
                    except GeneratorExit:
                        token = _span_var.set(mine)
                        try:
                            await agen.aclose()
                        finally:
                            _reset(token, parent)
                        raise
                    except BaseException as exc:
                        to_throw = exc
            except GeneratorExit:
                raise
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(span_id, parent, start, _now(), *_outcome_of(error), task_name, args_text)

        return traced_agen

    # ---- context manager ----
    def __enter__(self) -> ActiveSpan:
        parent = _span_var.get()
        span_id = _next_id()
        token = _span_var.set((span_id, self.name))
        state = (self, parent, span_id, token, current_task_name(), _now())
        _block_var.set((state, _block_var.get()))
        return ActiveSpan(self.name, span_id, parent[0] if parent is not None else None)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        end = _now()
        try:
            stack = _block_var.get()
            if stack is None or stack[0][0] is not self:
                _internal_log.warning("conctools: traced(%r) exited out of order; span dropped", self.name)
                return
            (_owner, parent, span_id, token, task_name, start), rest = stack
            _block_var.set(rest)
            _reset(token, parent)
        except Exception:
            _internal_log.exception("conctools: traced(%r) could not close its span", self.name)
            return
        self._finish(span_id, parent, start, end, *_outcome_of(exc), task_name, None)

    async def __aenter__(self) -> ActiveSpan:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def _reset(token: Any, parent: tuple[int, str] | None) -> None:
    """Reset the span variable; if the token belongs to another context, restore the parent."""
    try:
        _span_var.reset(token)
    except ValueError:
        _span_var.set(parent)


@overload
def traced(target: F, /) -> F: ...


@overload
def traced(
    target: str | None = None,
    /,
    *,
    name: str | None = None,
    level: int | str = logging.DEBUG,
    threshold_s: float | None = None,
    log_args: bool = False,
    logger: logging.Logger | None = None,
) -> Traced: ...


def traced(
    target: Any = None,
    /,
    *,
    name: str | None = None,
    level: int | str = logging.DEBUG,
    threshold_s: float | None = None,
    log_args: bool = False,
    logger: logging.Logger | None = None,
) -> Any:
    """Trace a function or a block as a named span.

    >>> @traced
    ... def work(): return 42
    >>> work()
    42
    >>> with traced("phase") as span:
    ...     pass

    ``level`` is the logging level of the per-call line on the ``conctools.traced``
    logger; with ``threshold_s`` only calls slower than it are logged, at WARNING.
    ``log_args`` adds the arguments, shortened with :mod:`reprlib`.
    """

    def make(span_name: str) -> Traced:
        return Traced(span_name, level=level, threshold_s=threshold_s, log_args=log_args, logger=logger)

    if target is None or isinstance(target, str):
        span_name = target if target is not None else name
        if span_name is None:
            caller = sys._getframe(1)
            span_name = f"{caller.f_code.co_filename.rsplit('/', 1)[-1]}:{caller.f_lineno}"
        return make(span_name)
    if isinstance(target, (classmethod, staticmethod)):
        inner = target.__func__
        return make(name or inner.__qualname__)(target)  # type: ignore[type-var]
    if callable(target):
        return make(name or str(getattr(target, "__qualname__", repr(target))))(target)
    raise TypeError(f"traced() takes a function or a name, not {type(target).__name__}")


class ContextFilter(logging.Filter):
    """Adds ``taskName`` (on 3.11, where logging lacks it) and the current span to records.

    >>> handler = logging.StreamHandler()
    >>> handler.addFilter(ContextFilter())
    >>> handler.setFormatter(logging.Formatter("%(threadName)s %(taskName)s %(span)s %(message)s"))

    Fields added when missing: ``taskName``, ``span`` (name or ``None``), ``span_id``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if getattr(record, "taskName", None) is None:
                record.taskName = current_task_name()
            if not hasattr(record, "span"):
                current = _span_var.get()
                record.span = current[1] if current is not None else None
                record.span_id = current[0] if current is not None else None
        except Exception:  # a filter must never drop or break a record
            pass
        return True


def _setup_c(current_tasks: object) -> None:
    """Hand the C tracer what it reads: again once asyncio is imported (setup() replaces them)."""
    if _ctracing is None:
        return
    _ctracing.setup(
        span_var=_span_var,
        current=_current,
        get_running_loop=_get_running_loop,
        current_task=_current_task,
        current_tasks=current_tasks,  # asyncio.tasks._current_tasks (loop -> task), where it is a dict
        cancelled_error=_CancelledError,
        log_failure=_log_record_failure,
        format_args=_format_args,
        monotonic_ns=time.monotonic_ns,
        chunk_size=SPAN_CHUNK,
        shard_type=_SpanShard,
        chunk_slot=vars(_SpanShard)["chunk"],  # the slot's member descriptor
        sinks_anywhere=_sinks_anywhere,
    )


def _bind_asyncio(asyncio: ModuleType) -> None:
    global _get_running_loop, _current_task, _CancelledError
    _get_running_loop, _current_task = asyncio._get_running_loop, asyncio.current_task
    _CancelledError = asyncio.CancelledError
    _setup_c(getattr(asyncio.tasks, "_current_tasks", None))


_setup_c(None)
when_imported("asyncio", _bind_asyncio)
