"""`conctools run` follows child processes: real children of every start method, one merged report,
a parent stuck on a deadlocked or hung child (86 / 87 with the chain), dead children, per-process CPU.

Every test runs real processes. Waits are event-based (a child says it is ready through a
multiprocessing Event); `--deadlock-timeout 1` keeps the stuck cases short.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

TIMEOUT = 120
RUN_TIMEOUT = 90  # under the test timeout: a stuck run fails with its processes' stacks
METHODS = ["fork", "spawn", "forkserver"]


def run(
    tmp_path: Path, code: str, *args: str, options: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`conctools run --out DIR [options] prog.py [args]` with its own TMPDIR; (result, report.json)."""
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(code))
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    out = tmp_path / "out"
    full_env = {**os.environ, "TMPDIR": str(tmp), **(env or {})}
    argv = [sys.executable, "-m", "conctools", "run", "--out", str(out), *options, str(script), *args]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=tmp_path
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            stacks = _stacks_of_tree(process.pid)
            for p in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            process.communicate()
            raise AssertionError(f"conctools run did not end in {RUN_TIMEOUT} s; its processes' stacks:\n{stacks}")
    result = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return result, report


def _stacks_of_tree(pid: int) -> str:
    """py-spy's dump of a stuck run's processes (a dev dependency; ptrace rights needed), for the failure."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    out = []
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return "(gone)"
    for p in procs:
        try:
            dump = subprocess.run([spy, "dump", "--pid", str(p.pid)], capture_output=True, text=True, timeout=20)
            out.append(f"--- pid {p.pid} {p.cmdline()}\n{dump.stdout}{dump.stderr}")
        except (OSError, subprocess.SubprocessError, psutil.Error) as e:
            out.append(f"--- pid {p.pid}: no dump ({e})")
    return "\n".join(out)


def processes(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list(report.get("sections", {}).get("processes", {}).get("processes", []))


def children(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in processes(report) if p.get("state") != "main"]


def assert_all_gone(report: dict[str, Any]) -> None:
    """No process of the run outlives it (a zombie that init has not reaped yet counts as gone)."""
    for p in children(report):
        try:
            proc = psutil.Process(int(p["pid"]))
            if proc.create_time() > float(p.get("started_wall") or 0) + 1:
                continue  # a recycled pid
            proc.wait(timeout=10) if proc.status() != psutil.STATUS_ZOMBIE else None
        except psutil.NoSuchProcess:
            continue
        except psutil.TimeoutExpired:
            raise AssertionError(f"process {p['pid']} {p.get('name')!r} outlived the run") from None


class TestFollowsChildren:
    """Children of every kind run under the same options and appear in the one report."""

    @pytest.mark.parametrize("method", METHODS)
    def test_process_of_each_start_method(self, tmp_path: Path, method: str) -> None:
        """A Process child's own spans and traced locks are in its section; its name, start method, status."""
        code = """
            import multiprocessing as mp, sys, threading
            import conctools

            def work():
                lock = threading.Lock()
                for _ in range(3):
                    with lock:
                        pass
                with conctools.traced("child-work"):
                    pass

            if __name__ == "__main__":
                p = mp.get_context(sys.argv[1]).Process(target=work, name="worker-proc")
                p.start()
                p.join()
                print("child exit", p.exitcode)
            """
        result, report = run(tmp_path, code, method)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "child exit 0\n"
        (child,) = [p for p in children(report) if p["name"] == "worker-proc"]
        assert child["start_method"] == method
        assert child["exit_text"] == "exit status 0"
        assert child["target"].endswith(".work")
        own = child["report"]
        assert own["meta"]["pid"] == child["pid"] != report["meta"]["pid"]
        assert [s["count"] for s in own["spans"] if s["name"] == "child-work"] == [1]
        rows = [r for r in own["sections"]["locks"] if r["created_at"].endswith("prog.py:6")]
        assert [r["acquisitions"] for r in rows] == [3]
        # the parent's report has neither
        assert not [s for s in report["spans"] if s["name"] == "child-work"]
        parent = report["meta"]["pid"]
        if method == "forkserver":  # the forkserver forks it
            (parent,) = [p["pid"] for p in children(report) if p["start_method"] == "forkserver (server)"]
        assert child["ppid"] == parent
        assert re.search(rf"\n\s+{child['pid']}\s+{parent}\s+worker-proc\s+{method}\s+exit status 0", result.stderr)

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_child_event_loop_is_watched(self, tmp_path: Path, method: str) -> None:
        """A child's event loop blocked 300 ms, three times: the stalls and their line are in its section."""
        code = """
            import asyncio, multiprocessing as mp, sys, time

            async def main():
                for _ in range(3):
                    await asyncio.sleep(0.05)
                    time.sleep(0.3)  # blocks the child's loop

            def child():
                asyncio.run(main())

            if __name__ == "__main__":
                p = mp.get_context(sys.argv[1]).Process(target=child, name="looper")
                p.start()
                p.join()
            """
        result, report = run(tmp_path, code, method)
        assert result.returncode == 0, result.stderr
        (child,) = children(report)
        stalls = child["report"]["sections"]["slow_callbacks"]
        assert stalls["stalls"] >= 1 and stalls["sites"][0]["site"].endswith("prog.py:7")
        assert "slow_callbacks" not in report["sections"] or report["sections"]["slow_callbacks"]["stalls"] == 0
        # The child's own section (its verdict may come first), with its stalls.
        assert re.search(
            r"In process \d+ 'looper':\n-+\n\n(?:[^\n]*\n)*?Slow callbacks: the event loop was blocked \d+ times?",
            result.stderr,
        ), result.stderr

    def test_pool_and_process_pool_executor(self, tmp_path: Path) -> None:
        """Pool and ProcessPoolExecutor workers are listed with their names and what they ran."""
        code = """
            import concurrent.futures, multiprocessing as mp

            def square(x):
                return x * x

            if __name__ == "__main__":
                with mp.get_context("fork").Pool(2) as pool:
                    a = pool.map(square, range(50))
                with concurrent.futures.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
                    b = list(ex.map(square, range(50)))
                print(a == b)
            """
        result, report = run(tmp_path, code)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "True\n"
        names = {p["name"] for p in children(report)}
        assert {"ForkPoolWorker-1", "ForkPoolWorker-2"} <= names
        assert any(n.startswith("SpawnProcess-") for n in names)
        targets = {p.get("target") for p in children(report)}
        assert "multiprocessing.pool.worker" in targets
        assert "concurrent.futures.process._process_worker" in targets

    def test_subprocess_and_exec_of_sys_executable(self, tmp_path: Path) -> None:
        """A Python program started with subprocess, and one exec'd over a forked child, are followed."""
        (tmp_path / "child.py").write_text("import conctools, sys\nconctools.traced('in-child')(lambda: 0)()\n")
        code = """
            import os, subprocess, sys
            subprocess.run([sys.executable, "child.py", "via-subprocess"], check=True)
            pid = os.fork()
            if pid == 0:
                os.execv(sys.executable, [sys.executable, "child.py", "via-exec"])
            os.waitpid(pid, 0)
            print("done")
            """
        result, report = run(tmp_path, code)
        assert result.returncode == 0, result.stderr
        execs = [p for p in children(report) if p["start_method"] == "exec"]
        assert sorted(p["argv"][-1] for p in execs) == ["via-exec", "via-subprocess"]
        for p in execs:
            assert [s["count"] for s in p["report"]["spans"] if s["name"] == "in-child"] == [1]
        (via_subprocess,) = [p for p in execs if p["argv"][-1] == "via-subprocess"]
        assert via_subprocess["exit_text"] == "exit status 0"
        # the forked child before its exec, if it wrote a record in its moment, says what became of it
        assert all("os.exec" in p["exit_text"] for p in children(report) if p["start_method"] == "os.fork")

    def test_no_follow_children(self, tmp_path: Path) -> None:
        """--no-follow-children: one process in the report, and the child's environment is untouched."""
        code = """
            import os, subprocess, sys
            show = "import os; print(sorted(k for k in os.environ if 'CONCTOOLS' in k))"
            out = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True).stdout
            print(out.strip(), os.environ.get("PYTHONPATH"))
            """
        result, report = run(tmp_path, code, options=("--no-follow-children",), env={"PYTHONPATH": "/nowhere"})
        assert result.returncode == 0, result.stderr
        inherited = sorted(k for k in os.environ if "CONCTOOLS" in k)  # the suite's own (tests/conftest.py)
        assert result.stdout == f"{inherited} /nowhere\n"
        assert "processes" not in report["sections"]
        assert "Processes:" not in result.stderr

    def test_fork_while_the_parent_sampler_holds_its_lock(self, tmp_path: Path) -> None:
        """A fork at the instant the parent's sampler holds its lock (a race, forced here): the child
        neither waits for it nor hangs, and its last record is written."""
        code = """
            import multiprocessing as mp
            from conctools.recorder import get_recorder

            def work():
                pass

            if __name__ == "__main__":
                sampler = get_recorder()._sections["resources"].__self__
                with sampler._state:  # as the sampler thread holds it while it records a sample
                    p = mp.get_context("fork").Process(target=work, name="forked-mid-sample")
                    p.start()
                p.join()
                print(p.exitcode)
            """
        result, report = run(tmp_path, code)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "0\n"
        (child,) = children(report)
        assert child["final"] and child["exit_text"] == "exit status 0"

    def test_forked_child_that_returns_prints_no_report(self, tmp_path: Path) -> None:
        """An os.fork() child that ends with sys.exit hands its data to the run: one report, not two."""
        code = """
            import os, sys
            pid = os.fork()
            if pid == 0:
                print("in child", flush=True)
                sys.exit(0)
            os.waitpid(pid, 0)
            print("in parent")
            """
        result, report = run(tmp_path, code)
        assert result.returncode == 0, result.stderr
        assert sorted(result.stdout.splitlines()) == ["in child", "in parent"]
        assert result.stderr.count("conctools report") == 1
        (child,) = children(report)
        assert child["start_method"] == "os.fork" and child["final"]


STUCK = {
    "join": """
        def main(ctx):
            p = ctx.Process(target=job, args=(1,), name="stuck-proc")
            p.start()
            p.join()
        """,
    "pool_map": """
        def main(ctx):
            with ctx.Pool(2) as pool:
                pool.map(job, [0, 1, 2, 3], chunksize=1)
        """,
    "async_result": """
        def main(ctx):
            with ctx.Pool(1) as pool:
                pool.apply_async(job, (1,)).get()
        """,
    "executor": """
        def main(ctx):
            import concurrent.futures
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
                ex.submit(job, 1).result()
        """,
    "queue": """
        def produce(q):
            q.put(job(1))

        def main(ctx):
            q = ctx.Queue()
            p = ctx.Process(target=produce, args=(q,), name="producer")
            p.start()
            q.get()
        """,
    "pipe": """
        def send(conn):
            conn.send(job(1))

        def main(ctx):
            here, there = ctx.Pipe()
            p = ctx.Process(target=send, args=(there,), name="sender")
            p.start()
            here.recv()
        """,
}
WAITS_ON = {
    "join": r"waits on multiprocessing\.Process\.join\(\) of child pid (\d+) 'stuck-proc'",
    "pool_map": r"waits on multiprocessing\.Pool\.map\(\) results from the pool's workers \(pids .*(\d+)",
    "async_result": r"waits on multiprocessing\.AsyncResult\.get results from the pool's workers \(pid (\d+)",
    "executor": (
        r"waits on concurrent\.futures\.Future\.result\(\) of a ProcessPoolExecutor job, run by its workers \(pid (\d+)"
    ),
    "queue": r"waits on multiprocessing\.Queue\.get\(\), which pid (\d+) 'producer' could send",
    "pipe": r"waits on multiprocessing\.connection\.Connection\.recv\(\), which pid (\d+) 'sender' could send",
}
DEADLOCKED_JOB = """
    import multiprocessing as mp, sys, threading

    lock = threading.Lock()

    def job(x):
        with lock:
            with lock:  # a non-reentrant lock taken twice
                return x
    """
MAIN = """
    if __name__ == "__main__":
        main(mp.get_context(sys.argv[1]))
    """


class TestParentStuckOnChild:
    """A child deadlocked or hung while its parent waits on it: the chain, both stacks, 86 / 87, no orphan."""

    @pytest.mark.parametrize(
        ("kind", "method"),
        [(kind, "fork") for kind in STUCK] + [("join", "spawn"), ("pool_map", "spawn"), ("pool_map", "forkserver")],
    )
    def test_deadlocked_child(self, tmp_path: Path, kind: str, method: str) -> None:
        """The report reads: MainProcess's MainThread waits on child N, which is deadlocked on Lock 'prog.py:4'."""
        code = textwrap.dedent(DEADLOCKED_JOB) + textwrap.dedent(STUCK[kind]) + textwrap.dedent(MAIN)
        result, report = run(tmp_path, code, method, options=("--deadlock-timeout", "1"))
        err = result.stderr
        assert result.returncode == 86, err
        assert "A child process is deadlocked, and the program waits on it" in err
        main_pid = report["meta"]["pid"]
        assert f"process {main_pid} 'MainProcess', thread 'MainThread':" in err
        match = re.search(WAITS_ON[kind], err)
        assert match is not None, err
        stopped = re.search(r"conctools: stopped the program after a deadlock in child process (\d+) ", err)
        assert stopped is not None, err
        (stuck,) = [p for p in children(report) if p["pid"] == int(stopped.group(1))]
        assert stuck.get("stuck")
        assert re.search(
            rf"process {stuck['pid']} '{re.escape(stuck['name'])}' is deadlocked:\n  deadlock: thread 'MainThread' "
            r"waits for Lock 'prog\.py:4' held by thread 'MainThread' at prog\.py:8",
            err,
        ), err
        # both processes' stacks: the parent's wait in main(), the child's in job()
        assert re.search(
            r"Stacks of the waiting threads:\nprocess \d+, thread 'MainThread':(\n.*)*\n    at main \(.*prog\.py:\d+\)",
            err,
        )
        assert re.search(rf"In process {stuck['pid']} .*:\nFound one Python-level deadlock:", err)
        assert re.search(r"    at job \(.*prog\.py:8\)\n        with lock:  # a non-reentrant lock taken twice", err)
        assert stuck["exit_text"] == "deadlocked; ended with the program"
        assert report["meta"]["exit_status"] == 86
        assert_all_gone(report)

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_hung_child(self, tmp_path: Path, method: str) -> None:
        """A child waiting on an Event nobody sets while its parent joins it: a hang, 87."""
        code = """
            import multiprocessing as mp, sys, threading

            def waiter():
                threading.Event().wait()  # nobody sets it

            if __name__ == "__main__":
                p = mp.get_context(sys.argv[1]).Process(target=waiter, name="waiter")
                p.start()
                p.join()
            """
        result, report = run(tmp_path, code, method, options=("--deadlock-timeout", "1"))
        err = result.stderr
        assert result.returncode == 87, err
        assert "A child process is hung, and the program waits on it" in err
        assert re.search(
            r"waits on multiprocessing\.Process\.join\(\) of child pid \d+ 'waiter', at .*prog\.py:10", err
        )
        assert re.search(r"process \d+ 'waiter' is hung:\n  nothing progressed", err)
        assert re.search(r"thread 'MainThread' \[waiting\]:\n    - waits on threading\.Event\.wait\(\)", err), err
        assert_all_gone(report)

    def test_deadlocked_subprocess(self, tmp_path: Path) -> None:
        """subprocess.run of a Python program that deadlocks: Popen.communicate() waits on it, 86."""
        (tmp_path / "child.py").write_text(
            "import threading\nlock = threading.Lock()\nwith lock:\n    with lock:\n        pass\n"
        )
        code = """
            import subprocess, sys
            subprocess.run([sys.executable, "child.py"])
            """
        result, report = run(tmp_path, code, options=("--deadlock-timeout", "1"))
        assert result.returncode == 86, result.stderr
        assert re.search(r"waits on subprocess\.Popen\.communicate\(\) of child pid \d+ 'child\.py'", result.stderr)
        assert "held by thread 'MainThread' at child.py:4" in result.stderr
        assert_all_gone(report)

    def test_healthy_children_are_not_stuck(self, tmp_path: Path) -> None:
        """Idle pool workers and a parent waiting on a busy child are not a hang."""
        code = """
            import multiprocessing as mp, time

            def slow(x):
                time.sleep(1.5)
                return x

            if __name__ == "__main__":
                with mp.get_context("fork").Pool(3) as pool:
                    print(pool.map(slow, [1, 2]))
            """
        result, _ = run(tmp_path, code, options=("--deadlock-timeout", "0.5"))
        assert result.returncode == 0, result.stderr
        assert result.stdout == "[1, 2]\n"
        assert "is hung" not in result.stderr and "deadlock" not in result.stderr.lower()


class TestDeadChildren:
    """A child that died is named with its exit status and its last stack."""

    def test_killed_by_sigkill(self, tmp_path: Path) -> None:
        """SIGKILL: 'killed by SIGKILL (signal 9)', and the stack it had (it was sleeping in wait_forever)."""
        code = """
            import multiprocessing as mp, os, signal, time

            def wait_forever(ready):
                ready.set()
                time.sleep(60)

            if __name__ == "__main__":
                ctx = mp.get_context("fork")
                ready = ctx.Event()
                p = ctx.Process(target=wait_forever, args=(ready,), name="sleeper")
                p.start()
                ready.wait()
                time.sleep(3)  # the child rewrites its file every 0.5 s: its last stack is in it by now
                os.kill(p.pid, signal.SIGKILL)
                p.join()
                print(p.exitcode)
            """
        result, report = run(tmp_path, code)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "-9\n"
        (child,) = children(report)
        assert child["exit_text"] == "killed by SIGKILL (signal 9)"
        assert re.search(
            r"process \d+ 'sleeper' ended: killed by SIGKILL \(signal 9\)\n  its last stack \(thread 'MainThread', "
            r"recorded .* before its parent saw it end\):\n"
            r"    at wait_forever \(.*prog\.py:6\)\n        time\.sleep\(60\)",
            result.stderr,
        ), result.stderr

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_broken_process_pool(self, tmp_path: Path, method: str) -> None:
        """A worker that calls os._exit: BrokenProcessPool in the program, exit status 3 and the exit's stack."""
        code = """
            import concurrent.futures, multiprocessing as mp, os, sys

            def crash(x):
                os._exit(3)

            if __name__ == "__main__":
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context(sys.argv[1])) as ex:
                    try:
                        ex.submit(crash, 1).result()
                    except concurrent.futures.process.BrokenProcessPool:
                        print("broken")
            """
        result, report = run(tmp_path, code, method)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "broken\n"
        (child,) = children(report)
        assert child["exit_text"] == "exit status 3"
        assert re.search(
            r"ended: exit status 3 \(it called os\._exit\)\n  its last stack \(thread 'MainThread'.*\):\n"
            r"    at crash \(.*prog\.py:5\)\n        os\._exit\(3\)",
            result.stderr,
        ), result.stderr

    def test_pool_worker_killed_in_a_job(self, tmp_path: Path) -> None:
        """A Pool worker killed in the middle of a job: Pool.map would wait forever; the run says why and exits 87."""
        code = """
            import multiprocessing as mp, os, signal

            def job(x):
                if x == 3:
                    os.kill(os.getpid(), signal.SIGKILL)  # the worker dies in the middle of a job
                return x

            if __name__ == "__main__":
                with mp.get_context("fork").Pool(2) as pool:
                    print(pool.map(job, range(8), chunksize=1))
            """
        result, report = run(tmp_path, code, options=("--deadlock-timeout", "1"))
        err = result.stderr
        assert result.returncode == 87, err
        assert "A child process died, and the program waits on it forever" in err
        assert re.search(
            r"process \d+ 'MainProcess', thread 'MainThread':\n  waits on multiprocessing\.Pool\.map\(\)", err
        )
        match = re.search(
            r"process (\d+) '(ForkPoolWorker-\d+)' died:\n  killed by SIGKILL \(signal 9\) while the pool", err
        )
        assert match is not None, err
        assert "multiprocessing.Pool never runs again a job whose worker died" in err
        (dead,) = [p for p in children(report) if p["pid"] == int(match.group(1))]
        # (A worker killed by its very first job may die before its first record: the words say so.)
        assert dead["exit_text"] in (
            "killed by SIGKILL (signal 9)",
            "killed by SIGKILL (signal 9), before it wrote any record",
        )
        assert dead["name"] == match.group(2)
        assert_all_gone(report)

    def test_worker_that_raises(self, tmp_path: Path) -> None:
        """A job that raises: the program gets the exception (same traceback and status as python); workers end well."""
        code = """
            import concurrent.futures, multiprocessing as mp

            def fail(x):
                raise ValueError(f"bad input {x}")

            if __name__ == "__main__":
                with concurrent.futures.ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as ex:
                    ex.submit(fail, 7).result()
            """
        result, report = run(tmp_path, code)
        plain = subprocess.run(
            [sys.executable, str(tmp_path / "prog.py")], capture_output=True, text=True, timeout=TIMEOUT
        )
        assert result.returncode == plain.returncode == 1
        assert "ValueError: bad input 7" in result.stderr and 'raise ValueError(f"bad input {x}")' in result.stderr
        assert result.stderr.split("conctools report")[0].count("Traceback") == plain.stderr.count("Traceback")
        assert {p["exit_text"] for p in children(report)} == {"exit status 0"}


class TestPerProcessCpu:
    """A Pool.map of CPU work: each worker's CPU time is its own."""

    def test_pool_map_cpu(self, tmp_path: Path) -> None:
        """Two jobs burn CPU at once in two workers: each worker's CPU is at least what it measured itself."""
        code = """
            import multiprocessing as mp, os, time

            def init(count, go):
                global COUNT, GO
                COUNT, GO = count, go

            def burn(n):
                with COUNT.get_lock():  # both jobs run at once, one per worker
                    COUNT.value += 1
                    if COUNT.value == 2:
                        GO.set()
                GO.wait()
                total = 0
                for i in range(n):
                    total += i * i
                return os.getpid(), time.process_time()

            if __name__ == "__main__":
                ctx = mp.get_context("fork")
                with ctx.Pool(2, initializer=init, initargs=(ctx.Value("i", 0), ctx.Event())) as pool:
                    for pid, cpu in pool.map(burn, [2_000_000, 2_000_000], chunksize=1):
                        print(pid, cpu)
            """
        result, report = run(tmp_path, code)
        assert result.returncode == 0, result.stderr
        measured = {int(pid): float(cpu) for pid, cpu in (line.split() for line in result.stdout.splitlines())}
        assert len(measured) == 2
        by_pid = {p["pid"]: p for p in children(report)}
        for pid, cpu in measured.items():
            assert by_pid[pid]["cpu_s"] >= cpu * 0.99
            assert not by_pid[pid].get("cpu_partial")
        assert re.search(r"Processes: the program and 2 child processes \(\S+ \S+ CPU in all\)", result.stderr)


class TestObservingDoesNotBreak:
    """Children behave as without conctools; nothing is left behind."""

    def test_output_status_and_child_view_unchanged(self, tmp_path: Path) -> None:
        """A spawned child sees the sys.path, argv and __name__ it would see; output and status are unchanged."""
        code = """
            import json, multiprocessing as mp, os, subprocess, sys

            def show(q):
                q.put([sys.path, __name__])

            if __name__ == "__main__":
                ctx = mp.get_context("spawn")
                q = ctx.Queue()
                p = ctx.Process(target=show, args=(q,))
                p.start()
                print(json.dumps(q.get()))
                p.join()
                show = "import sys, json; print(json.dumps([sys.path[1:], sys.argv]))"
                out = subprocess.run([sys.executable, "-c", show, "x"], capture_output=True, text=True).stdout
                print(out.strip())
                sys.exit(3)
            """
        result, report = run(tmp_path, code)
        plain = subprocess.run(
            [sys.executable, str(tmp_path / "prog.py")], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path
        )
        assert result.returncode == plain.returncode == 3, result.stderr
        assert result.stdout == plain.stdout
        assert len(children(report)) == 2

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_multiprocessing_primitives_work(self, tmp_path: Path, method: str) -> None:
        """multiprocessing's Barrier subclasses threading.Barrier (patched by lock tracing) without
        running its __init__: it, and mp's Lock, Condition, Event and Semaphore, work as without us."""
        code = f"""
            import multiprocessing as mp

            def worker(barrier, lock, cond, event, sem, out):
                index = barrier.wait(timeout=60)
                with lock, sem:
                    out.put(("child", index >= 0))
                with cond:
                    cond.notify_all()
                event.wait(60)
                barrier.wait(timeout=60)

            if __name__ == "__main__":
                ctx = mp.get_context({method!r})
                barrier, lock, cond, event = ctx.Barrier(2), ctx.Lock(), ctx.Condition(), ctx.Event()
                sem, out = ctx.Semaphore(1), ctx.Queue()
                p = ctx.Process(target=worker, args=(barrier, lock, cond, event, sem, out))
                p.start()
                barrier.wait(timeout=60)
                print(out.get(timeout=60))
                event.set()
                barrier.wait(timeout=60)
                p.join(60)
                print("exit", p.exitcode, barrier.broken)
            """
        result, report = run(tmp_path, code)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["('child', True)", "exit 0 False"], result.stderr
        assert "Traceback" not in result.stderr
        assert [c.get("exit_code") for c in children(report)] == [0], children(report)

    def test_nothing_left_behind(self, tmp_path: Path) -> None:
        """The run folder is gone after a normal end and after a deadlock exit: TMPDIR is empty again."""
        code = """
            import multiprocessing as mp
            with mp.get_context("fork").Pool(2) as pool:
                pool.map(abs, range(10))
            """
        result, _ = run(tmp_path, code)
        assert result.returncode == 0, result.stderr
        assert list((tmp_path / "tmp").iterdir()) == []
        code = textwrap.dedent(DEADLOCKED_JOB) + textwrap.dedent(STUCK["pool_map"]) + textwrap.dedent(MAIN)
        result, report = run(tmp_path, code, "fork", options=("--deadlock-timeout", "1"))
        assert result.returncode == 86, result.stderr
        assert [p.name for p in (tmp_path / "tmp").iterdir()] == []
        assert_all_gone(report)

    def test_no_new_warnings(self, tmp_path: Path) -> None:
        """-W error and -W always::DeprecationWarning: the program's stderr has no warning it lacks without conctools
        (on 3.12+, fork() in a process that only conctools' threads make multi-threaded does not warn)."""
        code = """
            import concurrent.futures, multiprocessing as mp

            def square(x):
                return x * x

            if __name__ == "__main__":
                for method in ("fork", "spawn", "forkserver"):
                    with mp.get_context(method).Pool(2) as pool:
                        pool.map(square, range(20))
                with concurrent.futures.ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as ex:
                    list(ex.map(square, range(20)))
                print("ok")
            """
        script = tmp_path / "prog.py"
        script.write_text(textwrap.dedent(code))
        for flag in ("error", "always::DeprecationWarning"):
            plain = subprocess.run(
                [sys.executable, "-W", flag, str(script)], capture_output=True, text=True, timeout=TIMEOUT
            )
            ours = subprocess.run(
                [sys.executable, "-W", flag, "-m", "conctools", "run", "--no-report", str(script)],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            assert ours.returncode == plain.returncode == 0, ours.stderr
            assert ours.stdout == plain.stdout == "ok\n"
            assert "Warning" not in ours.stderr.replace(plain.stderr, ""), ours.stderr

    def test_user_sitecustomize_still_runs(self, tmp_path: Path) -> None:
        """The bootstrap shadows the program's own sitecustomize on PYTHONPATH, then imports it."""
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text("import os\nos.environ['USER_SITE_RAN'] = 'yes'\n")
        code = """
            import subprocess, sys
            print(subprocess.run([sys.executable, "-c", "import os, sys, sitecustomize; "
                                  "print(os.environ.get('USER_SITE_RAN'), sitecustomize.__file__)"],
                                 capture_output=True, text=True).stdout.strip())
            """
        result, report = run(tmp_path, code, env={"PYTHONPATH": str(site)})
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"yes {site / 'sitecustomize.py'}\n"
        assert len(children(report)) == 1


class TestMergeSavedReports:
    """`conctools report a.json b.json --out DIR`: one set of outputs, a section per report."""

    def test_merge_two_reports(self, tmp_path: Path) -> None:
        """Two runs merged: both listed, each one's own findings under it, a process group each in trace.json."""
        first = tmp_path / "a"
        first.mkdir()
        run(first, "import conctools\nconctools.traced('first')(lambda: 0)()\n")
        second = tmp_path / "b"
        second.mkdir()
        run(second, "import conctools\nconctools.traced('second')(lambda: 0)()\n")
        merged = tmp_path / "merged"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "conctools",
                "report",
                str(first / "out" / "report.json"),
                str(second / "out"),
                "--out",
                str(merged),
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        assert {p.name for p in merged.iterdir()} == {"report.txt", "report.json", "trace.json", "report.html"}
        text = (merged / "report.txt").read_text()
        assert "merged from 2 reports" in text
        assert re.search(r"In process \d+ '.*b/prog\.py.*':", text) or "second" in text
        report = json.loads((merged / "report.json").read_text())
        assert [p["start_method"] for p in processes(report)] == ["run", "run (merged)"]
        assert [s["name"] for s in processes(report)[1]["report"]["spans"]] == ["second"]
        trace = json.loads((merged / "trace.json").read_text())["traceEvents"]
        names = [e for e in trace if e["ph"] == "M" and e["name"] == "process_name"]
        assert len({e["pid"] for e in names}) == 2

    def test_bad_file_among_several(self, tmp_path: Path) -> None:
        """A corrupt file among several: one line, exit 2."""
        good = tmp_path / "a"
        good.mkdir()
        run(good, "pass\n")
        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        result = subprocess.run(
            [sys.executable, "-m", "conctools", "report", str(good / "out" / "report.json"), str(bad)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "bad.json: not valid JSON" in result.stderr


class TestChainAcrossGenerations:
    """A grandchild stuck: the chain goes through every process that waits, main process first."""

    def test_grandchild_in_a_pool_of_a_child(self, tmp_path: Path) -> None:
        """MainProcess joins 'outer', whose Pool.map waits on a deadlocked worker: three processes, one story."""
        code = textwrap.dedent(DEADLOCKED_JOB) + textwrap.dedent(
            """
                def outer():
                    with mp.get_context("fork").Pool(1) as pool:
                        pool.map(job, [1])

                if __name__ == "__main__":
                    p = mp.get_context(sys.argv[1]).Process(target=outer, name="outer")
                    p.start()
                    p.join()
                """
        )
        result, report = run(tmp_path, code, "fork", options=("--deadlock-timeout", "1"))
        err = result.stderr
        assert result.returncode == 86, err
        chain = err.split("A child process is deadlocked, and the program waits on it", 1)[1].split("Stacks of", 1)[0]
        lines = [line for line in chain.splitlines() if line.strip() and not line.startswith("=")]
        assert re.match(r"process \d+ 'MainProcess', thread 'MainThread':", lines[0]), chain
        assert re.match(r"  waits on multiprocessing\.Process\.join\(\) of child pid \d+ 'outer'", lines[1]), chain
        assert re.match(r"process \d+ 'outer', thread 'MainThread':", lines[2]), chain
        assert re.match(r"  waits on multiprocessing\.Pool\.map\(\) results .*'ForkPoolWorker-1:1'", lines[3]), chain
        assert re.match(r"process \d+ 'ForkPoolWorker-1:1' is deadlocked:", lines[4]), chain
        assert_all_gone(report)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does it)")
class TestMergedPage:
    """report.html of a run with children: it renders, with the processes and the stuck child's story."""

    def test_page_with_a_stuck_child(self, tmp_path: Path) -> None:
        """No console error; the processes table, the child's deadlock and the chain are on the page."""
        code = textwrap.dedent(DEADLOCKED_JOB) + textwrap.dedent(STUCK["join"]) + textwrap.dedent(MAIN)
        result, report = run(tmp_path, code, "fork", options=("--deadlock-timeout", "1"))
        assert result.returncode == 86, result.stderr
        assert CHROMIUM is not None
        page = tmp_path / "out" / "report.html"
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--dump-dom", "--virtual-time-budget=20000", page.as_uri()],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln] == []
        assert 'data-rendered="1"' in dom.stdout
        assert "started by" in dom.stdout and "stuck-proc" in dom.stdout  # the processes table
        assert "child process" in dom.stdout and "is deadlocked" in dom.stdout  # the chain, as a problem
        assert "prog.py:4" in dom.stdout  # the child's own deadlock, its lock
        assert_all_gone(report)
