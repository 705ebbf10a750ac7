"""The asyncio hang view: dump_tasks, loop_idle_forever, running_loops and await cycles, on real loops."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import types
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from conctools.loopmon import LoopMonitor
from conctools.taskdump import (
    TaskInfo,
    dump_tasks,
    find_await_cycles,
    format_task_dump,
    loop_idle_forever,
    running_loops,
    task_cycles,
)

HERE = __file__


class LoopThread:
    """An event loop running forever in its own thread, for inspection from the test thread."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop) -> None:
        self.loop = factory()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)

    def __enter__(self) -> LoopThread:
        self.thread.start()
        deadline = time.monotonic() + 5
        while not self.loop.is_running() and time.monotonic() < deadline:
            time.sleep(0.005)
        return self

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro_fn: Callable[[], Coroutine[Any, Any, Any]], name: str) -> asyncio.Task[Any]:
        async def make() -> asyncio.Task[Any]:
            return asyncio.get_running_loop().create_task(coro_fn(), name=name)

        task: asyncio.Task[Any] = self.run(make())
        return task

    def __exit__(self, *exc: object) -> None:
        async def cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def by_name(infos: list[TaskInfo]) -> dict[str, TaskInfo]:
    return {t.name: t for t in infos}


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    with LoopThread() as lt:
        yield lt


class TestDumpTasks:
    def test_names_tasks_and_what_they_await(self, loop_thread: LoopThread) -> None:
        """Every pending task is listed with its await stack and the primitive it waits on."""
        lock, event, queue = loop_thread.run(_make_primitives())

        async def holds() -> None:
            await lock.acquire()
            await asyncio.sleep(100)

        async def wants_lock() -> None:
            async with lock:
                pass

        async def wants_event() -> None:
            await event.wait()

        async def wants_item() -> None:
            await queue.get()

        loop_thread.spawn(holds, "holder")
        assert wait_until(lambda: lock.locked())
        for fn, name in ((wants_lock, "locker"), (wants_event, "eventer"), (wants_item, "getter")):
            loop_thread.spawn(fn, name)
        assert wait_until(lambda: {"locker", "eventer", "getter"} <= set(by_name(dump_tasks(loop_thread.loop))))
        tasks = by_name(dump_tasks(loop_thread.loop))
        assert tasks["holder"].awaits_kind == "sleep"
        assert tasks["locker"].awaits_kind == "lock" and "(locked)" in (tasks["locker"].awaits or "")
        assert tasks["eventer"].awaits_kind == "event" and "not set" in (tasks["eventer"].awaits or "")
        assert tasks["getter"].awaits_kind == "queue"
        locker = tasks["locker"]
        assert locker.state == "pending"
        assert locker.stack[-1].function == "wants_lock"  # innermost first: the task's coroutine is last
        assert locker.stack[0].function == "acquire"
        assert locker.site is not None and locker.site.startswith(HERE)
        assert all(t.thread_id == loop_thread.thread.ident for t in tasks.values())

    def test_traced_lock_names_its_holder(self, loop_thread: LoopThread) -> None:
        """A conctools.aio.Lock is named, and the dump says which task holds it and where it took it."""
        from conctools import aio

        async def make() -> aio.Lock:
            return aio.Lock(name="db")

        lock = loop_thread.run(make())

        async def holds() -> None:
            async with lock:
                await asyncio.sleep(100)

        async def wants() -> None:
            async with lock:
                pass

        loop_thread.spawn(holds, "owner")
        assert wait_until(lock.locked)
        loop_thread.spawn(wants, "blocked")
        assert wait_until(lambda: by_name(dump_tasks(loop_thread.loop)).get("blocked") is not None)
        awaits = by_name(dump_tasks(loop_thread.loop))["blocked"].awaits or ""
        assert "Lock 'db'" in awaits
        assert "by task 'owner'" in awaits

    def test_awaiting_tasks_gather_and_executor(self, loop_thread: LoopThread) -> None:
        """Awaiting another task, a gather and an executor job are told apart."""
        release = threading.Event()

        async def child() -> None:
            await asyncio.sleep(100)

        async def parent() -> None:
            await asyncio.get_running_loop().create_task(child(), name="child")

        async def gatherer() -> None:
            loop = asyncio.get_running_loop()
            await asyncio.gather(loop.create_task(child(), name="g1"), loop.create_task(child(), name="g2"))

        async def offloaded() -> None:
            await asyncio.to_thread(release.wait, 10)

        for fn, name in ((parent, "parent"), (gatherer, "gatherer"), (offloaded, "offloaded")):
            loop_thread.spawn(fn, name)
        try:
            assert wait_until(lambda: {"child", "g1", "g2"} <= set(by_name(dump_tasks(loop_thread.loop))))
            tasks = by_name(dump_tasks(loop_thread.loop))
            assert tasks["parent"].awaits == "Task 'child'"
            assert tasks["parent"].awaits_task_ids == (tasks["child"].task_id,)
            assert tasks["gatherer"].awaits_kind == "gather"
            assert set(tasks["gatherer"].awaits_task_ids) == {tasks["g1"].task_id, tasks["g2"].task_id}
            assert tasks["offloaded"].awaits_kind == "executor"
        finally:
            release.set()

    def test_running_task_seen_from_another_thread_while_the_loop_is_blocked(self, loop_thread: LoopThread) -> None:
        """While a task blocks the loop, a dump from another thread shows it running at the blocking line."""
        started = threading.Event()

        async def blocker() -> None:
            started.set()
            time.sleep(0.3)

        loop_thread.loop.call_soon_threadsafe(lambda: loop_thread.loop.create_task(blocker(), name="blocker"))
        assert started.wait(5)
        tasks = by_name(dump_tasks(loop_thread.loop))
        assert tasks["blocker"].state == "running"
        assert tasks["blocker"].awaits is None
        assert tasks["blocker"].stack[0].function == "blocker"

    def test_await_cycle_is_found(self, loop_thread: LoopThread) -> None:
        """Task A awaits B while B waits for A: the dump's edges close a cycle."""
        holder: dict[str, asyncio.Task[Any]] = {}
        both = threading.Event()

        async def a() -> None:
            both.wait(5)
            await holder["b"]

        async def b() -> None:
            await asyncio.wait([holder["a"]])  # not `await a`: cancelling a direct cycle recurses forever

        async def make() -> None:
            loop = asyncio.get_running_loop()
            holder["a"] = loop.create_task(a(), name="A")
            holder["b"] = loop.create_task(b(), name="B")
            both.set()

        loop_thread.run(make())
        assert wait_until(lambda: by_name(dump_tasks(loop_thread.loop)).get("A", None) is not None)
        assert wait_until(lambda: bool(task_cycles(dump_tasks(loop_thread.loop))))
        infos = dump_tasks(loop_thread.loop)
        cycles = task_cycles(infos)
        assert [sorted(t.name for t in c) for c in cycles] == [["A", "B"]]
        assert "Await cycle: " in format_task_dump(infos)

    def test_dump_all_loops_and_no_loop(self) -> None:
        """With no loop argument every loop's tasks are listed; with no loop at all, none."""
        with LoopThread() as one, LoopThread() as two:
            one.spawn(lambda: asyncio.sleep(100), "on-one")
            two.spawn(lambda: asyncio.sleep(100), "on-two")
            assert wait_until(lambda: {"on-one", "on-two"} <= set(by_name(dump_tasks())))
            infos = by_name(dump_tasks())
            assert infos["on-one"].loop_id == id(one.loop)
            assert infos["on-two"].loop_id == id(two.loop)
        assert "on-one" not in by_name(dump_tasks())

    def test_dump_while_tasks_churn(self, loop_thread: LoopThread) -> None:
        """Dumping in a tight loop while the loop creates and finishes tasks never raises."""
        stop = threading.Event()

        async def churn() -> None:
            while not stop.is_set():
                await asyncio.gather(*(asyncio.sleep(0) for _ in range(50)))

        loop_thread.spawn(churn, "churn")
        try:
            for _ in range(200):
                infos = dump_tasks()
                assert all(isinstance(t, TaskInfo) for t in infos)
        finally:
            stop.set()

    def test_creation_site_with_the_monitor(self) -> None:
        """Tasks created while a LoopMonitor watches know the line that created them."""

        async def main() -> str | None:
            async with LoopMonitor(threshold_s=1.0):
                task = asyncio.get_running_loop().create_task(asyncio.sleep(10), name="made")
                line = _lineno() - 1
                await asyncio.sleep(0)
                info = by_name(dump_tasks(asyncio.get_running_loop()))["made"]
                task.cancel()
                assert info.created_at == f"{HERE}:{line}"
                return info.created_at

        assert asyncio.run(main()) is not None

    def test_creation_sites_through_asyncio_helpers(self) -> None:
        """Tasks made through gather(), ensure_future() and inside an async context manager are placed at
        the user's line, not asyncio's or contextlib's; the sites of thousands of dead tasks are purged."""
        from conctools import taskdump

        async def child() -> None:
            await asyncio.sleep(0)

        @contextlib.asynccontextmanager
        async def opened() -> Any:
            task = asyncio.ensure_future(child())
            line = _lineno() - 1
            yield task, line
            await task

        async def main() -> list[tuple[str | None, str]]:
            async with LoopMonitor(threshold_s=1.0):
                before = asyncio.all_tasks()
                gathered = asyncio.gather(child(), child())
                gathered_line = _lineno() - 1
                inner = asyncio.all_tasks() - before
                assert len(inner) == 2
                async with opened() as (in_cm, cm_line):
                    pass
                await gathered
                for _ in range(3):  # dead tasks' sites go when the table doubles
                    await asyncio.gather(*(child() for _ in range(3000)))
                assert len(taskdump._created) < 3 * 3000
                return [(taskdump.creation_site(t), f"{HERE}:{gathered_line}") for t in inner] + [
                    (taskdump.creation_site(in_cm), f"{HERE}:{cm_line}")
                ]

        for got, want in asyncio.run(main()):
            assert got == want

    def test_c_creation_site_is_kept_as_code_and_offset(self) -> None:
        """With the C extension, the monitor's task factory keeps a task's creation site as the code
        object and instruction offset (no line lookup per task); the line, found when asked, is the
        ``create_task`` line."""
        from conctools import locks, taskdump

        if not locks.SPEEDUPS:
            pytest.skip("the C extension is not in use")

        async def main() -> tuple[Any, str | None, int]:
            async with LoopMonitor(threshold_s=1.0):
                task = asyncio.create_task(asyncio.sleep(0))
                line = _lineno() - 1
                # the C table's entry (the Python table may still hold a dead task's at the same address)
                entry = taskdump._c_speedups().task_site(id(task))
                await task
                return entry, taskdump.creation_site(task), line

        entry, site, line = asyncio.run(main())
        # (CPython 3.13.0: a C create_task wrapper on the loop instead of a factory, with the same C table)
        assert isinstance(entry[1], types.CodeType) and entry[1].co_name == "main", entry
        assert isinstance(entry[2], int)
        assert site == f"{HERE}:{line}"

    def test_c_task_factory_keeps_names_and_contexts(self) -> None:
        """With the C extension, the monitor's task factory is C code (no Python frame per task, issue
        12); a task made through it keeps its name and the context it was given, and its creation line."""
        import contextvars

        from conctools import locks, taskdump
        from conctools.loopmon import monitor

        if not locks.SPEEDUPS or monitor._FACTORY_RENAMES_TASKS:
            pytest.skip("the C task factory is not in use here")
        var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

        async def read() -> str:
            return var.get()

        async def main() -> tuple[str, str, str | None, int, str]:
            async with LoopMonitor(threshold_s=1.0):
                loop = asyncio.get_running_loop()
                ctx = contextvars.copy_context()
                ctx.run(var.set, "given")
                task = loop.create_task(read(), name="reader", context=ctx)
                line = _lineno() - 1
                value = await task
                return value, task.get_name(), taskdump.creation_site(task), line, loop.get_task_factory().__name__

        value, name, site, line, factory = asyncio.run(main())
        assert (value, name, site) == ("given", "reader", f"{HERE}:{line}")
        assert factory == "conctools_task_factory"

    def test_python_sites_beside_a_large_c_table_do_not_purge_each_time(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Creation sites noted in Python (a loop whose factory is not conctools' C one) while the C task
        factory's table holds thousands of live tasks: the Python table is purged when it has grown, not
        at every task (``len(_created)`` also counts the C table's entries, which a purge cannot drop)."""
        from conctools import locks, taskdump
        from conctools.loopmon import monitor

        if not locks.SPEEDUPS or monitor._FACTORY_RENAMES_TASKS:
            pytest.skip("the C task factory is not in use here")
        purges: list[int] = []
        real_purge = taskdump.purge_created

        def counted_purge() -> None:
            purges.append(1)
            real_purge()

        async def main() -> int:
            gate = asyncio.Event()
            async with LoopMonitor(threshold_s=1.0):
                live = [asyncio.ensure_future(gate.wait()) for _ in range(5000)]  # noted in the C table
            monkeypatch.setattr(taskdump, "purge_created", counted_purge)
            monkeypatch.setattr(taskdump, "_note_site", None)  # the pure-Python noting
            others = [asyncio.ensure_future(asyncio.sleep(0)) for _ in range(50)]
            for task in others:
                taskdump.note_creation_site(task)
            noted = len(taskdump._created)
            gate.set()
            await asyncio.gather(*live, *others)
            return noted

        assert asyncio.run(main()) >= 5000  # the C table's tasks are seen through _created
        assert purges == []

    def test_c_task_factory_makes_no_weak_reference_per_task(self) -> None:
        """The C task factory (CPython 3.13.0: the C create_task wrapper that stands in for it) keeps a task's
        creation site with the weak reference the task already has (asyncio's registry of tasks makes one;
        3.13's tasks keep theirs before the object): no second one per task (issue 12: 3.13.0's Python wrapper
        made one, and a dict entry, per task, and the asyncio program one more full collection); the site is
        exact."""
        import weakref

        from conctools import locks, taskdump
        from conctools.loopmon import monitor

        if not locks.SPEEDUPS:
            pytest.skip("the C extension is not in use")

        async def main() -> tuple[list[int], list[int], list[str | None], int, Any]:
            plain = [asyncio.ensure_future(asyncio.sleep(0)) for _ in range(100)]
            async with LoopMonitor(threshold_s=1.0):
                made_by = asyncio.get_running_loop().create_task
                watched = [asyncio.ensure_future(asyncio.sleep(0)) for _ in range(100)]
                line = _lineno() - 1
                sites = [taskdump.creation_site(t) for t in watched]
                counts = [weakref.getweakrefcount(t) for t in watched]
            before = [weakref.getweakrefcount(t) for t in plain]
            await asyncio.gather(*plain, *watched)
            return before, counts, sites, line, made_by

        before, counts, sites, line, made_by = asyncio.run(main())
        if monitor._FACTORY_RENAMES_TASKS:
            assert type(made_by).__name__ == "builtin_function_or_method", made_by  # the C wrapper
        assert counts == before  # the monitor added none
        assert sites == [f"{HERE}:{line}"] * 100

    def test_c_sites_stay_exact_through_purges_reused_addresses_and_lookups(self) -> None:
        """The C factory's log of sites (appended per task, purged of dead tasks when full, indexed only
        when looked up): every live task's site is its own line, whether it was noted before a purge, before
        a lookup indexed the log, or after it (a few entries, scanned; many, indexed); tasks made where dead
        ones were (their addresses reused) are never given a dead task's line; a dead task has no site; the
        log stays bounded by the live tasks."""
        import gc
        import weakref

        from conctools import locks, taskdump

        if not locks.SPEEDUPS:
            pytest.skip("the C extension is not in use")

        async def main() -> None:
            gate = asyncio.Event()
            async with LoopMonitor(threshold_s=1.0):
                early = [asyncio.ensure_future(gate.wait()) for _ in range(6000)]
                early_line = _lineno() - 1
                for _ in range(8):  # 40,000 short-lived tasks: the log fills and is purged, addresses are reused
                    await asyncio.gather(*(asyncio.sleep(0) for _ in range(5000)))
                gone = asyncio.ensure_future(asyncio.sleep(0))
                gone_id, gone_ref = id(gone), weakref.ref(gone)
                await gone
                del gone
                await asyncio.sleep(0)  # (the callback that woke this task held it until now)
                gc.collect()
                assert gone_ref() is None
                assert taskdump._c_speedups().task_site(gone_id) is None  # a dead task: no site
                reused = [asyncio.ensure_future(gate.wait()) for _ in range(3000)]
                reused_line = _lineno() - 1
                assert {taskdump.creation_site(t) for t in early[::7]} == {f"{HERE}:{early_line}"}  # indexed now
                few = [asyncio.ensure_future(gate.wait()) for _ in range(10)]
                few_line = _lineno() - 1
                assert {taskdump.creation_site(t) for t in few} == {f"{HERE}:{few_line}"}  # scanned
                many = [asyncio.ensure_future(gate.wait()) for _ in range(2000)]
                many_line = _lineno() - 1
                assert {taskdump.creation_site(t) for t in many} == {f"{HERE}:{many_line}"}  # index extended
                assert {taskdump.creation_site(t) for t in reused} == {f"{HERE}:{reused_line}"}
                assert {taskdump.creation_site(t) for t in early} == {f"{HERE}:{early_line}"}
                live = len(early) + len(reused) + len(few) + len(many)
                # the dead go at each purge: at most twice the most tasks alive at once (of 51,011 noted)
                assert taskdump._c_speedups().task_sites_len() <= 2 * (live + 5000)
                gate.set()
                await asyncio.gather(*early, *reused, *few, *many)

        asyncio.run(main())


class TestLoopIdleForever:
    def test_event_nobody_sets(self, loop_thread: LoopThread) -> None:
        """A task waiting on an Event with no timer, I/O or executor job left: idle forever."""
        event = loop_thread.run(_make_event())
        loop_thread.spawn(event.wait, "waiter")
        assert wait_until(lambda: loop_idle_forever(loop_thread.loop))

    def test_monitor_heartbeat_does_not_count(self, loop_thread: LoopThread) -> None:
        """The loop monitor's own heartbeat timer never hides a hang."""
        monitor = LoopMonitor(loop_thread.loop, threshold_s=0.1)
        monitor.start()
        try:
            event = loop_thread.run(_make_event())
            loop_thread.spawn(event.wait, "waiter")
            assert wait_until(lambda: monitor.probes > 3)
            assert wait_until(lambda: loop_idle_forever(loop_thread.loop))
        finally:
            monitor.stop()

    def test_not_idle_with_timer_io_or_executor(self, loop_thread: LoopThread) -> None:
        """A pending timer, a listening server or an executor job can wake the loop: not idle."""
        event = loop_thread.run(_make_event())
        loop_thread.spawn(event.wait, "waiter")
        assert wait_until(lambda: loop_idle_forever(loop_thread.loop))
        release = threading.Event()
        loop_thread.spawn(lambda: asyncio.to_thread(release.wait, 10), "offloaded")
        try:
            time.sleep(0.1)
            assert not loop_idle_forever(loop_thread.loop)
        finally:
            release.set()
        assert wait_until(lambda: loop_idle_forever(loop_thread.loop))
        sleeper = loop_thread.spawn(lambda: asyncio.sleep(100), "sleeper")
        time.sleep(0.05)
        assert not loop_idle_forever(loop_thread.loop)
        loop_thread.loop.call_soon_threadsafe(sleeper.cancel)
        assert wait_until(lambda: loop_idle_forever(loop_thread.loop))
        server = loop_thread.run(asyncio.start_server(lambda r, w: None, "127.0.0.1", 0))
        try:
            time.sleep(0.05)
            assert not loop_idle_forever(loop_thread.loop)
        finally:
            server.close()

    def test_no_pending_tasks_or_not_running(self) -> None:
        """A loop with no tasks, or one that is not running, is not called idle forever."""
        with LoopThread() as lt:
            time.sleep(0.05)
            assert not loop_idle_forever(lt.loop)
        loop = asyncio.new_event_loop()
        try:
            assert not loop_idle_forever(loop)
        finally:
            loop.close()

    def test_uvloop_is_never_called_idle(self) -> None:
        """uvloop cannot be inspected: it is never reported idle forever (no false alarms)."""
        uvloop = pytest.importorskip("uvloop")
        with LoopThread(uvloop.new_event_loop) as lt:
            event = lt.run(_make_event())
            lt.spawn(event.wait, "waiter")
            time.sleep(0.1)
            assert not loop_idle_forever(lt.loop)
            assert by_name(dump_tasks(lt.loop))["waiter"].awaits_kind == "event"


class TestRunningLoops:
    def test_loop_in_a_thread_is_found(self) -> None:
        """A loop running in another thread is listed, and no longer once it stopped."""
        with LoopThread() as lt:
            assert lt.loop in running_loops()
        assert lt.loop not in running_loops()

    def test_monitor_registers_uvloop(self) -> None:
        """uvloop has no Python frames to find: the monitor registers the loop it watches."""
        uvloop = pytest.importorskip("uvloop")
        with LoopThread(uvloop.new_event_loop) as lt:
            monitor = LoopMonitor(lt.loop, threshold_s=1.0)
            monitor.start()
            try:
                assert wait_until(lambda: lt.loop in running_loops())
            finally:
                monitor.stop()


class TestFindAwaitCycles:
    def test_cycles(self) -> None:
        """Two-, three- and self-cycles are found once each; acyclic graphs give none."""
        assert find_await_cycles({"a": ["b"], "b": ["a"]}) == [["a", "b"]]
        assert find_await_cycles({1: [2], 2: [3], 3: [1], 4: [1]}) == [[1, 2, 3]]
        assert find_await_cycles({"x": ["x"]}) == [["x"]]
        assert find_await_cycles({"a": ["b"], "b": ["c"], "c": []}) == []
        assert find_await_cycles({}) == []

    def test_disjoint_and_overlapping_cycles(self) -> None:
        """Every elementary cycle is reported, including ones sharing a node."""
        cycles = find_await_cycles({"a": ["b", "c"], "b": ["a"], "c": ["a"], "d": ["e"], "e": ["d"]})
        assert sorted(sorted(c) for c in cycles) == [["a", "b"], ["a", "c"], ["d", "e"]]


async def _make_primitives() -> tuple[asyncio.Lock, asyncio.Event, asyncio.Queue[int]]:
    return asyncio.Lock(), asyncio.Event(), asyncio.Queue()


async def _make_event() -> asyncio.Event:
    return asyncio.Event()


def _lineno() -> int:
    import sys

    return sys._getframe(1).f_lineno
