"""Instructions per request (valgrind callgrind) of a ``concurrent.futures`` fan-out under lock tracing,
with and without lock order: a noise-free complement to ``bench_run.py``'s ``futures_fanout`` program.

    .venv/bin/python benchmarks/instr_fanout.py                          # the C paths
    CONCTOOLS_PURE_PYTHON=1 .venv/bin/python benchmarks/instr_fanout.py  # the pure-Python path

Each case runs N and 2N requests (each fanned out to 25 futures on a ``ThreadPoolExecutor(4)``, gathered
by ``wait()`` or ``as_completed()``, with a done-callback and a merge lock, as the program does) under
callgrind; the difference divided by N is the cost of one request, start-up and imports cancelled out.
Each case also counts the garbage collections (``gc.callbacks``) of the 2N run, printed beside it.
The pool's threads make the count vary by some 20k instructions per request from run to run (under
valgrind, how many futures are done before ``wait()`` differs); the last cases are deterministic: one
thread, 25 futures completed before ``wait()`` or ``as_completed()`` takes their conditions.
"""

from __future__ import annotations

import re

from _callgrind import print_table, require_valgrind, run, run_cases

N = 200

CASES = {
    "fan-out of 25 futures: plain": "",
    "same, trace_locks()": "ctx = conctools.trace_locks()",
    "same, trace_locks(lock_order=True)": "ctx = conctools.trace_locks(lock_order=True)",
    "25 done futures, one thread: plain": "ONE_THREAD = True",
    "same, trace_locks() ": "ONE_THREAD = True; ctx = conctools.trace_locks()",
    "same, trace_locks(lock_order=True) ": "ONE_THREAD = True; ctx = conctools.trace_locks(lock_order=True)",
}

TEMPLATE = """
import contextlib, gc, sys, threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, as_completed, wait
import conctools
ctx = contextlib.nullcontext()
ONE_THREAD = False
{setup}
n = int(sys.argv[1])
collections = [0]
def counted(phase, info):
    if phase == "start":
        collections[0] += 1
def part(request, shard):
    return request + shard
def main():
    merged = {{}}
    merge_lock = threading.Lock()
    progress = [0]
    progress_lock = threading.Lock()
    def done(_f):
        with progress_lock:
            progress[0] += 1
    with ThreadPoolExecutor(4) as pool:
        for request in range(n):
            futures = [pool.submit(part, request, shard) for shard in range(25)]
            for f in futures:
                f.add_done_callback(done)
            if request % 2:
                total = sum(f.result() for f in as_completed(futures))
            else:
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                total = sum(f.result() for f in finished)
            with merge_lock:
                merged[request] = total
    assert len(merged) == n and progress[0] == n * 25
def one_thread():
    for request in range(n):
        futures = [Future() for _ in range(25)]
        for i, f in enumerate(futures):
            f.set_result(i)
        if request % 2:
            total = sum(f.result() for f in as_completed(futures))
        else:
            finished, _ = wait(futures)
with ctx:
    gc.callbacks.append(counted)
    one_thread() if ONE_THREAD else main()
    gc.callbacks.remove(counted)
print("collections", collections[0], file=sys.stderr)
"""


def instructions(setup: str, n: int) -> tuple[int, int]:
    """(instructions, garbage collections) of n requests."""
    count, stderr = run(TEMPLATE.format(setup=setup), n)
    gcs = re.search(r"collections (\d+)", stderr)
    if not gcs:
        raise RuntimeError(stderr[-2000:])
    return count, int(gcs.group(1))


def per_request(setup: str) -> tuple[float, int]:
    (small, _), (large, gcs) = instructions(setup, N), instructions(setup, 2 * N)
    return (large - small) / N, gcs


def main() -> None:
    require_valgrind("instr_fanout")
    results = run_cases(per_request, CASES)
    base = 0.0
    rows = []
    for name, (count, gcs) in results.items():
        if name.endswith(": plain"):
            base = count
        rows.append((name, f"{count:,.0f}", f"{count - base:+,.0f}", gcs))
    print_table(
        f"Instructions per request of 25 futures (callgrind, {N:,} vs {2 * N:,} requests):",
        ("what", "instructions per request", "added", f"collections in {2 * N:,} requests"),
        rows,
    )


if __name__ == "__main__":
    main()
