"""conctools.profile on real yappi sessions: threads, asyncio tasks, saved files, misuse."""

from __future__ import annotations

import asyncio
import pstats
import re
import threading
from pathlib import Path

import pytest
import yappi

import conctools
from conctools.profiling import Profile, ProfileError, profile
from conctools.recorder import Recorder


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def threaded_work() -> None:
    def worker() -> None:
        for _ in range(5):
            spin(20_000)

    threads = [threading.Thread(target=worker, name=f"pool-worker-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


async def napper() -> None:
    await asyncio.sleep(0.05)
    spin(2_000)


async def async_work() -> None:
    await asyncio.gather(
        asyncio.create_task(napper(), name="fetch-users"),
        asyncio.create_task(napper(), name="<img src=x onerror=alert(1)>"),
    )


class TestThreads:
    def test_per_thread_real_names(self, recorder: Recorder) -> None:
        """Threads appear under their Thread.name, not yappi's default class name."""
        with profile() as p:
            threaded_work()
        names = {t.name for t in p.thread_stats}
        assert {"pool-worker-0", "pool-worker-1", "MainThread"} <= names
        assert "Thread" not in names and "_MainThread" not in names
        worker = next(t for t in p.thread_stats if t.name == "pool-worker-0")
        assert worker.thread_id > 0
        assert any(f.name == "spin" for f in worker.top)

    def test_functions_counted_across_threads(self, recorder: Recorder) -> None:
        """The merged function table counts every thread's calls (not only thread 0)."""
        with profile(clock="cpu") as p:
            threaded_work()
        spin_stats = next(f for f in p.functions if f.name == "spin")
        assert spin_stats.calls == 10
        assert spin_stats.total_s > 0
        assert spin_stats.filename == __file__

    def test_threads_false_keeps_only_the_starting_thread(self, recorder: Recorder) -> None:
        """threads=False reports the starting thread alone (profiling still covers all: no 3.12 leak)."""
        with profile(threads=False) as p:
            threaded_work()
            spin(1000)
        assert [t.name for t in p.thread_stats] == ["MainThread"]
        assert next(f for f in p.functions if f.name == "spin").calls == 1

    def test_own_threads_left_out(self, recorder: Recorder) -> None:
        """conctools' own threads (the sampler) are not part of the program's profile."""
        with profile() as p, conctools.sample_resources(interval_s=0.01):
            threaded_work()
        assert not [t for t in p.thread_stats if t.name.startswith("conctools-")]


class TestTasks:
    def test_per_task_tags_and_coroutine_wall_time(self, recorder: Recorder) -> None:
        """Each asyncio task gets its own row, and wall time includes the awaited sleep."""
        with profile() as p:
            asyncio.run(async_work())
        tasks = {t.name: t for t in p.task_stats}
        assert "fetch-users" in tasks and "<img src=x onerror=alert(1)>" in tasks
        assert {f.name for f in tasks["fetch-users"].top} & {"napper", "sleep"}
        assert "spin" not in {f.name for t in p.task_stats if t.name == "Task-1" for f in t.top}
        napper_stats = next(f for f in p.functions if f.name == "napper")
        assert napper_stats.calls == 2
        assert napper_stats.total_s >= 0.08  # 2 x 50 ms awaited: coroutine-aware wall time

    def test_cpu_clock_does_not_charge_sleeping(self, recorder: Recorder) -> None:
        """With the CPU clock, an awaited sleep costs (almost) nothing."""
        with profile(clock="cpu") as p:
            asyncio.run(async_work())
        napper_stats = next(f for f in p.functions if f.name == "napper")
        assert napper_stats.total_s < 0.05

    def test_tasks_in_a_loop_per_thread(self, recorder: Recorder) -> None:
        """Two threads running loops of their own: each task is tagged, none mixed up with the other thread."""

        def run_loop(prefix: str) -> None:
            async def main() -> None:
                await asyncio.gather(*(asyncio.create_task(napper(), name=f"{prefix}-{i}") for i in range(2)))

            asyncio.run(main())

        with profile() as p:
            threads = [threading.Thread(target=run_loop, args=(x,), name=f"loop-{x}") for x in "ab"]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        names = {t.name for t in p.task_stats}
        assert {"a-0", "a-1", "b-0", "b-1"} <= names
        assert all(t.calls > 0 for t in p.task_stats if t.name in {"a-0", "b-1"})

    def test_uvloop_tasks(self, recorder: Recorder) -> None:
        """Tasks on uvloop (no _thread_id on its loop) are tagged through the slow path."""
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed in this environment")
        with profile() as p:
            uvloop.run(async_work())
        assert {"fetch-users", "<img src=x onerror=alert(1)>"} <= {t.name for t in p.task_stats}

    def test_tasks_false_tags_nothing(self, recorder: Recorder) -> None:
        """tasks=False skips the tag callback: no per-task rows."""
        with profile(tasks=False) as p:
            asyncio.run(async_work())
        assert p.task_stats == ()
        assert any(f.name == "napper" for f in p.functions)


class TestDecorator:
    def test_bare_decorator_sync(self, recorder: Recorder) -> None:
        """@profile on a function profiles each call and keeps return values."""

        @profile
        def work(n: int) -> int:
            return spin(n)

        assert work(1000) == spin(1000)
        session = work.profile  # type: ignore[attr-defined]
        assert isinstance(session, Profile)
        assert any(f.name == "spin" for f in session.functions)
        assert not yappi.is_running()

    def test_decorator_with_arguments_async(self, recorder: Recorder) -> None:
        """@profile(clock="cpu") wraps a coroutine function, which stays a coroutine function."""

        @profile(clock="cpu")
        async def job() -> str:
            await asyncio.sleep(0)
            spin(100)
            return "done"

        assert asyncio.iscoroutinefunction(job)
        assert asyncio.run(job()) == "done"
        assert any(f.name == "spin" for f in job.profile.functions)  # type: ignore[attr-defined]

    def test_exceptions_pass_through(self, recorder: Recorder) -> None:
        """An exception from the profiled function propagates unchanged and the session stops."""

        @profile
        def boom() -> None:
            raise KeyError("x")

        with pytest.raises(KeyError):
            boom()
        assert not yappi.is_running()

    def test_nested_call_joins_running_session(self, recorder: Recorder) -> None:
        """A recursive decorated call runs inside the outer session instead of failing."""

        @profile
        def fact(n: int) -> int:
            return 1 if n <= 1 else n * fact(n - 1)

        assert fact(5) == 120
        assert next(f for f in fact.profile.functions if f.name == "fact").calls == 5  # type: ignore[attr-defined]


class TestOneProfilerPerProcess:
    def test_second_session_fails_clearly(self, recorder: Recorder) -> None:
        """Starting a profile while one runs raises ProfileError naming the problem."""
        with profile(), pytest.raises(ProfileError, match="already running"):
            profile().start()

    def test_foreign_yappi_session_detected(self, recorder: Recorder) -> None:
        """A yappi session started by someone else is not clobbered."""
        yappi.start()
        try:
            with pytest.raises(ProfileError, match="one profiler per process"):
                profile().start()
        finally:
            yappi.stop()
            yappi.clear_stats()

    def test_bad_clock(self) -> None:
        """An unknown clock is a ValueError at construction."""
        with pytest.raises(ValueError, match="clock"):
            profile(clock="gpu")  # type: ignore[call-overload]

    def test_save_before_run(self, tmp_path: Path) -> None:
        """Saving a profile that never ran is a clear error, not an empty file."""
        with pytest.raises(ProfileError, match="nothing to save"):
            Profile().save(tmp_path / "x.pstat")


class TestOutputs:
    def test_pstat_loads_in_pstats(self, recorder: Recorder, tmp_path: Path) -> None:
        """save() writes a pstat file that the stdlib pstats module reads."""
        with profile() as p:
            threaded_work()
        path = p.save(tmp_path / "out.pstat")
        stats = pstats.Stats(str(path))
        keys = {(Path(k[0]).name, k[2]) for k in stats.stats}  # type: ignore[attr-defined]
        assert ("test_profiling.py", "spin") in keys

    def test_callgrind_well_formed(self, recorder: Recorder, tmp_path: Path) -> None:
        """save() to *.callgrind writes the callgrind header and fn=/calls= records."""
        with profile() as p:
            threaded_work()
        text = p.save(tmp_path / "out.callgrind").read_text()
        lines = text.splitlines()
        assert lines[0] == "version: 1"
        assert "events: Ticks" in lines
        assert any(re.fullmatch(r"fn=\(\d+\) spin .*test_profiling\.py:\d+", ln) for ln in lines)
        assert any(re.fullmatch(r"calls=\d+ 0", ln) for ln in lines)
        assert all(re.fullmatch(r"\d+ \d+", ln) for ln in lines if ln[:1].isdigit())

    def test_top_table(self, recorder: Recorder) -> None:
        """top(n) is a text table with the hottest function and its site."""
        with profile() as p:
            threaded_work()
        text = p.top(5)
        assert text.startswith("Top 5 of")
        assert "calls" in text
        from conctools._frames import is_own_file

        rows = [line for line in text.splitlines() if not line.strip().startswith("(")]  # "(N conctools ...)"
        assert len(rows) == 2 + 1 + 5
        # Which functions make the top 5 by wall time depends on scheduling (2 busy cores):
        # assert on the table's own order and on the full table, never on a rank.
        hottest = max((f for f in p.functions if not is_own_file(f.filename)), key=lambda f: f.total_s)
        assert text.splitlines()[3].lstrip().startswith(hottest.name[:30])
        full = p.top(len(p.functions))
        assert any(line.lstrip().startswith("spin ") and "test_profiling.py:" in line for line in full.splitlines()[3:])

    def test_section_published(self, recorder: Recorder) -> None:
        """The session publishes a JSON-able 'profile' section to the current recorder."""
        with profile():
            asyncio.run(async_work())
        section = recorder.snapshot().sections["profile"]
        assert section["clock"] == "wall" and not section["running"]
        assert any(f["name"] == "napper" for f in section["functions"])
        assert {"fetch-users", "<img src=x onerror=alert(1)>"} <= {t["name"] for t in section["tasks"]}
        assert "MainThread" in {t["name"] for t in section["threads"]}

    def test_live_section_while_running(self, recorder: Recorder) -> None:
        """A snapshot taken while the profile runs shows the profile so far (a deadlock report needs it)."""
        with profile() as p:
            threaded_work()
            section = recorder.snapshot().sections["profile"]
            assert section["running"] and section["duration_s"] > 0
            assert any(f["name"] == "spin" for f in section["functions"])
            spin(10)
        assert not p.running and yappi.get_clock_type() == "wall"
        assert next(f for f in p.functions if f.name == "spin").calls == 11

    def test_public_surface(self) -> None:
        """profile and sample_resources are exported from conctools."""
        assert conctools.profile is profile
        assert "profile" in conctools.__all__ and "sample_resources" in conctools.__all__


class TestTextSection:
    def test_section_in_text_report(self, recorder: Recorder) -> None:
        """The text report shows the top functions, per thread and per task, after the spans."""
        from conctools.reporting import render_text

        with profile():
            threaded_work()
            asyncio.run(async_work())
        text = render_text(recorder.snapshot())
        assert "Profile (wall clock" in text
        assert "per thread:" in text and "pool-worker-1" in text
        assert "per asyncio task:" in text and "fetch-users" in text
        brief = render_text(recorder.snapshot(), brief=True)
        rows = brief.split("Profile (wall clock", 1)[1].split("per thread:", 1)[0].splitlines()[3:]
        assert 1 <= len([r for r in rows if r.strip()]) <= 10  # brief: the top 10 functions

    def test_garbage_and_control_characters(self, recorder: Recorder) -> None:
        """A malformed section is skipped; control characters in names are escaped, not sent to the terminal."""
        from conctools.reporting.profile_text import profile_section

        recorder.add_section("profile", lambda: {"functions": "nope"})
        assert profile_section(recorder.snapshot(), False) is None
        recorder.add_section(
            "profile",
            lambda: {"clock": "cpu", "functions": [{"name": "f"}], "tasks": [{"name": "evil\x1b[2J", "own_s": 1}]},
        )
        text = profile_section(recorder.snapshot(), False)
        assert text is not None and "\x1b" not in text and "evil\\x1b[2J" in text
