"""The blame on realistic bug programs: each program of ``tests/corpus/`` runs under
``conctools run --deadlock-timeout 1`` as a user would run it, and each test asserts the report a
person reads: the exit status, the culprit's and the victims' names, the lines (found by the
``# MARK:`` comments of the program), and that nothing misleading is printed (no wrong holder,
no wrong hint).

The programs run as subprocesses, a few at a time, started when the module's first test asks
for one (every selected program is started then), so the whole corpus takes about as long as
its slowest few programs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import pytest

CORPUS = Path(__file__).parent / "corpus"
EXIT_DEADLOCK, EXIT_HANG = 86, 87

F = TypeVar("F", bound=Callable[..., Any])


def program(name: str) -> Callable[[F], F]:
    """Which corpus program a test reads (the fixture starts every selected one at once)."""

    def mark(fn: F) -> F:
        fn.corpus_program = name  # type: ignore[attr-defined]
        return fn

    return mark


def site(name: str, label: str) -> str:
    """``name:LINE`` of the line marked ``# MARK: label`` in a corpus program."""
    for i, line in enumerate((CORPUS / name).read_text().splitlines(), 1):
        if f"# MARK: {label}" in line:
            return f"{name}:{i}"
    raise AssertionError(f"no '# MARK: {label}' in {name}")


def lineno(name: str, label: str) -> int:
    return int(site(name, label).rsplit(":", 1)[1])


def flat(text: str) -> str:
    """Text with its line wrapping undone (summaries are wrapped for terminals)."""
    return re.sub(r"\s+", " ", text)


@dataclass
class Outcome:
    """One corpus program run under conctools: exit status, output and the written reports."""

    name: str
    status: int
    stdout: str
    stderr: str
    out: Path

    @cached_property
    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out / "report.json").read_text())
        return data

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.report["events"] if e["kind"] == kind]

    @cached_property
    def deadlock_text(self) -> str:
        """The deadlock section up to the stacks (what a person reads first)."""
        text = self.stderr
        assert "Found one Python-level deadlock:" in text, text
        return text.split("Found one Python-level deadlock:", 1)[1].split("Stacks of the threads and tasks", 1)[0]

    @cached_property
    def hang_text(self) -> str:
        text = self.stderr
        assert "Hang: the program stopped making progress" in text, text
        return text.split("Hang: the program stopped making progress", 1)[1].split("\n\nLocks (", 1)[0]

    def waits_on(self, who: str) -> str:
        """The ``- waits on`` line of ``thread 'x'`` / ``task 'y'`` in the hang report."""
        match = re.search(rf"^{re.escape(who)}[^\n]*\[[^\]]*\]:\n    - waits on (.*)$", self.hang_text, re.M)
        assert match, f"{who} has no 'waits on' line in:\n{self.hang_text}"
        return match.group(1)

    @cached_property
    def trace(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads((self.out / "trace.json").read_text())["traceEvents"]
        return events

    @cached_property
    def html_data(self) -> dict[str, Any]:
        page = (self.out / "report.html").read_text()
        raw = page.split('<script type="application/json" id="conctools-data">', 1)[1].split("</script>", 1)[0]
        data: dict[str, Any] = json.loads(raw)
        return data


def _run(name: str, out: Path) -> Outcome:
    # Output to files, not pipes: a stuck child process of the program (mp_queue_unflushed.py)
    # outlives it holding its stdout, and reading a pipe to its end would wait for that child.
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stdout", "w+") as stdout, open(out / "stderr", "w+") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conctools",
                "run",
                "--deadlock-timeout",
                "1",
                "--out",
                str(out),
                str(CORPUS / name),
            ],
            stdout=stdout,
            stderr=stderr,
            text=True,
            cwd=CORPUS,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            status = process.wait(timeout=90)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        stdout.seek(0)
        stderr.seek(0)
        return Outcome(name=name, status=status, stdout=stdout.read(), stderr=stderr.read(), out=out)


class Runs:
    """The selected corpus programs, run three at a time in the background."""

    def __init__(self, names: list[str], tmp: Path) -> None:
        self._pool = ThreadPoolExecutor(max_workers=3)
        self._tmp = tmp
        self._futures: dict[str, Future[Outcome]] = {}
        for name in names:
            self._start(name)

    def _start(self, name: str) -> Future[Outcome]:
        if name not in self._futures:
            self._futures[name] = self._pool.submit(_run, name, self._tmp / name.removesuffix(".py"))
        return self._futures[name]

    def __getitem__(self, name: str) -> Outcome:
        return self._start(name).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    names = []
    for item in request.session.items:
        name = getattr(getattr(item, "function", None), "corpus_program", None)
        if name is not None and item.module is request.module and name not in names:
            names.append(name)
    started = Runs(names, tmp_path_factory.mktemp("corpus"))
    yield started
    started.close()


def slow_segments(outcome: Outcome) -> dict[str | None, dict[str, Any]]:
    """The slow-callback segments of a run, by task name (each task blocks once in these programs)."""
    segments: dict[str | None, dict[str, Any]] = {}
    for e in outcome.events("slow_callback"):
        assert e["task_name"] not in segments, f"two segments for {e['task_name']!r}"
        segments[e["task_name"]] = e
    return segments


# -- several callbacks in one stall (item 1) ----------------------------------------------------------


@pytest.mark.timeout(180)
class TestStallSegments:
    """A stall caused by several tasks is cut into one entry per task, each with its own line."""

    @program("stall_two_sleepers.py")
    def test_two_blocking_handlers_in_one_iteration(self, runs: Runs) -> None:
        """Two handlers block one after the other: two entries, each name over its own line and stack."""
        r = runs["stall_two_sleepers.py"]
        assert r.status == 0, r.stderr
        assert r.stdout == "served\n"
        segments = slow_segments(r)
        assert set(segments) == {"GET /profile", "GET /invoice"}
        profile, invoice = segments["GET /profile"], segments["GET /invoice"]
        assert profile["culprit"]["lineno"] == lineno(r.name, "profile-sleep")
        assert invoice["culprit"]["lineno"] == lineno(r.name, "invoice-sleep")
        assert profile["culprit"]["function"] == "fetch_profile_sync"
        assert invoice["culprit"]["function"] == "render_invoice_sync"
        for seg in (profile, invoice):  # the stacks under a name are that task's own
            assert seg["segments"] == 2 and seg["stall_id"] == profile["stall_id"]
            assert all(seg["culprit"]["function"] in [f["function"] for f in s] for s in seg["samples"])
            assert 0.15 < seg["duration_s"] < seg["stall_s"]
        assert profile["stall_s"] == pytest.approx(profile["duration_s"] + invoice["duration_s"], abs=1e-6)
        text = flat(r.stderr)
        assert "blocked 1 time (threshold 100 ms)" in text and "by 2 callbacks, at 2 sites" in text
        assert (
            f"Blocked at corpus/{site(r.name, 'profile-sleep')}: time.sleep(0.4) # MARK: profile-sleep "
            "while running Task 'GET /profile' (profile_handler)"
        ) in text
        assert (
            f"Blocked at corpus/{site(r.name, 'invoice-sleep')}: time.sleep(0.4) # MARK: invoice-sleep "
            "while running Task 'GET /invoice' (invoice_handler)"
        ) in text
        assert "Stalls caused by several callbacks, one after the other (1):" in r.stderr
        assert re.search(
            rf"Task 'GET /profile' \(profile_handler\) at corpus/{re.escape(site(r.name, 'profile-sleep'))}", r.stderr
        )
        assert re.search(
            rf"Task 'GET /invoice' \(invoice_handler\) at corpus/{re.escape(site(r.name, 'invoice-sleep'))}", r.stderr
        )
        # Perfetto and the HTML page: the same two entries, each name with its own line.
        slices = {e["args"]["task"]: e for e in r.trace if e.get("cat") == "slow_callback"}
        assert set(slices) == {"GET /profile", "GET /invoice"}
        assert slices["GET /profile"]["args"]["culprit"].startswith(f"{CORPUS / site(r.name, 'profile-sleep')} in ")
        assert slices["GET /invoice"]["args"]["culprit"].startswith(f"{CORPUS / site(r.name, 'invoice-sleep')} in ")
        assert {slices[k]["args"]["segment"] for k in slices} == {"1 of 2", "2 of 2"}
        # The page's slow-callback table groups stalls by culprit site: one row per site, named by its own task.
        rows = {row["tasks"]: row for row in r.html_data["slow_sites"]}
        assert set(rows) == {"GET /profile", "GET /invoice"}, rows
        assert rows["GET /profile"]["line"] == "time.sleep(0.4)  # MARK: profile-sleep"
        assert rows["GET /invoice"]["line"] == "time.sleep(0.4)  # MARK: invoice-sleep"
        assert rows["GET /profile"]["function"] == "fetch_profile_sync"
        assert rows["GET /invoice"]["function"] == "render_invoice_sync"

    @program("stall_sleep_and_cpu.py")
    def test_sleep_and_cpu_loop_among_eight_workers(self, runs: Runs) -> None:
        """Eight tasks wake together; the sleeper and the CPU loop each get their own entry and line."""
        r = runs["stall_sleep_and_cpu.py"]
        assert r.status == 0, r.stderr
        segments = slow_segments(r)
        assert set(segments) == {"worker-3", "worker-5"}  # nobody else blocked: nobody else is named
        assert segments["worker-3"]["culprit"]["lineno"] == lineno(r.name, "worker-sleep")
        cpu = segments["worker-5"]["culprit"]
        assert cpu["function"] == "checksum"
        assert cpu["lineno"] in (lineno(r.name, "cpu-loop"), lineno(r.name, "cpu-loop") + 1)
        assert all(any(f["function"] == "checksum" for f in s) for s in segments["worker-5"]["samples"])
        assert all(all(f["function"] != "checksum" for f in s) for s in segments["worker-3"]["samples"])
        assert "while running Task 'worker-3' (worker)" in r.stderr
        assert "while running Task 'worker-5' (worker)" in r.stderr
        blocks = r.stderr.split("  Blocked at ")[1:]
        sleeper = next(b for b in blocks if "while running Task 'worker-3'" in b)
        assert "time.sleep(0.4)" in sleeper and "checksum" not in sleeper.split("Stalls caused")[0]

    @program("taskgroup_child_blocks.py")
    def test_taskgroup_child_not_parent(self, runs: Runs) -> None:
        """A TaskGroup child's blocking call is blamed on the child and its line, not on the parent."""
        r = runs["taskgroup_child_blocks.py"]
        assert r.status == 0, r.stderr
        segments = slow_segments(r)
        assert set(segments) == {"fetch-2"}
        assert segments["fetch-2"]["culprit"]["lineno"] == lineno(r.name, "legacy-sleep")
        assert "while running Task 'fetch-2' (fetch)" in r.stderr
        assert "'Task-1'" not in r.stderr.split("Slow callbacks", 1)[1].split("Loop lag", 1)[0]


# -- deadlocks through event loops, pools and joins (items 2, 3) ------------------------------------------


@pytest.mark.timeout(180)
class TestDeadlocks:
    """Cycles through locks, event loops, pools and joins: exit 86, each party and line named."""

    @program("threadsafe_under_lock.py")
    def test_cycle_through_the_event_loop(self, runs: Runs) -> None:
        """A thread holding a lock waits for a coroutine whose loop thread waits for that lock."""
        r = runs["threadsafe_under_lock.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        text = flat(r.deadlock_text)
        lock = "Lock 'threadsafe_under_lock.py:7'"
        assert (
            f"thread 'cache-worker' (holding {lock}, taken at {site(r.name, 'worker-acquires')}) waits at"
            f" {site(r.name, 'worker-waits')} for coroutine load_config() (task 'Task-2') scheduled with"
            " run_coroutine_threadsafe() on the event loop of thread 'MainThread'"
        ) in text
        assert (
            f"task 'Task-2' (thread 'MainThread') blocks its event loop's thread at {site(r.name, 'coroutine-blocks')},"
            f" waiting for {lock}, held by thread 'cache-worker'"
        ) in text
        assert "Advice: Do not wait for a coroutine of an event loop" in text
        assert "it waits for itself" not in text and "Hang:" not in r.stderr
        [event] = r.events("deadlock")
        assert {(p["thread_name"], p["task_name"], p["waits_kind"]) for p in event["participants"]} == {
            ("cache-worker", None, "future"),
            ("MainThread", "Task-2", "lock"),
        }

    @program("threadsafe_under_lock.py")
    def test_every_output_carries_the_same_blame(self, runs: Runs) -> None:
        """report.json, trace.json (Perfetto) and report.html carry the summary the text prints."""
        r = runs["threadsafe_under_lock.py"]
        [event] = r.events("deadlock")
        summary = event["summary"]
        assert summary and flat(summary) in flat(r.deadlock_text)
        [instant] = [e for e in r.trace if e.get("cat") == "deadlock"]
        assert instant["args"]["summary"] == summary
        assert any("thread 'cache-worker'" in k for k in instant["args"])
        [cycle] = r.html_data["deadlocks"]
        assert cycle[0]["summary"] == summary
        assert cycle[0]["advice"] == event["advice"]

    @program("threadsafe_own_loop.py")
    def test_waiting_for_a_coroutine_of_ones_own_loop(self, runs: Runs) -> None:
        """run_coroutine_threadsafe(...).result() on the loop's own thread: a cycle of one, through the loop."""
        r = runs["threadsafe_own_loop.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        text = flat(r.deadlock_text)
        assert (
            f"task 'Task-1' (thread 'MainThread') waits at {site(r.name, 'waits-own-loop')} for a coroutine scheduled"
            " with run_coroutine_threadsafe() on the event loop of thread 'MainThread', which has not started it yet"
        ) in text
        assert "that is its own event loop" in text
        assert "Advice: run_coroutine_threadsafe(coro, loop).result() on the loop's own thread can never return" in text
        assert "non-reentrant" not in text

    @program("join_under_lock.py")
    def test_join_under_a_lock_the_joined_thread_needs(self, runs: Runs) -> None:
        """Main joins the flusher while holding the lock the flusher waits for."""
        r = runs["join_under_lock.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        text = flat(r.deadlock_text)
        lock = "Lock 'join_under_lock.py:6'"
        assert (
            f"thread 'flusher' waits at {site(r.name, 'flusher-blocks')} for {lock}, held by thread 'MainThread'"
        ) in text
        assert (
            f"thread 'MainThread' (holding {lock}, taken at {site(r.name, 'main-acquires')}) waits at"
            f" {site(r.name, 'main-joins')} for thread 'flusher' to finish (Thread.join())"
        ) in text
        assert "Advice: A thread joins another while holding what the other needs" in text

    @program("executor_job_needs_lock.py")
    def test_caller_waits_for_a_job_that_needs_its_lock(self, runs: Runs) -> None:
        """The caller holds a lock and waits for the pool job that needs it."""
        r = runs["executor_job_needs_lock.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        text = flat(r.deadlock_text)
        lock = "Lock 'executor_job_needs_lock.py:6'"
        assert f"thread 'audit_0' waits at {site(r.name, 'job-blocks')} for {lock}, held by thread 'MainThread'" in text
        assert (
            f"thread 'MainThread' (holding {lock}, taken at {site(r.name, 'caller-acquires')}) waits at"
            f" {site(r.name, 'caller-waits')} for a job running in thread 'audit_0'"
        ) in text
        assert "Advice: A thread waits for a job while holding what the job needs" in text

    @program("sync_wait_job_needs_loop.py")
    def test_loop_waits_for_a_job_that_needs_the_loop(self, runs: Runs) -> None:
        """The loop's thread waits for a pool job; the job waits for a coroutine on that loop."""
        r = runs["sync_wait_job_needs_loop.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        text = flat(r.deadlock_text)
        assert (
            f"thread 'render_0' waits at {site(r.name, 'job-waits')} for a coroutine scheduled with"
            " run_coroutine_threadsafe() on the event loop of thread 'MainThread', which has not started it yet"
        ) in text
        assert (
            f"task 'Task-1' (thread 'MainThread') waits at {site(r.name, 'loop-waits')} for a job running in thread"
            " 'render_0'"
        ) in text
        assert "Advice: An event loop's thread blocks in a synchronous wait" in text

    @program("asyncio_run_in_thread.py")
    def test_cycle_through_two_event_loops(self, runs: Runs) -> None:
        """Main loop thread joins a thread whose own loop waits for a coroutine of the main loop."""
        r = runs["asyncio_run_in_thread.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        text = flat(r.deadlock_text)
        assert (
            f"task 'Task-2' (thread 'plugin') waits at {site(r.name, 'plugin-awaits')} for a coroutine scheduled with"
            " run_coroutine_threadsafe() on the event loop of thread 'MainThread', which has not started it yet"
        ) in text
        assert (
            f"task 'Task-1' (thread 'MainThread') waits at {site(r.name, 'main-joins')} for thread 'plugin' to finish"
        ) in text
        assert "thread 'plugin' waits at asyncio_run_in_thread.py:" in text
        assert "for one of its event loop's tasks" in text

    @program("to_thread_needs_held_lock.py")
    def test_task_awaits_a_job_that_needs_its_lock(self, runs: Runs) -> None:
        """A task holds a threading lock across an await of to_thread(); the job needs the lock: a
        cycle through the pool's worker and the loop (found with or without the holder task)."""
        r = runs["to_thread_needs_held_lock.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        text = flat(r.deadlock_text)
        lock = "Lock 'to_thread_needs_held_lock.py:7'"
        assert re.search(  # (holding the lock, once branch locks records the task that took it)
            rf"task 'Task-1' \(thread 'MainThread'\)( \(holding [^)]*\))? waits at"
            rf" {re.escape(site(r.name, 'task-awaits'))} for a job running in thread 'asyncio_0'",
            text,
        )
        assert re.search(
            rf"thread 'asyncio_0' waits at {re.escape(site(r.name, 'worker-blocks'))} for {re.escape(lock)}, held by"
            r" (task 'Task-1' \(thread 'MainThread'\)|thread 'MainThread')",
            text,
        )
        assert f"{lock}, taken at {site(r.name, 'task-acquires')}" in text
        assert "Advice: A task awaits a job (to_thread, run_in_executor) while holding a threading lock" in text
        assert "blocks in a synchronous wait" not in text  # the loop's thread is idle, not blocked

    @program("generator_holds_lock.py")
    def test_lock_held_by_a_suspended_generator(self, runs: Runs) -> None:
        """The lock is held by a generator suspended at its yield: named, with its line and the advice."""
        r = runs["generator_holds_lock.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        assert r.stdout == "ada\n"
        text = flat(r.deadlock_text)
        assert (
            f"thread 'MainThread' waits at {site(r.name, 'main-blocks')} for Lock 'generator_holds_lock.py:6', which it"
            f" holds itself, taken at {site(r.name, 'generator-acquires')}"
        ) in text
        assert (
            f"That was inside generator rows(), which is suspended at {site(r.name, 'generator-suspended')}"
        ) in text
        assert "Advice: A lock taken inside a generator stays held while the generator is suspended" in text

    @program("abba_through_condition.py")
    def test_inversion_through_a_conditions_lock(self, runs: Runs) -> None:
        """An ABBA where one lock is a Condition's: the Condition is named with its lock."""
        r = runs["abba_through_condition.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        text = flat(r.deadlock_text)
        state = "Lock 'abba_through_condition.py:6' (the lock of Condition 'abba_through_condition.py:7')"
        stats = "Lock 'abba_through_condition.py:8'"
        assert (
            f"thread 'reporter' (holding {stats}, taken at {site(r.name, 'reporter-acquires')}) waits at"
            f" {site(r.name, 'reporter-blocks')} for {state}, held by thread 'producer'"
        ) in text
        assert (
            f"thread 'producer' (holding {state}, taken at {site(r.name, 'producer-acquires')}) waits at"
            f" {site(r.name, 'producer-blocks')} for {stats}, held by thread 'reporter'"
        ) in text
        assert "potential deadlock" in r.stderr  # the lock-order check saw the inversion too

    @program("lock_across_await.py")
    def test_lock_across_await_without_a_wrong_hint(self, runs: Runs) -> None:
        """A threading lock held across an await: exit 86, the writer named, the advice, and never
        the "lock taken twice" hint alone nor a "holds" line under the reader."""
        r = runs["lock_across_await.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        text = flat(r.deadlock_text)
        assert "task 'writer'" in text.lower()
        assert "A threading lock held across an await blocks the event loop" in text
        assert "it waits for itself" not in text
        reader = r.deadlock_text.split("task 'reader' (thread 'MainThread'):\n  waiting for", 1)[1]
        assert "\n  holds Lock" not in reader.split("Advice:")[0]  # the reader holds nothing

    @program("lock_across_await.py")
    def test_lock_across_await_full_blame(self, runs: Runs) -> None:
        """Held by task 'writer' (acquired at its line, suspended at its await), which cannot resume
        because task 'reader' blocks the loop's thread waiting for that lock."""
        r = runs["lock_across_await.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        text = flat(r.deadlock_text)
        assert (
            f"task 'reader' (thread 'MainThread') blocks the event loop's thread 'MainThread' at"
            f" {site(r.name, 'reader-blocks')}, waiting for Lock 'lock_across_await.py:7', which is held by task"
            f" 'writer' (acquired at {site(r.name, 'writer-acquires')}, suspended now at"
            f" {site(r.name, 'writer-awaits')}"
        ) in text
        assert "conctools did not record" not in text


# -- hangs, queues and dead workers (items 4, 5) -------------------------------------------------------------


@pytest.mark.timeout(180)
class TestHangs:
    """No cycle, yet nothing moves: exit 87, every wait worded, the dead party named."""

    @program("asyncio_queue_dead_consumer.py")
    def test_queue_join_with_a_dead_consumer(self, runs: Runs) -> None:
        """asyncio.Queue.join() after its only consumer died: the count, the dead consumer, nobody left."""
        r = runs["asyncio_queue_dead_consumer.py"]
        assert r.status == EXIT_HANG, r.stderr
        waits = r.waits_on("task 'Task-1' (thread 'MainThread')")
        assert waits.startswith("asyncio.Queue.join(): 3 unfinished items;")
        assert (
            "task 'consumer' (thread 'MainThread'), which used this queue, ended with ZeroDivisionError:"
            f" integer division or modulo by zero at {site(r.name, 'consumer-dies')}"
        ) in waits
        assert waits.endswith("no task is left that gets from this queue")
        assert "Ended with an exception before the hang:" in r.hang_text
        [failure] = r.events("failure")
        assert (failure["task_name"], failure["exc_type"], failure["site"]) == (
            "consumer",
            "ZeroDivisionError",
            site(r.name, "consumer-dies"),
        )
        assert "Found one Python-level deadlock" not in r.stderr

    @program("queue_missing_task_done.py")
    def test_queue_join_with_a_missing_task_done(self, runs: Runs) -> None:
        """queue.Queue.join() with a task_done() missing: the counts, and the worker idle in get()."""
        r = runs["queue_missing_task_done.py"]
        assert r.status == EXIT_HANG, r.stderr
        waits = r.waits_on("thread 'MainThread'")
        assert waits.startswith("queue.Queue.join(): 1 unfinished task (4 put, 3 task_done):")
        assert f"at {site(r.name, 'main-joins')}" in waits
        assert "the queue is empty, so 1 item taken by get() has had no task_done() call" in waits
        assert "thread 'worker' waits in get() on it" in waits

    @program("condition_wait_for_never.py")
    def test_wait_for_a_predicate_that_cannot_turn_true(self, runs: Runs) -> None:
        """Condition.wait_for() with its predicate named; nobody left who could notify."""
        r = runs["condition_wait_for_never.py"]
        assert r.status == EXIT_HANG, r.stderr
        assert "the only thread waits forever on something nothing left running will do" in r.hang_text
        waits = r.waits_on("thread 'MainThread'")
        assert waits.startswith(
            "threading.Condition.wait_for() (until its predicate, collect.<locals>.<lambda> at"
            f" {site(r.name, 'collector-waits')}, is true)"
        )

    @program("barrier_short.py")
    def test_barrier_short_of_a_crashed_party(self, runs: Runs) -> None:
        """A Barrier(3) with 2 parties: the count, and the party that crashed before arriving."""
        r = runs["barrier_short.py"]
        assert r.status == EXIT_HANG, r.stderr
        crash = f"thread 'loader-2' ended with KeyError: 'shard-2' at {site(r.name, 'worker-crashes')}"
        for name in ("loader-0", "loader-1"):
            waits = r.waits_on(f"thread '{name}'")
            assert waits.startswith("threading.Barrier.wait() (2 of 3 parties arrived): Barrier 'barrier_short.py:5'")
            assert f"at {site(r.name, 'worker-waits')}" in waits and crash in waits
        assert (
            "thread 'loader-2' ended with KeyError: 'shard-2'\n    at " + site(r.name, "worker-crashes") in r.hang_text
        )

    @program("rlock_wrong_owner.py")
    def test_rlock_released_by_a_non_owner(self, runs: Runs) -> None:
        """The finisher cannot release the starter's RLock and dies: both victims name it."""
        r = runs["rlock_wrong_owner.py"]
        assert r.status == EXIT_HANG, r.stderr
        crash = (
            "thread 'finisher' ended with RuntimeError: cannot release un-acquired lock at"
            f" {site(r.name, 'finisher-crashes')}"
        )
        nxt = r.waits_on("thread 'next-job'")
        assert nxt.startswith(
            f"RLock 'rlock_wrong_owner.py:6' held by thread 'starter' since {site(r.name, 'starter-acquires')}"
        )
        assert crash in nxt
        starter = r.waits_on("thread 'starter'")
        assert starter.startswith("threading.Event.wait(): Event 'rlock_wrong_owner.py:7' (not set)")
        assert crash in starter
        assert "held by thread 'finisher'" not in r.stderr

    @program("event_never_set_dead_loader.py")
    def test_event_never_set_by_a_crashed_loader(self, runs: Runs) -> None:
        """The loader crashed before setting the Event main waits on: named with its exception and line."""
        r = runs["event_never_set_dead_loader.py"]
        assert r.status == EXIT_HANG, r.stderr
        waits = r.waits_on("thread 'MainThread'")
        assert waits.startswith("threading.Event.wait(): Event 'event_never_set_dead_loader.py:6' (not set)")
        assert (
            "thread 'config-loader' ended with ValueError: not enough values to unpack (expected 2, got 1) at"
            f" {site(r.name, 'loader-crashes')}"
        ) in waits

    @program("future_dead_producer.py")
    def test_future_whose_producer_crashed(self, runs: Runs) -> None:
        """A hand-made Future whose producer thread crashed: named; no "queued job" guess."""
        r = runs["future_dead_producer.py"]
        assert r.status == EXIT_HANG, r.stderr
        waits = r.waits_on("thread 'MainThread'")
        assert waits.startswith("concurrent.futures.Future.result() (not started or not set yet)")
        crash = site(r.name, "producer-crashes")
        assert f"thread 'report-builder' ended with ZeroDivisionError: division by zero at {crash}" in waits
        assert "queued" not in r.hang_text

    @program("aio_lock_dead_task.py")
    def test_asyncio_lock_left_locked_by_a_dead_task(self, runs: Runs) -> None:
        """An asyncio.Lock taken by a task that crashed: the holder is said to be gone, with its exception."""
        r = runs["aio_lock_dead_task.py"]
        assert r.status == EXIT_HANG, r.stderr
        waits = r.waits_on("task 'reader' (thread 'MainThread')")
        assert waits.startswith(
            "conctools.aio.Lock 'aio_lock_dead_task.py:6' (locked by task 'refresher', which is no longer running,"
            f" taken at {site(r.name, 'refresher-acquires')})"
        )
        assert (
            f"task 'refresher' (thread 'MainThread') ended with KeyError: 'ttl' at {site(r.name, 'refresher-crashes')}"
            in waits
        )

    @program("executor_shutdown_in_worker.py")
    def test_pool_shut_down_from_its_own_worker(self, runs: Runs) -> None:
        """shutdown(wait=True) inside a job: it joins the other worker, which waits for the first job to
        finish (or, joining itself first, dies with "cannot join current thread"); either way named."""
        r = runs["executor_shutdown_in_worker.py"]
        assert r.status == EXIT_HANG, r.stderr
        waiter = "threading.Event.wait(): Event 'executor_shutdown_in_worker.py:7' (not set)"
        joined = re.search(
            r"thread '(export_\d)' \[joining\]:\n    - waits on threading.Thread.join\(\) of thread '(export_\d)'",
            r.hang_text,
        )
        if joined:
            shutting, other = joined.groups()
            assert shutting != other
            assert r.waits_on(f"thread '{other}'").startswith(waiter)
            assert f"{site(r.name, 'shutdown')}" in r.hang_text
        else:  # it joined itself first: the job died, its future holds the exception
            crash = "pool job export_and_close() ended with RuntimeError: cannot join current thread at "
            crash += site(r.name, "shutdown")
            waits = r.waits_on("thread 'export_1'")
            assert waits.startswith(waiter) and crash in waits
        assert "Found one Python-level deadlock" not in r.stderr

    @program("to_thread_job_waits_forever.py")
    def test_loop_waits_for_a_job_that_waits_forever(self, runs: Runs) -> None:
        """The loop has nothing left but a to_thread() job, which waits for an Event whose setter
        crashed: a hang (the loop's thread waits through the job's thread), the crash named."""
        r = runs["to_thread_job_waits_forever.py"]
        assert r.status == EXIT_HANG, r.stderr
        assert "thread 'MainThread' [waiting (through other threads)]:" in r.hang_text
        task = r.waits_on("task 'Task-1' (thread 'MainThread')")
        assert task == "an executor job (run_in_executor / to_thread); it waits for a job running in thread 'asyncio_0'"
        worker = r.waits_on("thread 'asyncio_0'")
        event = "threading.Event.wait(): Event 'to_thread_job_waits_forever.py:7' (not set)"
        assert worker.startswith(f"{event}, at {site(r.name, 'job-waits')}")
        assert (
            f"thread 'warm-up' ended with AssertionError: bad cache size 0 at {site(r.name, 'warmup-crashes')}"
            in worker
        )
        assert f"at handle ({CORPUS / r.name}:{lineno(r.name, 'handler-awaits')})" in r.hang_text

    @program("semaphore_leak.py")
    def test_leaked_permits_are_no_self_deadlock(self, runs: Runs) -> None:
        """Permits leaked by finished threads: a hang, never a deadlock of a live waiter with itself."""
        r = runs["semaphore_leak.py"]
        assert r.status == EXIT_HANG, r.stderr
        assert "Found one Python-level deadlock" not in r.stderr
        for name in ("request-1", "request-3", "request-4", "request-5"):
            assert r.waits_on(f"thread '{name}'").startswith("Semaphore 'semaphore_leak.py:6' held by ")

    @program("semaphore_leak.py")
    def test_leaked_permits_name_the_exited_holders(self, runs: Runs) -> None:
        """Held by exited threads 'request-0' and 'request-2' (acquired at their line, never released),
        and the waits count in the lock table."""
        r = runs["semaphore_leak.py"]
        assert r.status == EXIT_HANG, r.stderr
        waits = r.waits_on("thread 'request-3'")
        assert waits.startswith(
            "Semaphore 'semaphore_leak.py:6' held by exited threads 'request-0' and 'request-2' (acquired at"
            f" {site(r.name, 'request-acquires')}, never released)"
        )
        assert "held by thread 'request-1'" not in r.stderr
        [row] = [row for row in r.report["sections"]["locks"] if row["name"] == "semaphore_leak.py:6"]
        assert row["contentions"] >= 4 and row["wait_total_s"] > 0  # the four waits, still in progress


@pytest.mark.timeout(180)
class TestProcesses:
    """What the parent of a stuck child process can tell."""

    @program("mp_queue_unflushed.py")
    def test_join_before_reading_a_full_multiprocessing_queue(self, runs: Runs) -> None:
        """The parent joins a child whose queued result fills the pipe: a hang naming the child, the
        queue and the pitfall, and saying that the child itself was not seen."""
        r = runs["mp_queue_unflushed.py"]
        match = re.search(r"process 'renderer' \(pid (\d+)\)", r.stderr)
        if match:  # the stuck child outlives the report: end it (it is this test's grandchild)
            _end_process(int(match.group(1)), "mp_queue_unflushed.py")
        assert r.status == EXIT_HANG, r.stderr
        waits = r.waits_on("thread 'MainThread'")
        assert waits.startswith("multiprocessing.Process.join() of process 'renderer' (pid ")
        assert "the multiprocessing.Queue 'results' has " in waits and "unread in its pipe, which is full" in waits
        assert "Read the queue before join()" in waits
        assert "conctools does not see inside the child" in waits
        assert f"at <module> ({CORPUS / r.name}:{lineno(r.name, 'parent-joins')})" in r.hang_text


def _end_process(pid: int, script: str) -> None:
    psutil = pytest.importorskip("psutil")
    try:
        process = psutil.Process(pid)
        if any(script in part for part in process.cmdline()):
            process.kill()
            process.wait(10)
    except psutil.Error:
        pass


# -- the same bugs on uvloop ------------------------------------------------------------------------------


@pytest.mark.timeout(180)
class TestUvloop:
    """The cycles through the loop are found on uvloop too (it has no Python frames of its own)."""

    @program("uvloop_threadsafe_under_lock.py")
    def test_cycle_through_a_uvloop_loop(self, runs: Runs) -> None:
        """threadsafe_under_lock.py on uvloop: the same cycle, the same parties and lines."""
        pytest.importorskip("uvloop")
        r = runs["uvloop_threadsafe_under_lock.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        text = flat(r.deadlock_text)
        lock = "Lock 'uvloop_threadsafe_under_lock.py:8'"
        assert (
            f"thread 'cache-worker' (holding {lock}, taken at {site(r.name, 'worker-acquires')}) waits at"
            f" {site(r.name, 'worker-waits')} for coroutine load_config() (task 'Task-2') scheduled with"
            " run_coroutine_threadsafe() on the event loop of thread 'MainThread'"
        ) in text
        assert (
            f"task 'Task-2' (thread 'MainThread') blocks its event loop's thread at {site(r.name, 'coroutine-blocks')},"
            f" waiting for {lock}, held by thread 'cache-worker'"
        ) in text

    @program("uvloop_lock_across_await.py")
    def test_lock_across_await_on_uvloop(self, runs: Runs) -> None:
        """lock_across_await.py on uvloop: exit 86, the writer named, the advice, no wrong hint."""
        pytest.importorskip("uvloop")
        r = runs["uvloop_lock_across_await.py"]
        assert r.status == EXIT_DEADLOCK, r.stderr
        text = flat(r.deadlock_text)
        assert "task 'writer'" in text.lower()
        assert "A threading lock held across an await blocks the event loop" in text
        assert "it waits for itself" not in text

    @program("uvloop_lock_across_await.py")
    def test_lock_across_await_on_uvloop_full_blame(self, runs: Runs) -> None:
        """On uvloop too: held by task 'writer', acquired and suspended at its own lines."""
        pytest.importorskip("uvloop")
        r = runs["uvloop_lock_across_await.py"]
        text = flat(r.deadlock_text)
        assert (
            f"which is held by task 'writer' (acquired at {site(r.name, 'writer-acquires')}, suspended now at"
            f" {site(r.name, 'writer-awaits')}"
        ) in text


# -- no false alarms ------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
class TestNoFalseAlarm:
    """Long waits that end by themselves are not deadlocks, hangs or stalls."""

    @program("healthy_long_waits.py")
    def test_long_waits_through_pools_joins_and_loops(self, runs: Runs) -> None:
        """Waits longer than the timeout on a pool job, a join, a thread, a coroutine: exit 0, nothing reported."""
        r = runs["healthy_long_waits.py"]
        assert r.status == 0, r.stderr
        assert r.stdout == "1\ndone\n"
        assert "deadlock" not in r.stderr.lower() and "Hang" not in r.stderr
        # (No assertion on slow callbacks: a loaded machine may really stall this loop for 100 ms.)
        assert r.events("deadlock") == [] and r.events("hang") == []

    @program("healthy_child_process.py")
    def test_joining_a_busy_child_process(self, runs: Runs) -> None:
        """A child computing for longer than the timeout, with a little data in its queue: exit 0."""
        r = runs["healthy_child_process.py"]
        assert r.status == 0, r.stderr
        assert r.stdout == "partial 1000\n"
        assert r.events("hang") == [] and r.events("deadlock") == []
