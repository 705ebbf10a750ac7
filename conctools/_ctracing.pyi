# Stubs for the optional C fast path of @traced (see _tracing.c).
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

API_VERSION: int

class Tracer:
    name: str
    def __init__(
        self, name: str, finish: Callable[..., None], cache: dict[int, bool] | None, level: int, log_args: bool
    ) -> None: ...
    def wrap(self, fn: Callable[..., Any]) -> TracedFunction: ...
    def wrap_async(self, fn: Callable[..., Any]) -> TracedFunction: ...

class TracedFunction:
    _ct_fn: Callable[..., Any]
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __get__(self, obj: object, owner: type | None = None) -> Any: ...

class TracedCoroutine:
    __name__: str
    __qualname__: str
    cr_frame: Any
    cr_await: Any
    cr_running: bool
    cr_suspended: bool
    cr_code: Any
    cr_origin: None
    def send(self, value: Any, /) -> Any: ...
    def throw(self, typ: Any, val: Any = ..., tb: Any = ..., /) -> Any: ...
    def close(self) -> None: ...
    def __await__(self) -> Any: ...

def setup(
    *,
    span_var: ContextVar[Any],
    current: list[Any],
    get_running_loop: Callable[[], Any],
    current_task: Callable[..., Any],
    current_tasks: Any,
    cancelled_error: type[BaseException],
    log_failure: Callable[[str, BaseException], None],
    format_args: Callable[[tuple[Any, ...], dict[str, Any]], str],
    monotonic_ns: Callable[[], int],
    chunk_size: int,
    shard_type: type,
    chunk_slot: Any,
    sinks_anywhere: list[int],
) -> None: ...
def forget() -> None: ...
def next_id() -> int: ...
def fold(
    aggs: dict[str, list[int]],
    chunk: list[tuple[Any, ...]],
    hists: dict[str, dict[int, int]] | None = None,
    beaten: list[tuple[str, int]] | None = None,
    /,
) -> bool: ...

class SpanChunk:
    def __init__(self) -> None: ...
    def append(self, row: tuple[Any, ...], /) -> None: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, key: Any, /) -> Any: ...
