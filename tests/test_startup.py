"""`conctools run` start-up: every instrument is on when the program's first line runs, and what
the run does not need before the program (reporters, the console, load tests, exporters) is not
imported yet (issue 12's start-up target; the timing itself is in benchmarks/bench_run.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests._dump_helpers import Program
from tests._dump_helpers import agent_env as agent_env  # the fixture
from tests._dump_helpers import conctools as run_conctools

TIMEOUT = 60

FIRST_LINE = """
import gc, json, sys, threading
STDLIB = {stdlib!r}
print(json.dumps({
    "modules": sorted(
        m for m in sys.modules if m.startswith(("conctools", "multiprocessing", "asyncio", "ssl")) or m in STDLIB
    ),
    "threads": sorted(t.name for t in threading.enumerate()),
    "lock": type(threading.Lock()).__module__,
    "frozen": gc.get_freeze_count(),
}))
"""

# Imported on first use only: a run that prints its report imports the text reporters after the
# program; the console, the load tests, the exporters and the profiler only when asked for.
DEFERRED = (
    "conctools.reporting.text",
    "conctools.reporting.html",
    "conctools.reporting.trace",
    "conctools.reporting.findings",
    "conctools.reporting.locks_text",
    "conctools.loadtest",
    "conctools.console.launch",
    "conctools.console.server",
    "conctools.console.monitor",
    "conctools.exporters.otel",
    "conctools.exporters.pprof",
    "conctools.exporters.speedscope",
    "conctools.profiling",
    "conctools.server",
    "conctools.demo",
    # Until the program imports asyncio or multiprocessing (their patches wait for that import:
    # conctools._imports), until its
    # first event loop starts (the loop monitor itself), three seconds into the run (the dump agent's
    # answers).
    "asyncio",
    "ssl",
    "conctools.aio",
    "multiprocessing",
    "conctools.loopmon.monitor",
    "conctools.loopmon.blocking",
    "conctools.agent.dump",
    "conctools.reporting.jsonreport",
)


# Standard-library modules that nothing conctools runs before the program's first line needs: its
# own option records are not dataclasses (dataclasses imports inspect, ast and dis), and its modules
# take typing's names from conctools._typing (issue 12's start-up target). (logging and sysconfig
# are imported before the program on purpose: their own locks stay plain ones.)
STDLIB_DEFERRED = ("dataclasses", "inspect", "ast", "dis", "typing", "contextvars", "conctools.tracing")


def run_first_line(tmp_path: Path, *options: str) -> tuple[dict[str, object], subprocess.CompletedProcess[str]]:
    script = tmp_path / "first.py"
    script.write_text(textwrap.dedent(FIRST_LINE).replace("{stdlib!r}", repr(sorted(STDLIB_DEFERRED))))
    proc = subprocess.run(
        [sys.executable, "-m", "conctools", "run", *options, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    seen: dict[str, object] = json.loads(proc.stdout)
    return seen, proc


class TestStartup:
    """What is running and what is imported when the program starts."""

    def test_instruments_on_and_reporters_not_imported_at_the_first_line(self, tmp_path: Path) -> None:
        """At the program's first line the watchdog, sampler, GIL monitor, dump agent and child
        follower run and threading's locks are traced ones; no reporter, console, load test,
        exporter or profiler module is imported yet, nor the standard-library modules that the run
        does not need (dataclasses, inspect, typing); the report is still printed at the end."""
        seen, proc = run_first_line(tmp_path)
        threads = seen["threads"]
        assert isinstance(threads, list)
        for role in ("watchdog", "resources", "gil", "agent", "children"):
            assert f"conctools-{role}" in threads, threads
        assert seen["lock"] == "conctools", seen["lock"]
        modules = seen["modules"]
        assert isinstance(modules, list)
        assert "conctools.deadlock.watchdog" in modules and "conctools.loopmon" in modules
        imported = [m for m in DEFERRED if m in modules or any(n.startswith(m + ".") for n in modules)]
        assert imported == [], imported
        assert [m for m in STDLIB_DEFERRED if m in modules] == [], modules
        assert "conctools report" in proc.stderr  # imported after the program, and used
        assert isinstance(seen["frozen"], int) and seen["frozen"] > 1000  # conctools' start-up heap

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the GIL is found through /proc")
    def test_gil_found_before_the_program(self, tmp_path: Path) -> None:
        """The GIL calibration (a parked probe thread) finds the GIL, so even a program that ends at
        once gets the /proc method, not the bytecode heuristic; the probe is gone when it starts."""
        seen, _ = run_first_line(tmp_path, "--no-report", "--out", str(tmp_path / "out"))
        assert "conctools-gil-probe" not in seen["threads"]
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["sections"]["gil"]["method"] == "proc"


LATE_MULTIPROCESSING = """
import json, sys
first = "multiprocessing" in sys.modules
import multiprocessing as mp
from multiprocessing import forkserver, resource_tracker


def job():
    pass


if __name__ == "__main__":
    for method in ("fork", "spawn"):
        p = mp.get_context(method).Process(target=job, name=f"late-{method}")
        p.start()
        p.join()
    print(json.dumps({
        "first": first,
        "fork_poll": __import__("multiprocessing.popen_fork").popen_fork.Popen.poll.__module__,
        "bootstrap": getattr(mp.process.BaseProcess._bootstrap, "__conctools__", False),
        "locks": [type(forkserver._forkserver._lock).__qualname__,
                  type(resource_tracker._resource_tracker._lock).__qualname__],
    }))
"""

LATE_LOOP = """
import sys, time
before = "conctools.loopmon.monitor" in sys.modules
import asyncio


async def main():
    time.sleep(0.3)  # blocks the loop


asyncio.run(main())
print("monitor imported before the loop:", before)
"""


LATE_ASYNCIO = """
import json, sys, threading
first = "asyncio" in sys.modules
lock = threading.Lock()  # made before asyncio is imported, taken inside a task below
import asyncio
import conctools


@conctools.traced
def step():
    return 1


async def holder():
    lock.acquire()
    step()
    waiter = threading.Thread(target=lock.acquire, name="the-waiter")
    waiter.start()
    await asyncio.get_running_loop().run_in_executor(None, waiter.join)


async def main():
    print(json.dumps({
        "first": first,
        "aio_lock": type(asyncio.Lock()).__module__,
        "queue_get": getattr(asyncio.Queue.get, "__wrapped__", None) is not None,
        "policy_lock": type(asyncio.events._lock).__module__,
    }), flush=True)
    await asyncio.create_task(holder(), name="the-holder")


asyncio.run(main())
"""


LATE_UVLOOP = """
import sys, time
first = "asyncio" in sys.modules
import uvloop


async def main():
    time.sleep(0.3)  # blocks the loop


uvloop.run(main())
print("asyncio imported at the first line:", first)
"""


class TestDeferred:
    """What start-up no longer imports still works when the program first needs it."""

    def test_multiprocessing_imported_late_is_followed(self, tmp_path: Path) -> None:
        """A program that imports multiprocessing after its first line still gets its fork and spawn
        children followed (named, with their exit status, from the reaping wrappers), and the
        forkserver's and resource tracker's own locks stay plain, as when the run imported them."""
        script = tmp_path / "late_mp.py"
        script.write_text(textwrap.dedent(LATE_MULTIPROCESSING))
        out = tmp_path / "out"
        proc = subprocess.run(
            [sys.executable, "-m", "conctools", "run", "--no-report", "--out", str(out), str(script)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        assert seen["first"] is False
        assert seen["fork_poll"] == "conctools.children.reaping"
        assert seen["bootstrap"] is True
        # Not traced: the forkserver's plain, the tracker's a plain RLock with no collection inside.
        assert seen["locks"] == ["lock", "TrackerLock"], seen["locks"]
        processes = json.loads((out / "report.json").read_text())["sections"]["processes"]
        children = {p.get("name"): p for p in processes["processes"] if p.get("name", "").startswith("late-")}
        assert sorted(children) == ["late-fork", "late-spawn"], processes
        for child in children.values():
            assert child.get("exit_code") == 0, child

    def test_asyncio_imported_late_is_watched_whole(self, tmp_path: Path) -> None:
        """A program that imports asyncio after its first line gets everything a program that had it
        at start gets: asyncio's primitives are traced ones, its queues tracked as pools, a threading
        lock made before the import and taken inside a task names that task as its holder (the C
        paths learnt asyncio's task getters), spans too; the deadlock through the loop's executor is
        reported in full. The event-loop policy's own lock stays plain, as when the run imported it."""
        script = tmp_path / "late_asyncio.py"
        script.write_text(textwrap.dedent(LATE_ASYNCIO))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "conctools",
                "run",
                "--deadlock-timeout",
                "1",
                "--out",
                str(tmp_path / "out"),
                str(script),
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert proc.returncode == 86, proc.stderr
        seen = json.loads(proc.stdout.strip().splitlines()[0])
        assert seen == {"first": False, "aio_lock": "conctools.aio", "queue_get": True, "policy_lock": "_thread"}, seen
        waits = [
            line
            for line in proc.stderr.splitlines()
            if "thread 'the-waiter' waits for Lock 'late_asyncio.py:4'" in line
        ]
        assert waits and "held by task 'the-holder' (thread 'MainThread')" in waits[0], proc.stderr
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        spans = [(e["name"], e["task_name"]) for e in report["events"] if e["kind"] == "span"]
        assert spans == [("step", "the-holder")], spans

    def test_uvloop_imported_late_is_watched(self, tmp_path: Path) -> None:
        """uvloop imported by the program (asyncio with it) gets its loop watched: its stall is
        reported at the blocking line, as when the run had imported asyncio before."""
        pytest.importorskip("uvloop")
        script = tmp_path / "late_uvloop.py"
        script.write_text(textwrap.dedent(LATE_UVLOOP))
        proc = subprocess.run(
            [sys.executable, "-m", "conctools", "run", str(script)], capture_output=True, text=True, timeout=TIMEOUT
        )
        assert proc.returncode == 0, proc.stderr
        assert "asyncio imported at the first line: False" in proc.stdout
        assert "Event loop blocked 1 time" in proc.stderr and "late_uvloop.py:8 in main" in proc.stderr, proc.stderr

    def test_first_loop_started_late_is_watched(self, tmp_path: Path) -> None:
        """The loop monitor is imported when the program's first loop starts, and that loop's stall
        is reported at its blocking line."""
        script = tmp_path / "late_loop.py"
        script.write_text(textwrap.dedent(LATE_LOOP))
        proc = subprocess.run(
            [sys.executable, "-m", "conctools", "run", str(script)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert proc.returncode == 0, proc.stderr
        assert "monitor imported before the loop: False" in proc.stdout
        assert "Event loop blocked 1 time" in proc.stderr, proc.stderr
        assert "late_loop.py:8 in main" in proc.stderr and "time.sleep(0.3)" in proc.stderr

    def test_dump_answers_before_and_after_the_agents_preload(self, agent_env: dict[str, str]) -> None:
        """The dump agent answers at once after start (importing what the answer needs then), and
        three seconds into the run it has imported its answers' modules by itself."""
        code = (
            "import sys, time\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "deadline = time.monotonic() + 20\n"
            "while 'conctools.agent.dump' not in sys.modules and time.monotonic() < deadline:\n"
            "    time.sleep(0.05)\n"
            "print('preloaded', 'conctools.agent.dump' in sys.modules, flush=True)\n"
            "sys.stdin.readline()\n"
        )
        script = Path(agent_env["CONCTOOLS_CONSOLE_DIR"]).parent / "waits.py"
        script.write_text(code)
        program = Program([sys.executable, "-m", "conctools", "run", "--no-report", str(script)], agent_env)
        try:
            program.out.wait_for(r"^ready")
            done = run_conctools("dump", str(program.pid), env=agent_env)
            assert done.returncode == 0 and f"conctools dump of process {program.pid}" in done.stdout, done.stderr
            program.proc.stdin.write("\n")  # type: ignore[union-attr]
            program.proc.stdin.flush()  # type: ignore[union-attr]
            assert program.out.wait_for(r"^preloaded ").string.strip() == "preloaded True"
            done = run_conctools("dump", str(program.pid), env=agent_env)
            assert done.returncode == 0 and f"conctools dump of process {program.pid}" in done.stdout, done.stderr
        finally:
            program.stop()
