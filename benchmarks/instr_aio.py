"""Instructions per task (valgrind callgrind) of the asyncio primitives' bookkeeping: a noise-free
complement to ``bench_run.py``'s asyncio program (``programs/async_locks.py``) on a shared machine.

    .venv/bin/python benchmarks/instr_aio.py                          # the C paths
    CONCTOOLS_PURE_PYTHON=1 .venv/bin/python benchmarks/instr_aio.py  # the pure-Python path

Each case runs N and 2N tasks under callgrind; the difference divided by N is the cost of one task,
start-up and imports cancelled out. The pools' looks at the holders of an exhausted pool are switched
off here: they are timed (a few per exhaustion), and under valgrind, fifty times slower than a real
run, they would come fifty times as often per task and swamp the comparison. Only the main thread is
run (no watchdog, loop monitor or sampler), so every instruction counted is the task's own.
"""

from __future__ import annotations

from _callgrind import per_item, print_table, require_valgrind, run_cases

N = 2_000

CASES = {
    "Semaphore(10), every task but 10 waits: asyncio": "",
    "same, trace_locks()": "ctx = conctools.trace_locks()",
    "same, trace_locks() and track_pools()": "ctx = combined(conctools.trace_locks(), track_pools())",
    "Queue(100) put and get by 8 consumers: asyncio": "QUEUE = True",
    "same, track_pools()": "QUEUE = True; ctx = track_pools()",
    "programs/async_locks.py's shape (Semaphore(50), Lock, Queue(100)): asyncio": "PROGRAM = True",
    "same, trace_locks() and track_pools() (conctools run's locks)": (
        "PROGRAM = True; ctx = combined(conctools.trace_locks(), track_pools())"
    ),
}

TEMPLATE = """
import asyncio, contextlib, sys
import conctools
import conctools.pools._state as pool_state
from conctools.pools import track_pools
pool_state.SNAPSHOT_EVERY_S = pool_state.EPISODE_SNAPSHOT_EVERY_S = 1e9  # (see the module docstring)
def combined(*cms):
    stack = contextlib.ExitStack()
    for cm in cms:
        stack.enter_context(cm)
    return stack
ctx = contextlib.nullcontext()
QUEUE = PROGRAM = False
{setup}
n = int(sys.argv[1])
async def one(s):
    async with s:
        await asyncio.sleep(0)
async def consume(q):
    while True:
        await q.get()
        q.task_done()
async def fetch(i, slots, lock, stats, out):
    async with slots:
        await asyncio.sleep(0)
        async with lock:
            stats["done"] += 1
        await out.put(i)
async def main():
    if PROGRAM:  # benchmarks/programs/async_locks.py
        slots, lock, q, stats = asyncio.Semaphore(50), asyncio.Lock(), asyncio.Queue(100), {{"done": 0}}
        consumers = [asyncio.create_task(consume(q)) for _ in range(8)]
        await asyncio.gather(*(fetch(i, slots, lock, stats, q) for i in range(n)))
        await q.join()
        for c in consumers:
            c.cancel()
    elif QUEUE:
        q = asyncio.Queue(100)
        consumers = [asyncio.create_task(consume(q)) for _ in range(8)]
        for i in range(n):
            await q.put(i)
        await q.join()
        for c in consumers:
            c.cancel()
    else:
        s = asyncio.Semaphore(10)
        await asyncio.gather(*(one(s) for _ in range(n)))
with ctx:
    asyncio.run(main())
"""


def per_task(setup: str) -> float:
    # (string hashes decide dict probing: a few k instructions per task)
    return per_item(TEMPLATE.format(setup=setup), N, env={"PYTHONHASHSEED": "0"})


def main() -> None:
    require_valgrind("instr_aio")
    results = run_cases(per_task, CASES)
    base = 0.0
    rows = []
    for name, count in results.items():
        if name.endswith(": asyncio"):
            base = count
        rows.append((name, f"{count:,.0f}", f"{count - base:+,.0f}"))
    print_table(
        f"Instructions per task (callgrind, {N:,} vs {2 * N:,} tasks):",
        ("what", "instructions per task", "added"),
        rows,
    )


if __name__ == "__main__":
    main()
