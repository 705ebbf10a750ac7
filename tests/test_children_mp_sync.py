"""`conctools run` and processes stuck on each other through shared multiprocessing locks and
events: a child holding the lock the parent waits for (hung, or killed holding it), a deadlock
across processes (ABBA), an Event only a child would set; and no false alarm for a program that
takes a shared lock thousands of times.

Real processes, event-based waits (multiprocessing Events; a child that must be seen holding a
lock waits until its own record in the run folder says so); `--deadlock-timeout 1`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.test_children import assert_all_gone, children, run

TIMEOUT = ("--deadlock-timeout", "1")


def chain_of(err: str) -> str:
    """The chain part of a stuck-processes report: from its title to the waiting threads' stacks."""
    start = re.search(r"^(A child process|Processes deadlocked)", err, re.M)
    assert start is not None, err
    return err[start.start() :].split("Stacks of the waiting threads:", 1)[0]


def child_named(report: dict[str, object], name: str) -> dict[str, object]:
    (child,) = [p for p in children(report) if p.get("name") == name]
    return child


class TestChildHoldsTheLock:
    """The parent waits for a multiprocessing.Lock that a child holds: the chain names the child."""

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_holder_hung(self, tmp_path: Path, method: str) -> None:
        """The holder waits forever on a threading.Event: 87, 'held by child pid N 'holder', thread 'MainThread''."""
        code = """
            import multiprocessing as mp, sys, threading

            def child(lock, ready):
                with lock:
                    ready.set()
                    threading.Event().wait()  # nobody sets it

            if __name__ == "__main__":
                ctx = mp.get_context(sys.argv[1])
                lock = ctx.Lock()
                ready = ctx.Event()
                p = ctx.Process(target=child, args=(lock, ready), name="holder")
                p.start()
                ready.wait()
                with lock:
                    print("never")
            """
        result, report = run(tmp_path, code, method, options=TIMEOUT)
        err = result.stderr
        assert result.returncode == 87, err
        holder = child_named(report, "holder")
        main_pid = report["meta"]["pid"]
        chain = chain_of(err)
        assert chain.startswith("A child process is hung, and the program waits on it\n"), chain
        assert (
            f"process {main_pid} 'MainProcess', thread 'MainThread':\n"
            f"  waits on multiprocessing.Lock 'prog.py:11' (acquire()), held by child pid {holder['pid']} 'holder', "
            "thread 'MainThread', at " in chain
        ), chain
        assert re.search(r", at \S*prog\.py:16\n", chain), chain
        assert f"process {holder['pid']} 'holder' is hung:\n  nothing progressed" in chain, chain
        # both stacks: the parent's `with lock:`, the child's wait on the Event
        assert re.search(r"    at <module> \(\S*prog\.py:16\)\n        with lock:", err), err
        assert re.search(r"    at child \(\S*prog\.py:7\)\n        threading\.Event\(\)\.wait\(\)", err), err
        assert "never" not in result.stdout
        assert_all_gone(report)

    def test_holder_killed_after_its_record(self, tmp_path: Path) -> None:
        """The holder is SIGKILLed once its record shows the hold: 'died: was killed by SIGKILL (signal 9)
        while holding multiprocessing.Lock', and the parent's wait names it."""
        code = """
            import glob, json, multiprocessing as mp, os, signal, sys, time

            def recorded_hold():
                run_dir = json.loads(os.environ["CONCTOOLS_FOLLOW"])["run_dir"]
                for path in glob.glob(os.path.join(run_dir, f"{os.getpid()}-*.sync")):
                    try:
                        with open(path) as f:
                            return bool(json.load(f).get("holds"))
                    except (OSError, ValueError):
                        return False
                return False

            def child(lock):
                lock.acquire()
                while not recorded_hold():  # conctools' record of this process shows the hold
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)

            if __name__ == "__main__":
                ctx = mp.get_context("fork")
                lock = ctx.Lock()
                p = ctx.Process(target=child, args=(lock,), name="holder")
                p.start()
                p.join()
                print("child", p.exitcode, flush=True)
                lock.acquire()
                print("never")
            """
        result, report = run(tmp_path, code, options=TIMEOUT)
        err = result.stderr
        assert result.returncode == 87, err
        assert result.stdout == "child -9\n"
        holder = child_named(report, "holder")
        chain = chain_of(err)
        assert chain.startswith("A child process died, and the program waits on it forever\n"), chain
        assert (
            f"  waits on multiprocessing.Lock 'prog.py:22' (acquire()), held by child pid {holder['pid']} 'holder', "
            "thread 'MainThread', which was killed by SIGKILL (signal 9) while holding it, at " in chain
        ), chain
        assert (
            f"process {holder['pid']} 'holder' died:\n  was killed by SIGKILL (signal 9) while holding "
            "multiprocessing.Lock 'prog.py:22' (its thread 'MainThread' had taken it)" in chain
        ), chain
        assert re.search(r"    at <module> \(\S*prog\.py:27\)\n        lock\.acquire\(\)", err), err
        assert "died holding a lock the program waits for; exit status 87" in err
        assert_all_gone(report)

    def test_holder_killed_at_once(self, tmp_path: Path) -> None:
        """Killed right after taking it (perhaps before any record shows it): the dead child is still the
        one named, and the report says how sure it is."""
        code = """
            import multiprocessing as mp, os, signal

            def child(lock):
                lock.acquire()
                os.kill(os.getpid(), signal.SIGKILL)

            if __name__ == "__main__":
                ctx = mp.get_context("fork")
                lock = ctx.Lock()
                p = ctx.Process(target=child, args=(lock,), name="holder")
                p.start()
                p.join()
                with lock:
                    print("never")
            """
        result, report = run(tmp_path, code, options=TIMEOUT)
        err = result.stderr
        assert result.returncode == 87, err
        holder = child_named(report, "holder")
        chain = chain_of(err)
        assert f"process {holder['pid']} 'holder' died:\n  was killed by SIGKILL (signal 9)" in chain, chain
        assert re.search(
            rf"waits on multiprocessing\.Lock 'prog\.py:10' \(acquire\(\)\), held by (no process still running; "
            rf"child pid {holder['pid']} 'holder', which had it, was killed|child pid {holder['pid']} 'holder', "
            r"thread 'MainThread', which was killed)",
            chain,
        ), chain
        assert_all_gone(report)


class TestDeadlockAcrossProcesses:
    """ABBA: the parent holds A and waits for B, the child holds B and waits for A."""

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_abba(self, tmp_path: Path, method: str) -> None:
        """86; the cycle names both processes, both threads, both locks, and shows both stacks."""
        code = """
            import multiprocessing as mp, sys

            def child(a, b, ready, go):
                with b:
                    ready.set()
                    go.wait()
                    with a:
                        pass

            if __name__ == "__main__":
                ctx = mp.get_context(sys.argv[1])
                a = ctx.Lock()
                b = ctx.Lock()
                ready, go = ctx.Event(), ctx.Event()
                p = ctx.Process(target=child, args=(a, b, ready, go), name="abba")
                p.start()
                with a:
                    ready.wait()
                    go.set()
                    with b:
                        print("never")
            """
        result, report = run(tmp_path, code, method, options=TIMEOUT)
        err = result.stderr
        assert result.returncode == 86, err
        main_pid = report["meta"]["pid"]
        abba = child_named(report, "abba")
        chain = chain_of(err)
        assert chain.startswith("Processes deadlocked on each other: a cycle of waits across processes\n"), chain
        assert (
            f"process {main_pid} 'MainProcess', thread 'MainThread':\n"
            f"  waits on multiprocessing.Lock 'prog.py:14' (acquire()), held by child pid {abba['pid']} 'abba', "
            "thread 'MainThread', at " in chain
        ), chain
        assert (
            f"process {abba['pid']} 'abba', thread 'MainThread':\n"
            f"  waits on multiprocessing.Lock 'prog.py:13' (acquire()), held by process {main_pid} 'MainProcess', "
            "thread 'MainThread', at " in chain
        ), chain
        assert (
            f"process {abba['pid']} 'abba' is deadlocked:\n  deadlock across processes: thread 'MainThread' of "
            f"process {main_pid} 'MainProcess' waits for multiprocessing.Lock 'prog.py:14' (acquire()), held by "
            f"thread 'MainThread' of child pid {abba['pid']} 'abba'; thread 'MainThread' of child pid {abba['pid']} "
            f"'abba' waits for multiprocessing.Lock 'prog.py:13' (acquire()), held by thread 'MainThread' of "
            f"process {main_pid} 'MainProcess'" in chain
        ), chain
        stacks = err.split("Stacks of the waiting threads:", 1)[1]
        assert re.search(r"    at <module> \(\S*prog\.py:21\)\n        with b:", stacks), stacks
        assert re.search(r"    at child \(\S*prog\.py:8\)\n        with a:", stacks), stacks
        assert f"after a deadlock in child process {abba['pid']} 'abba'; exit status 86" in err
        assert_all_gone(report)


class TestEventOnlyAChildWouldSet:
    """The parent waits on a multiprocessing.Event that only a child would set."""

    def test_child_blocked_elsewhere(self, tmp_path: Path) -> None:
        """The setter is hung on a threading.Event: 87, and the parent's wait names it as the one that could set it."""
        code = """
            import multiprocessing as mp, threading

            def child(done, ready):
                ready.set()
                threading.Event().wait()  # blocked elsewhere
                done.set()

            if __name__ == "__main__":
                ctx = mp.get_context("fork")
                done, ready = ctx.Event(), ctx.Event()
                p = ctx.Process(target=child, args=(done, ready), name="setter")
                p.start()
                ready.wait()
                done.wait()
                print("never")
            """
        result, report = run(tmp_path, code, options=TIMEOUT)
        err = result.stderr
        assert result.returncode == 87, err
        setter = child_named(report, "setter")
        chain = chain_of(err)
        assert (
            f"  waits on multiprocessing.Event 'prog.py:11' (wait()), which pid {setter['pid']} 'setter' could set, "
            "at " in chain
        ), chain
        assert re.search(r", at \S*prog\.py:15\n", chain), chain
        assert f"process {setter['pid']} 'setter' is hung:" in chain, chain
        assert_all_gone(report)

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_child_exited_without_setting(self, tmp_path: Path, method: str) -> None:
        """The only process that had the Event exited: 87, the child named with how it ended."""
        code = """
            import multiprocessing as mp, sys

            def child(done):
                print("child done", flush=True)  # and never sets it

            if __name__ == "__main__":
                ctx = mp.get_context(sys.argv[1])
                done = ctx.Event()
                p = ctx.Process(target=child, args=(done,), name="setter")
                p.start()
                done.wait()
                print("never")
            """
        result, report = run(tmp_path, code, method, options=TIMEOUT)
        err = result.stderr
        assert result.returncode == 87, err
        assert result.stdout == "child done\n"
        setter = child_named(report, "setter")
        chain = chain_of(err)
        assert chain.startswith(
            "A child process ended, and the program waits forever on what only it could have done\n"
        ), chain
        assert re.search(
            r"thread 'MainThread':\n  waits on multiprocessing\.Event 'prog\.py:9' \(wait\(\)\), which no other "
            r"process still running has, at \S*prog\.py:12\n",
            chain,
        ), chain
        assert (
            f"process {setter['pid']} 'setter' ended:\n  exited with exit status 0 without setting "
            "multiprocessing.Event 'prog.py:9'" in chain
        ), chain
        assert_all_gone(report)


class TestHealthy:
    """A program that takes a shared lock heavily from four processes is not stuck."""

    def test_shared_lock_thousands_of_times(self, tmp_path: Path) -> None:
        """Parent and 3 children take one mp.Lock 5,000 times each (contended): exit 0, no finding; the
        lock went through conctools' acquire in every process."""
        code = """
            import multiprocessing as mp, types

            def traced(lock):
                return isinstance(lock.acquire, types.FunctionType)

            def work(lock, counter, out, start):
                start.wait()
                for _ in range(5000):
                    with lock:
                        counter.value += 1
                out.put(traced(lock))

            if __name__ == "__main__":
                ctx = mp.get_context("fork")
                lock, counter, out, start = ctx.Lock(), ctx.Value("i", 0, lock=False), ctx.Queue(), ctx.Event()
                procs = [ctx.Process(target=work, args=(lock, counter, out, start)) for _ in range(3)]
                for p in procs:
                    p.start()
                start.set()
                for _ in range(5000):
                    lock.acquire()
                    counter.value += 1
                    lock.release()
                seen = [out.get(timeout=60) for _ in procs]
                for p in procs:
                    p.join()
                print(counter.value, traced(lock), seen)
            """
        result, report = run(tmp_path, code, options=("--deadlock-timeout", "0.5"))
        err = result.stderr
        assert result.returncode == 0, err
        assert result.stdout == "20000 True [True, True, True]\n"
        assert "deadlock" not in err.lower() and "is hung" not in err and "died" not in err, err
        assert [c["exit_text"] for c in children(report)] == ["exit status 0"] * 3

    def test_holder_that_sleeps_is_not_stuck(self, tmp_path: Path) -> None:
        """A child that keeps the lock while it sleeps in a loop (slow work) longer than the timeout, then
        releases it: the parent gets it, exit 0, no finding (as within one process, a sleep is not a hang)."""
        code = """
            import multiprocessing as mp, time, types

            def child(lock, ready):
                with lock:
                    ready.set()
                    for _ in range(15):
                        time.sleep(0.2)

            if __name__ == "__main__":
                ctx = mp.get_context("fork")
                lock, ready = ctx.Lock(), ctx.Event()
                p = ctx.Process(target=child, args=(lock, ready), name="slow")
                p.start()
                ready.wait()
                with lock:
                    print("got it", isinstance(lock.acquire, types.FunctionType))  # (conctools' acquire)
                p.join()
            """
        result, _ = run(tmp_path, code, options=("--deadlock-timeout", "0.5"))
        assert result.returncode == 0, result.stderr
        assert result.stdout == "got it True\n"
        assert "deadlock" not in result.stderr.lower() and "waits on it" not in result.stderr


def _state(pid: int, *, alive: bool = True, **fields: object) -> dict[str, object]:
    return {
        "pid": pid,
        "name": f"p{pid}",
        "alive": alive,
        "ended": None if alive else "was killed by SIGKILL (signal 9)",
        "updated_wall": 100.0,
        "holds": [],
        "waits": [],
        "has": [],
        "threads": [1],
        **fields,
    }


def _wait(key: str, *, sync: str = "lock", since: float = 90.0, timeout: float | None = None) -> dict[str, object]:
    return {
        "key": key,
        "sync": sync,
        "thread_id": 1,
        "thread_name": "MainThread",
        "since_wall": since,
        "timeout_s": timeout,
        "waits_on": f"multiprocessing.Lock {key!r} (acquire())",
    }


def _hold(key: str) -> dict[str, object]:
    return {"key": key, "lock": f"multiprocessing.Lock {key!r}", "thread_id": 1, "thread_name": "MainThread"}


class TestFindStuck:
    """The pure rules behind the findings: what is certain is reported, what is not is not."""

    def test_cycle_across_two_processes(self) -> None:
        """Each holds what the other waits for: a deadlock, read from the main process."""
        from conctools.children.mpstuck import find_stuck

        states = {
            10: _state(10, holds=[_hold("a")], waits=[_wait("b")]),
            11: _state(11, holds=[_hold("b")], waits=[_wait("a")]),
        }
        found = find_stuck(states, 100.0, 1.0, root_pid=10)
        assert found is not None and found.verdict == "deadlock"
        assert found.pid == 11 and found.links == ((10, 1), (11, 1))

    def test_short_or_timed_waits_are_not_stuck(self) -> None:
        """A wait younger than the timeout, or one with a timeout of its own, is no finding."""
        from conctools.children.mpstuck import find_stuck

        young = {
            10: _state(10, holds=[_hold("a")], waits=[_wait("b", since=99.5)]),
            11: _state(11, holds=[_hold("b")], waits=[_wait("a")]),
        }
        assert find_stuck(young, 100.0, 1.0, root_pid=10) is None
        timed = {
            10: _state(10, holds=[_hold("a")], waits=[_wait("b", timeout=5.0)]),
            11: _state(11, holds=[_hold("b")], waits=[_wait("a")]),
        }
        assert find_stuck(timed, 100.0, 1.0, root_pid=10) is None

    def test_running_holder_is_not_stuck(self) -> None:
        """The holder runs (it waits on nothing shared): no finding, whatever it does."""
        from conctools.children.mpstuck import find_stuck

        states = {10: _state(10, waits=[_wait("a")]), 11: _state(11, holds=[_hold("a")], has=["a"])}
        assert find_stuck(states, 100.0, 1.0, root_pid=10) is None

    def test_dead_holder(self) -> None:
        """The holder's process is gone: 'dead', naming it, with how it ended."""
        from conctools.children.mpstuck import find_stuck

        states = {10: _state(10, waits=[_wait("a")]), 11: _state(11, alive=False, holds=[_hold("a")], has=["a"])}
        found = find_stuck(states, 100.0, 1.0, root_pid=10)
        assert found is not None and (found.verdict, found.pid) == ("dead", 11)
        assert found.reason.startswith("was killed by SIGKILL (signal 9) while holding multiprocessing.Lock 'a'")

    def test_event_a_live_process_could_set(self) -> None:
        """Another process that has the Event still runs: it may set it, no finding."""
        from conctools.children.mpstuck import find_stuck

        states = {10: _state(10, waits=[_wait("e", sync="signal")], has=["e"]), 11: _state(11, has=["e"])}
        assert find_stuck(states, 100.0, 1.0, root_pid=10) is None


class TestNames:
    """A shared primitive is named by the program line that made it, like conctools' other locks."""

    def test_creation_sites(self) -> None:
        """Two locks on one line: 'x.py:N' and 'x.py:N #2'; an Event's SemLocks are one object, named once."""
        import multiprocessing as mp
        import os

        from conctools.children import mpsync

        here = os.path.basename(__file__)
        was_installed = mpsync.installed()
        mpsync.install()
        try:
            ctx = mp.get_context("fork")
            line = sys._getframe().f_lineno + 1
            a, b, e = ctx.Lock(), ctx.Lock(), ctx.Event()
            e2 = ctx.Event()
            assert [mpsync._site_of(x) for x in (a, b, e, e2)] == [
                f"{here}:{line}",
                f"{here}:{line} #2",
                f"{here}:{line} #3",
                f"{here}:{line + 1}",
            ]
            assert mpsync.semlock_key(a) != mpsync.semlock_key(b)
        finally:
            if not was_installed:
                mpsync.uninstall()
