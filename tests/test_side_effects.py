"""Observing a program must not change what it does (issue 22).

Between a traced primitive's acquire and the caller's next statement, conctools does no work a
plain run would not do: no allocation that can start a garbage collection (whose finalizers may
call back into the very code that holds the lock), no Python-level call. These tests run real
programs twice, plain and traced, and compare what the programs themselves observed.

The programs run in subprocesses: each needs a fresh interpreter (the C or the pure-Python path,
aggressive GC thresholds, a first import of ``multiprocessing.resource_tracker`` under tracing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conctools import locks
from tests.conftest import ROOT

# A program shaped like multiprocessing.resource_tracker: an RLock whose first statement inside the
# section checks _recursion_count(), and garbage in reference cycles whose finalizers call back
# into it. A plain run never re-enters (nothing between the acquire and the check allocates); a
# traced run must not either. The section is entered with acquire() (on 3.12+ a `with` statement
# itself allocates bound methods right before the acquire, so a plain run re-enters there too),
# alone, under outer locks of classes never seen before (new lock-order edges), and while another
# thread competes for the lock (contended acquisitions).
TRACKER = r"""
import gc, sys, threading

mode, order = sys.argv[1], sys.argv[2] == "order"
contended = sys.argv[3] == "contended"


class Tracker:
    def __init__(self):
        self._lock = threading.RLock()
        self.reentered = 0
        self.calls = 0

    def ensure(self):
        self._lock.acquire()
        try:
            if self._lock._recursion_count() > 1:
                self.reentered += 1
                return
            self.calls += 1
        finally:
            self._lock.release()

    def ensure_with(self):  # the stdlib's own shape; only 3.11 keeps it allocation-free when plain
        with self._lock:
            if self._lock._recursion_count() > 1:
                self.reentered += 1
                return
            self.calls += 1


def new_lock_class(i):
    # A lock created on a line of its own: a lock class never seen, so taking the tracker's lock
    # under it is a new lock-order edge.
    ns = {"threading": threading}
    exec(compile("\n" * i + "lock = threading.Lock()", f"<outer-{i}>", "exec"), ns)
    return ns["lock"]


def main():
    tracker = Tracker()

    class Resource:
        def __init__(self):
            self.cycle = self

        def __del__(self):
            tracker.ensure()

    stop = threading.Event()

    def competitor():  # allocates nothing itself: a plain run never collects garbage in its section
        lock = tracker._lock
        while not stop.is_set():
            lock.acquire()
            lock.release()

    rounds = 3000
    gc.collect()
    gc.set_threshold(1, 1, 1)
    for i in range(rounds):
        Resource()
        tracker.ensure()
        if sys.version_info < (3, 12):
            Resource()
            tracker.ensure_with()
        if i % 10 == 0:
            Resource()
            with new_lock_class(i // 10):
                tracker.ensure()
    gc.set_threshold(700, 10, 10)
    if not contended:
        gc.collect()
        print("reentered", tracker.reentered)
        return
    t = threading.Thread(target=competitor, name="competitor")
    t.start()
    # Contended acquisitions: thresholds still aggressive, not extreme (with two threads allocating,
    # a collection that one thread made due may run at any later eval-breaker check of the other).
    gc.set_threshold(50, 5, 5)
    for i in range(rounds):
        Resource()
        tracker.ensure()
    gc.set_threshold(700, 10, 10)
    stop.set()
    t.join()
    gc.collect()
    print("reentered", tracker.reentered)


if mode == "traced":
    from conctools.locks import trace_locks
    from conctools.recorder import use_recorder

    with use_recorder(), trace_locks(lock_order=order):
        main()
else:
    main()
"""


def run_python(
    path: Path, *args: str, pure: bool = False, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("CONCTOOLS_PURE_PYTHON", None)
    if pure:
        full_env["CONCTOOLS_PURE_PYTHON"] = "1"
    full_env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, str(path), *args],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


PATHS = [
    pytest.param(False, id="c", marks=pytest.mark.skipif(not locks.SPEEDUPS, reason="the C fast path is not built")),
    pytest.param(True, id="pure-python"),
]


class TestCriticalSectionsStayClean:
    """A finalizer that calls back into a lock's owner sees the same world traced and untraced."""

    @pytest.mark.parametrize("pure", PATHS)
    @pytest.mark.parametrize("order", ["order", "no-order"])
    @pytest.mark.parametrize("phase", ["alone", "contended"])
    def test_resource_tracker_shape_never_sees_itself_reentered(
        self, tmp_path: Path, pure: bool, order: str, phase: str
    ) -> None:
        """Aggressive GC thresholds, garbage with finalizers, new lock-order edges, contention: no re-entry."""
        path = tmp_path / "tracker.py"
        path.write_text(TRACKER, encoding="utf-8")
        plain = run_python(path, "plain", order, phase)
        traced = run_python(path, "traced", order, phase, pure=pure)
        assert plain.returncode == 0, plain.stderr
        assert traced.returncode == 0, traced.stderr
        assert plain.stdout.strip() == "reentered 0"
        assert traced.stdout.strip() == plain.stdout.strip(), traced.stderr[-2000:]
        assert "Exception ignored" not in traced.stderr, traced.stderr[-2000:]


# A contended wait's bookkeeping runs with the collector off on 3.12+ (so that it makes no collection
# due): the collector must come out of it as the program left it, enabled or disabled.
COLLECTOR = r"""
import gc, sys, threading, time
from conctools import locks
from conctools.locks import trace_locks
from conctools.recorder import use_recorder

with use_recorder(), trace_locks():
    for kind in (threading.Lock, threading.RLock):
        for enabled in (True, False):
            lock = kind()
            (gc.enable if enabled else gc.disable)()
            held = threading.Event()

            def holder():
                with lock:
                    held.set()
                    deadline = time.monotonic() + 10  # a bound, not a timing assumption
                    while lock not in list(locks._waiting.values()) and time.monotonic() < deadline:
                        time.sleep(0.001)

            t = threading.Thread(target=holder)
            t.start()
            held.wait(10)
            lock.acquire()  # blocks until the holder has seen this wait begin
            after = gc.isenabled()
            lock.release()
            t.join()
            locks.flush_waits()  # (a wait's statistics are recorded after it, outside the section)
            print(kind.__name__, enabled, after, lock._ct_stats.contentions)
    gc.enable()
"""


class TestCollectorState:
    """A contended wait leaves the garbage collector as the program set it."""

    @pytest.mark.parametrize("pure", PATHS)
    def test_contended_wait_keeps_the_collector_enabled_or_disabled(self, tmp_path: Path, pure: bool) -> None:
        """Enabled stays enabled, disabled stays disabled, after a wait that really contended."""
        path = tmp_path / "collector.py"
        path.write_text(COLLECTOR, encoding="utf-8")
        proc = run_python(path, pure=pure)
        assert proc.returncode == 0, proc.stderr
        rows = [line.split() for line in proc.stdout.splitlines()]
        assert [row[:3] for row in rows] == [
            ["Lock", "True", "True"],
            ["Lock", "False", "False"],
            ["RLock", "True", "True"],
            ["RLock", "False", "False"],
        ]
        assert all(int(row[3]) >= 1 for row in rows), rows  # each lock was contended


# The stdlib's own process pools and queues, in every start method, with garbage semaphores in
# reference cycles and lock-order edges created while the resource tracker's lock is taken: a plain
# run prints no warning; neither may a traced one (-W error turns each into "Exception ignored").
POOLS = r"""
import gc, multiprocessing as mp, sys, threading
from concurrent.futures import ProcessPoolExecutor


def square(x):
    return x * x


def new_lock_class(i):
    ns = {"threading": threading}
    exec(compile("\n" * i + "lock = threading.Lock()", f"<outer-{i}>", "exec"), ns)
    return ns["lock"]


def main():
    ctx = mp.get_context(sys.argv[1])
    gc.set_threshold(100, 1, 1)
    for i in range(40):
        box = [ctx.Lock()]
        box.append(box)
        del box
        with new_lock_class(i):
            q = ctx.Queue()
            q.close()
            q.join_thread()
    gc.set_threshold(700, 10, 10)
    with ctx.Pool(2) as pool:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert list(ex.map(square, range(10))) == [x * x for x in range(10)]
    print("done")


if __name__ == "__main__":
    main()
"""

START_METHODS = ["fork", "spawn", "forkserver"]


def warnings_in(stderr: str) -> list[str]:
    """The lines of a run's stderr that report a warning or an ignored exception."""
    return [line for line in stderr.splitlines() if "Warning" in line or "Exception ignored" in line]


@pytest.mark.slow
class TestStdlibPools:
    """multiprocessing pools and ProcessPoolExecutor: no warning a plain run does not print."""

    @pytest.mark.parametrize("method", START_METHODS)
    def test_conctools_run_adds_no_warning(self, tmp_path: Path, method: str) -> None:
        """`conctools run` with warnings as errors, against `python -W error`."""
        path = tmp_path / "pools.py"
        path.write_text(POOLS, encoding="utf-8")
        plain = run_python(path, method, env={"PYTHONWARNINGS": "error"})
        assert plain.returncode == 0 and plain.stdout.strip() == "done", plain.stderr
        traced = subprocess.run(
            [sys.executable, "-m", "conctools", "run", "--no-report", str(path), method],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "PYTHONWARNINGS": "error", "PYTHONPATH": str(ROOT)},
        )
        assert traced.returncode == 0, traced.stderr[-3000:]
        assert traced.stdout.strip() == "done"
        assert warnings_in(traced.stderr) == warnings_in(plain.stderr) == [], traced.stderr[-3000:]

    @pytest.mark.parametrize("method", START_METHODS)
    def test_pytest_conctools_adds_no_warning(self, tmp_path: Path, method: str) -> None:
        """The same program as a test, first importing the resource tracker inside the test, under
        `pytest --conctools -W error` against plain `pytest -W error`."""
        (tmp_path / "pools.py").write_text(POOLS, encoding="utf-8")
        (tmp_path / "pytest.ini").write_text(
            "[pytest]\nasyncio_default_fixture_loop_scope = function\n", encoding="utf-8"
        )
        (tmp_path / "test_pools.py").write_text(
            textwrap.dedent(
                f"""
                import sys
                import pools

                def test_pools():
                    sys.argv = ["pools.py", {method!r}]
                    pools.main()
                """
            ),
            encoding="utf-8",
        )
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:locust"]
        base += ["-W", "error", "test_pools.py"]
        env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
        results = []
        for extra in ([], ["--conctools"]):
            proc = subprocess.run([*base, *extra], cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
            results.append(warnings_in(proc.stdout + proc.stderr))
        assert results[1] == results[0] == [], results
