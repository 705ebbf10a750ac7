"""Run a program unchanged under conctools, then report (what ``conctools run`` does).

The program runs as ``python script.py`` would run it: same ``sys.argv``, ``__main__``,
``sys.path[0]``, output and exit status. Every instrument that the options switch on is
entered before the program starts and left after its last non-daemon thread ended.

This is a wiring module: it imports producers and reporters alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import runpy
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conctools.deadlock import EXIT_DEADLOCK, EXIT_HANG, watch_deadlocks
from conctools.events import DeadlockEvent, HangEvent
from conctools.locks import trace_locks
from conctools.loopmon import monitor_all_loops
from conctools.profiling import Clock, Profile, ProfileError
from conctools.recorder import Recorder, Snapshot, use_recorder
from conctools.reporting import render_json, render_text
from conctools.reporting.html import render_html
from conctools.reporting.trace import render_trace
from conctools.resources import sample_resources
from conctools.tracing import ContextFilter

__all__ = ["RunOptions", "instrumented", "run_program", "write_reports"]

_log = logging.getLogger("conctools.runner")


@dataclass(slots=True, kw_only=True)
class RunOptions:
    """What ``conctools run`` was asked to do."""

    script: str | None = None
    module: str | None = None
    args: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    capacity: int = 100_000
    report: bool = True
    log_level: str | None = None
    profile: bool = False
    profile_clock: str = "wall"
    sample_interval_s: float | None = 0.5  # None or 0: no resource sampling
    deadlock_timeout_s: float | None = 10.0  # None or 0: no deadlock/hang watchdog
    exit_on_deadlock: bool = True  # print the report and exit 86 (deadlock) / 87 (hang) instead of hanging
    loop_threshold_s: float | None = 0.1  # None or 0: no event-loop monitor
    detect_blocking: bool = False  # report time.sleep / blocking sockets / thread waits on loop threads
    trace_locks: bool = True  # locks created by the program (and the stdlib for it) are traced ones
    lock_order: bool = True  # with trace_locks: check lock order (lockdep) and report inversions
    lock_wait_threshold_s: float = 0.001  # lock waits at least this long are events (besides a sample per site)

    @property
    def command(self) -> str:
        target = f"-m {self.module}" if self.module else str(self.script)
        return " ".join([target, *self.args])


@contextlib.contextmanager
def instrumented(options: RunOptions, recorder: Recorder) -> Iterator[contextlib.ExitStack]:
    """Switch on every instrument ``options`` asks for; switch them off on exit.

    Shared by ``conctools run`` and the pytest plugin, so both observe programs the same way.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(use_recorder(recorder))
        if options.log_level:
            stack.enter_context(_stderr_logging(options.log_level))
        if options.sample_interval_s:
            stack.enter_context(sample_resources(options.sample_interval_s, recorder=recorder))
        if options.profile:
            _enter_profile(stack, options, recorder)
        if options.deadlock_timeout_s:
            # Before trace_locks: the watchdog thread's own Event (Thread._started) stays plain.
            _enter_watchdog(stack, options, recorder)
        if options.trace_locks:
            # After the sampler and the profiler: their imports (psutil, yappi) keep plain locks.
            stack.enter_context(
                trace_locks(
                    lock_order=options.lock_order,
                    recorder=recorder,
                    wait_threshold_s=options.lock_wait_threshold_s,
                )
            )
        if options.loop_threshold_s:
            stack.enter_context(
                monitor_all_loops(options.loop_threshold_s, detect_blocking=options.detect_blocking, recorder=recorder)
            )
        yield stack


def _enter_watchdog(stack: contextlib.ExitStack, options: RunOptions, recorder: Recorder) -> None:
    """Watch for deadlocks and hangs; in run mode, report and exit instead of hanging forever."""
    on_deadlock: Callable[[DeadlockEvent], object] | None = None
    on_hang: Callable[[HangEvent], object] | None = None
    if options.exit_on_deadlock:

        def on_deadlock(event: DeadlockEvent) -> None:
            _report_and_exit(recorder, options, EXIT_DEADLOCK, "a deadlock")

        def on_hang(event: HangEvent) -> None:
            _report_and_exit(recorder, options, EXIT_HANG, "a hang")

    assert options.deadlock_timeout_s is not None
    stack.enter_context(
        watch_deadlocks(options.deadlock_timeout_s, on_deadlock=on_deadlock, on_hang=on_hang, recorder=recorder)
    )


def _report_and_exit(recorder: Recorder, options: RunOptions, status: int, what: str) -> None:
    """Print the report and end the process with ``status`` (called from the watchdog thread).

    ``os._exit``: the program's threads are stuck, so a normal exit would wait for them forever.
    A timer makes sure the process ends even if writing the report got stuck too.
    """
    import _thread
    import time

    def last_resort() -> None:
        time.sleep(10.0)
        os._exit(status)

    _thread.start_new_thread(last_resort, ())
    recorder.meta["exit_status"] = status
    finish_report(recorder, options)
    for prof, out_dir in list(_unsaved_profiles):  # os._exit skips the ExitStack that would save them
        prof.stop()
        _save_profile(prof, out_dir)
    try:
        sys.stderr.write(f"conctools: stopped the program after {what}; exit status {status}\n")
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(status)


def _enter_profile(stack: contextlib.ExitStack, options: RunOptions, recorder: Recorder) -> None:
    """Profile the program; with ``out_dir``, save the profile files once the profile stopped."""
    clock: Clock = "cpu" if options.profile_clock == "cpu" else "wall"
    prof = Profile(clock, recorder=recorder)
    if options.out_dir is not None:
        # Pushed before the profile is entered, so it runs after the profile has stopped.
        stack.callback(_save_profile, prof, options.out_dir)
        _unsaved_profiles.append((prof, options.out_dir))
    try:
        stack.enter_context(prof)
    except ProfileError as exc:
        print(f"conctools: not profiling: {exc}", file=sys.stderr)


# Profiles whose files are still to be written: by the ExitStack when the program ends, or by a
# deadlock / hang exit, which leaves with os._exit and never unwinds that stack.
_unsaved_profiles: list[tuple[Profile, Path]] = []


def _save_profile(prof: Profile, out_dir: Path) -> None:
    """Write ``profile.pstat`` and ``profile.callgrind``; a failure is one line on stderr."""
    try:
        _unsaved_profiles.remove((prof, out_dir))
    except ValueError:  # already saved (the deadlock exit got there first)
        return
    if not prof.functions:  # it never ran (another profiler held yappi)
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        prof.save(out_dir / "profile.pstat", "pstat")
        prof.save(out_dir / "profile.callgrind", "callgrind")
    except Exception as exc:
        print(f"conctools: could not save the profile: {exc}", file=sys.stderr)


@contextlib.contextmanager
def _stderr_logging(level: str) -> Iterator[None]:
    """Log conctools' own lines (spans, warnings) to stderr at ``level``."""
    logger = logging.getLogger("conctools")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(logging.Formatter("conctools %(levelname)s [%(threadName)s|%(taskName)s] %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _join_program_threads() -> None:
    """Wait for the program's non-daemon threads, as the interpreter does at exit."""
    me = threading.current_thread()
    while True:
        pending = [
            t
            for t in threading.enumerate()
            if t is not me and not t.daemon and t.is_alive() and not t.name.startswith("conctools-")
        ]
        if not pending:
            return
        for t in pending:
            t.join()


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints it and exits 1
    return 1


def _execute(options: RunOptions) -> int:
    """Run the target in this process as ``__main__``; returns its exit status."""
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    try:
        if options.module:
            sys.argv = [options.module, *options.args]
            sys.path[0] = os.getcwd()
            runpy.run_module(options.module, run_name="__main__", alter_sys=True)
        else:
            assert options.script is not None
            script = os.path.abspath(options.script)
            sys.argv = [options.script, *options.args]
            sys.path[0] = os.path.dirname(script)
            runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as exc:
        return _exit_code(exc)
    except KeyboardInterrupt:
        traceback.print_exc()
        return 130
    except BaseException:
        _print_user_traceback()
        return 1
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None and sys.path:
            sys.path[0] = saved_path0


def _print_user_traceback() -> None:
    """Print the exception as Python would, without conctools' and runpy's frames."""
    etype, value, tb = sys.exc_info()
    here = os.path.dirname(os.path.abspath(__file__))
    runpy_files = {runpy.__file__, "<frozen runpy>"}
    while tb is not None and (
        tb.tb_frame.f_code.co_filename.startswith(here) or tb.tb_frame.f_code.co_filename in runpy_files
    ):
        tb = tb.tb_next
    traceback.print_exception(etype, value, tb)


def write_reports(snapshot: Snapshot, out_dir: Path) -> list[Path]:
    """Write ``report.txt``, ``report.json``, ``trace.json`` and ``report.html`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in (
        ("report.txt", render_text(snapshot)),
        ("report.json", render_json(snapshot)),
        ("trace.json", render_trace(snapshot)),
        ("report.html", render_html(snapshot)),
    ):
        path = out_dir / name
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def run_program(options: RunOptions) -> int:
    """Run the program under conctools, print the report, return the exit status."""
    recorder = Recorder(capacity=options.capacity)
    recorder.meta.update({"command": options.command, "argv": [options.script or options.module, *options.args]})
    with instrumented(options, recorder):
        status = _execute(options)
        _join_program_threads()
    recorder.meta["exit_status"] = status
    finish_report(recorder, options)
    return status


def finish_report(recorder: Recorder, options: RunOptions) -> None:
    """Print the brief report to stderr and write the files; never raises."""
    try:
        sys.stdout.flush()
    except Exception:
        pass
    try:
        snapshot = recorder.snapshot()
        if options.report:
            sys.stderr.write(render_text(snapshot, brief=True))
            sys.stderr.flush()
        if options.out_dir is not None:
            paths = write_reports(snapshot, options.out_dir)
            if options.report:
                print(f"conctools: wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    except Exception as exc:
        print(f"conctools: could not write the report: {exc}", file=sys.stderr)
