"""How long `conctools dump PID` takes on big programs, and what py-spy dump takes on the same one.

    .venv/bin/python benchmarks/bench_dump.py

Two programs run under `conctools run --deadlock-timeout 0`:

1. 1,000 threads parked on an Event (plus the main thread);
2. 10,000 asyncio tasks, each two coroutines deep, awaiting an Event.

For each, interleaved round by round: the agent's own time to build the answer (``build_s`` in
the JSON), `conctools dump PID` from the shell to the last line of text (a new interpreter each
time: its start-up is in the figure, measured alone as ``python -c pass``), the same with
``--json``, and py-spy's ``dump --pid`` (when it is installed; it needs ptrace rights) as the
peer that reads stacks from outside. Each figure is the median and range of ``ROUNDS`` rounds;
the machine is shared, so quote ranges, not single numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 5

THREADS = """
import sys, threading
stop = threading.Event()
threads = [threading.Thread(target=stop.wait, name=f"worker-{i}", daemon=True) for i in range(1000)]
for t in threads:
    t.start()
print("started", flush=True)
sys.stdin.read()
"""

TASKS = """
import asyncio, sys

async def leaf(event):
    await event.wait()

async def job(event):
    await leaf(event)

async def main():
    event = asyncio.Event()
    tasks = [asyncio.create_task(job(event), name=f"job-{i}") for i in range(10_000)]
    await asyncio.sleep(0.1)
    print("started", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{args[2:4]} failed: {done.stderr.strip()[:300]}")
    return took, done.stdout


def _span(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"{statistics.median(ms):7.0f} ms ({ms[0]:.0f}-{ms[-1]:.0f})"


def measure(name: str, code: str, env: dict[str, str]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    program = subprocess.Popen(
        [sys.executable, "-m", "conctools", "run", "--deadlock-timeout", "0", "--no-report", f.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert program.stdout is not None
        assert program.stdout.readline().strip() == "started"
        pid = str(program.pid)
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        has_py_spy = os.path.exists(py_spy)
        results: dict[str, list[float]] = {"build": [], "text": [], "json": [], "py-spy": [], "start": []}
        lines = 0
        for _ in range(ROUNDS):
            took, out = _timed([sys.executable, "-m", "conctools", "dump", pid], env)
            results["text"].append(took)
            lines = out.count("\n")
            took, out = _timed([sys.executable, "-m", "conctools", "dump", pid, "--json"], env)
            results["json"].append(took)
            results["build"].append(json.loads(out)["build_s"])
            results["start"].append(_timed([sys.executable, "-c", "pass"], env)[0])
            if has_py_spy:
                results["py-spy"].append(_timed([py_spy, "dump", "--pid", pid], env)[0])
        print(f"{name}:")
        print(f"  the agent builds its answer      {_span(results['build'])}")
        print(f"  conctools dump PID (text)        {_span(results['text'])}   ({lines} lines)")
        print(f"  conctools dump PID --json        {_span(results['json'])}")
        print(f"  of which python start-up         {_span(results['start'])}")
        if has_py_spy:
            print(f"  py-spy dump --pid PID            {_span(results['py-spy'])}")
        else:
            print("  py-spy dump: not installed (pip install py-spy)")
    finally:
        program.kill()
        program.wait()
        os.unlink(f.name)


def main() -> None:
    directory = tempfile.mkdtemp(prefix="ctd-bench-", dir="/tmp")
    env = {**os.environ, "CONCTOOLS_CONSOLE_DIR": os.path.join(directory, "d"), "PYTHONPATH": str(ROOT)}
    print(f"conctools dump, {ROUNDS} interleaved rounds, CPython {sys.version.split()[0]}, {os.cpu_count()} cores")
    try:
        measure("1,000 threads parked on an Event", THREADS, env)
        measure("10,000 tasks awaiting an Event", TASKS, env)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
