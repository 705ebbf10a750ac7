"""The GIL monitor in the child processes of `conctools run`: a forked child measures its own threads
as a spawned one does, under the run's options (`--no-gil` reaches every child), and its verdict is
shown under that child, never under the program's main process.

Real processes, as in test_children.py. Nothing here asserts on a duration or a ranking: only on
what a person reads (thread names, the verdict's words, which process a section is under). A child
that must be measured first waits for its own GIL monitor (``conctools.gil.active_monitor()``, at
most 60 s), so a busy machine makes the test slower, not flaky.
"""

from __future__ import annotations

import os
import re
import signal
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.test_children import TIMEOUT, assert_all_gone, children, run

# A child whose two threads compute in pure Python at the same time: they fight over the GIL.
CRUNCHING_CHILD = """
    import multiprocessing as mp, sys, threading, time
    import conctools.gil

    def crunch(seconds):
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            for i in range(1000):
                n += i * i

    def child(wait_for_monitor):
        if wait_for_monitor:  # the monitor starts a moment after the child (deferred in a forked one)
            deadline = time.monotonic() + 60
            while conctools.gil.active_monitor() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        threads = [threading.Thread(target=crunch, args=(2.5,), name=f"cruncher-{i}") for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    if __name__ == "__main__":
        p = mp.get_context(sys.argv[1]).Process(target=child, args=(sys.argv[2] == "wait",), name="gil-child")
        p.start()
        p.join()
        print("child exit", p.exitcode)
    """

VERDICT = "Bottleneck: CPU-bound Python code in threads: use processes"
HEADING = re.compile(r"^In process (\d+) '(.*)':$", re.MULTILINE)


def blocks(text: str) -> tuple[str, dict[int, str]]:
    """A merged text report cut where each child's own report begins: (the main process's part, pid -> block)."""
    found = list(HEADING.finditer(text))
    main = text[: found[0].start()] if found else text
    out = {}
    for n, m in enumerate(found):
        end = found[n + 1].start() if n + 1 < len(found) else len(text)
        out[int(m.group(1))] = text[m.start() : end]
    return main, out


def gil_threads(report: dict[str, Any]) -> set[str]:
    """Names of the threads in a report's ``gil`` section (empty when it has none)."""
    section = report.get("sections", {}).get("gil") or {}
    return {t["name"] for t in section.get("threads", [])}


def child_named(report: dict[str, Any], name: str) -> dict[str, Any]:
    (child,) = [p for p in children(report) if p["name"] == name]
    return child


class TestInheritedMonitor:
    """The parent's running GIL monitor, copied into a forked child, is inert there and never blocks it."""

    def test_forked_while_the_sampler_holds_its_lock(self) -> None:
        """Forked while the monitor's lock is held (as its sampler holds it mid-sample): in the child,
        stop() and summary() return at once, and the copy is not the child's running monitor."""
        from conctools.gil import GilMonitor, active_monitor
        from conctools.recorder import Recorder

        recorder = Recorder(capacity=100)
        monitor = GilMonitor(recorder=recorder).start()
        try:
            with monitor._state:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: a fork with threads
                    pid = os.fork()
                if pid == 0:  # the child: ends by os._exit whatever happens, or by SIGALRM if it hangs
                    code = 1
                    try:
                        signal.signal(signal.SIGALRM, signal.SIG_DFL)
                        signal.alarm(20)
                        monitor.stop()
                        summary = monitor.summary()
                        code = 0 if not monitor.running and active_monitor(recorder) is None and summary else 3
                    finally:
                        os._exit(code)
            _, status = os.waitpid(pid, 0)
        finally:
            monitor.stop()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the child ended with status {status:#x}"

    def test_a_number_reused_before_the_fork_stays_open(self) -> None:
        """The parent's sampler closed a thread's file but had not forgotten its number when another
        thread got that number for a pipe and forked (as multiprocessing does): the child keeps the pipe."""
        import time

        from conctools.gil import GilMonitor
        from conctools.recorder import Recorder

        monitor = GilMonitor(recorder=Recorder(capacity=100)).start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with monitor._state:
                    track = next((t for t in monitor._tracks.values() if t.fd_sys is not None), None)
                if track is not None:
                    break
                time.sleep(0.02)
            assert track is not None, "the monitor opened no thread's files"
            with monitor._state:
                fd = track.fd_sys
                assert fd is not None
                os.close(fd)  # closed; the number is still in the track, as mid-close at a fork
                pipes = [os.pipe() for _ in range(4)]  # one of them gets the freed number
                ends = [end for pair in pipes for end in pair]
                assert fd in ends
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: a fork with threads
                        pid = os.fork()
                    if pid == 0:
                        code = 1
                        try:
                            os.fstat(fd)  # still open: the child's pipe, not the parent's /proc file
                            code = 0
                        finally:
                            os._exit(code)
                    _, status = os.waitpid(pid, 0)
                finally:
                    track.fd_sys = None  # the parent's own bookkeeping, as its sampler would do
                    for end in ends:
                        os.close(end)
        finally:
            monitor.stop()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the child ended with status {status:#x}"


class TestChildGilSection:
    """A child whose threads fight over the GIL gets its own GIL section and verdict, whatever its start method."""

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_child_threads_fighting_over_the_gil(self, tmp_path: Path, method: str) -> None:
        """The child's section names its two threads and says "use processes"; the main process's does not."""
        result, report = run(tmp_path, CRUNCHING_CHILD, method, "wait")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "child exit 0\n"
        child = child_named(report, "gil-child")
        assert child["start_method"] == method
        # report.json: the threads are in the child's own gil section, not in the main process's
        assert {"cruncher-0", "cruncher-1"} <= gil_threads(child["report"])
        assert not {"cruncher-0", "cruncher-1"} & gil_threads(report)
        # report.txt: the verdict and the CPU-bound threads section are under the child, with its threads
        full = (tmp_path / "out" / "report.txt").read_text()
        main, own = blocks(full)
        block = own[child["pid"]]
        assert block.startswith(f"In process {child['pid']} 'gil-child':\n")
        assert VERDICT in block, full
        section = block[block.index("CPU-bound threads: ") :]
        assert re.search(r"^CPU-bound threads: 2 threads wanted the GIL at the same time", section), full
        assert re.search(r"run `crunch` in a ProcessPoolExecutor", section), full
        assert re.search(r"^\s+cruncher-0\s+crunch\s", section, re.MULTILINE), full
        assert re.search(r"^\s+cruncher-1\s+crunch\s", section, re.MULTILINE), full
        assert full.count("CPU-bound threads: ") == 1  # once, in the child's part
        assert "cruncher" not in main and VERDICT not in main
        # the main process only waited for its child: idle, not I/O-bound (its time is the child's)
        assert "Bottleneck: I/O-bound" not in main, main
        # the brief report on stderr: the child's verdict under its heading, none of it in the main part
        brief_main, brief_own = blocks(result.stderr)
        assert VERDICT in brief_own[child["pid"]], result.stderr
        assert VERDICT not in brief_main and "cruncher" not in brief_main
        # report.html: the child's verdict and section, each labelled with the child
        page = (tmp_path / "out" / "report.html").read_text()
        assert f"In process {child['pid']} 'gil-child': {VERDICT}" in page
        assert f"In process {child['pid']} 'gil-child': CPU-bound threads\"" in page  # the section's title
        assert "CPU-bound threads: 2 threads wanted the GIL" in page
        assert_all_gone(report)


class TestRunOptionsReachChildren:
    """The GIL flag and the lock-wait threshold reach every kind of child."""

    @pytest.mark.timeout(2 * TIMEOUT)  # two runs
    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_no_gil(self, tmp_path: Path, method: str) -> None:
        """A child measures its threads by default; with --no-gil no process has a GIL section or verdict."""
        for name in ("default", "no-gil"):
            (tmp_path / name).mkdir()
        result, report = run(tmp_path / "default", CRUNCHING_CHILD, method, "wait")
        assert result.returncode == 0, result.stderr
        assert {"cruncher-0", "cruncher-1"} <= gil_threads(child_named(report, "gil-child")["report"])

        result, report = run(tmp_path / "no-gil", CRUNCHING_CHILD, method, "no-wait", options=("--no-gil",))
        assert result.returncode == 0, result.stderr
        assert result.stdout == "child exit 0\n"
        assert children(report) and all("gil" not in p["report"]["sections"] for p in children(report))
        assert "gil" not in report["sections"]
        full = (tmp_path / "no-gil" / "out" / "report.txt").read_text()
        assert "Bottleneck:" not in full and "CPU-bound threads" not in full
        assert "Bottleneck:" not in result.stderr

    @pytest.mark.parametrize("method", ["spawn", "forkserver"])
    def test_lock_wait_threshold(self, tmp_path: Path, method: str) -> None:
        """--lock-wait-threshold is the child's threshold too (a new interpreter, and the forkserver's children)."""
        code = """
            import multiprocessing as mp, sys
            import conctools.locks

            def child(queue):
                queue.put(conctools.locks.wait_threshold_s())

            if __name__ == "__main__":
                ctx = mp.get_context(sys.argv[1])
                queue = ctx.Queue()
                p = ctx.Process(target=child, args=(queue,))
                p.start()
                print(queue.get(timeout=60))
                p.join()
            """
        result, _ = run(tmp_path, code, method, options=("--lock-wait-threshold", "0.25"))
        assert result.returncode == 0, result.stderr
        assert result.stdout == "0.25\n"


class TestForkPools:
    """Pools of forked workers: their workers measure their own threads, and short-lived ones cost nothing visible."""

    def test_many_short_jobs(self, tmp_path: Path) -> None:
        """A fork Pool's workers have GIL sections of their own; pools of many short jobs and short-lived
        workers (forked from the pool's thread) complete, and no process reports an error."""
        code = """
            import json, multiprocessing as mp, os, time
            import conctools.gil
            from conctools.children.session import state

            def square(x):
                return x * x

            def has_gil_section(session):  # this process's record, as the run reads it
                path = os.path.join(session.config.run_dir, session.identity.key + ".json")
                try:
                    with open(path) as f:
                        record = json.load(f)
                except (OSError, ValueError):
                    return False
                return "gil" in ((record.get("report") or {}).get("sections") or {})

            def measured(_):
                # the pool ends by terminating its workers: return once the record holds the section
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if conctools.gil.active_monitor() is not None and has_gil_section(state.session):
                        return True
                    time.sleep(0.02)
                return False

            if __name__ == "__main__":
                ctx = mp.get_context("fork")
                with ctx.Pool(2) as pool:
                    squares = pool.map(square, range(3000))
                    workers_measured = pool.map(measured, range(2), chunksize=1)
                with ctx.Pool(3, maxtasksperchild=1) as pool:  # a worker per job
                    short = pool.map(square, range(40), chunksize=1)
                print(squares == [x * x for x in range(3000)], any(workers_measured), short == squares[:40])
            """
        result, report = run(tmp_path, code)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "True True True\n"
        workers = [p for p in children(report) if p["name"].startswith("ForkPoolWorker-")]
        assert len(workers) >= 2 + 40
        for p in workers:  # the pool's end terminates its workers, one maybe just forked (no record yet)
            assert p["exit_text"] == "exit status 0" or p["exit_text"].startswith("stopped by its parent (SIGTERM)"), p
        # a worker that waited for its monitor has a GIL section of its own (the pool's thread in the
        # main process has nothing to do with it)
        assert any("gil" in (p.get("report") or {}).get("sections", {}) for p in workers)
        for text in (result.stderr, (tmp_path / "out" / "report.txt").read_text()):
            assert "Traceback" not in text
            assert not re.search(r"deadlock|hung|died|vanished|ended without", text, re.IGNORECASE), text
        notes = [ln for ln in result.stderr.splitlines() if ln.startswith("conctools:")]
        assert len(notes) == 1 and notes[0].startswith(f"conctools: wrote {tmp_path / 'out'}/report.txt"), notes
        assert_all_gone(report)

    def test_terminate_right_after_fork(self, tmp_path: Path) -> None:
        """A worker stopped the moment it is forked (as Pool.terminate() may stop one its thread just
        started) ends by SIGTERM, though the signal came before the child had its default action back."""
        code = """
            import multiprocessing as mp, os, signal, time

            def sleeper():
                time.sleep(10)

            if __name__ == "__main__":
                codes = []
                for _ in range(3):
                    p = mp.get_context("fork").Process(target=sleeper)
                    p.start()
                    p.terminate()
                    p.join()
                    codes.append(p.exitcode)
                pid = os.fork()
                if pid == 0:
                    time.sleep(10)
                    os._exit(0)
                os.kill(pid, signal.SIGTERM)
                _, status = os.waitpid(pid, 0)
                print(codes, os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
            """
        result, report = run(tmp_path, code)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "[-15, -15, -15] True\n"
        assert_all_gone(report)


IDLE_WORKERS = """
    import concurrent.futures as cf, multiprocessing as mp, sys, time

    def crunch(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sum(range(1000))
        return seconds

    if __name__ == "__main__":
        ctx = mp.get_context("fork")
        if sys.argv[1] == "executor":  # with fork, all its workers start at once
            with cf.ProcessPoolExecutor(3, mp_context=ctx) as ex:
                print(list(ex.map(crunch, [3.0])))
        else:
            with ctx.Pool(3) as pool:
                print(pool.map(crunch, [3.0]))
    """


class TestIdlePoolWorkers:
    """Process pool workers with no job wait in their call queue (a pipe read, or the queue's shared
    lock while another worker reads): idle, as an idle thread pool worker, never an I/O-bound or a
    lock-bound program (each worker process gets its own verdict)."""

    @pytest.mark.parametrize("pool", ["executor", "pool"])
    def test_no_verdict_for_waiting_for_work(self, tmp_path: Path, pool: str) -> None:
        result, report = run(tmp_path, IDLE_WORKERS, pool)
        assert result.returncode == 0, result.stderr
        assert "3.0" in result.stdout
        idle = [
            t
            for p in children(report)
            for t in (p["report"]["sections"].get("gil") or {}).get("threads", [])
            if t.get("idle_s", 0) > 0.2
        ]
        assert idle, "no worker was seen waiting for work"
        assert "I/O-bound" not in result.stderr, result.stderr
        assert "Bottleneck: waiting on locks" not in result.stderr, result.stderr
