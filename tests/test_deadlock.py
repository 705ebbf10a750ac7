"""Deadlock detection: the wait-for graph, the cycle search, the watchdog and ``conctools run``.

The graph tests feed registry records (plain data) to the pure functions; the watchdog tests
deadlock real threads and real tasks on traced primitives and then break the deadlock (a
plain Lock may be released by any thread; tasks are cancelled) so that every test ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import conctools
from conctools import deadlock as dl
from conctools.events import DeadlockEvent, Participant, event_from_dict
from conctools.recorder import Recorder, Snapshot
from conctools.registry import Party, PrimitiveState
from conctools.reporting import render_text
from conctools.reporting.deadlock_text import format_deadlock

SCRIPTS = Path(__file__).parent / "scripts"
S = 1_000_000_000  # ns per second
NOW = 100 * S


# -- registry records ------------------------------------------------------------------------


def party(tid: int, site: str, *, task: int | None = None, since_s: float = 0.0, timeout: float | None = None) -> Party:
    return Party(
        thread_id=tid,
        thread_name=f"T{tid}",
        task_name=f"task{task}" if task is not None else None,
        task_id=task,
        site=site,
        since_ns=int(since_s * S),
        timeout_s=timeout,
    )


def prim(
    pid: int, name: str, holders: tuple[Party, ...], waiters: tuple[Party, ...], kind: str = "Lock"
) -> PrimitiveState:
    return PrimitiveState(
        prim_id=pid, name=name, kind=kind, created_at=f"app.py:{pid}", holders=holders, waiters=waiters
    )


def abba(**waiter_kw: float | None) -> list[PrimitiveState]:
    return [
        prim(1, "a", (party(1, "app.py:10"),), (party(2, "app.py:21", **waiter_kw),)),  # type: ignore[arg-type]
        prim(2, "b", (party(2, "app.py:20"),), (party(1, "app.py:11", **waiter_kw),)),  # type: ignore[arg-type]
    ]


class TestWaitGraph:
    """build_wait_graph() / find_deadlocks(): pure functions of registry records."""

    def test_abba_is_one_cycle(self) -> None:
        """Two threads, each holding the lock the other waits for: one cycle of two edges."""
        graph = dl.build_wait_graph(abba())
        cycles = dl.find_deadlocks(graph, now_ns=NOW, min_wait_s=1.0)
        assert len(cycles) == 1
        assert {(e.waiter.thread_id, e.holder.thread_id) for e in cycles[0]} == {(1, 2), (2, 1)}

    def test_participants_say_who_what_where(self) -> None:
        """Each participant: the lock it waits for, its holder, where it waits, what it holds and where."""
        graph = dl.build_wait_graph(abba())
        cycle = dl.find_deadlocks(graph, now_ns=NOW)[0]
        parts = {p.thread_name: p for p in dl.participants_of(cycle, graph, {}, now_ns=NOW)}
        t1 = parts["T1"]
        assert t1.waits_for == "Lock 'b'"
        assert t1.waits_for_id == 2
        assert t1.held_by == "thread 'T2'"
        assert t1.wait_site == "app.py:11"
        assert t1.holds == ("Lock 'a'",)
        assert t1.holds_sites == ("app.py:10",)
        assert t1.wait_s == pytest.approx(100.0)

    def test_young_waits_are_not_yet_a_deadlock(self) -> None:
        """A cycle whose waits are younger than the timeout is not reported yet."""
        graph = dl.build_wait_graph(abba(since_s=99.5))
        assert dl.find_deadlocks(graph, now_ns=NOW, min_wait_s=1.0) == []
        assert len(dl.find_deadlocks(graph, now_ns=NOW, min_wait_s=0.4)) == 1

    def test_waits_with_a_timeout_are_not_a_deadlock(self) -> None:
        """A wait with a timeout will end by itself: no deadlock."""
        graph = dl.build_wait_graph(abba(timeout=5.0))
        assert dl.find_deadlocks(graph, now_ns=NOW) == []

    def test_rlock_reentry_is_not_an_edge(self) -> None:
        """The owner of an RLock listed as its waiter (re-entry in progress) is no self-deadlock."""
        r = prim(1, "r", (party(1, "app.py:1"),), (party(1, "app.py:2"),), kind="RLock")
        graph = dl.build_wait_graph([r])
        assert graph.edges == {}
        assert dl.find_deadlocks(graph, now_ns=NOW) == []

    def test_lock_self_deadlock(self) -> None:
        """A thread acquiring a plain Lock it already holds waits for itself forever."""
        lock = prim(1, "l", (party(1, "app.py:1"),), (party(1, "app.py:2"),))
        cycles = dl.find_deadlocks(dl.build_wait_graph([lock]), now_ns=NOW)
        assert len(cycles) == 1
        assert len(cycles[0]) == 1

    def test_semaphore_with_a_free_holder_is_not_stuck(self) -> None:
        """A waiter on a semaphore is released if ANY holder releases: one running holder is enough."""
        sem = prim(1, "s", (party(2, "app.py:5"), party(3, "app.py:6")), (party(1, "app.py:7"),), kind="Semaphore")
        lock = prim(2, "l", (party(1, "app.py:8"),), (party(2, "app.py:9"),))
        graph = dl.build_wait_graph([sem, lock])
        assert len(graph.edges[("thread", 1)]) == 2  # one edge per holder
        assert dl.find_deadlocks(graph, now_ns=NOW) == []

    def test_semaphore_with_every_holder_stuck(self) -> None:
        """When every holder is stuck too, each cycle through the semaphore is reported."""
        sem = prim(1, "s", (party(2, "app.py:5"), party(3, "app.py:6")), (party(1, "app.py:7"),), kind="Semaphore")
        lock = prim(2, "l", (party(1, "app.py:8"),), (party(2, "app.py:9"), party(3, "app.py:10")))
        cycles = dl.find_deadlocks(dl.build_wait_graph([sem, lock]), now_ns=NOW)
        assert len(cycles) == 2

    def test_party_queued_behind_a_deadlock_is_stuck_but_not_in_the_cycle(self) -> None:
        """A third thread waiting on a deadlocked lock is stuck; the cycle still has two members."""
        records = abba()
        records[0] = prim(1, "a", (party(1, "app.py:10"),), (party(2, "app.py:21"), party(3, "app.py:30")))
        graph = dl.build_wait_graph(records)
        assert ("thread", 3) in dl.stuck_parties(graph, now_ns=NOW)
        cycles = dl.find_deadlocks(graph, now_ns=NOW)
        assert len(cycles) == 1
        assert len(cycles[0]) == 2

    def test_thread_and_task_in_one_graph(self) -> None:
        """A thread waits on a lock held by a task; the task (blocking its loop) waits on the thread's lock."""
        task = party(9, "app.py:40", task=77)
        records = [
            prim(1, "config", (task,), (party(1, "app.py:11"),)),
            prim(2, "stats", (party(1, "app.py:10"),), (party(9, "app.py:41", task=77),)),
        ]
        cycles = dl.find_deadlocks(dl.build_wait_graph(records), now_ns=NOW)
        assert len(cycles) == 1
        # The task blocks its thread in a threading wait: task and thread are one node.
        assert {e.waiter_key for e in cycles[0]} == {("thread", 1), ("thread", 9)}
        assert {e.waiter.task_name for e in cycles[0]} == {None, "task77"}

    def test_task_waits_for_its_blocked_loop_thread(self) -> None:
        """A suspended task holding a lock waits for its loop thread, blocked by another task's sync wait."""
        records = [
            prim(1, "a", (party(9, "app.py:50", task=1),), (party(2, "app.py:60"),)),  # thread 2 waits for task 1
            prim(2, "b", (party(2, "app.py:61"),), (party(9, "app.py:70", task=2),)),  # task 2 blocks thread 9
        ]
        graph = dl.build_wait_graph(records)
        loop_edges = [e for e in graph.edges[("task", 1)] if e.prim is None]
        assert [e.holder_key for e in loop_edges] == [("thread", 9)]
        cycles = dl.find_deadlocks(graph, now_ns=NOW)
        assert len(cycles) == 1
        assert len(cycles[0]) == 3
        parts = dl.participants_of(cycles[0], graph, {}, now_ns=NOW)
        assert any(p.waits_for == "its event loop thread 'T9'" for p in parts)

    def test_async_waits_do_not_block_the_loop_thread(self) -> None:
        """A task waiting on an asyncio lock leaves its loop free: no loop edge for its siblings."""
        records = [
            prim(1, "a", (party(9, "app.py:50", task=1),), (party(2, "app.py:60"),)),
            prim(2, "b", (party(2, "app.py:61"),), (party(9, "app.py:70", task=2),), kind="aio.Lock"),
        ]
        graph = dl.build_wait_graph(records)
        assert ("task", 1) not in graph.edges

    def test_cycle_key_is_rotation_free(self) -> None:
        """The same cycle found from either end has one key."""
        graph = dl.build_wait_graph(abba())
        cycle = dl.find_deadlocks(graph, now_ns=NOW)[0]
        assert dl.cycle_key(cycle) == dl.cycle_key(tuple(reversed(cycle)))


def sample_event() -> DeadlockEvent:
    graph = dl.build_wait_graph(abba())
    cycle = dl.find_deadlocks(graph, now_ns=NOW)[0]
    stacks = {e.waiter_key: (conctools.Frame("app.py", 11, "transfer", "with b:"),) for e in cycle}
    participants = dl.participants_of(cycle, graph, stacks, now_ns=NOW)
    return DeadlockEvent(ts_ns=NOW, thread_id=1, thread_name="T1", participants=participants)


class TestDeadlockReport:
    """The event round-trips through JSON and reads like jstack."""

    def test_json_round_trip(self) -> None:
        """event_from_dict(e.to_dict()) == e, participants and stacks included."""
        event = sample_event()
        assert event_from_dict(event.to_dict()) == event

    def test_text_shape(self) -> None:
        """Participants, their locks, holders and sites, then the stacks."""
        text = format_deadlock(sample_event())
        assert text.startswith("Found one Python-level deadlock:\n")
        assert "thread 'T1':\n  waiting for Lock 'b',\n  which is held by thread 'T2'" in text
        assert "holds Lock 'a', acquired at app.py:10" in text
        assert "Stacks of the threads and tasks listed above:" in text
        assert "at transfer (app.py:11)" in text

    def test_section_comes_first(self) -> None:
        """The deadlock section is in the report, right after the findings (which rank it first)."""
        rec = Recorder()
        rec.record(sample_event())
        text = render_text(rec.snapshot())
        body = text.split("=" * 78)[-1]
        findings, _, details = body.strip().partition("\n\n")
        assert findings.startswith("Findings (1, worst first)\n  1. [CRITICAL] Deadlock:"), findings
        assert details.lstrip().startswith("Found one Python-level deadlock:")
        assert "Found 1 deadlock." in text
        assert Snapshot.from_dict(rec.snapshot().to_dict()).of_kind(DeadlockEvent) == [sample_event()]

    def test_error_carries_its_data(self) -> None:
        """DeadlockError has the cycle and the event; its message names everyone."""
        event = sample_event()
        err = conctools.DeadlockError(event.participants, event)
        assert err.cycle == event.participants
        assert err.event is event
        assert "thread 'T1' waits for Lock 'b' held by thread 'T2'" in str(err)


# -- real threads and tasks --------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def release_quietly(lock: threading.Lock | conctools.Lock) -> None:
    try:
        lock.release()
    except RuntimeError:
        pass


@pytest.fixture
def found() -> Iterator[list[DeadlockEvent]]:
    yield []


@pytest.mark.timeout(60)
class TestWatchdogFindsDeadlocks:
    """Real deadlocks on traced primitives, found and reported once."""

    def test_abba_threads(self, recorder: Recorder, found: list[DeadlockEvent]) -> None:
        """Two threads, two conctools.Lock, opposite orders: one DeadlockEvent naming both."""
        a, b = conctools.Lock(name="accounts"), conctools.Lock(name="audit")
        both = threading.Barrier(2)

        def one(first: conctools.Lock, second: conctools.Lock) -> None:
            first.acquire()
            both.wait()
            with second:
                pass
            release_quietly(first)  # the test may have released it to break the deadlock

        t1 = threading.Thread(target=one, args=(a, b), name="transfer", daemon=True)
        t2 = threading.Thread(target=one, args=(b, a), name="audit", daemon=True)
        with dl.watch_deadlocks(timeout_s=0.3, on_deadlock=found.append) as wd:
            t1.start()
            t2.start()
            assert wait_until(lambda: bool(found))
            time.sleep(1.0)  # several more scans: still reported once
            a.release()  # break it: a plain Lock may be released by any thread
            t1.join(30)
            t2.join(30)
        assert not t1.is_alive() and not t2.is_alive()
        assert len(found) == 1 and wd.deadlocks == found
        parts = {p.thread_name: p for p in found[0].participants}
        assert set(parts) == {"transfer", "audit"}
        assert parts["transfer"].waits_for == "Lock 'audit'"
        assert parts["transfer"].held_by == "thread 'audit'"
        assert parts["transfer"].holds == ("Lock 'accounts'",)
        assert "test_deadlock.py" in parts["transfer"].wait_site
        assert any(f.function == "one" for f in parts["transfer"].stack)
        assert recorder.snapshot().of_kind(DeadlockEvent) == found

    def test_abba_tasks(self, found: list[DeadlockEvent]) -> None:
        """Two tasks, two conctools.aio.Lock, opposite orders: found; the tasks are then cancelled."""

        async def main() -> None:
            a, b = conctools.aio.Lock(name="cache"), conctools.aio.Lock(name="db")
            both = asyncio.Event()
            holding: list[int] = []

            async def one(first: conctools.aio.Lock, second: conctools.aio.Lock) -> None:
                async with first:
                    holding.append(1)
                    if len(holding) == 2:
                        both.set()
                    await both.wait()
                    async with second:
                        pass

            tasks = [
                asyncio.create_task(one(a, b), name="refresh-cache"),
                asyncio.create_task(one(b, a), name="write-db"),
            ]
            while not found:
                await asyncio.sleep(0.05)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with dl.watch_deadlocks(timeout_s=0.3, on_deadlock=found.append):
            asyncio.run(asyncio.wait_for(main(), 30))
        assert len(found) == 1
        parts = {p.task_name: p for p in found[0].participants}
        assert set(parts) == {"refresh-cache", "write-db"}
        assert parts["refresh-cache"].waits_for == "aio.Lock 'db'"
        assert parts["refresh-cache"].held_by.startswith("task 'write-db'")
        assert any(f.function == "one" for f in parts["refresh-cache"].stack)

    def test_thread_and_task(self, found: list[DeadlockEvent]) -> None:
        """A task holds a threading lock the thread wants and blocks its loop on the thread's lock."""
        config, stats = conctools.Lock(name="config"), conctools.Lock(name="stats")
        thread_holds, task_holds = threading.Event(), threading.Event()

        def reporter() -> None:
            task_holds.wait(30)
            stats.acquire()
            thread_holds.set()
            with config:
                pass
            release_quietly(stats)  # the test may have released it to break the deadlock

        async def reload() -> None:
            with config:
                task_holds.set()
                await asyncio.to_thread(thread_holds.wait, 30)
                with stats:
                    pass
            # the test released stats to break the deadlock; the thread then got config

        t = threading.Thread(target=reporter, name="reporter", daemon=True)

        def breaker(event: DeadlockEvent) -> None:
            found.append(event)
            stats.release()  # let the task go on; then the thread gets config

        with dl.watch_deadlocks(timeout_s=0.3, on_deadlock=breaker):
            t.start()

            async def main() -> None:
                await asyncio.wait_for(asyncio.create_task(reload(), name="reload-config"), 30)

            asyncio.run(main())
            t.join(30)
        assert len(found) == 1
        who = {(p.thread_name, p.task_name) for p in found[0].participants}
        assert ("reporter", None) in who
        assert any(task == "reload-config" for _, task in who)

    def test_semaphore_and_lock(self, found: list[DeadlockEvent]) -> None:
        """A thread holding the only permit of a Semaphore waits on a lock whose holder wants a permit."""
        sem, lock = conctools.Semaphore(1, name="permits"), conctools.Lock(name="table")
        both = threading.Barrier(2)

        def a() -> None:
            with sem:
                both.wait()
                with lock:
                    pass

        def b() -> None:
            lock.acquire()
            both.wait()
            with sem:
                pass
            release_quietly(lock)

        threads = [threading.Thread(target=a, name="A", daemon=True), threading.Thread(target=b, name="B", daemon=True)]
        with dl.watch_deadlocks(timeout_s=0.3, on_deadlock=found.append):
            for t in threads:
                t.start()
            assert wait_until(lambda: bool(found))
            lock.release()
            for t in threads:
                t.join(30)
        assert len(found) == 1
        waits = {p.thread_name: p.waits_for for p in found[0].participants}
        assert waits == {"A": "Lock 'table'", "B": "Semaphore 'permits'"}

    def test_rlock_reentry_is_not_a_deadlock(self, found: list[DeadlockEvent]) -> None:
        """Re-entering an RLock, and waiting on an RLock held by a thread that is not stuck, are fine."""
        r = conctools.RLock(name="r")
        release = threading.Event()

        def holder() -> None:
            with r, r, r:
                release.wait(5.0)

        def reenter() -> None:
            for _ in range(2000):
                with r, r:
                    pass

        h = threading.Thread(target=holder, name="holder")
        w = threading.Thread(target=reenter, name="reenter")
        with dl.watch_deadlocks(timeout_s=0.2, on_deadlock=found.append) as wd:
            h.start()
            time.sleep(0.05)
            w.start()
            time.sleep(1.0)
            release.set()
            h.join(30)
            w.join(30)
        assert found == [] and wd.deadlocks == []

    def test_raise_in_main(self) -> None:
        """raise_in='main': the main thread, blocked in a deadlocked acquire, gets DeadlockError."""
        a, b = conctools.Lock(name="main-lock"), conctools.Lock(name="worker-lock")
        worker_holds = threading.Event()

        def worker() -> None:
            with b:
                worker_holds.set()
                with a:
                    pass

        t = threading.Thread(target=worker, name="worker", daemon=True)
        with dl.watch_deadlocks(timeout_s=0.3, raise_in="main") as wd:
            with pytest.raises(conctools.DeadlockError) as info:
                with a:
                    t.start()
                    worker_holds.wait(30)
                    with b:
                        pass
            t.join(30)  # leaving `with a` released a: the worker finished
        assert not t.is_alive()
        assert len(wd.deadlocks) == 1
        assert {p.thread_name for p in info.value.cycle} == {"worker", threading.main_thread().name}

    def test_trace_locks_covers_stdlib_locks(self, found: list[DeadlockEvent]) -> None:
        """Locks made by threading.Lock() under trace_locks() deadlock-check like conctools.Lock."""
        with conctools.trace_locks():
            a, b = threading.Lock(), threading.Lock()
        both = threading.Barrier(2)

        def one(first: threading.Lock, second: threading.Lock) -> None:
            first.acquire()
            both.wait()
            with second:
                pass
            release_quietly(first)  # the test may have released it to break the deadlock

        threads = [threading.Thread(target=one, args=p, daemon=True) for p in ((a, b), (b, a))]
        with dl.watch_deadlocks(timeout_s=0.3, on_deadlock=found.append):
            for t in threads:
                t.start()
            assert wait_until(lambda: bool(found))
            a.release()
            for t in threads:
                t.join(30)
        assert len(found) == 1
        assert all("test_deadlock.py:" in p.waits_for for p in found[0].participants)  # named by creation site


class TestWatchdogThread:
    """The watchdog is a named daemon, cheap, prompt to stop, and never raises."""

    def test_named_daemon_stops_promptly(self) -> None:
        """conctools-watchdog runs as a daemon and is gone right after the block."""
        with dl.watch_deadlocks(timeout_s=30.0) as wd:
            names = {t.name: t for t in threading.enumerate()}
            assert names["conctools-watchdog"].daemon
            assert wd.interval_s <= 1.0
        started = time.monotonic()
        assert wait_until(lambda: "conctools-watchdog" not in {t.name for t in threading.enumerate()}, 5.0)
        assert time.monotonic() - started < 5.0

    def test_does_not_keep_the_process_alive(self) -> None:
        """A started, never stopped watchdog does not hold the interpreter at exit."""
        code = "import conctools.deadlock as d; d.DeadlockWatchdog(60.0).start(); print('bye')"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stdout.strip() == "bye"

    def test_bad_arguments(self) -> None:
        """A non-positive timeout or an unknown raise_in target is a ValueError, with the value."""
        with pytest.raises(ValueError, match="-1"):
            dl.DeadlockWatchdog(-1)
        with pytest.raises(ValueError, match="worker"):
            dl.DeadlockWatchdog(1.0, raise_in="worker")  # type: ignore[arg-type]

    def test_failing_callback_is_contained(self, found: list[DeadlockEvent]) -> None:
        """A callback that raises is logged; the watchdog goes on and records the event."""

        def bad(event: DeadlockEvent) -> None:
            found.append(event)
            raise RuntimeError("callback bug")

        lock = conctools.Lock(name="self")
        t = threading.Thread(target=lambda: [lock.acquire(), lock.acquire()], name="self-deadlock", daemon=True)
        with dl.watch_deadlocks(timeout_s=0.2, on_deadlock=bad) as wd:
            t.start()
            assert wait_until(lambda: bool(found))
            assert wd._thread is not None and wd._thread.is_alive()
            lock.release()
            t.join(30)
        assert len(wd.deadlocks) == 1
        assert wd.deadlocks[0].participants[0].held_by == "thread 'self-deadlock'"


# -- conctools run, end to end ----------------------------------------------------------------


def run_script(name: str, *extra: str, timeout_s: float = 30.0) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "conctools", "run", "--deadlock-timeout", "1", *extra, str(SCRIPTS / name)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return done, time.monotonic() - started


@pytest.mark.timeout(120)
class TestConctoolsRun:
    """`conctools run` prints the report and exits 86 / 87 instead of hanging."""

    @pytest.mark.parametrize(
        ("script", "names"),
        [
            ("abba_threads.py", ("thread 'transfer'", "thread 'audit'")),
            ("abba_tasks.py", ("task 'refresh-cache'", "task 'write-db'")),
            ("abba_mixed.py", ("thread 'reporter'", "task 'reload-config'")),
        ],
    )
    def test_deadlock_exits_86(self, script: str, names: tuple[str, ...]) -> None:
        """A deadlocking script ends within the timeout plus a few seconds, with the jstack-style report."""
        done, took = run_script(script)
        assert done.returncode == dl.EXIT_DEADLOCK, done.stderr
        assert took < 30
        assert "Found one Python-level deadlock:" in done.stderr
        assert "which is held by" in done.stderr
        assert "Stacks of the threads and tasks listed above:" in done.stderr
        for name in names:
            assert name in done.stderr
        assert f"{script}:" in done.stderr  # file:line of the program's own waits

    @pytest.mark.parametrize(
        ("script", "says"),
        [
            ("event_never_set.py", "Event"),
            ("queue_unfed.py", "Queue.get"),
            ("lost_wakeup.py", "Condition.wait(): Condition 'lost_wakeup.py:6' (waiting for a notify)"),
            ("asyncio_event.py", "task 'wait-for-config'"),
        ],
    )
    def test_hang_exits_87(self, script: str, says: str) -> None:
        """A hanging script ends with every thread's and task's stack and what each waits on."""
        done, took = run_script(script)
        assert done.returncode == dl.EXIT_HANG, done.stderr
        assert took < 30
        assert "Hang: the program stopped making progress" in done.stderr
        assert "thread 'MainThread'" in done.stderr
        assert says in done.stderr

    def test_pool_waiting_on_itself_is_a_deadlock_through_the_pool(self) -> None:
        """Every worker waits for a job queued behind it in its own pool: a cycle through the
        pool's queue (86), each worker named with the job it waits for, and the advice."""
        done, took = run_script("pool_self_wait.py")
        assert done.returncode == dl.EXIT_DEADLOCK, done.stderr
        assert took < 30
        assert "thread 'pool_0':\n  waiting for a job queued in ThreadPoolExecutor 'pool'" in done.stderr
        assert "thread 'pool_1':\n  waiting for a job queued in ThreadPoolExecutor 'pool'" in done.stderr
        assert "waits at pool_self_wait.py:13" in done.stderr
        assert "Every worker of the pool waits for a job queued behind it" in done.stderr
        assert "run_coroutine_threadsafe" not in done.stderr

    def test_deadlock_exit_still_writes_every_output_file(self, tmp_path: Path) -> None:
        """--out with --profile: the os._exit after a deadlock still leaves the reports and the profile files."""
        import pstats

        out = tmp_path / "out"
        done, _ = run_script("abba_threads.py", "--profile", "--out", str(out))
        assert done.returncode == dl.EXIT_DEADLOCK, done.stderr
        for name in ("report.txt", "report.json", "trace.json", "report.html", "profile.pstat", "profile.callgrind"):
            assert (out / name).stat().st_size > 0, name
        stats = pstats.Stats(str(out / "profile.pstat"))
        assert any(func[2] == "transfer" for func in stats.stats)  # type: ignore[attr-defined]
        assert "events:" in (out / "profile.callgrind").read_text()

    def test_lock_left_by_an_exited_thread_is_not_a_self_deadlock(self) -> None:
        """A new thread with a finished thread's id waits for the lock that thread never released: a hang
        naming the finished holder by its own name, not a self-deadlock of the new thread."""
        done, took = run_script("lock_left_by_exited_thread.py")
        assert done.returncode == dl.EXIT_HANG, done.stderr
        assert took < 30
        assert "held by exited thread 'refresher'" in done.stderr, done.stderr
        assert "(acquired at lock_left_by_exited_thread.py:14, never released)" in done.stderr
        assert "thread 'reader'" in done.stderr and "held by thread 'reader'" not in done.stderr
        assert "Found one Python-level deadlock" not in done.stderr

    def test_untraced_deadlock_is_a_hang(self) -> None:
        """With --no-trace-locks the registry sees nothing, yet the ABBA is found from the bytecode (87)."""
        done, took = run_script("abba_threads.py", "--no-trace-locks")
        assert done.returncode == dl.EXIT_HANG, done.stderr
        assert took < 30
        assert "waits on threading.Lock 'accounts_lock' (untraced, locked)" in done.stderr
        assert "waits on threading.Lock 'audit_lock' (untraced, locked)" in done.stderr

    def test_healthy_idle_program_runs_to_the_end(self) -> None:
        """Sleeping, timed waits and accept() for longer than the timeout are not a hang."""
        done, _ = run_script("healthy_idle.py")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "done"
        assert "Hang" not in done.stderr and "deadlock" not in done.stderr.lower()

    def test_zero_disables_the_watchdog(self, tmp_path: Path) -> None:
        """--deadlock-timeout 0: no watchdog thread at all."""
        script = tmp_path / "threads.py"
        script.write_text("import threading\nprint(sorted(t.name for t in threading.enumerate()))\n")
        on = subprocess.run(
            [sys.executable, "-m", "conctools", "run", str(script)], capture_output=True, text=True, timeout=60
        )
        off = subprocess.run(
            [sys.executable, "-m", "conctools", "run", "--deadlock-timeout", "0", str(script)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "conctools-watchdog" in on.stdout
        assert "conctools-watchdog" not in off.stdout

    @pytest.mark.parametrize("value", ["-1", "soon", "nan"])
    def test_bad_timeout_is_one_line(self, value: str) -> None:
        """A negative or non-numeric timeout is a one-line error with status 2."""
        done = subprocess.run(
            [sys.executable, "-m", "conctools", "run", "--deadlock-timeout", value, str(SCRIPTS / "healthy_idle.py")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1
        assert "--deadlock-timeout" in done.stderr


def test_participant_has_wait_s() -> None:
    """Participant records how long it waited (a field added for the report)."""
    p = Participant(
        thread_id=1, thread_name="t", task_name=None, waits_for="Lock 'a'", waits_for_id=1, wait_site="x:1", held_by="?"
    )
    assert p.wait_s == 0.0


class TestCycleSearchIsBounded:
    """The cycle search stays cheap on graphs with countless cycles."""

    def test_dense_semaphore_graph(self) -> None:
        """40 threads each holding a permit and waiting for one more: found fast, at most `limit` cycles."""
        holders = tuple(party(i, f"app.py:{i}") for i in range(40))
        sem = prim(1, "pool", holders, tuple(party(i, f"app.py:{100 + i}") for i in range(40)), kind="Semaphore")
        graph = dl.build_wait_graph([sem])
        started = time.monotonic()
        cycles = dl.find_deadlocks(graph, now_ns=NOW, limit=16)
        assert time.monotonic() - started < 10
        assert 1 <= len(cycles) <= 16
        assert len(dl.stuck_parties(graph, now_ns=NOW)) == 40


# -- edges through joins, futures and loops; exited holders (pure) ------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LockParty(Party):
    """A registry record as branch ``locks`` provides it (conctools/INTERFACES.md): a holder
    identity never reused, exited holders by name, and the holder task of threading primitives."""

    thread_key: int = 0
    exited: bool = False
    task: object | None = None


def dep(waiter: Party, on: tuple[Party, ...], kind: str, what: str = "", sync: bool = True) -> dl.Dependency:
    return dl.Dependency(waiter=waiter, on=on, what=what or kind, kind=kind, sync=sync)


class TestDependencies:
    """Waits read from frames (joins, futures, loops) close cycles with the registry's locks."""

    def test_join_under_a_lock(self) -> None:
        """Main holds a lock and joins a thread that waits for it: a cycle of a join and a lock."""
        lock = prim(1, "registry", (party(1, "app.py:10"),), (party(2, "app.py:20"),))
        joins = dep(party(1, "app.py:11"), (party(2, "?"),), "join", "thread 'T2' to finish (Thread.join())")
        graph = dl.build_wait_graph([lock], [joins])
        [cycle] = dl.find_deadlocks(graph, now_ns=NOW, min_wait_s=1.0)
        parts = {p.thread_name: p for p in dl.participants_of(cycle, graph, {}, now_ns=NOW)}
        assert parts["T1"].waits_kind == "join" and parts["T1"].waits_for == "thread 'T2' to finish (Thread.join())"
        assert parts["T1"].holds == ("Lock 'registry'",)
        assert parts["T2"].waits_for == "Lock 'registry'" and parts["T2"].held_by == "thread 'T1'"
        summary, advice = dl.explain(tuple(parts.values()))
        assert "thread 'T1' (holding Lock 'registry', taken at app.py:10) waits at app.py:11" in summary
        assert any("joins another while holding" in a for a in advice)

    def test_a_worker_waiting_for_its_own_pool_needs_another_worker(self) -> None:
        """A job queued behind every worker: each worker's wait is freed by any OTHER worker."""
        w1, w2 = party(1, "pool.py:5"), party(2, "pool.py:5")
        deps = [dep(w1, (w1, w2), "future", "a job queued"), dep(w2, (w1, w2), "future", "a job queued")]
        graph = dl.build_wait_graph([], deps)
        assert [e.holder_key for e in graph.edges[("thread", 1)]] == [("thread", 2)]
        [cycle] = dl.find_deadlocks(graph, now_ns=NOW)
        assert {e.waiter_key for e in cycle} == {("thread", 1), ("thread", 2)}

    def test_one_free_worker_frees_the_queue(self) -> None:
        """A job queued behind two workers, one of which is not stuck: nobody is stuck."""
        w1, w2 = party(1, "pool.py:5"), party(2, "pool.py:5")
        graph = dl.build_wait_graph([], [dep(w1, (w1, w2), "future")])
        assert dl.stuck_parties(graph, now_ns=NOW) == frozenset()

    def test_nobody_left_is_a_wait_forever_without_a_cycle(self) -> None:
        """A job queued in a pool with no worker: stuck, but no deadlock to report (a hang)."""
        graph = dl.build_wait_graph(
            [], [dep(party(1, "app.py:3"), (), "future", "a job queued in a pool with no worker")]
        )
        assert dl.stuck_parties(graph, now_ns=NOW) == {("thread", 1)}
        assert dl.find_deadlocks(graph, now_ns=NOW) == []

    def test_a_suspended_task_needs_its_loop_thread_as_well(self) -> None:
        """A task waiting for a job AND for its blocked loop thread: stuck when either is stuck."""
        task = party(9, "app.py:30", task=5)
        loop_blocker = party(9, "app.py:40", task=6)
        lock = prim(1, "cfg", (party(3, "app.py:50"),), (loop_blocker,))  # the loop's thread waits for thread 3
        deps = [
            dep(task, (party(4, "?"),), "future", "a job running in thread 'T4'", sync=False),  # T4 runs freely
            dep(task, (party(9, "?"),), "loop", sync=False),
        ]
        graph = dl.build_wait_graph([lock], deps)
        assert len({e.group for e in graph.edges[("task", 5)]}) == 2
        stuck = dl.stuck_parties(graph, now_ns=NOW)
        assert ("task", 5) not in stuck  # thread 3 is not stuck, so the loop's thread will go on
        lock3 = prim(2, "stats", (party(9, "app.py:41", task=6),), (party(3, "app.py:51"),))  # now thread 3 waits too
        graph = dl.build_wait_graph([lock, lock3], deps)
        assert {("task", 5), ("thread", 9), ("thread", 3)} <= dl.stuck_parties(graph, now_ns=NOW)

    def test_task_waits_need_no_age_of_their_own(self) -> None:
        """A fresh task wait in a cycle of old thread waits is a deadlock already (a task cannot move
        while what it waits for is stuck); a fresh thread wait is not yet."""
        old_thread = party(1, "app.py:1", since_s=10)
        fresh_task = party(2, "app.py:2", task=7, since_s=99.9)
        deps = [
            dep(old_thread, (fresh_task,), "join", "thread to finish"),
            dep(fresh_task, (party(1, "?"),), "future", "a coroutine of thread T1's loop", sync=False),
        ]
        graph = dl.build_wait_graph([], deps)
        assert len(dl.find_deadlocks(graph, now_ns=NOW, min_wait_s=1.0)) == 1
        fresh_thread = dataclasses.replace(old_thread, since_ns=int(99.9 * S))
        deps[0] = dep(fresh_thread, (fresh_task,), "join", "thread to finish")
        assert dl.find_deadlocks(dl.build_wait_graph([], deps), now_ns=NOW, min_wait_s=1.0) == []

    def test_tasks_awaiting_each_other_are_left_to_the_hang_report(self) -> None:
        """A cycle made only of tasks awaiting tasks is the hang report's "await cycle", not a deadlock."""
        a, b = party(9, "a.py:1", task=1), party(9, "b.py:1", task=2)
        graph = dl.build_wait_graph([], [dep(a, (b,), "await", sync=False), dep(b, (a,), "await", sync=False)])
        assert dl.stuck_parties(graph, now_ns=NOW) == {("task", 1), ("task", 2)}
        assert dl.find_deadlocks(graph, now_ns=NOW) == []


class TestExitedHolders:
    """Holders recorded by branch ``locks`` as exited are never a live thread that reuses their id."""

    def test_exited_holders_by_their_own_names(self) -> None:
        """A semaphore's permits held by exited threads: named as such, the waiters stuck, no cycle."""
        gone = tuple(
            LockParty(
                thread_id=11,
                thread_name=name,
                task_name=None,
                task_id=None,
                site="pool.py:10",
                since_ns=0,
                thread_key=key,
                exited=True,
            )
            for key, name in ((101, "request-0"), (102, "request-2"))
        )
        waiters = (party(11, "pool.py:10"), party(12, "pool.py:10"))  # thread 11 reuses request-0's id
        sem = prim(1, "connections", gone, waiters, kind="Semaphore")
        from conctools.deadlock.threads import holders_words

        assert (
            holders_words(sem) == "exited threads 'request-0' and 'request-2' (acquired at pool.py:10, never released)"
        )
        graph = dl.build_wait_graph([sem])
        assert dl.stuck_parties(graph, now_ns=NOW) == {("thread", 11), ("thread", 12)}
        assert dl.find_deadlocks(graph, now_ns=NOW) == []  # a hang, not a self-deadlock of thread 11

    def test_the_c_paths_exited_owner_is_a_sink(self) -> None:
        """Today's C path records an exited owner as thread 0 'exited thread N': a sink, not a cycle."""
        holder = Party(
            thread_id=0, thread_name="exited thread 77", task_name=None, task_id=None, site="a.py:3", since_ns=0
        )
        graph = dl.build_wait_graph([prim(1, "l", (holder,), (party(77, "a.py:9"),))])
        assert dl.stuck_parties(graph, now_ns=NOW) == {("thread", 77)}
        assert dl.find_deadlocks(graph, now_ns=NOW) == []


class TestLockAcrossAwait:
    """A threading lock held across an await, with the holder task recorded (branch ``locks``) or not."""

    def graph(self, holder_task: int | None) -> tuple[dl.WaitGraph, list[PrimitiveState]]:
        writer = LockParty(
            thread_id=9,
            thread_name="MainThread",
            task_name="writer" if holder_task else None,
            task_id=holder_task,
            site="app.py:16",
            since_ns=0,
        )
        reader = dataclasses.replace(party(9, "app.py:23", task=2), task_name="reader", thread_name="MainThread")
        prims = [prim(1, "state", (writer,), (reader,))]
        return dl.build_wait_graph(prims), prims

    def test_with_the_holder_task_the_writer_is_blamed(self) -> None:
        """Reader blocks the loop's thread waiting for the lock; the writer holds it and cannot resume."""
        graph, _ = self.graph(holder_task=1)
        [cycle] = dl.find_deadlocks(graph, now_ns=NOW)
        stacks = {  # suspended in a helper it awaits: the report points at the writer's own await
            ("task", 1): (
                conctools.Frame("/x/app.py", 12, "save_remote", "await asyncio.sleep(0.2)"),
                conctools.Frame("/x/app.py", 18, "writer", "await save_remote(1)"),
            )
        }
        parts = dl.participants_of(cycle, graph, stacks, now_ns=NOW)
        summary, advice = dl.explain(parts)
        assert summary == (
            "task 'reader' (thread 'MainThread') blocks the event loop's thread 'MainThread' at app.py:23, waiting for"
            " Lock 'state', which is held by task 'writer' (acquired at app.py:16, suspended now at app.py:18: await"
            " save_remote(1)); that task cannot resume while its loop's thread is blocked, so it never releases it."
        )
        assert "never hold a threading lock across an await" in advice[0]
        reader = next(p for p in parts if p.task_name == "reader")
        assert reader.holds == () and reader.thread_holds == ()

    def test_without_it_the_report_says_what_it_does_not_know(self) -> None:
        """Holder task unknown: no "holds" under the reader, no "taken twice" hint alone, the advice."""
        graph, _ = self.graph(holder_task=None)
        [cycle] = dl.find_deadlocks(graph, now_ns=NOW)
        parts = dl.participants_of(cycle, graph, {}, now_ns=NOW)
        [reader] = parts
        assert reader.holds == () and reader.thread_holds == ("Lock 'state'",)
        summary, advice = dl.explain(parts, ["Task 'writer' is suspended at app.py:18 (await save_remote(1))."])
        assert "conctools did not record which task took it" in summary
        assert summary.endswith("Task 'writer' is suspended at app.py:18 (await save_remote(1)).")
        assert "never hold a threading lock across an await" in advice[0]


@pytest.mark.timeout(60)
class TestReadmeRaiseInMain:
    """The README's ``watch_deadlocks(timeout_s=..., raise_in="main")`` raises on plain locks too."""

    def test_abba_on_plain_locks_raises_in_main(self) -> None:
        """Untraced locks cannot be proved a cycle: it is a hang, raised as HangError (a DeadlockError)."""
        code = textwrap.dedent(
            """
            import threading, conctools
            a, b = threading.Lock(), threading.Lock()
            both = threading.Barrier(2)
            def worker():
                with b:
                    both.wait()
                    with a:
                        pass
            threading.Thread(target=worker, daemon=True).start()
            try:
                with conctools.watch_deadlocks(timeout_s=0.5, raise_in="main"):
                    with a:
                        both.wait()
                        with b:
                            pass
            except conctools.DeadlockError as e:
                print(type(e).__name__, isinstance(e, conctools.HangError), e.cycle, type(e.event).__name__)
            """
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "HangError True () HangEvent"
