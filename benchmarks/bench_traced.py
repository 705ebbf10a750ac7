"""What @traced costs per call, side by side with a bare call, a do-nothing wrapper and an
OpenTelemetry SDK span, in one process.

    .venv/bin/python benchmarks/bench_traced.py

The logger is left below DEBUG (the production setting): spans are recorded, not logged.
Each figure is the best of several repeats (the machine is shared and noisy; the minimum is
the least disturbed measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import platform
import time
from collections.abc import Callable
from typing import Any

import conctools
from conctools.recorder import Recorder, use_recorder

N = 200_000
REPEATS = 7


def best_ns(fn: Callable[[], Any], n: int = N, repeats: int = REPEATS) -> float:
    """Best per-call time of ``fn()`` (loop included) over ``repeats`` runs of ``n`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def best_async_ns(make: Callable[[], Any], n: int = N // 4, repeats: int = REPEATS) -> float:
    """Best per-call time of ``await make()`` inside one running loop."""

    async def main() -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                await make()
            best = min(best, (time.perf_counter_ns() - t0) / n)
        return best

    return asyncio.run(main())


def otel_tracer() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    return tracer, exporter


def measure() -> dict[str, float]:
    def bare() -> int:
        return 1

    @functools.wraps(bare)
    def wrapper(*a: Any, **k: Any) -> int:
        return bare(*a, **k)

    traced_fn = conctools.traced(bare)
    tracer, exporter = otel_tracer()
    otel_fn = tracer.start_as_current_span("bare")(bare)

    async def coro() -> int:
        return 1

    traced_coro = conctools.traced(coro)

    results: dict[str, float] = {}
    with use_recorder(Recorder(capacity=10_000)):
        results["bare call"] = best_ns(bare)
        results["functools.wraps wrapper"] = best_ns(wrapper)
        results["@traced (sync)"] = best_ns(traced_fn)
        results["OpenTelemetry SDK span"] = best_ns(otel_fn, n=N // 20, repeats=5)
        exporter.clear()
        results["await coroutine"] = best_async_ns(coro)
        results["@traced (async)"] = best_async_ns(traced_coro)
    return results


def render(results: dict[str, float]) -> str:
    bare, coro = results["bare call"], results["await coroutine"]
    otel, sync = results["OpenTelemetry SDK span"], results["@traced (sync)"]
    lines = [
        f"Python {platform.python_version()} on {platform.machine()}, {N:,} calls per repeat, best of {REPEATS}:",
        "",
        "| what | ns per call | added vs bare |",
        "|---|---:|---:|",
    ]
    for name, ns in results.items():
        base = coro if "async" in name or "await" in name else bare
        lines.append(f"| {name} | {ns:,.0f} | {ns - base:+,.0f} |")
    lines += [
        "",
        f"- `@traced` on a sync function adds **{sync - bare:,.0f} ns** per call "
        f"(target: at most 700 ns); async adds **{results['@traced (async)'] - coro:,.0f} ns** (target: 1,200 ns).",
        f"- `@traced` is **{otel / sync:.0f}x cheaper** than an OpenTelemetry SDK span "
        f"(SimpleSpanProcessor + in-memory exporter) measured in the same process (target: at least 20x).",
    ]
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(render(measure()))


if __name__ == "__main__":
    main()
