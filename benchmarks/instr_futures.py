"""Instructions per future and per job (valgrind callgrind) of the traced threading primitives that
``trace_locks()`` substitutes: a noise-free complement to ``bench_run.py``'s threaded programs
(``programs/futures_fanout.py`` and ``programs/threads_cache.py``) on a shared machine.

    .venv/bin/python benchmarks/instr_futures.py                          # the C paths
    CONCTOOLS_PURE_PYTHON=1 .venv/bin/python benchmarks/instr_futures.py  # the pure-Python path
    .venv/bin/python benchmarks/instr_futures.py --profile "fanout: trace_locks()"  # a callgrind.out

Each case runs N and 2N items under callgrind; the difference divided by N is the cost of one item,
start-up and imports cancelled out. Lock order is off (``trace_locks()``'s default): its own cost is
measured elsewhere. The pools' looks at the holders of an exhausted pool are switched off, as in
``instr_aio.py`` (timed, and fifty times as frequent under valgrind). No watchdog or sampler runs:
every instruction counted is the program's own or its primitives'. The GIL's switch interval is
set to 100 s, so that threads take turns only where one blocks: with the default (5 ms, which under
valgrind is a few thousand Python instructions) how often the workers contend varies from run to run
by more than the primitives' whole cost.

- fanout: the shape of ``futures_fanout.py``: a ``ThreadPoolExecutor(8)``, requests of 25 sub-tasks
  each, gathered in turn by ``as_completed`` and ``wait``, with a done-callback; the item is a future.
- jobs: the shape of ``threads_cache.py``'s first half: ``pool.map`` of small jobs through a locked
  cache; the item is a job.
- queue: its second half: a ``queue.Queue(100)`` between a producer and a consumer; the item is an item.
"""

from __future__ import annotations

import sys

from _callgrind import instructions, per_item, print_table, require_valgrind, run_cases

N = 1_000  # items (futures, jobs, queue items); the fan-out runs N // 25 requests

TRACED = "ctx = conctools.trace_locks()"
POOLS = "ctx = combined(conctools.trace_locks(), track_pools())"
CASES = {
    "fanout: python": ("FANOUT", ""),
    "fanout: trace_locks()": ("FANOUT", TRACED),
    "fanout: trace_locks() and track_pools()": ("FANOUT", POOLS),
    "jobs: python": ("JOBS", ""),
    "jobs: trace_locks()": ("JOBS", TRACED),
    "jobs: trace_locks() and track_pools()": ("JOBS", POOLS),
    "queue: python": ("QUEUE", ""),
    "queue: trace_locks()": ("QUEUE", TRACED),
    "queue: trace_locks() and track_pools()": ("QUEUE", POOLS),
}

TEMPLATE = """
import contextlib, hashlib, queue, sys, threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, as_completed, wait
import conctools
import conctools.pools._state as pool_state
from conctools.pools import track_pools
pool_state.SNAPSHOT_EVERY_S = pool_state.EPISODE_SNAPSHOT_EVERY_S = 1e9  # (see the module docstring)
def combined(*cms):
    stack = contextlib.ExitStack()
    for cm in cms:
        stack.enter_context(cm)
    return stack
sys.setswitchinterval(100.0)  # threads switch only when one blocks: the same schedule in every run
ctx = contextlib.nullcontext()
{setup}
WHAT = {what!r}
n = int(sys.argv[1])

def part(request, shard):
    return hashlib.sha256(b"%d:%d" % (request, shard)).digest()

def fanout():
    progress = [0]
    progress_lock = threading.Lock()
    def done(_f):
        with progress_lock:
            progress[0] += 1
    with ThreadPoolExecutor(8) as pool:
        for request in range(n // 25):
            futures = [pool.submit(part, request, shard) for shard in range(25)]
            for f in futures:
                f.add_done_callback(done)
            if request % 2:
                total = sum(f.result()[0] for f in as_completed(futures))
            else:
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                total = sum(f.result()[0] for f in finished)

class Cache:
    def __init__(self):
        self._lock = threading.Lock()
        self._data = {{}}
    def get(self, key):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                return value
        value = hashlib.sha1(b"%d" % key).hexdigest()
        with self._lock:
            self._data.setdefault(key, value)
        return value

def job(cache, i):
    return len(cache.get(i % 50))

def jobs():
    cache = Cache()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(job, [cache] * n, range(n)))

def pipeline():
    q = queue.Queue(maxsize=100)
    def produce():
        for i in range(n):
            q.put(i)
        q.put(None)
    def consume():
        while q.get() is not None:
            pass
    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

with ctx:
    {{"FANOUT": fanout, "JOBS": jobs, "QUEUE": pipeline}}[WHAT]()
"""


def per_case(case: tuple[str, str]) -> float:
    what, setup = case
    return per_item(TEMPLATE.format(setup=setup, what=what), N)


def main() -> None:
    require_valgrind("instr_futures")
    if len(sys.argv) == 3 and sys.argv[1] == "--profile":  # e.g. --profile "fanout: trace_locks()"
        if sys.argv[2] not in CASES:
            print(f"instr_futures: no case {sys.argv[2]!r} (one of: {', '.join(CASES)})", file=sys.stderr)
            raise SystemExit(2)
        what, setup = CASES[sys.argv[2]]
        out = "callgrind.out.instr_futures"
        instructions(TEMPLATE.format(setup=setup, what=what), 2 * N, out=out)
        print(f"instr_futures: wrote {out} (callgrind_annotate --inclusive=yes {out})")
        return
    results = run_cases(per_case, CASES)
    base = 0.0
    rows = []
    for name, count in results.items():
        if name.endswith(": python"):
            base = count
        rows.append((name, f"{count:,.0f}", f"{count - base:+,.0f}"))
    print_table(
        f"Instructions per item (callgrind, {N:,} vs {2 * N:,} items):",
        ("what", "instructions per item", "added"),
        rows,
    )


if __name__ == "__main__":
    main()
