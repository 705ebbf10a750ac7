"""A recorded run with every event kind, hostile names included, for the reporter tests."""

from __future__ import annotations

import asyncio
import threading
import time

from conctools.events import (
    DeadlockEvent,
    Frame,
    HangEvent,
    LockOrderEdge,
    LockOrderEvent,
    LockWaitEvent,
    MarkEvent,
    Participant,
    ResourceSampleEvent,
    SlowCallbackEvent,
    WaiterInfo,
)
from conctools.recorder import Recorder, Snapshot, use_recorder
from conctools.tracing import traced

# Names a program may give its tasks, threads and locks; reports must show them as text.
HOSTILE = "<img src=x onerror=alert(1)>"
SCRIPT_END = "</script><script>alert(2)</script>"
QUOTES = "it's \"quoted\" & 'single'"
LINE_SEP = "line\u2028sep\u2029para"
HOSTILE_NAMES = (HOSTILE, SCRIPT_END, QUOTES, LINE_SEP)


def _frame(fn: str = "work", line: int = 12) -> Frame:
    return Frame(filename="/app/prog.py", lineno=line, function=fn, line="lock.acquire()")


def rich_snapshot() -> Snapshot:
    """Real spans from threads and tasks with hostile names, plus one of every other event kind."""
    rec = Recorder()
    with use_recorder(rec):

        @traced(HOSTILE)
        def step() -> None:
            time.sleep(0.002)

        def thread_main() -> None:
            with traced("outer"):
                step()
                step()

        t = threading.Thread(target=thread_main, name=SCRIPT_END)
        t.start()
        t.join()

        @traced("async step")
        async def astep() -> None:
            await asyncio.sleep(0.002)

        async def main() -> None:
            await asyncio.gather(
                asyncio.create_task(astep(), name=HOSTILE),
                asyncio.create_task(astep(), name=LINE_SEP),
                asyncio.create_task(astep(), name=QUOTES),
            )

        asyncio.run(main())
    # The synthetic events below sit in the last few ms before `now`: leave a gap after the
    # real spans, or (on a fast run) they overlap those spans and open extra lanes at random.
    time.sleep(0.02)
    now = time.monotonic_ns()
    main_id = threading.main_thread().ident or 1
    holder = f"thread {SCRIPT_END!r}"
    rec.record(
        LockWaitEvent(
            ts_ns=now - 3_000_000,
            thread_id=main_id,
            thread_name="MainThread",
            task_name=HOSTILE,
            lock_id=1,
            lock_name=HOSTILE,
            lock_kind="aio.Lock",
            wait_s=0.002,
            acquired=True,
            holder=holder,
            site="/app/prog.py:12",
            stack=(_frame(),),
        )
    )
    rec.record(
        LockWaitEvent(
            ts_ns=now - 2_500_000,
            thread_id=main_id,
            thread_name="MainThread",
            lock_id=2,
            lock_name=QUOTES,
            lock_kind="Lock",
            wait_s=0.001,
            acquired=False,
            holder=None,
            site="/app/prog.py:20",
        )
    )
    rec.record(
        SlowCallbackEvent(
            ts_ns=now - 2_000_000,
            thread_id=main_id,
            thread_name="MainThread",
            task_name=HOSTILE,
            loop_id=7,
            duration_s=0.0015,
            threshold_s=0.001,
            callback=f"Task {HOSTILE!r} (coro main)",
            culprit=_frame("blocking", 33),
            samples=((_frame("blocking", 33),),),
        )
    )
    edge = LockOrderEdge(from_lock="a", to_lock=HOSTILE, from_site="p.py:1", to_site="p.py:2", thread_name="T1")
    rec.record(
        LockOrderEvent(
            ts_ns=now - 1_500_000, thread_id=main_id, thread_name="MainThread", cycle=("a", HOSTILE), edges=(edge,)
        )
    )
    part = Participant(
        thread_id=main_id,
        thread_name=SCRIPT_END,
        task_name=None,
        waits_for=HOSTILE,
        waits_for_id=1,
        wait_site="p.py:3",
        held_by="thread 'T2'",
        stack=(_frame(),),
    )
    rec.record(DeadlockEvent(ts_ns=now - 1_000_000, thread_id=main_id, thread_name="MainThread", participants=(part,)))
    waiter = WaiterInfo(thread_id=main_id, thread_name=LINE_SEP, task_name=None, state="waiting", waits_on=HOSTILE)
    rec.record(
        HangEvent(
            ts_ns=now - 900_000,
            thread_id=main_id,
            thread_name="MainThread",
            stalled_s=5.0,
            reason=QUOTES,
            waiters=(waiter,),
        )
    )
    rec.record(
        MarkEvent(ts_ns=now - 800_000, thread_id=main_id, thread_name="MainThread", name=HOSTILE, detail={"x": QUOTES})
    )
    for n in range(4):
        rec.record(
            ResourceSampleEvent(
                ts_ns=now - 700_000 + n * 100_000,
                thread_id=2,
                thread_name="conctools-resources",
                cpu_percent=10.0 * n,
                rss_bytes=(40 + n) * 2**20,
                num_threads=3 + n,
                num_fds=10 + n,
                ctx_switches_voluntary=100 * n,
                ctx_switches_involuntary=10 * n,
            )
        )
    rec.add_section(
        "locks",
        lambda: [
            {"name": HOSTILE, "acquisitions": 10, "contentions": 2, "wait_p99_s": 0.002},
            {"name": QUOTES, "acquisitions": 5, "contentions": 1, "wait_p99_s": 0.001},
        ],
    )
    rec.add_section(
        "profile",
        lambda: {
            "clock": "wall",
            "running": False,
            "duration_s": 0.5,
            "function_count": 2,
            "functions": [
                {
                    "name": HOSTILE,
                    "filename": "/app/prog.py",
                    "lineno": 3,
                    "calls": 4,
                    "total_s": 0.3,
                    "own_s": 0.2,
                    "builtin": False,
                },
                {
                    "name": "helper",
                    "filename": "/app/prog.py",
                    "lineno": 9,
                    "calls": 2,
                    "total_s": 0.1,
                    "own_s": 0.1,
                    "builtin": False,
                },
            ],
            "threads": [{"name": SCRIPT_END, "thread_id": 5, "total_s": 0.4, "switches": 3, "top": []}],
            "tasks": [{"name": LINE_SEP, "own_s": 0.05, "calls": 7, "top": []}],
            "task_count": 1,
        },
    )
    return rec.snapshot()
