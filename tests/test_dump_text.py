"""The dump and top reporters: pure functions of the agent's documents."""

from __future__ import annotations

from typing import Any

from conctools.events import DeadlockEvent, Frame, Participant
from conctools.reporting.deadlock_text import format_deadlock
from conctools.reporting.dump_text import render_dump
from conctools.reporting.top_text import cpu_percent, render_top


def _frame(function: str, lineno: int, line: str = "") -> dict[str, Any]:
    return {"filename": "/srv/app.py", "lineno": lineno, "function": function, "line": line}


def _thread(name: str, tid: int, **extra: Any) -> dict[str, Any]:
    row = {
        "id": tid,
        "native_id": tid + 1,
        "name": name,
        "daemon": True,
        "main": False,
        "own": False,
        "state": "idle",
        "waits_on": "work from its ThreadPoolExecutor (an idle pool worker)",
        "blocked": True,
        "stack": [_frame("_worker", 81, "work_item = work_queue.get(block=True)")],
    }
    row.update(extra)
    return row


def _doc(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": "conctools.dump/1",
        "process": {
            "pid": 4242,
            "command": "conctools run app.py",
            "run_command": "app.py",
            "python": "3.11.7",
            "implementation": "cpython",
            "conctools": "0.1.0",
            "started_wall": 1_796_000_000.0,
            "uptime_s": 83.0,
        },
        "taken_wall": 1_796_000_083.0,
        "build_s": 0.012,
        "threads": [],
        "loops": [],
        "tasks_total": 0,
        "tasks": [],
        "traced_primitives": 0,
        "locks": [],
        "wait_for": {"edges": [], "deadlocks": [], "hang": None, "await_cycles": []},
        "so_far": None,
        "resources": {"cpu_user_s": 1.5, "cpu_system_s": 0.25, "rss_bytes": 30 * 2**20, "num_threads": 3},
        "errors": [],
    }
    doc.update(extra)
    return doc


class TestDumpText:
    """What `conctools dump` prints."""

    def test_threads_with_one_stack_are_one_block(self) -> None:
        """1,000 idle workers read as one block with the count and the first names."""
        threads = [_thread(f"worker-{i}", 100 + i) for i in range(1000)]
        main = _thread("MainThread", 1, main=True, daemon=False, state="running", waits_on=None, blocked=False)
        main["stack"] = [_frame("<module>", 12, "serve()")]
        text = render_dump(_doc(threads=[main, *threads]))
        assert "1000 threads with this stack: 'worker-0', 'worker-1'" in text
        assert "and 992 more (daemon) [idle]:" in text
        assert text.count("at _worker (/srv/app.py:81)") == 1
        assert (
            "thread 'MainThread' (id 1, native 2) [running]:\n    at <module> (/srv/app.py:12)\n        serve()" in text
        )
        assert "1001 threads (1000 idle, 1 running)" in text

    def test_the_deadlock_reads_as_the_watchdogs_report(self) -> None:
        """The cycle is the watchdog's own text, and the wait-for graph names each edge."""
        participants = tuple(
            Participant(
                thread_id=i,
                thread_name=me,
                task_name=None,
                waits_for=f"Lock {lock!r}",
                waits_for_id=i,
                wait_site=f"app.py:{20 + i}",
                held_by=f"thread {other!r}",
                holds=(f"Lock {held!r}",),
                holds_sites=(f"app.py:{10 + i}",),
                stack=(Frame("/srv/app.py", 20 + i, me),),
                wait_s=2.0,
            )
            for i, (me, other, lock, held) in enumerate(
                [("transfer", "audit", "ledger", "accounts"), ("audit", "transfer", "accounts", "ledger")]
            )
        )
        event = DeadlockEvent(ts_ns=1, thread_id=0, thread_name="transfer", participants=participants)
        edges = [
            {
                "who": "thread 'transfer'",
                "waits_for": "Lock 'ledger'",
                "held_by": "thread 'audit'",
                "wait_site": "app.py:20",
                "wait_s": 2.0,
            }
        ]
        wait_for = {"edges": edges, "deadlocks": [event.to_dict()], "hang": None, "await_cycles": [["a", "b"]]}
        text = render_dump(_doc(wait_for=wait_for))
        assert format_deadlock(event) in text
        assert "Found 1 deadlock now." in text
        assert "  thread 'transfer' waits for Lock 'ledger' held by thread 'audit' at app.py:20, for 2.00 s" in text
        assert "  await cycle: 'a' -> 'b' -> 'a'" in text

    def test_locks_say_since_when_or_that_it_is_not_recorded(self) -> None:
        """A holder taken uncontended has no start time; a waiter has one."""
        holder = {"who": "thread 'a'", "site": "app.py:5", "for_s": None, "since_wall": None, "timeout_s": None}
        waiter = {
            "who": "thread 'b'",
            "site": "app.py:9",
            "for_s": 3.0,
            "since_wall": 1_796_000_080.0,
            "timeout_s": 1.5,
        }
        lock = {
            "id": 1,
            "name": "db",
            "kind": "Lock",
            "created_at": "app.py:2",
            "holders": [holder],
            "waiters": [waiter],
        }
        text = render_dump(_doc(locks=[lock], traced_primitives=7))
        assert "Locks held or awaited now (1 of 7 traced)" in text
        assert "Lock 'db' (created at app.py:2):\n" in text
        assert (
            "    held by thread 'a', taken at app.py:5 (since when is not recorded: it was taken uncontended)" in text
        )
        assert "    awaited by thread 'b' for 3.00 s (since " in text and "), waiting at app.py:9, timeout 1.5s" in text

    def test_names_are_neutralised(self) -> None:
        """A thread or task named with terminal escapes or a bidirectional override is shown, not obeyed."""
        evil = _thread("\x1b[2Jgone\u202eevil", 7)
        task = {
            "id": 1,
            "name": "\x1b]0;title\x07",
            "coro": "main",
            "state": "pending",
            "loop_id": 9,
            "thread_id": 1,
            "created_at": None,
            "awaits": None,
            "awaits_kind": None,
            "awaits_task_ids": [],
            "awaited_by": [],
            "stack": [],
        }
        text = render_dump(_doc(threads=[evil], tasks=[task], tasks_total=1, loops=[{"id": 9, "tasks": 1}]))
        assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
        assert "\\x1b[2Jgone\\u202eevil" in text and "\\x1b]0;title\\x07" in text

    def test_what_the_agent_could_not_read_is_said(self) -> None:
        """A part that failed inside the process is listed, the rest still shown."""
        text = render_dump(_doc(errors=["tasks: RuntimeError: boom"]))
        assert "Parts the agent could not read:\n  tasks: RuntimeError: boom" in text
        assert "Resources now: cpu 1.50 s user + 0.25 s system, rss 30.0 MiB, 3 OS threads" in text

    def test_a_stalled_loop_names_its_line(self) -> None:
        """A loop blocked now: for how long and where."""
        loop = {
            "id": 9,
            "kind": "asyncio.unix_events._UnixSelectorEventLoop",
            "thread_name": "MainThread",
            "tasks": 3,
            "current_task": "handler",
            "monitored": True,
            "threshold_s": 0.1,
            "lag_now_s": 1.25,
            "stalled_s": 1.25,
            "stall_at": _frame("report", 88, "time.sleep(5)"),
        }
        text = render_dump(_doc(loops=[loop], tasks_total=3))
        assert (
            "event loop asyncio.unix_events._UnixSelectorEventLoop in thread 'MainThread': 3 tasks; "
            "running 'handler'; BLOCKED for 1.25 s at /srv/app.py:88 in report"
        ) in text


class TestTopText:
    """What `conctools top` draws."""

    def _top(self, taken: float, cpu_s: float, **extra: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema": "conctools.top/1",
            "process": {"pid": 4242, "command": "conctools run app.py", "uptime_s": 10.0},
            "taken_wall": taken,
            "resources": {"cpu_user_s": cpu_s, "cpu_system_s": 0.0, "rss_bytes": 2**20, "num_fds": 12},
            "threads": {"total": 3, "own": 2, "by_state": {"waiting": 2, "running": 1}},
            "tasks": {"total": 5, "by_state": {"pending": 5}, "by_awaits": {"lock": 4, "sleep": 1}},
            "loops": [],
            "waits_now": [],
            "lock_table": [],
            "stalls": None,
            "gil": None,
            "errors": [],
        }
        doc.update(extra)
        return doc

    def test_cpu_is_measured_between_two_answers(self) -> None:
        """The first screen says the average since the start; the next ones the interval's."""
        first, second = self._top(100.0, 1.0), self._top(101.0, 1.5)
        assert cpu_percent(first, None) == (10.0, " (average since start)")
        assert cpu_percent(second, first) == (50.0, "")
        text = render_top(second, first)
        assert "Process:  CPU 50.0%   RSS 1.0 MiB   fds 12" in text
        assert "Threads:  3 of the program (2 waiting, 1 running) + 2 of conctools" in text
        assert "Tasks:    5 (4 lock, 1 sleep)" in text

    def test_hottest_locks_leave_out_signals_and_lines_fit_the_width(self) -> None:
        """Events and conditions are waits for a signal, not lock contention; long lines are cut."""
        rows = [
            {"name": "ready", "kind": "aio.Event", "contentions": 9, "wait_total_s": 9.0},
            {"name": "db", "kind": "Lock", "contentions": 3, "wait_total_s": 1.0, "wait_p99_s": 0.5, "wait_max_s": 0.6},
        ]
        waits = [
            {
                "lock": "Lock 'db'",
                "waiters": 2,
                "longest_s": 1.5,
                "holders": ["thread 'a'" * 20],
                "held_for_s": None,
                "held_at": None,
            }
        ]
        text = render_top(self._top(1.0, 0.1, lock_table=rows, waits_now=waits), width=60)
        assert "  db    Lock          3  1.00 s  500 ms  600 ms" in text and "ready" not in text
        assert all(len(line) <= 60 for line in text.splitlines())
        assert "Waits on traced locks now (most waiters first):" in text
