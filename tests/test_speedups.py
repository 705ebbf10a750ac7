"""The C fast path of Lock/RLock (conctools._speedups) and the pure-Python one behind it.

The conformance suites (test_conformance.py) and the lock tests run against whichever path this
interpreter uses (the C one wherever it builds); the pure-Python path gets its own run here, in
a subprocess started with ``CONCTOOLS_PURE_PYTHON=1``. The rest checks what is specific to C:
the build itself, argument forwarding, garbage collection of the C fields, the owner and
held-stack caches across threads, and that a bookkeeping failure never reaches the caller.
"""

from __future__ import annotations

import gc
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import threading
import weakref
from typing import Any

import pytest

import conctools
from conctools import lockorder, locks
from conctools.events import LockOrderEvent
from conctools.recorder import Recorder
from tests.conftest import ROOT

CAN_BUILD = (
    platform.python_implementation() == "CPython"
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
    and any(shutil.which(cc) for cc in ("cc", "gcc", "clang"))
    and not os.environ.get("CONCTOOLS_PURE_PYTHON")
)
SUITES = ("tests/test_conformance.py", "tests/test_locks.py", "tests/test_lockorder.py", "tests/test_aio_locks.py")


def in_thread(fn: Any, name: str = "worker") -> None:
    t = threading.Thread(target=fn, name=name)
    t.start()
    t.join(10)
    assert not t.is_alive()


class TestBuild:
    @pytest.mark.skipif(
        not CAN_BUILD,
        reason="pure Python expected here (no C compiler, not CPython with a GIL, or CONCTOOLS_PURE_PYTHON)",
    )
    def test_the_extension_was_built_and_is_in_use(self) -> None:
        """Where a compiler exists the install builds the extension (a silent fallback would hide a broken build)."""
        assert locks.SPEEDUPS
        assert type(vars(locks.Lock)["__enter__"]).__name__ == "method_descriptor"
        assert type(vars(locks.RLock)["__exit__"]).__name__ == "method_descriptor"

    @pytest.mark.slow
    @pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the pure-Python path is version-independent: run once")
    def test_pure_python_path_passes_the_same_suites(self) -> None:
        """CONCTOOLS_PURE_PYTHON=1 switches to the Python fast path; CPython's lock_tests and ours pass on it."""
        env = {**os.environ, "CONCTOOLS_PURE_PYTHON": "1", "CONCTOOLS_CONFORMANCE_313": "0"}
        probe = subprocess.run(
            [sys.executable, "-c", "import conctools.locks as l; print(l.SPEEDUPS)"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.stdout.strip() == "False", probe.stderr
        selection = " or ".join(
            (
                "TracedLockTests",
                "TracedRLockTests",
                "OrderedLockTests",
                "OrderedRLockTests",
                "TimedLockTests",
                "TimedRLockTests",
                "OrderedConditionTests",
                "TracedConditionTests",
                "TestLockContention",
                "TestRLock",
                "TestStress",
                "TestHolderIdentity",
                "TestEveryWaitCounts",
                "TestInversions",  # (lock order's runs and graph: dicts and lists on this path)
            )
        )
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUITES, "-k", selection],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert " passed" in proc.stdout


class TestSemantics:
    @pytest.mark.parametrize("kind", ["Lock", "RLock"])
    def test_acquire_arguments_behave_like_the_stdlib(self, kind: str) -> None:
        """Every argument form of acquire(): same result or same exception type as threading's lock."""
        forms: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            ((), {}),
            ((True,), {}),
            ((False,), {}),
            ((), {"blocking": False}),
            ((True, 0.01), {}),
            ((), {"timeout": 0}),
            ((), {"timeout": -1}),
            ((), {"timeout": -2}),
            ((False, 1), {}),
            ((True, "x"), {}),
            ((1, 2, 3), {}),
            ((), {"bogus": 1}),
        ]
        for args, kwargs in forms:
            outcomes = []
            for lock in (getattr(threading, kind)(), getattr(conctools, kind)()):
                try:
                    got = lock.acquire(*args, **kwargs)
                    outcomes.append(("ok", got, lock._is_owned() if kind == "RLock" else lock.locked()))
                    if got:
                        lock.release()
                except Exception as exc:
                    outcomes.append(("raised", type(exc), None))
            assert outcomes[0] == outcomes[1], (args, kwargs, outcomes)

    def test_release_unlocked_raises_and_exit_propagates_it(self) -> None:
        lock = conctools.Lock()
        with pytest.raises(RuntimeError):
            lock.release()
        rlock = conctools.RLock()
        with pytest.raises(RuntimeError):
            rlock.release()

    def test_owner_follows_the_acquiring_thread(self) -> None:
        """The cached owner id is the current holder's, whichever thread took the lock last."""
        lock = conctools.Lock()
        seen: dict[str, int | None] = {}

        def take(name: str) -> None:
            with lock:
                seen[name] = lock._owner
                seen[name + "-ident"] = threading.get_ident()

        in_thread(lambda: take("a"))
        in_thread(lambda: take("b"))
        take("main")
        for who in ("a", "b", "main"):
            assert seen[who] == seen[who + "-ident"]
        lock._owner = None
        with lock:
            assert lock._owner == threading.get_ident()

    def test_a_holder_that_exited_is_named_as_such(self) -> None:
        """A lock left locked by a finished thread: the registry shows that exited holder by its own
        name (never a live thread that reused its id), on both paths."""
        lock = conctools.Lock()
        in_thread(lock.acquire, "leaky")
        (holder,) = lock._conctools_state().holders
        assert (holder.thread_id, holder.thread_name, holder.exited) == (0, "leaky", True)
        assert holder.thread_key != 0
        lock.release()
        with lock:  # held by a live thread: named by it
            (holder,) = lock._conctools_state().holders
            assert holder.thread_id == threading.get_ident()
            assert holder.thread_name == threading.current_thread().name

    @pytest.mark.parametrize("kind", ["Lock", "RLock"])
    def test_a_lock_in_a_reference_cycle_is_collected(self, kind: str) -> None:
        """The C fields are visited by the garbage collector: a lock whose holder-task field points back is freed."""
        lock = getattr(conctools, kind)()
        holder = [lock]
        lock._otask = holder  # lock -> list -> lock, through a C field
        ref = weakref.ref(lock)
        del lock, holder
        gc.collect()
        assert ref() is None

    def test_counts_are_exact_on_both_paths_under_threads(self) -> None:
        lock = conctools.Lock()
        rlock = conctools.RLock()

        def work() -> None:
            for _ in range(5_000):
                with lock:
                    pass
                with rlock, rlock:
                    pass

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert lock._ct_n == 20_000
        assert rlock._ct_n == 40_000


class TestCreation:
    @pytest.mark.parametrize(
        "make", ["Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "Event", "Barrier"]
    )
    def test_repeated_creations_on_one_line_are_each_registered(self, make: str, recorder: Recorder) -> None:
        """The first creation at a site fills the cache; the next ones (the cached path) get the same
        name and class, their own serial, no waiters table until a first wait, and are in the
        registry like the first."""
        from conctools import registry

        factory = getattr(conctools, make)
        args = (2,) if make == "Barrier" else ()
        made = []
        for _ in range(4):
            made.append(factory(*args))
        line = sys._getframe().f_lineno - 1
        named = factory(*args, name=f"named-{make}")
        site = f"test_speedups.py:{line}"
        assert {p._ct_name for p in made} == {site} and {p._ct_created for p in made} == {site}
        assert len({p._ct_serial for p in made}) == 4 and all(p._ct_waiters is None for p in made)
        assert all(p._ct_n == 0 and p._ct_hold is None for p in made)
        assert len({id(p._ct_stats) for p in made}) == 1
        assert named._ct_name == f"named-{make}" and named._ct_created.startswith("test_speedups.py:")
        live = {id(p) for p in registry.live()}
        assert all(id(p) in live for p in [*made, named])

    def test_locks_made_inside_the_stdlib_are_cached_per_user_site(self, recorder: Recorder) -> None:
        """A Condition's own RLock, made in conctools/threading code, is named after the user line each time."""
        conds = []
        for _ in range(3):
            conds.append(conctools.Condition())
        line = sys._getframe().f_lineno - 1
        other = conctools.Condition()
        other_line = sys._getframe().f_lineno - 1
        assert {c._lock._ct_name for c in conds} == {f"test_speedups.py:{line}"}
        assert other._lock._ct_name == f"test_speedups.py:{other_line}"


class TestHoldTimes:
    @pytest.mark.skipif(not locks.SPEEDUPS, reason="the C fast path is not in use here")
    def test_c_buckets_match_the_recorders(self) -> None:
        """The C path fills Histogram buckets itself: the same bucket as recorder.bucket_of for every value."""
        import random

        from conctools import _speedups  # type: ignore[attr-defined]
        from conctools.recorder import bucket_of

        rng = random.Random(7)
        values = [*range(5000), *(rng.randrange(1 << 62) for _ in range(20_000))]
        values += [(1 << k) + d for k in range(1, 62) for d in (-1, 0, 1)]
        assert [v for v in values if _speedups.bucket_of(v) != bucket_of(v)] == []

    def test_recorder_hist_add_fills_as_histogram_add(self) -> None:
        """recorder.hist_add (the hot paths' add: the C one here) leaves a histogram exactly as Histogram.add does."""
        from conctools import recorder as recorder_module
        from conctools.recorder import Histogram

        if locks.SPEEDUPS:
            assert recorder_module.hist_add is not Histogram.add
        values = [0, 1, 7, 8, 9, 1000, 123_456_789, 1 << 40, 5, 1000]
        ours, theirs = Histogram(), Histogram()
        for v in values:
            recorder_module.hist_add(ours, v)
            theirs.add(v)
        assert (ours.buckets, ours.count, ours.total_ns, ours.max_ns) == (
            theirs.buckets,
            theirs.count,
            theirs.total_ns,
            theirs.max_ns,
        )

    @pytest.mark.parametrize("kind", ["Lock", "RLock"])
    def test_one_hold_in_hold_sample_is_timed(self, kind: str) -> None:
        """After its first contention a lock times 1 in HOLD_SAMPLE uncontended holds, into its histogram."""
        from conctools.recorder import Histogram

        lock = locks._TimedLock() if kind == "Lock" else locks._TimedRLock()
        lock._ct_hold = hold = Histogram()
        for _ in range(10 * locks.HOLD_SAMPLE):
            with lock:
                sum(range(200))
        assert hold.count == 10
        assert hold.total_ns >= hold.max_ns > 0
        assert sum(hold.buckets.values()) == 10


class TestObservationNeverBreaks:
    def test_a_failing_hold_histogram_neither_raises_nor_keeps_the_lock(self) -> None:
        """A timed lock whose bookkeeping fails still acquires and releases, silently."""

        class Broken:
            def add(self, value: int) -> None:
                raise ValueError("bookkeeping failed")

        for lock in (locks._TimedLock(), locks._TimedRLock()):
            lock._ct_hold = Broken()
            for _ in range(3 * locks.HOLD_SAMPLE):  # some of these holds are timed
                with lock:
                    pass
            assert lock.acquire(False)
            lock.release()

    def test_a_corrupt_held_stack_does_not_break_ordered_locks(self, ordered: Recorder) -> None:
        lock = conctools.Lock()
        rlock = conctools.RLock()
        for prim in (lock, rlock):
            with prim:
                prim._ct_held = "not a list"
            with prim:
                pass
            assert prim.acquire(False)
            prim.release()


@pytest.mark.skipif(not locks.SPEEDUPS, reason="the C fast path is not in use here")
class TestInterrupts:
    def test_keyboard_interrupt_during_bookkeeping_is_raised_not_lost(self, ordered: Recorder) -> None:
        """Ctrl-C landing while the C path runs Python bookkeeping (here: the order check) reaches the
        program right after the lock is taken, inside the with-block, so both locks are released."""
        from conctools import _speedups  # type: ignore[attr-defined]

        def interrupted(held: list[Any], entry: Any) -> None:
            raise KeyboardInterrupt

        outer = conctools.Lock(name="outer")
        inner = conctools.Lock(name="inner")
        _speedups.setup(**{**locks._speedups_setup, "check": interrupted})
        entered = False
        try:
            with pytest.raises(KeyboardInterrupt):
                with outer, inner:
                    entered = True
                    for _ in range(100_000):  # the deferred interrupt arrives at the next eval-loop check
                        pass
        finally:
            _speedups.setup(**locks._speedups_setup)
        assert entered
        assert not outer.locked() and not inner.locked()


@pytest.mark.skipif(not locks.SPEEDUPS, reason="the C fast path is not in use here")
class TestRunIndex:
    """The compact serial -> int table of lock order (a run's index of its locks, the graph's out-edge counts)
    answers as the dict it replaces, through every insert, update and removal."""

    def test_agrees_with_a_dict_under_random_operations(self, ordered: Recorder) -> None:
        import random

        speedups = locks._speedups
        assert speedups is not None
        table, model = speedups.RunIndex(), {}
        rnd = random.Random(12)
        for _ in range(60_000):
            # serials of one class often go up in steps of 2 or 4: those collide in a plain modulus table
            key = rnd.randrange(0, 3_000) * rnd.choice((1, 2, 4))
            op = rnd.random()
            if op < 0.5:
                table[key] = model[key] = rnd.randrange(0, 1_000)
            elif op < 0.8:
                if key in model:
                    del model[key], table[key]
                else:
                    with pytest.raises(KeyError):
                        del table[key]
            else:
                assert table.get(key) == model.get(key) and (key in table) == (key in model)
        assert len(table) == len(model) and all(table[k] == v for k, v in model.items())
        a = conctools.Lock()
        with a:
            ref = lockorder.held_stack()[-1][0]  # (a LockRef keys as its serial)
        table[ref] = 5
        assert table[a._ct_serial] == 5 and ref in table  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            table["x"] = 1
        assert "x" not in table and table.get("x", 0) == 0
        table.clear()
        assert len(table) == 0 and ref not in table
        assert type(lockorder._inst_has_out) is speedups.RunIndex


class TestLockOrderAcrossThreads:
    def test_held_stacks_stay_per_thread_when_threads_interleave(self, ordered: Recorder) -> None:
        """Thread A holds X while B takes Y alone, then A takes Y: the edge is X->Y only, nothing is reported."""
        x = conctools.Lock(name="x")
        y = conctools.Lock(name="y")
        b_done = threading.Event()

        def b() -> None:
            with y:
                pass
            b_done.set()

        def a() -> None:
            with x:
                t = threading.Thread(target=b, name="b")
                t.start()
                assert b_done.wait(10)
                t.join(10)
                with y:
                    pass

        in_thread(a, "a")
        assert lockorder.graph_size() == 1
        assert not ordered.snapshot().of_kind(LockOrderEvent)
        assert lockorder.held_stack() == []

    def test_known_edges_skip_the_check_but_new_ones_are_still_found(self, ordered: Recorder) -> None:
        """After many X->Y nestings (the C path skips known edges) a first Y->X is still reported."""
        x = conctools.Lock(name="x")
        y = conctools.Lock(name="y")
        for _ in range(100):
            with x, y:
                pass
        assert not ordered.snapshot().of_kind(LockOrderEvent)

        def inverted() -> None:
            with y, x:
                pass

        in_thread(inverted, "inverted")
        (event,) = ordered.snapshot().of_kind(LockOrderEvent)
        assert set(event.cycle) == {"x", "y"}

    def test_site_cache_tracks_lines(self, ordered: Recorder) -> None:
        """Taking one lock on two lines under another: each edge names its own line."""
        outer = conctools.Lock(name="outer")
        inner = conctools.Lock(name="inner")
        other = conctools.Lock(name="other")
        with outer:
            with inner:
                pass
            line_inner = sys._getframe().f_lineno - 2
            with other:
                pass
            line_other = sys._getframe().f_lineno - 2
        edges = {(e.from_lock, e.to_lock): e for e in lockorder._edges.values()}
        assert edges[("outer", "inner")].to_site.endswith(f":{line_inner}")
        assert edges[("outer", "other")].to_site.endswith(f":{line_other}")


def python_calls(fn: Any) -> list[str]:
    """The Python functions that ``fn()`` runs (C functions are not counted)."""
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.skipif(not locks.SPEEDUPS, reason="the C fast path is not in use here")
class TestSemaphoreCPath:
    def test_a_submit_and_a_worker_release_run_no_python_code_and_count_exactly(self) -> None:
        """The idle-semaphore pattern of ThreadPoolExecutor (a poll in the submitter, a release in a
        worker) runs in C, counts every acquisition and keeps the holders right."""
        from conctools.registry import state_of

        sem = conctools.Semaphore(0, name="idle")
        taken: list[bool] = []

        def cycle() -> None:
            in_thread(sem.release)  # a worker goes idle
            taken.append(sem.acquire(timeout=0))  # the next submit() takes it back

        def poll_cycle() -> None:
            sem.release()
            assert sem.acquire(timeout=0)
            assert not sem.acquire(timeout=0)  # empty: a poll, not a wait

        poll_cycle()  # (this thread's identity is looked up once: Thread.name)
        assert python_calls(poll_cycle) == ["poll_cycle"]
        for _ in range(3):
            cycle()  # the worker holds none: it drops the oldest record, the main thread's
        assert taken == [True, True, True]
        assert sem._ct_n == 5 and sem._value == 0
        assert [h.thread_name for h in state_of(sem).holders] == [threading.current_thread().name]

    def test_a_release_by_another_thread_forgets_the_oldest_holder(self) -> None:
        """A permit released by a thread that holds none drops the oldest holder record, as the Python
        path's _forget_holders does; its own permit is dropped first by the holder."""
        from conctools.registry import state_of

        sem = conctools.BoundedSemaphore(3)
        sem.acquire()
        in_thread(sem.acquire, name="second")
        sem.acquire()
        assert [h.thread_name for h in state_of(sem).holders] == ["MainThread", "second", "MainThread"]
        in_thread(sem.release, name="other")  # holds none: the oldest goes
        assert [h.thread_name for h in state_of(sem).holders] == ["second", "MainThread"]
        sem.release()  # the main thread's own, newest first
        assert [h.thread_name for h in state_of(sem).holders] == ["second"]
        with pytest.raises(ValueError, match="released too many times"):
            sem.release(3)
        assert sem._value == 2 and sem._ct_n == 3

    def test_waits_and_wakeups_still_go_through_the_python_methods(self) -> None:
        """A semaphore that must be waited for is counted as a contended wait, and the release that
        wakes the waiter hands it the permit."""
        sem = conctools.Semaphore(0, name="c-path-wait")
        waiting = threading.Event()
        got: list[bool] = []

        def waiter() -> None:
            waiting.set()
            got.append(sem.acquire(timeout=10))

        t = threading.Thread(target=waiter)
        t.start()
        waiting.wait(10)
        while not sem._cond._waiters:  # the waiter is inside the condition's wait
            t.join(0.001)
        sem.release()
        t.join(10)
        assert got == [True] and sem._value == 0 and sem._ct_n == 1
        row = next(r for r in locks.lock_table() if r["name"] == "c-path-wait")
        assert row["acquisitions"] == 1 and row["contentions"] == 1
