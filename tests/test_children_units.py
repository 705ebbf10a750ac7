"""The pure parts of following children: the chain of waits, the merged section, waits read from frames."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
import time
from typing import Any

import pytest

from conctools.children import reaping
from conctools.children.bootstrap import _runs_conctools, _start_method_of
from conctools.children.chain import build_chain
from conctools.children.merge import exit_words, processes_section
from conctools.children.waits import cross_wait


def wait(thread: str, kind: str, words: str, targets: list[int]) -> dict[str, Any]:
    return {"thread_id": 1, "thread_name": thread, "kind": kind, "waits_on": words, "target_pids": targets, "stack": []}


class TestChain:
    """build_chain walks the waits back from the stuck process, main process first."""

    def test_three_generations(self) -> None:
        """main joins 20, whose pool waits on 30 and 31; 31 is stuck; an unrelated wait is left out."""
        waits = {
            10: [wait("MainThread", "join", "multiprocessing.Process.join()", [20]), wait("other", "join", "x", [40])],
            20: [wait("MainThread", "pool", "multiprocessing.Pool.map() results", [30, 31])],
            31: [],
        }
        names = {10: "MainProcess", 20: "outer", 30: "ForkPoolWorker-1", 31: "ForkPoolWorker-2"}
        chain = build_chain(31, waits, names)
        assert [(link.pid, link.thread_name) for link in chain] == [(10, "MainThread"), (20, "MainThread")]
        assert chain[0].waits_on == "multiprocessing.Process.join() of child pid 20 'outer'"
        assert chain[1].waits_on == (
            "multiprocessing.Pool.map() results (pids 30 'ForkPoolWorker-1', 31 'ForkPoolWorker-2')"
        )

    def test_nobody_waits(self) -> None:
        """A stuck child nobody waits on: an empty chain, not a guess."""
        assert build_chain(5, {1: [wait("MainThread", "pipe", "recv()", [])]}, {}) == ()


class TestMergedSection:
    """How each process ended, from its own record and its parent's reaping."""

    def main(self, reaped: list[dict[str, Any]]) -> dict[str, Any]:
        return {"pid": 1, "name": "MainProcess", "exit_status": 0, "reaped": reaped, "started_wall": 0.0}

    def record(self, pid: int, **extra: Any) -> dict[str, Any]:
        return {"pid": pid, "ppid": 1, "name": f"p{pid}", "start_method": "fork", "started_wall": 1.0, **extra}

    def test_exit_words(self) -> None:
        """Statuses and signals in words."""
        assert exit_words(0) == "exit status 0"
        assert exit_words(-9) == "killed by SIGKILL (signal 9)"
        assert exit_words(None) == "unknown"

    def test_sources_of_an_end(self) -> None:
        """Reaped status wins; a signal its parent sent reads as stopped; no record and no reaping: vanished."""
        reaped = [
            {"pid": 2, "exit_code": -9, "by": 1, "at_wall": 5.0, "source": "multiprocessing", "cpu_s": 0.5},
            {"pid": 3, "exit_code": -15, "by": 1, "at_wall": 5.0, "source": "multiprocessing",
             "terminated_by_parent": True},
            {"pid": 6, "exit_code": 1, "by": 1, "at_wall": 5.0, "source": "multiprocessing", "name": "early"},
        ]  # fmt: skip
        records = [
            self.record(2, cpu_user_s=0.1, threads=[{"thread_name": "MainThread", "stack": [{"filename": "a.py"}]}]),
            self.record(3),
            self.record(4, final=True, exit_status=3, ended_by="os._exit"),
            self.record(5),
        ]
        section = processes_section(self.main(reaped), records, alive=lambda pid, started: False)
        by_pid = {p["pid"]: p for p in section["processes"]}
        assert by_pid[1]["state"] == "main"
        assert by_pid[2]["exit_text"] == "killed by SIGKILL (signal 9)" and by_pid[2]["cpu_s"] == 0.5
        assert by_pid[2]["last_stack"] == [{"filename": "a.py"}]
        assert by_pid[3]["exit_text"] == "stopped by its parent (SIGTERM)" and "last_stack" not in by_pid[3]
        assert by_pid[4]["exit_text"] == "exit status 3"
        assert by_pid[5]["state"] == "vanished"
        assert by_pid[6]["exit_text"] == "exit status 1, before it wrote any record" and by_pid[6]["name"] == "early"

    def test_worker_ended_before_its_record_keeps_its_target(self) -> None:
        """A fork child stopped before its writer ran (Pool.terminate() on a loaded machine; CI saw a
        ForkPoolWorker with no target): its parent noted the target as it forked it."""
        process = multiprocessing.get_context("fork").Process(target=_job, name="ForkPoolWorker-9")
        assert reaping.launching(process) == f"{__name__}._job"
        del process._target  # what Process.start() does once the child is made
        saved = reaping.reaped()
        try:
            reaping.note(4242, -15, process=process)
            (reap,) = [r for r in reaping.reaped() if r["pid"] == 4242]
        finally:
            reaping._reaped.pop(4242, None)
        assert reap["target"] == f"{__name__}._job" and reap["name"] == "ForkPoolWorker-9"
        section = processes_section(self.main([reap]), [], alive=lambda pid, started: False)
        (entry,) = [p for p in section["processes"] if p["pid"] == 4242]
        assert entry["target"] == f"{__name__}._job"
        assert entry["exit_text"] == "killed by SIGTERM (signal 15), before it wrote any record"
        assert reaping.reaped() == saved

    def test_recycled_pid(self) -> None:
        """A reaping from before a process started belongs to an earlier process that had its pid."""
        reaped = [{"pid": 2, "exit_code": -9, "by": 1, "at_wall": 0.5, "source": "multiprocessing"}]
        section = processes_section(self.main(reaped), [self.record(2, started_wall=10.0)], alive=lambda p, s: True)
        assert section["processes"][1]["state"] == "running"


def _idle() -> None:
    time.sleep(30)


class TestCrossWaitFromFrames:
    """A real thread blocked in multiprocessing is read from its frames."""

    def test_join_of_a_child(self) -> None:
        """A thread in Process.join() waits on that child, by pid and name, with no timeout."""
        ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
        proc = ctx.Process(target=_idle, name="sleeper")
        proc.start()
        joiner = threading.Thread(target=proc.join, name="joiner", daemon=True)
        joiner.start()
        try:
            deadline = time.monotonic() + 10
            found = None
            while found is None and time.monotonic() < deadline:
                frame = sys._current_frames().get(joiner.ident or 0)
                found = cross_wait(frame)
                time.sleep(0.01)
            assert found is not None
            assert (found.kind, found.target_pids, found.target_names, found.timeout_s) == (
                "join",
                (proc.pid,),
                ("sleeper",),
                None,
            )
        finally:
            proc.kill()
            joiner.join(10)


class TestBootstrapDecides:
    """Which new interpreter follows, from its command line."""

    def test_nested_conctools_runs_on_its_own(self) -> None:
        """`python [-W error] -m conctools ...` and the `conctools` script are runs of their own; a program is not."""
        py = sys.executable
        assert _runs_conctools([py, "-m", "conctools", "run", "x.py"])
        assert _runs_conctools([py, "-W", "error", "-X", "dev", "-m", "conctools.cli"])
        assert _runs_conctools([py, "/venv/bin/conctools", "run", "x.py"])
        assert not _runs_conctools([py, "-W", "error", "prog.py"])
        assert not _runs_conctools([py, "-c", "import conctools"])
        assert not _runs_conctools([py, "-m", "pytest"])

    def test_start_methods(self) -> None:
        """spawn and the forkserver are recognised; the resource tracker is not followed."""
        py = sys.executable
        spawn = [py, "-c", "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)"]
        assert _start_method_of([*spawn, "--multiprocessing-fork"]) == "spawn"
        assert _start_method_of([py, "-c", "from multiprocessing.forkserver import main; main(1, 2)"]) == (
            "forkserver (server)"
        )
        assert _start_method_of([py, "-c", "from multiprocessing.resource_tracker import main;main(5)"]) is None
        assert _start_method_of([py, "prog.py"]) == "exec"


class TestForkSafety:
    """A forked child finds conctools' internal locks free, whichever thread held them at the fork."""

    def test_every_listed_lock_exists(self) -> None:
        """Each (module, name) of the list names a lock (a module split must not leave a stale name)."""
        import importlib

        from conctools.children import forksafe

        for module_name, names in forksafe._MODULE_LOCKS:
            module = importlib.import_module(module_name)
            for name in names:
                lock = getattr(module, name, None)
                assert callable(getattr(lock, "_at_fork_reinit", None)), f"{module_name}.{name}"

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    def test_locks_held_at_the_fork_are_free_in_the_child(self) -> None:
        """Another thread holds the GIL calibration's lock, the loop monitor's and the pools thread's at
        the fork: the child (conctools' fork hook) can take them all, and stop the pools' thread."""
        import importlib
        import os

        from conctools import _threadstate
        from conctools.children import forksafe

        monitor = importlib.import_module("conctools.loopmon.monitor")
        from conctools.pools._looker import LOOKER

        held = [_threadstate._calibration_lock, monitor._active_lock, LOOKER._mutex]
        taken, release = threading.Event(), threading.Event()

        def holder() -> None:
            for lock in held:
                lock.acquire()
            taken.set()
            release.wait(30)
            for lock in held:
                lock.release()

        t = threading.Thread(target=holder)
        t.start()
        try:
            assert taken.wait(30)
            pid = os.fork()
            if pid == 0:  # the child: conctools' hook, then the locks
                code = 1
                try:
                    forksafe.reinit_after_fork()
                    # (the pools' thread's mutex is a new one: the parent's thread is not in the child)
                    mine = [*held[:2], LOOKER._mutex]
                    code = 0 if all(lock.acquire(timeout=5) for lock in mine) else 3
                    LOOKER._mutex.release()
                    LOOKER.stop()  # what a forked child's run does at its end (it hung there)
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        finally:
            release.set()
            t.join(30)

    def test_parent_instruments_sections_are_dropped(self) -> None:
        """A forked child's record does not call the parent's GIL monitor or loop monitor (whose locks a
        parent thread may hold at the fork: the child's writer hung there in CI)."""
        from conctools.children.forksafe import forget_parent_sections
        from conctools.recorder import Recorder

        rec = Recorder()
        held_by_a_parent_thread = threading.Lock()
        held_by_a_parent_thread.acquire()

        def parent_section() -> dict[str, Any]:
            with held_by_a_parent_thread:
                return {}

        for name in ("gil", "slow_callbacks", "resources", "profile"):
            rec.add_section(name, parent_section)
        forget_parent_sections(rec)
        done: list[Any] = []
        t = threading.Thread(target=lambda: done.append(rec.snapshot()), daemon=True)
        t.start()
        t.join(10)
        assert done, "the snapshot called a parent's section"
        assert not {"gil", "slow_callbacks", "resources", "profile"} & set(done[0].sections)


def _job() -> None:
    """A process target (never run)."""


FORK_DURING_IMPORT = r"""
import builtins, os, signal, sys, threading, time

from conctools._imports import import_in_background
from conctools.children.forking import guard_forks

if sys.argv[1] != "library":  # as under conctools run; else a library's enable_dump()
    guard_forks()
if sys.argv[1] == "lazy-logger":  # imported after conctools' hook: logging's before-fork hook runs first
    import logging
print("logging imported before:", "logging" in sys.modules, flush=True)
builtins.GATE = threading.Event()
about_to_fork = threading.Event()
if sys.argv[1].startswith("lazy"):  # a conctools thread's first use of a module imported lazily, not in the background
    importer = threading.Thread(target=__import__, args=("slow_mod",), name="conctools-watchdog")
else:
    importer = threading.Thread(target=import_in_background, args=(["slow_mod"],))
importer.start()
while "slow_mod" not in sys.modules:  # the import has begun, in the importer thread
    time.sleep(0.001)


def open_gate() -> None:
    about_to_fork.wait(30)
    time.sleep(0.2)  # (without the wait for the import, the fork is made by now)
    builtins.GATE.set()


threading.Thread(target=open_gate).start()
about_to_fork.set()
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a child stuck on a half-made module dies of SIGALRM
    try:
        import slow_mod

        code = 0 if slow_mod.VALUE == 42 else 3
    except BaseException:
        code = 4
    os._exit(code)
_, status = os.waitpid(pid, 0)
importer.join(30)
print("child:", os.waitstatus_to_exitcode(status), flush=True)
"""


FORK_DURING_FIRST_LOG = r"""
import os, signal, sys, threading, time

from conctools._log import get_logger
from conctools.children.forking import guard_forks

if sys.argv[1:] == ["conctools-run"]:
    guard_forks()
assert "logging" not in sys.modules, "logging imported before the test"
parent = os.getpid()
gate, importing, about_to_fork = threading.Event(), threading.Event(), threading.Event()


class SlowLogging:  # the parent's logging waits at the gate half made (in sys.modules, its import lock held)
    def find_spec(self, name, path=None, target=None):
        if name != "logging" or os.getpid() != parent:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            importing.set()
            gate.wait(30)
            run(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, SlowLogging())
first_use = threading.Thread(target=lambda: get_logger("conctools.test").debug("first use"), name="conctools-x")
first_use.start()
importing.wait(30)


def open_gate() -> None:
    about_to_fork.wait(30)
    time.sleep(0.2)  # (without the wait for the import, the fork is made by now)
    gate.set()


threading.Thread(target=open_gate).start()
about_to_fork.set()
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a child stuck on a half-made logging dies of SIGALRM
    try:
        import logging

        logging.getLogger("child").debug("works")
        code = 0
    except BaseException:
        code = 4
    os._exit(code)
_, status = os.waitpid(pid, 0)
first_use.join(30)
print("child:", os.waitstatus_to_exitcode(status), flush=True)
"""


def _child_imports_after_the_fork(tmp_path: Any, program: str, how: str) -> None:
    """Run ``program`` (its modules on the path: ``tmp_path`` and the project) with ``how`` as its
    argument: its forked child must import what was being imported at the fork (exit 0, not SIGALRM's
    -14), and no at-fork hook may be left unbalanced ("Exception ignored")."""
    import os
    import subprocess

    (tmp_path / "prog.py").write_text(program, encoding="utf-8")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), root]), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(tmp_path / "prog.py"), how], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "child: 0" in done.stdout, done.stdout + done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr


class TestForkDuringBackgroundImport:
    """A conctools thread importing as the program runs (a child's deferred instruments, the dump agent's
    preload) and a fork at that moment: the fork waits for the import to end, and the child can import
    the module (it hung: the module half made, its import lock held by a thread the child lacks)."""

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    @pytest.mark.parametrize("how", ["conctools-run", "library", "lazy", "lazy-logger"])
    def test_fork_waits_for_the_import(self, tmp_path: Any, how: str) -> None:
        """lazy-logger: the module makes its logger as it is imported (as ``concurrent.futures`` does),
        which takes logging's lock, held by then by logging's own before-fork hook in the forking thread."""
        body = "import logging\n" if how != "lazy-logger" else "import logging\nlogging.getLogger('slow_mod')\n"
        (tmp_path / "slow_mod.py").write_text(
            "import builtins\nbuiltins.GATE.wait(30)\n" + body + "VALUE = 42\n", encoding="utf-8"
        )
        # (and logging, imported by that thread while the fork waited, keeps its lock balanced across it)
        _child_imports_after_the_fork(tmp_path, FORK_DURING_IMPORT, how)

    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    @pytest.mark.parametrize("how", ["conctools-run", "library"])
    def test_fork_waits_for_a_first_log(self, tmp_path: Any, how: str) -> None:
        """conctools' loggers import ``logging`` on first use, from whichever thread logs first (a
        conctools thread too): that import is one a fork waits for."""
        _child_imports_after_the_fork(tmp_path, FORK_DURING_FIRST_LOG, how)

    def test_import_where_first_needed_waits_for_a_fork(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """``_imports.imported`` (a module a followed child's start does without, imported where first
        needed, by any thread) does not import while a fork holds ``background_imports``, and does once
        the fork is done."""
        from conctools import _imports

        (tmp_path / "conctools_probe_late.py").write_text("VALUE = 7\n", encoding="utf-8")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, "conctools_probe_late", raising=False)
        got: list[Any] = []
        assert _imports.background_imports.acquire(timeout=10)  # as forking._before_fork does
        try:
            thread = threading.Thread(target=lambda: got.append(_imports.imported("conctools_probe_late")))
            thread.start()
            thread.join(0.3)  # well under BACKGROUND_IMPORT_WAIT_S: it still waits
            assert "conctools_probe_late" not in sys.modules and got == []
        finally:
            _imports.background_imports.release()
        thread.join(10)
        assert [m.VALUE for m in got] == [7]
        assert _imports.imported("conctools_probe_late") is got[0]  # imported once, then looked up
        monkeypatch.delitem(sys.modules, "conctools_probe_late", raising=False)


class TestFollowerCost:
    """The follower's thread polls five times a second for the whole run (issue 12)."""

    def test_a_poll_with_no_child_takes_no_frames(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no child's record in the run folder and no child ended, a poll returns at once: it takes
        no frames of the program's threads (sys._current_frames(), made while the program waits for the
        GIL). With a child's record there, the poll looks as before."""
        from conctools.children import follower as follower_mod
        from conctools.recorder import Recorder

        taken: list[int] = []

        def frames() -> dict[int, Any]:
            taken.append(1)
            return {}

        monkeypatch.setattr(follower_mod, "current_frames", frames)
        monkeypatch.setattr(reaping, "reaped", lambda: [])
        follower = follower_mod.ChildFollower({"deadlock_timeout_s": 10.0}, Recorder(capacity=10))
        follower.run_dir = str(tmp_path)
        assert follower.poll() is None and taken == []
        monkeypatch.setattr(reaping, "reaped", lambda: [{"pid": 1234567, "exit_code": -9, "by": "wait"}])
        (tmp_path / "1234567.json").write_text("{}")
        assert follower.poll() is None
        assert taken == [1]  # a child died: the check of pools waiting for its jobs looks at the frames

    def test_an_unchanged_empty_folder_is_not_listed_again(
        self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A run folder found empty is not listed again while its mtime stays (os.listdir() releases the
        GIL at every entry it reads, taking it from a program that computes each time); a record written
        since is listed and looked at at the next poll."""
        from conctools.children import follower as follower_mod
        from conctools.recorder import Recorder

        listed: list[str] = []
        real_listdir = os.listdir

        def listdir(path: str) -> list[str]:
            listed.append(path)
            return real_listdir(path)

        monkeypatch.setattr(follower_mod.os, "listdir", listdir)
        monkeypatch.setattr(reaping, "reaped", lambda: [])
        follower = follower_mod.ChildFollower({"deadlock_timeout_s": 10.0}, Recorder(capacity=10))
        follower.run_dir = str(tmp_path)
        old = time.time_ns() - 5_000_000_000
        os.utime(tmp_path, ns=(old, old))  # an mtime older than the clock's tick: trusted
        assert follower.poll() is None and len(listed) == 1
        for _ in range(5):
            assert follower.poll() is None
        assert len(listed) == 1
        explained: list[dict[str, Any]] = []
        monkeypatch.setattr(follower, "explain", lambda alarm: explained.append(alarm) or None)
        monkeypatch.setattr(follower, "_report", lambda event: event)
        (tmp_path / "4242.stuck").write_text(json.dumps({"pid": 4242, "verdict": "hang", "reason": "r"}))
        follower.poll()
        assert len(listed) == 2 and explained and explained[0]["pid"] == 4242
