"""Instructions per call (valgrind callgrind) for @traced and its peers: a noise-free
complement to ``bench_traced.py`` on a shared, noisy machine.

    .venv/bin/python benchmarks/instr_traced.py                          # the C fast path
    CONCTOOLS_PURE_PYTHON=1 .venv/bin/python benchmarks/instr_traced.py  # the pure-Python path

Each case runs twice under callgrind, with N and 2N calls; the difference divided by N is
the cost of one call, start-up and imports cancelled out. Instructions are not
nanoseconds, but their ratios are stable from run to run, whatever else the machine does.
"""

from __future__ import annotations

from _callgrind import per_item, print_table, require_valgrind, run_cases

N = 20_000

CASES = {
    "bare call": "f = bare",
    "functools.wraps wrapper": "f = functools.wraps(bare)(lambda *a, **k: bare(*a, **k))",
    "@traced (sync)": "f = conctools.traced(bare)",
    "OpenTelemetry SDK span, no span processor": (
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "f = TracerProvider().get_tracer('b').start_as_current_span('bare')(bare)"
    ),
    "OpenTelemetry SDK span, SimpleSpanProcessor + in-memory exporter": (
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "p = TracerProvider(); e = InMemorySpanExporter(); p.add_span_processor(SimpleSpanProcessor(e))\n"
        "f = p.get_tracer('b').start_as_current_span('bare')(bare)"
    ),
    "await coroutine": "f = coro; ASYNC = True",
    "@traced (async)": "f = conctools.traced(coro); ASYNC = True",
}

TEMPLATE = """
import asyncio, functools, sys
import conctools
from conctools.recorder import Recorder, set_recorder
set_recorder(Recorder(capacity=10_000))
def bare():
    return 1
async def coro():
    return 1
ASYNC = False
{setup}
n = int(sys.argv[1])
if ASYNC:
    async def main():
        for _ in range(n):
            await f()
    asyncio.run(main())
else:
    for _ in range(n):
        f()
"""


def per_call(setup: str) -> float:
    return per_item(TEMPLATE.format(setup=setup), N)


def main() -> None:
    require_valgrind("instr_traced")
    results = run_cases(per_call, CASES)
    bare, coro = results["bare call"], results["await coroutine"]
    rows = []
    for name, count in results.items():
        base = coro if ("async" in name or "await" in name) else bare
        rows.append((name, f"{count:,.0f}", f"{count - base:+,.0f}"))
    print_table(
        f"Instructions per call (callgrind, {N:,} vs {2 * N:,} calls):",
        ("what", "instructions per call", "added"),
        rows,
    )
    sync = results["@traced (sync)"] - bare
    otel = results["OpenTelemetry SDK span, no span processor"] - bare
    print(f"\n- added by an OpenTelemetry SDK span (no span processor) / added by @traced (sync): {otel / sync:.0f}x")
    print(f"- added by @traced (async): {results['@traced (async)'] - coro:,.0f} instructions")


if __name__ == "__main__":
    main()
