"""Hangs without a lock cycle are found and explained; healthy idle programs are left alone.

Every scenario runs real threads (or a real event loop) that really stop making progress;
the ``on_hang`` callback, called from the watchdog thread, then releases them so that the
test ends. A test whose hang is never detected fails by its timeout marker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import conctools
from conctools import deadlock as dl
from conctools.events import HangEvent, WaiterInfo, event_from_dict
from conctools.recorder import Recorder
from conctools.reporting import render_text

TIMEOUT_S = 0.4


def by_thread(event: HangEvent, name: str) -> WaiterInfo:
    return next(w for w in event.waiters if w.task_name is None and w.thread_name == name)


def watch(on_hang: Callable[[HangEvent], object]) -> dl.DeadlockWatchdog:
    return dl.DeadlockWatchdog(TIMEOUT_S, on_hang=on_hang)


def connect_later(port: int, delay_s: float, payload: bytes = b"x") -> subprocess.Popen[bytes]:
    """A client in another process (so no thread of ours is busy): connects after a delay."""
    code = (
        "import socket, sys, time\n"
        f"time.sleep({delay_s})\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\n"
        f"s.sendall({payload!r})\n"
        "time.sleep(0.5)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.fixture
def quiet_process() -> None:
    """A hang needs every thread blocked: fail clearly if an earlier test left a busy thread behind."""
    deadline = time.monotonic() + 5.0
    while True:
        frames = sys._current_frames()
        busy = [
            t.name
            for t in threading.enumerate()
            if t is not threading.main_thread()
            and not t.name.startswith("conctools-")
            and t.ident in frames
            and not dl.classify_thread(t.ident, frames[t.ident], with_stack=False).blocked
        ]
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if busy:
        pytest.fail(f"threads left running by earlier tests keep any hang from being detected: {busy}")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    yield srv
    srv.close()


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("quiet_process")
class TestHangKinds:
    """Each kind of hang is reported once, with every thread and what it waits on."""

    def test_event_nobody_sets(self, recorder: Recorder) -> None:
        """A thread waits on an Event nobody sets while main joins it: a hang naming Event.wait."""
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, name="waiter", daemon=True)
        t.start()
        with watch(lambda e: ev.set()) as wd:
            t.join()
        assert len(wd.hangs) == 1
        hang = wd.hangs[0]
        waiter = by_thread(hang, "waiter")
        assert waiter.state == "waiting"
        assert "Event.wait" in (waiter.waits_on or "")
        assert waiter.daemon
        main = by_thread(hang, threading.main_thread().name)
        assert "join() of thread 'waiter'" in (main.waits_on or "")
        assert "Event.wait" in (main.waits_on or "")  # who it joins, and what that one waits on
        assert any(f.function == "test_event_nobody_sets" for f in main.stack)
        assert hang.stalled_s >= TIMEOUT_S
        assert recorder.snapshot().of_kind(HangEvent) == [hang]
        assert event_from_dict(hang.to_dict()) == hang
        text = render_text(recorder.snapshot())
        assert "Hang: the program stopped making progress" in text
        assert "thread 'waiter' (daemon) [waiting]:" in text

    def test_lost_condition_wakeup(self) -> None:
        """notify() before wait(): the waiter sleeps forever in Condition.wait."""
        cond = threading.Condition()
        with cond:
            cond.notify_all()  # nobody waits yet: this wake-up is lost

        def late_waiter() -> None:
            with cond:
                cond.wait()

        def release(_: HangEvent) -> None:
            with cond:
                cond.notify_all()

        t = threading.Thread(target=late_waiter, name="late-waiter")
        t.start()
        with watch(release) as wd:
            t.join()
        assert len(wd.hangs) == 1
        assert "Condition.wait" in (by_thread(wd.hangs[0], "late-waiter").waits_on or "")

    def test_pool_waiting_on_itself(self) -> None:
        """Every worker waits on a future queued behind it in the same pool: a cycle through the
        pool's queue, reported as a deadlock (not a hang) naming each worker and the queued job."""
        inner: list[concurrent.futures.Future[int]] = []
        lock = threading.Lock()
        both_running = threading.Barrier(2)  # both workers busy before either queues its inner job

        with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="pool") as pool:

            def outer() -> int:
                both_running.wait()
                fut = pool.submit(lambda: 1)
                with lock:
                    inner.append(fut)
                return fut.result()

            def release(_: object) -> None:
                for fut in inner:
                    fut.cancel()

            with dl.DeadlockWatchdog(TIMEOUT_S, on_hang=release, on_deadlock=release) as wd:
                outers = [pool.submit(outer) for _ in range(2)]
                done = concurrent.futures.wait(outers)
        assert len(done.done) == 2
        assert wd.hangs == []
        assert len(wd.deadlocks) == 1
        parts = wd.deadlocks[0].participants
        assert sorted(p.thread_name for p in parts) == ["pool_0", "pool_1"]
        assert all(p.waits_for.startswith("a job queued in ThreadPoolExecutor 'pool'") for p in parts)
        assert all(p.waits_kind == "future" for p in parts)

    def test_queue_nobody_feeds(self) -> None:
        """A consumer blocks in Queue.get() on a queue nobody will ever feed."""
        q: queue.Queue[int | None] = queue.Queue()
        t = threading.Thread(target=q.get, name="consumer")
        t.start()
        with watch(lambda e: q.put(None)) as wd:
            t.join()
        assert len(wd.hangs) == 1
        assert "Queue.get" in (by_thread(wd.hangs[0], "consumer").waits_on or "")

    def test_join_of_a_thread_that_waits_forever(self) -> None:
        """A thread joins another one that waits forever; main joins the first: a chain of joins."""
        ev = threading.Event()
        inner = threading.Thread(target=ev.wait, name="inner")
        outer = threading.Thread(target=inner.join, name="outer")
        inner.start()
        outer.start()
        with watch(lambda e: ev.set()) as wd:
            outer.join()
        assert len(wd.hangs) == 1
        text = by_thread(wd.hangs[0], "outer").waits_on or ""
        assert "join() of thread 'inner'" in text
        assert "Event.wait" in text

    def test_event_loop_with_nothing_to_wake_it(self) -> None:
        """asyncio: a task awaits an Event nobody sets; no timers, no I/O: the loop hangs."""
        box: dict[str, object] = {}

        async def forever(ev: asyncio.Event) -> None:
            await ev.wait()

        async def main() -> None:
            ev = asyncio.Event()
            loop = asyncio.get_running_loop()
            box["release"] = lambda: loop.call_soon_threadsafe(ev.set)
            await asyncio.create_task(forever(ev), name="stuck-task")

        def release(_: HangEvent) -> None:
            fn = box["release"]
            assert callable(fn)
            fn()

        with watch(release) as wd:
            asyncio.run(main())
        assert len(wd.hangs) == 1
        hang = wd.hangs[0]
        main_thread = by_thread(hang, threading.main_thread().name)
        assert main_thread.state == "loop idle forever"
        tasks = {w.task_name: w for w in hang.waiters if w.task_name is not None}
        assert "stuck-task" in tasks
        assert "Event" in (tasks["stuck-task"].waits_on or "")
        assert any(f.function == "forever" for f in tasks["stuck-task"].stack)

    def test_reported_once_per_stall(self) -> None:
        """A hang that lasts many timeouts is reported once."""
        ev = threading.Event()
        calls: list[HangEvent] = []

        def release(e: HangEvent) -> None:
            calls.append(e)
            threading.Timer(TIMEOUT_S * 4, ev.set).start()  # keep hanging for a while

        t = threading.Thread(target=ev.wait, name="waiter")
        t.start()
        with watch(release) as wd:
            t.join()
        assert len(calls) == 1
        assert len(wd.hangs) == 1


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("quiet_process")
class TestTracedHangs:
    """Under trace_locks() the registry names the primitive, its creation site and its holder."""

    def test_event_named_by_creation_site(self) -> None:
        """A traced Event nobody sets: the wait names the Event and where the program waits."""
        with conctools.trace_locks():
            ev = threading.Event()
        t = threading.Thread(target=ev.wait, name="waiter")
        t.start()
        with watch(lambda e: ev.set()) as wd:
            t.join()
        assert len(wd.hangs) == 1
        text = by_thread(wd.hangs[0], "waiter").waits_on or ""
        assert "Event 'test_hang.py:" in text and "(not set)" in text

    def test_many_threads_on_one_event(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """200 threads parked on one traced Event: the hang names them, and each scan builds the
        Event's state (all its waiters) a few times, not once per thread (n squared: a program with
        1,000 such threads took 23 s to report a 2 s hang, and `conctools dump` timed out)."""
        with conctools.trace_locks():
            ev = threading.Event()
        workers = [threading.Thread(target=ev.wait, name=f"parked-{i}") for i in range(200)]
        for t in workers:
            t.start()
        built: list[int] = []
        state_of = dl.watchdog.registry.state_of

        def counting(prim: object) -> object:
            built.append(id(prim))
            return state_of(prim)  # type: ignore[arg-type]

        monkeypatch.setattr(dl.watchdog.registry, "state_of", counting)
        scans: list[int] = []
        scan = dl.DeadlockWatchdog.scan

        def counted_scan(self: dl.DeadlockWatchdog) -> object:
            scans.append(1)
            return scan(self)

        monkeypatch.setattr(dl.DeadlockWatchdog, "scan", counted_scan)
        hangs: list[HangEvent] = []

        def found(event: HangEvent) -> None:
            hangs.append(event)
            ev.set()

        with watch(found) as wd:
            for t in workers:
                t.join()
        assert len(hangs) == 1 and len(wd.hangs) == 1
        parked = [w for w in hangs[0].waiters if (w.thread_name or "").startswith("parked-")]
        assert len(parked) == 200 and all("Event 'test_hang.py:" in (w.waits_on or "") for w in parked)
        # A few states a scan (the cheap pass, then the stacks), however many threads wait.
        assert built and len(built) <= 10 * len(scans), (len(built), len(scans))

    def test_queue_nobody_feeds(self) -> None:
        """A traced queue.Queue: both the stdlib call and its traced Condition are named."""
        with conctools.trace_locks():
            q: queue.Queue[int | None] = queue.Queue()
        t = threading.Thread(target=q.get, name="consumer")
        t.start()
        with watch(lambda e: q.put(None)) as wd:
            t.join()
        text = by_thread(wd.hangs[0], "consumer").waits_on or ""
        assert "queue.Queue.get() (the queue is empty" in text
        assert "Condition" in text

    def test_lock_held_by_a_thread_waiting_forever(self) -> None:
        """No cycle: one thread holds a lock and waits on an Event; the other waits on the lock."""
        lock = conctools.Lock(name="cache")
        ev = conctools.Event(name="refill-done")
        holding = threading.Event()

        def holder() -> None:
            with lock:
                holding.set()
                ev.wait()

        def waiter() -> None:
            holding.wait()
            with lock:
                pass

        threads = [threading.Thread(target=holder, name="holder"), threading.Thread(target=waiter, name="waiter")]
        for t in threads:
            t.start()
        with watch(lambda e: ev.set()) as wd:
            for t in threads:
                t.join()
        assert wd.deadlocks == []
        assert len(wd.hangs) == 1
        assert "Lock 'cache' held by thread 'holder'" in (by_thread(wd.hangs[0], "waiter").waits_on or "")
        assert "Event 'refill-done' (not set)" in (by_thread(wd.hangs[0], "holder").waits_on or "")

    def test_await_cycle(self) -> None:
        """Two tasks awaiting each other: the loop hangs and the reason names the await cycle."""
        box: dict[str, asyncio.Task[None]] = {}

        async def one(other: str) -> None:
            await asyncio.sleep(0)
            await asyncio.wait([box[other]])  # unlike `await task`, a cancel does not recurse around the cycle

        async def main() -> None:
            box["a"] = asyncio.create_task(one("b"), name="A")
            box["b"] = asyncio.create_task(one("a"), name="B")
            await asyncio.wait([box["a"], box["b"]])
            await asyncio.gather(*box.values(), return_exceptions=True)

        loop_box: list[asyncio.AbstractEventLoop] = []

        def release(_: HangEvent) -> None:
            loop = loop_box[0]
            loop.call_soon_threadsafe(box["a"].cancel)

        async def runner() -> None:
            loop_box.append(asyncio.get_running_loop())
            await main()

        with watch(release) as wd:
            asyncio.run(runner())
        assert len(wd.hangs) == 1
        reason = wd.hangs[0].reason
        assert "await cycle: 'A' -> 'B' -> 'A'" in reason or "await cycle: 'B' -> 'A' -> 'B'" in reason


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("quiet_process")
class TestUntracedLocks:
    """Without trace_locks(), a wait on a plain threading.Lock/RLock is recognised from the bytecode."""

    def test_abba_on_plain_locks_is_a_hang(self) -> None:
        """Two threads deadlocked on untraced locks: reported as a hang naming each lock expression."""
        first, second = threading.Lock(), threading.Lock()
        both = threading.Barrier(2)

        def one() -> None:
            with first:
                both.wait()
                with second:
                    pass

        def two() -> None:
            second.acquire()
            both.wait()
            first.acquire()
            first.release()
            try:
                second.release()
            except RuntimeError:  # released by the test to break the deadlock
                pass

        threads = [threading.Thread(target=one, name="one"), threading.Thread(target=two, name="two")]
        for t in threads:
            t.start()
        with watch(lambda e: second.release()) as wd:
            for t in threads:
                t.join()
        assert len(wd.hangs) == 1
        assert by_thread(wd.hangs[0], "one").waits_on == "threading.Lock 'second' (untraced, locked)"
        assert by_thread(wd.hangs[0], "two").waits_on == "threading.Lock 'first' (untraced, locked)"

    def test_rlock_attribute_names_its_owner(self) -> None:
        """`obj._lock.acquire()` on an RLock another thread holds: the expression and the owner."""

        class Store:
            def __init__(self) -> None:
                self._lock = threading.RLock()

        store = Store()
        ev = threading.Event()

        def owner() -> None:
            with store._lock:
                ev.wait()

        def waiter() -> None:
            store._lock.acquire()
            store._lock.release()

        threads = [threading.Thread(target=owner, name="owner"), threading.Thread(target=waiter, name="waiter")]
        threads[0].start()
        time.sleep(0.05)
        threads[1].start()
        with watch(lambda e: ev.set()) as wd:
            for t in threads:
                t.join()
        assert (
            by_thread(wd.hangs[0], "waiter").waits_on
            == "threading.RLock 'store._lock' (untraced) held by thread 'owner'"
        )

    def test_acquire_with_a_timeout_is_not_a_hang(self) -> None:
        """lock.acquire(timeout=...) on a locked plain Lock will end by itself."""
        lock = threading.Lock()
        lock.acquire()

        def patient() -> None:
            lock.acquire(True, TIMEOUT_S * 4)

        t = threading.Thread(target=patient, name="patient")
        t.start()
        with watch(lambda e: None) as wd:
            t.join()
        lock.release()
        assert wd.hangs == []


@pytest.mark.timeout(60)
class TestNoFalseAlarms:
    """Idle but healthy programs are never reported as hung."""

    def test_sleeping_thread(self) -> None:
        """A thread in time.sleep() while main joins it."""
        t = threading.Thread(target=time.sleep, args=(TIMEOUT_S * 4,), name="sleeper")
        t.start()
        with watch(lambda e: None) as wd:
            t.join()
        assert wd.hangs == []

    def test_wait_with_a_timeout(self) -> None:
        """A thread in Event.wait(timeout) while main joins it."""
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, args=(TIMEOUT_S * 4,), name="patient")
        t.start()
        with watch(lambda e: None) as wd:
            t.join()
        assert wd.hangs == []

    def test_thread_in_accept_and_recv(self, listener: socket.socket) -> None:
        """A server thread blocked in accept() then recv(): waiting for the network is not a hang."""
        got: list[bytes] = []

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                got.append(conn.recv(16))

        t = threading.Thread(target=serve, name="server")
        t.start()
        client = connect_later(listener.getsockname()[1], TIMEOUT_S * 4)
        try:
            with watch(lambda e: None) as wd:
                t.join()
        finally:
            client.wait(timeout=30)
        assert got == [b"x"]
        assert wd.hangs == []

    def test_thread_in_select(self, listener: socket.socket) -> None:
        """A selectors-based server loop idling in select() without a timeout."""
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)

        def loop() -> None:
            sel.select()
            conn, _ = listener.accept()
            conn.close()

        t = threading.Thread(target=loop, name="selector")
        t.start()
        client = connect_later(listener.getsockname()[1], TIMEOUT_S * 4)
        try:
            with watch(lambda e: None) as wd:
                t.join()
        finally:
            client.wait(timeout=30)
            sel.close()
        assert wd.hangs == []

    def test_asyncio_server_idle(self) -> None:
        """An asyncio server idling in select() on its listening socket."""

        async def main() -> None:
            done = asyncio.Event()

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await reader.read(1)
                writer.close()
                done.set()

            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            client = connect_later(port, TIMEOUT_S * 4)
            async with server:
                await done.wait()
            await asyncio.to_thread(client.wait, 30)

        with watch(lambda e: None) as wd:
            asyncio.run(main())
        assert wd.hangs == []

    def test_waiting_for_a_signal_handler(self) -> None:
        """Everyone waits, but a SIGTERM handler would set the Event: a parked server, not a hang."""
        ev = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: ev.set())
        t = threading.Thread(target=ev.wait, name="until-sigterm")
        t.start()
        killer = subprocess.Popen(
            [sys.executable, "-c", f"import os, time; time.sleep({TIMEOUT_S * 4}); os.kill({os.getpid()}, 15)"]
        )
        try:
            with watch(lambda e: None) as wd:
                t.join()
        finally:
            killer.wait(timeout=30)
            signal.signal(signal.SIGTERM, previous)
        assert wd.hangs == []

    def test_idle_pool_workers_while_main_runs(self) -> None:
        """Idle pool workers alone are no hang while the main thread runs code."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            pool.submit(lambda: None).result()
            with watch(lambda e: None) as wd:
                deadline = time.monotonic() + TIMEOUT_S * 4
                while time.monotonic() < deadline:
                    sum(range(1000))
        assert wd.hangs == []


class TestClassifyThread:
    """classify_thread() reads a live thread's frame correctly."""

    def test_running_thread_is_not_blocked(self) -> None:
        """The calling thread, running Python code, is not blocked."""
        state = dl.classify_thread(threading.get_ident(), sys._getframe())
        assert not state.blocked
        assert state.state == "running"

    def test_unknown_frame(self) -> None:
        """No frame: unknown, not blocked."""
        assert not dl.classify_thread(1, None).blocked
