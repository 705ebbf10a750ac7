"""Run a program unchanged under conctools, then report (what ``conctools run`` does).

The program runs as ``python script.py`` would run it: same ``sys.argv``, ``__main__``,
``sys.path[0]``, output and exit status. Every instrument that the options switch on is
entered before the program starts and left after its last non-daemon thread ended.

This is a wiring module: it imports producers and reporters alike.
"""

from __future__ import annotations

import _thread
import contextlib
import gc
import logging  # here, before trace_locks(): logging's own locks stay plain ones when the program uses it
import os
import runpy
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from conctools._log import get_logger
from conctools._records import field, record
from conctools._typing import TYPE_CHECKING, NoReturn
from conctools.deadlock import EXIT_DEADLOCK, EXIT_HANG, watch_deadlocks
from conctools.events import DeadlockEvent, HangEvent
from conctools.gil import GilMonitor
from conctools.locks import trace_locks
from conctools.loopmon import monitor_all_loops
from conctools.pools import track_pools
from conctools.recorder import Recorder, Snapshot, use_recorder
from conctools.resources import sample_resources

if TYPE_CHECKING:
    from conctools.profiling import Clock, Profile

# The profiler and the reporters are imported where they are used: a run that neither profiles
# nor writes report files does not pay for them at start-up (`conctools run` of an empty script
# is measured against `python` in benchmarks/bench_run.py). So is tracing (its ContextFilter, for
# --log-level).

__all__ = ["RunOptions", "instrumented", "run_program", "write_reports"]

_log = get_logger("conctools.runner")


@record(kw_only=True, frozen=False)  # @dataclass(slots=True, kw_only=True), without importing dataclasses
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
    console: bool = False  # the live console while the program runs (conctools.console.attach)
    console_host: str = "127.0.0.1"
    console_port: int = 20101  # 0: a free port
    allow_remote_console: bool = False  # a non-loopback console_host (the secret is still required)
    otel: bool = False  # spans, lock waits and metrics to OpenTelemetry (conctools.exporters.otel)
    dump_agent: bool = True  # the agent that `conctools dump/top PID` ask (conctools.agent)
    gil: bool = True  # the GIL monitor: CPU-bound threads, GIL waits, parallelism, the bottleneck verdict
    lock_wait_threshold_s: float = 0.001  # lock waits at least this long are events (besides a sample per site)
    follow_children: bool = True  # Python child processes run under the same options; one merged report

    @property
    def command(self) -> str:
        target = f"-m {self.module}" if self.module else str(self.script)
        return " ".join([target, *self.args])


@contextlib.contextmanager
def instrumented(
    options: RunOptions,
    recorder: Recorder,
    *,
    on_deadlock: Callable[[DeadlockEvent], object] | None = None,
    on_hang: Callable[[HangEvent], object] | None = None,
) -> Iterator[contextlib.ExitStack]:
    """Switch on every instrument ``options`` asks for; switch them off on exit.

    Shared by ``conctools run``, its followed child processes and the pytest plugin, so all
    observe programs the same way. ``on_deadlock`` / ``on_hang`` are called instead of the
    run's report-and-exit (a child process tells the run rather than exiting).
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(use_recorder(recorder))
        if options.log_level:
            stack.enter_context(_stderr_logging(options.log_level))
        if options.sample_interval_s:
            stack.enter_context(sample_resources(options.sample_interval_s, recorder=recorder))
        if options.gil:
            stack.enter_context(GilMonitor(recorder=recorder))
        if options.profile:
            _enter_profile(stack, options, recorder)
        if options.deadlock_timeout_s:
            # Before trace_locks: the watchdog thread's own Event (Thread._started) stays plain.
            _enter_watchdog(stack, options, recorder, on_deadlock, on_hang)
        if options.otel:  # before trace_locks: the SDK's own locks stay plain
            from conctools.exporters.wiring import otel_export

            stack.enter_context(otel_export(recorder, service_name=_service_name(options)))
        if options.trace_locks:
            # After the sampler and the profiler: their imports (psutil, yappi) keep plain locks.
            stack.enter_context(
                trace_locks(
                    lock_order=options.lock_order,
                    recorder=recorder,
                    wait_threshold_s=options.lock_wait_threshold_s,
                )
            )
            # Pools built on the stdlib's queues and on traced semaphores: who holds their items.
            stack.enter_context(track_pools(recorder=recorder))
        if options.loop_threshold_s:
            stack.enter_context(
                monitor_all_loops(options.loop_threshold_s, detect_blocking=options.detect_blocking, recorder=recorder)
            )
        yield stack


def freeze_startup_heap() -> None:
    """Move every object that exists before the program's first line (conctools' and the stdlib's
    modules, ~200k objects) to the garbage collector's permanent generation (``gc.freeze()``).

    They live until the process ends anyway, but every full collection walked them: the program's
    own ones while it runs, and the interpreter's last ones at exit (~30 ms of CPU for an empty
    script on the project's machine, a quarter of ``conctools run``'s start-up). The program's
    objects are collected exactly as under ``python``; ``gc.get_objects()`` no longer lists the
    frozen ones (``gc.unfreeze()`` brings them back)."""
    gc.freeze()


def _service_name(options: RunOptions) -> str:
    """``service.name`` of a run (``OTEL_SERVICE_NAME`` wins): the module, or the script's name."""
    if options.module:
        return options.module
    return Path(options.script or "python").stem


def _enter_watchdog(
    stack: contextlib.ExitStack,
    options: RunOptions,
    recorder: Recorder,
    on_deadlock: Callable[[DeadlockEvent], object] | None = None,
    on_hang: Callable[[HangEvent], object] | None = None,
) -> None:
    """Watch for deadlocks and hangs; in run mode, report and exit instead of hanging forever."""
    if options.exit_on_deadlock and on_deadlock is None and on_hang is None:

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
    _final_report(recorder, options, status)
    _say(f"conctools: stopped the program after {what}; exit status {status}\n")
    _before_abrupt_exit(kill_children=True)
    _real_exit(status)


# Called before the process ends without unwinding (kill_children: conctools stops a stuck program,
# whose child processes must not outlive it); the child-process follower registers itself here.
_abrupt_exit_hooks: dict[str, Callable[[bool], object]] = {}


def _before_abrupt_exit(*, kill_children: bool) -> None:
    for hook in list(_abrupt_exit_hooks.values()):
        try:
            hook(kill_children)
        except Exception:
            pass


# The real os._exit: a program's own call goes through _exit_with_report while it runs.
_real_exit = os._exit
_final_lock = _thread.allocate_lock()  # plain: trace_locks() may have patched threading
_final_done: list[bool] = [False]


def _final_report(recorder: Recorder, options: RunOptions, status: int | str) -> bool:
    """The report of a run that ends without unwinding (os._exit, a signal, a deadlock exit): once."""
    with _final_lock:
        if _final_done[0]:
            return False
        _final_done[0] = True
    recorder.meta["exit_status"] = status
    if options.otel:  # nothing unwinds the export's context on this path: flush it here
        from conctools.exporters.wiring import shutdown_otel

        shutdown_otel()
    finish_report(recorder, options)
    for prof, out_dir in list(_unsaved_profiles):  # nothing unwinds the ExitStack that would save them
        try:
            prof.stop()
        except Exception:
            pass
        _save_profile(prof, out_dir)
    return True


@contextlib.contextmanager
def _report_on_abrupt_exit(recorder: Recorder, options: RunOptions) -> Iterator[None]:
    """Report even when the program does not return: it calls ``os._exit`` (what is known so far is
    written first), or SIGTERM arrives (the report, then the process ends by that signal, as it would
    have without conctools; a program that handles SIGTERM itself keeps its own handler)."""
    import signal

    pid = os.getpid()

    def _exit_with_report(status: int) -> NoReturn:
        if os.getpid() == pid:  # not in a forked child (multiprocessing's children end with os._exit)
            try:
                _final_report(recorder, options, status)
            except BaseException:
                pass
            _before_abrupt_exit(kill_children=False)
        _real_exit(status)

    def _on_sigterm(signum: int, frame: object) -> None:
        # Reported from a thread of its own: the main thread may hold a lock the report needs.
        # A second SIGTERM while it writes ends the process at once.
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (ValueError, OSError):
            pass
        _thread.start_new_thread(_die_by_signal, (signum,))

    def _die_by_signal(signum: int) -> None:
        import time

        def last_resort() -> None:
            time.sleep(10.0)
            _real_exit(128 + signum)

        _thread.start_new_thread(last_resort, ())
        try:
            _final_report(recorder, options, 128 + signum)
        except BaseException:
            pass
        _before_abrupt_exit(kill_children=False)
        os.kill(os.getpid(), signum)

    os._exit = _exit_with_report
    installed = False
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
                installed = True
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        if os._exit is _exit_with_report:
            os._exit = _real_exit
        if installed:
            try:
                if signal.getsignal(signal.SIGTERM) is _on_sigterm:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
            except (ValueError, OSError):
                pass


def _enter_profile(stack: contextlib.ExitStack, options: RunOptions, recorder: Recorder) -> None:
    """Profile the program; with ``out_dir``, save the profile files once the profile stopped."""
    from conctools.profiling import Profile, ProfileError

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
        from conctools.events import SpanEvent
        from conctools.exporters.files import write_profile_files

        rec = prof._recorder if prof._recorder is not None else None
        spans = [e for e in rec.events() if isinstance(e, SpanEvent)] if rec is not None else []
        _, note = write_profile_files(prof, spans, out_dir)  # profile.pb.gz, profile.speedscope.json
        if note:
            print(note, file=sys.stderr)
    except Exception as exc:
        print(f"conctools: could not save the profile: {exc}", file=sys.stderr)


@contextlib.contextmanager
def _stderr_logging(level: str) -> Iterator[None]:
    """Log conctools' own lines (spans, warnings) to stderr at ``level``."""
    from conctools.tracing import ContextFilter

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


def _run_file(typed: str, path: str) -> None:
    """Run the source file ``path`` as ``__main__`` the way ``python typed`` does: ``__file__`` is
    the absolute path, ``sys.argv[0]`` stays as typed (``runpy.run_path`` would make it ``path``)."""
    import importlib.machinery
    import io
    import types

    with io.open_code(path) as f:
        source = f.read()
    # dont_inherit: this module's ``from __future__ import annotations`` is not the program's.
    code = compile(source, path, "exec", dont_inherit=True)
    module = types.ModuleType("__main__")
    module.__dict__.update(
        __file__=path,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
        __package__=None,
        __spec__=None,
        __annotations__={},
    )
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    sys.argv[0] = typed
    try:
        exec(code, module.__dict__)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


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
            typed = options.script
            # As python does: an absolute __file__ (cwd joined, not normalised), the real directory first.
            script = typed if os.path.isabs(typed) else os.path.join(os.getcwd(), typed)
            sys.argv = [typed, *options.args]
            sys.path[0] = os.path.dirname(os.path.realpath(script))
            if os.path.isfile(script) and not _is_zip(script):
                _run_file(typed, script)
            else:  # a directory or a zip file with __main__.py
                sys.path[0] = saved_path0 or ""
                runpy.run_path(typed, run_name="__main__")
        return 0
    except SystemExit as exc:
        return _exit_code(exc)
    except KeyboardInterrupt:
        _print_user_traceback()
        return 130
    except BaseException:
        _print_user_traceback()
        return 1
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None and sys.path:
            sys.path[0] = saved_path0


def _is_zip(path: str) -> bool:
    # A zip file ends with its end-of-central-directory record (after at most a 64 KiB comment):
    # a script without that signature in its tail is not one, and start-up skips importing zipfile.
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - (1 << 16) - 22))
            if b"PK\x05\x06" not in f.read():
                return False
        import zipfile

        return zipfile.is_zipfile(path)
    except OSError:
        return False


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
    from conctools.reporting.html import render_html
    from conctools.reporting.jsonreport import render_json
    from conctools.reporting.text import render_text
    from conctools.reporting.trace import render_trace

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
    from conctools.exporters.wiring import write_run_files

    locks, note = write_run_files(snapshot, out_dir)  # locks.pb.gz, locks-holders.pb.gz
    if note:
        _say(note + "\n")
    return written + locks


def run_program(options: RunOptions) -> int:
    """Run the program under conctools, print the report, return the exit status."""
    recorder = Recorder(capacity=options.capacity)
    recorder.meta.update({"command": options.command, "argv": [options.script or options.module, *options.args]})
    _final_done[0] = False
    main_pid = os.getpid()
    with (
        _console(options, recorder),
        _follow_children(options, recorder),  # first: its imports stay out of a --profile
        _dump_agent(options, recorder),
        instrumented(options, recorder),
        _report_on_abrupt_exit(recorder, options),
    ):
        freeze_startup_heap()
        status = _execute(options)
        _join_program_threads()
    if os.getpid() != main_pid:
        # A child the program forked (os.fork) returned through here: it reports to the run, not here.
        return status
    if not _final_report(recorder, options, status):
        # A signal's (or a deadlock's) report got there first, and that path ends the process.
        import time

        time.sleep(15.0)
    return status


@contextlib.contextmanager
def _follow_children(options: RunOptions, recorder: Recorder) -> Iterator[None]:
    """Follow the program's Python child processes (see :mod:`conctools.children`): the same
    options, one merged report, and a child deadlocked or hung stops the run (86 / 87)."""
    if not options.follow_children:
        from conctools.children.forking import guard_forks

        guard_forks()  # forked children still start clean (conctools' locks, SIGTERM)
        yield
        return
    from conctools.children import ChildFollower
    from conctools.events import ProcessStuckEvent

    def on_stuck(event: ProcessStuckEvent) -> None:
        status = EXIT_DEADLOCK if event.verdict == "deadlock" else EXIT_HANG
        if _final_done[0] and options.report:  # the report is out: the program was ending (atexit joins)
            from conctools.reporting.processes_text import format_process_stuck

            _say(format_process_stuck(event, recorder.snapshot(), brief=True) + "\n")
        what = f"a {event.verdict} in child process {event.pid} {event.process_name!r}"
        if event.verdict == "dead" and "multiprocessing lock" in event.reason:
            what = f"child process {event.pid} {event.process_name!r} died holding a lock the program waits for"
        elif event.verdict == "dead":
            what = f"child process {event.pid} {event.process_name!r} died with jobs the program waits for"
        elif event.verdict == "ended":
            what = f"child process {event.pid} {event.process_name!r} ended, and the program waits forever"
        _report_and_exit(recorder, options, status, what)

    follower = ChildFollower(
        {
            "capacity": options.capacity,
            "log_level": options.log_level,
            "sample_interval_s": options.sample_interval_s,
            "deadlock_timeout_s": options.deadlock_timeout_s,
            "loop_threshold_s": options.loop_threshold_s,
            "detect_blocking": options.detect_blocking,
            "trace_locks": options.trace_locks,
            "lock_order": options.lock_order,
            "lock_wait_threshold_s": options.lock_wait_threshold_s,
            "gil": options.gil,
        },
        recorder,
        argv=[options.script or f"-m {options.module}", *options.args],
        on_stuck=on_stuck if options.exit_on_deadlock and options.deadlock_timeout_s else None,
    )

    def on_abrupt_exit(kill_children: bool) -> None:
        if kill_children:
            follower.kill_children()
        follower.close()

    # Stays registered after the program's end: atexit may still join a child that gets stuck.
    try:
        follower.start()
    except OSError as exc:  # no run folder (an unwritable $TMPDIR): the program runs, its children unfollowed
        _say(f"conctools: not following child processes: cannot make a run folder: {exc.strerror or exc}\n")
        from conctools.children.forking import guard_forks

        guard_forks()
        yield
        return
    _abrupt_exit_hooks["children"] = on_abrupt_exit
    try:
        yield
    finally:
        follower.detach()


def _console(options: RunOptions, recorder: Recorder) -> contextlib.AbstractContextManager[object]:
    """The live console (``--console``), opened before the instruments: its own thread, loop and
    locks are made while nothing is patched, so they stay plain and out of the report."""
    if not options.console:
        return contextlib.nullcontext()
    from conctools.console.launch import console_for_run

    return console_for_run(
        options.console_host, options.console_port, allow_remote=options.allow_remote_console, recorder=recorder
    )


def _dump_agent(options: RunOptions, recorder: Recorder) -> contextlib.AbstractContextManager[object]:
    """The agent that ``conctools dump/top PID`` ask, started before the instruments so that its
    thread and socket stay plain (``--no-dump-agent``: none)."""
    if not options.dump_agent:
        return contextlib.nullcontext()
    from conctools.agent.server import agent_while

    return agent_while(recorder)


def _say(text: str) -> None:
    """Write to stderr; a closed one (``2>&1 | head -1``) is let go quietly, as python lets it go."""
    try:
        stream = sys.stderr
        if stream is None:
            return
        stream.write(text)
        stream.flush()
    except Exception:
        _silence_stderr()


def _silence_stderr() -> None:
    """Point a broken stderr at /dev/null, so that the interpreter's last flush at exit cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stderr.fileno())
        os.close(devnull)
    except Exception:
        pass


def finish_report(recorder: Recorder, options: RunOptions) -> None:
    """Print the brief report to stderr and write the files; never raises."""
    try:
        sys.stdout.flush()
    except Exception:
        pass
    if not options.report and options.out_dir is None:
        return  # nothing would read the snapshot
    try:
        snapshot = recorder.snapshot()
    except Exception as exc:
        _say(f"conctools: could not write the report: {exc}\n")
        return
    if options.report:
        try:
            from conctools.reporting.text import render_text

            text = render_text(snapshot, brief=True)
        except Exception as exc:
            text = f"conctools: could not render the report: {exc}\n"
        _say(text)
    if options.out_dir is not None:
        try:
            paths = write_reports(snapshot, options.out_dir)
        except Exception as exc:
            _say(f"conctools: could not write the report files: {exc}\n")
        else:
            if options.report:
                _say(f"conctools: wrote {', '.join(str(p) for p in paths)}\n")
