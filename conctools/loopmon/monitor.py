"""LoopMonitor: the heartbeat on the loop and the watchdog thread that samples a stall."""

from __future__ import annotations

import _thread
import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
from types import FrameType, TracebackType
from typing import Any

from conctools import taskdump
from conctools._context import (
    _SAMPLE_DIR,
    current_frames,
    internal_thread,
    is_conctools_frame,
    thread_name_of,
    wait_lock,
)
from conctools._log import get_logger
from conctools.events import Frame, SlowCallbackEvent, frame_at
from conctools.loopmon.blocking import _disable_blocking_detection, _enable_blocking_detection
from conctools.loopmon.culprits import _ASYNCIO_DIR, _current_task, _task_name, callback_frames, culprit_of
from conctools.loopmon.segments import Sample, cut_segments
from conctools.loopmon.stats import stats_for
from conctools.recorder import Recorder, get_recorder

__all__ = ["LoopMonitor", "watch_loop"]

_log = get_logger("conctools.loopmon")

_monotonic_ns = time.monotonic_ns
_get_running_loop = asyncio._get_running_loop

# CPython 3.13.0's loop.create_task() calls task.set_name(None) after any task factory, which
# renames every unnamed task 'None' (3.12 and 3.13.1+ keep 'Task-N'): wrap create_task there instead.
_FACTORY_RENAMES_TASKS = sys.version_info[:3] == (3, 13, 0)

_active_lock = _thread.allocate_lock()
_active: dict[int, LoopMonitor] = {}  # id(loop) -> the monitor watching it

# A well loop's watchdog looks at least this often (its own bookkeeping: a late beat, a stopped loop).
_IDLE_WAIT_NS = 1_000_000_000


def _beat_cell() -> Any:
    """The C extension's ``BeatCell``, on which the watchdog waits without the GIL; ``None`` without it."""
    cls = getattr(taskdump._c_speedups(), "BeatCell", None)
    try:
        return cls() if cls is not None else None
    except Exception:
        return None


class LoopMonitor:
    """Watch one event loop for stalls longer than ``threshold_s`` from a watchdog thread.

    ``loop=None`` means the loop running when :meth:`start` is called. Use
    :meth:`start`/:meth:`stop`, ``with`` or ``async with``. A loop already watched by another
    monitor is not watched twice (the first one keeps it). ``detect_blocking`` also reports
    known blocking calls (``time.sleep``, blocking sockets, thread waits) made on the loop's
    thread. ``track_creation`` installs a task factory that notes where tasks are created
    (the previous factory still creates them; on CPython 3.13.0, whose ``create_task`` renames
    every unnamed task ``'None'`` when a factory is set, a wrapper of the loop's ``create_task``
    notes them instead). Never raises into the program.

    >>> import asyncio, time
    >>> async def main():
    ...     async with LoopMonitor(threshold_s=0.05) as mon:
    ...         time.sleep(0.2)
    ...     return mon.stalls
    >>> asyncio.run(main())
    1
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        threshold_s: float = 0.1,
        *,
        sample_interval_s: float | None = None,
        max_samples: int = 16,
        probe_interval_s: float | None = None,
        detect_blocking: bool = False,
        track_creation: bool = True,
        recorder: Recorder | None = None,
    ) -> None:
        if not threshold_s > 0:
            raise ValueError(f"threshold_s must be more than 0 seconds, got {threshold_s!r}")
        self.loop = loop
        self.threshold_s = float(threshold_s)
        # At least every min(threshold/4, 10 ms): often enough to tell the callbacks of one stall apart.
        self.sample_interval_s = (
            float(sample_interval_s) if sample_interval_s else max(0.001, min(self.threshold_s / 4, 0.01))
        )
        self.max_samples = max(1, int(max_samples))
        self.probe_interval_s = (
            float(probe_interval_s) if probe_interval_s else min(0.02, max(0.001, self.threshold_s / 5))
        )
        self._threshold_ns = int(self.threshold_s * 1e9)
        self.detect_blocking = detect_blocking
        self.track_creation = track_creation
        self.recorder = recorder
        self.stalls = 0  # stalls recorded by this monitor
        self.watchdog_cpu_s = 0.0  # CPU time of the watchdog thread, once it has stopped
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake = wait_lock()
        self._loop_tid: int | None = None
        # Heartbeat state, written by the loop thread (_beat) and read by the watchdog.
        self._gen = 0  # bumped by each start(): a stale timer of an earlier start dies quietly
        self._epoch = 0  # bumped when the loop (re)starts: a beat delayed by a stopped loop is not lag
        self._ticking = False
        self._timer: asyncio.TimerHandle | None = None
        self._due_ns = 0
        self._last_beat_ns = 0
        # ... and the same time where the watchdog waits on it without the GIL (the C extension's BeatCell)
        self._cell: Any = _beat_cell()
        self._late: tuple[int, int] | None = None  # (due, fired) of a beat late by >= threshold
        self._beats = 0
        self._factory_installed: Callable[..., Any] | None = None
        self._previous_factory: Any = None
        self._owns_loop = False
        self._exit_when_closed = False
        self._starting_until_ns = 0
        self._starting = False  # start() runs: no stall begins (its time is conctools', not the loop's)
        self._on_closed: Callable[[LoopMonitor], None] | None = None

    @property
    def probes(self) -> int:
        """How many heartbeats ran on the loop."""
        return self._beats

    def __str__(self) -> str:
        """Its stalls as the report shows them (``print(monitor)`` after ``watch_loop``)."""
        from conctools.reporting.summary import describe

        return describe(self)

    @property
    def alive(self) -> bool:
        """True while the watchdog thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    # ---- control ----
    def start(self) -> LoopMonitor:
        """Start watching (from any thread); returns ``self``."""
        if self._thread is not None:
            return self
        try:
            if self.loop is None:
                self.loop = asyncio.get_running_loop()
            loop = self.loop
            with _active_lock:
                if id(loop) in _active:
                    _log.debug("conctools: loop %r is already watched; not watching it twice", loop)
                    return self
                _active[id(loop)] = self
                self._owns_loop = True
            if _get_running_loop() is loop:
                self._loop_tid = _thread.get_ident()
            else:
                self._loop_tid = taskdump.loop_thread_id(loop)
            if self._loop_tid is not None:
                taskdump.register_loop(loop, self._loop_tid)
            if self.recorder is None:
                self.recorder = get_recorder()
            self._stats = stats_for(self.recorder)
            if self.track_creation:
                self._install_factory(loop)
            if self.detect_blocking:
                _enable_blocking_detection(loop)
            self._stopping = False
            self._starting_until_ns = _monotonic_ns() + 1_000_000_000
            self._set_last_beat(_monotonic_ns())
            self._gen += 1
            self._ticking = True
            self._wake.acquire(False)  # held: the watchdog sleeps on it until stop() releases it
            thread = internal_thread(self._watch, "conctools-loopmon")
            self._thread = thread
            # Until start() returns, the loop's thread may be running this code (the loop-start hook,
            # or a callback that starts a monitor): a slow thread start on a busy machine is not the
            # program's stall. Silence counts from the end of start(), and the first heartbeat is
            # due from then (not late by the time the thread took to start).
            self._starting = True
            try:
                thread.start()
                if _get_running_loop() is loop:
                    self._start_ticker(self._gen)
                else:
                    loop.call_soon_threadsafe(self._start_ticker, self._gen)
            finally:
                self._set_last_beat(_monotonic_ns())
                self._starting = False
        except Exception:
            _log.exception("conctools: could not start the loop monitor")
            self._release()
        return self

    def stop(self) -> None:
        """Stop watching; a stall in progress is recorded with its duration so far."""
        thread = self._thread
        if thread is None:
            self._release()
            return
        self._stopping = True
        self._ticking = False
        self._cancel_timer()
        try:
            self._wake.release()
        except RuntimeError:
            pass
        if self._cell is not None:
            self._cell.kick()
        if thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._thread = None
        self._release()

    def _cancel_timer(self) -> None:
        """Drop the pending heartbeat now when that is safe; otherwise it dies when it fires."""
        timer, loop = self._timer, self.loop
        if timer is None or loop is None:
            return
        if _get_running_loop() is loop or not loop.is_running():
            timer.cancel()
            self._timer = None

    def _release(self) -> None:
        loop = self.loop
        if loop is None or not self._owns_loop:
            return
        self._owns_loop = False
        try:
            if self.detect_blocking:
                _disable_blocking_detection(loop)
            self._remove_factory(loop)
        except Exception:
            _log.exception("conctools: could not restore the loop")
        with _active_lock:
            if _active.get(id(loop)) is self:
                del _active[id(loop)]

    def __enter__(self) -> LoopMonitor:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> LoopMonitor:
        return self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- task creation sites ----
    def _install_factory(self, loop: asyncio.AbstractEventLoop) -> None:
        if _FACTORY_RENAMES_TASKS and loop.get_task_factory() is None and "create_task" not in vars(loop):
            self._wrap_create_task(loop)
            return
        previous = loop.get_task_factory()
        note_task = taskdump.fast_creation_noter()
        note_site = taskdump._note_site
        c_factory = taskdump.fast_task_factory() if previous is None else None
        if c_factory is not None:  # the one below, in C: no Python frame for each task created
            self._previous_factory = None
            self._factory_installed = c_factory
            loop.set_task_factory(c_factory)
            return
        if note_task is not None and previous is None:
            created, limit, purge = taskdump._created, taskdump._created_limit, taskdump.purge_created
            own_len = dict.__len__  # (the table's own entries, as purge_created() counts them; see below)
            new_task = asyncio.Task

            def factory(lp: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
                # taskdump.note_creation_site(), from the interpreter's frames (no frame objects made).
                task = new_task(coro, loop=lp, **kwargs)
                try:
                    note_task(created, task)
                    if own_len(created) >= limit[0]:
                        purge()
                except Exception:
                    pass
                return task

        elif note_site is not None and previous is None:
            created, skip_dirs, keep_dir = taskdump._created, taskdump._CREATION_SKIP, _SAMPLE_DIR
            new_task = asyncio.Task

            def factory(lp: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
                # taskdump.note_creation_site() inlined (one call less for every task); walked from the
                # frame that called create_task.
                task = new_task(coro, loop=lp, **kwargs)
                try:
                    note_site(created, task, 1, skip_dirs, keep_dir)
                except Exception:
                    pass
                return task

        else:

            def factory(lp: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
                task = previous(lp, coro, **kwargs) if previous is not None else asyncio.Task(coro, loop=lp, **kwargs)
                try:
                    taskdump.note_creation_site(task)
                except Exception:
                    pass
                return task

        self._previous_factory = previous
        self._factory_installed = factory
        loop.set_task_factory(factory)

    def _wrap_create_task(self, loop: asyncio.AbstractEventLoop) -> None:
        """CPython 3.13.0: note creation sites from a per-loop ``create_task`` wrapper instead of a
        factory (with a factory set, that version renames every unnamed task ``'None'``)."""
        original = loop.create_task
        # C where the extension is in use: the factory's table, no Python frame and no object per task (a
        # Python wrapper's dict entries made 3.13.0's asyncio program run one more full collection: issue 12)
        wrapper = taskdump.fast_create_task(original)
        if wrapper is None:

            def create_task(coro: Any, **kwargs: Any) -> Any:
                task = original(coro, **kwargs)
                try:
                    taskdump.note_creation_site(task)
                except Exception:
                    pass
                return task

            create_task.__wrapped__ = original  # type: ignore[attr-defined]
            wrapper = create_task
        try:
            loop.create_task = wrapper  # type: ignore[method-assign]
        except (AttributeError, TypeError):  # a loop without an instance dict
            return
        self._factory_installed = wrapper

    def _remove_factory(self, loop: asyncio.AbstractEventLoop) -> None:
        factory, self._factory_installed = self._factory_installed, None
        if factory is not None and vars(loop).get("create_task") is factory:
            del loop.create_task  # type: ignore[method-assign]
            return
        if factory is not None and not loop.is_closed() and loop.get_task_factory() is factory:
            loop.set_task_factory(self._previous_factory)

    # ---- the heartbeat (runs on the loop) ----
    def _start_ticker(self, gen: int) -> None:
        if gen != self._gen or not self._ticking or self.loop is None:
            return
        if self._loop_tid is None:
            self._loop_tid = _thread.get_ident()
        self._due_ns = _monotonic_ns() + int(self.probe_interval_s * 1e9)
        self._timer = self.loop.call_later(self.probe_interval_s, self._beat, gen, self._epoch)

    def _beat(self, gen: int, epoch: int) -> None:
        """A timer every ``probe_interval_s`` on the loop: how late it fires is the loop's lag.

        One timer handle per interval, no cross-thread wake-up: cheaper than any per-callback hook.
        """
        if gen != self._gen or self.loop is None:
            return  # a timer from an earlier start() of this monitor
        try:
            now = _monotonic_ns()
            if epoch == self._epoch:  # the loop ran all along: the delay is lag
                lag = now - self._due_ns
                self._stats.add_lag(lag)
                if lag >= self._threshold_ns:
                    self._late = (self._due_ns, now)
            self._set_last_beat(now)
            self._beats += 1
            if self._ticking:
                self._due_ns = now + int(self.probe_interval_s * 1e9)
                self._timer = self.loop.call_later(self.probe_interval_s, self._beat, gen, self._epoch)
            else:
                self._timer = None
        except Exception:  # never into the program's loop
            _log.exception("conctools: the loop heartbeat failed; the monitor stops watching this loop")
            self._ticking = False

    _beat._conctools_probe = True  # type: ignore[attr-defined]  # taskdump ignores our heartbeats

    # ---- the watchdog (its own thread) ----
    def _watch(self) -> None:
        try:
            self._watch_loop()
        except Exception:
            _log.exception("conctools: the loop monitor failed; it stops watching")
        finally:
            self.watchdog_cpu_s = time.thread_time()  # what watching cost this thread (benchmarks read it)

    def _watch_loop(self) -> None:
        loop = self.loop
        assert loop is not None
        threshold_ns = self._threshold_ns
        interval_ns = int(self.probe_interval_s * 1e9)
        sample_ns = int(self.sample_interval_s * 1e9)
        stall: _Stall | None = None
        registered = False
        was_running = False
        seen_stopped = False
        last_stall_end_ns = 0
        recheck_ns = 0
        while not self._stopping:
            now = _monotonic_ns()
            if not (loop.is_running() and not loop.is_closed()):
                if stall is not None:
                    last_stall_end_ns = now
                    self._finish(stall, now)
                    stall = None
                if was_running:
                    self._epoch += 1  # the pending heartbeat will be late because the loop stopped
                was_running = False
                seen_stopped = True
                if loop.is_closed() and self._exit_when_closed:
                    break
                # A stopped loop: wake rarely, unless it is about to start (uvloop's hook runs
                # just before run_forever); kick() wakes us when it runs again.
                timeout = self.probe_interval_s if now < self._starting_until_ns else 0.25
                if self._wake.acquire(True, timeout) and self._stopping:
                    break
                continue
            if not was_running:
                was_running = True
                if seen_stopped:  # it runs again: silence counts from now, not from before the stop
                    self._epoch += 1
                    self._set_last_beat(max(self._last_beat_ns, now))
            if not registered and self._loop_tid is not None and self._beats:
                taskdump.register_loop(loop, self._loop_tid)  # learnt from the heartbeat (uvloop)
                registered = True
            starting = self._starting  # read before the beat: start() sets the beat, then clears this
            last = self._last_beat_ns
            if stall is not None:
                if last > stall.detected_ns:  # a heartbeat ran: the loop came back
                    last_stall_end_ns = last
                    self._finish(stall, last)
                    stall = None
                elif now >= stall.next_sample_ns:
                    self._sample(stall, now, sample_ns)
            late = self._late
            if late is not None:
                self._late = None
                if stall is None and late[1] > last_stall_end_ns:
                    self._missed(late[0], late[1])  # it ended before we could look (we were starved)
            if stall is None and not starting and now - last >= threshold_ns and now >= recheck_ns:
                stall, recheck_ns = self._begin(last, now)
            if stall is not None:
                wake_ns = min(stall.next_sample_ns, now + interval_ns)
            else:
                wake_ns = max(last + threshold_ns, recheck_ns)
                if wake_ns <= now:
                    wake_ns = now + interval_ns // 2
            cell = self._cell
            if (
                cell is not None
                and stall is None
                and registered
                and wake_ns == last + threshold_ns
                and self._late is None
            ):
                # The loop is well: sleep through its heartbeats without the GIL until it has been silent for
                # the threshold (then look, above), a second at most, or a kick (stop(), a restarted loop).
                # Waking at each deadline the heartbeats pushed on took the GIL ~10 times a second, each time
                # from a loop that releases it at every select(0): dozens of futex calls in its thread (issue 12).
                if cell.wait_silent(threshold_ns, now + _IDLE_WAIT_NS) == 2 and self._stopping:
                    break
                continue
            timeout = max(0.0005, (wake_ns - _monotonic_ns()) / 1e9)
            if self._wake.acquire(True, timeout) and self._stopping:
                break  # stop() released it (kick() releases it too, to resume a restarted loop)
        if stall is not None:
            self._finish(stall, _monotonic_ns())
        if not self._stopping and self._on_closed is not None:
            self._on_closed(self)

    def kick(self) -> None:
        """Wake the watchdog now (its loop starts running again)."""
        self._starting_until_ns = _monotonic_ns() + 1_000_000_000
        self._epoch += 1
        self._set_last_beat(_monotonic_ns())
        try:
            self._wake.release()
        except RuntimeError:  # already released: it is awake anyway
            pass
        if self._cell is not None:
            self._cell.kick()

    def _set_last_beat(self, ns: int) -> None:
        self._last_beat_ns = ns
        if self._cell is not None:
            self._cell.set(ns)

    def _begin(self, last_beat_ns: int, now: int) -> tuple[_Stall | None, int]:
        """The loop has been silent for ``threshold_s``: a stall, or ``(None, when to look again)``."""
        try:
            return self._begin_stall(last_beat_ns, now)
        except Exception:  # attribute what we can; keep watching
            _log.debug("conctools: could not inspect a stall", exc_info=True)
            return None, now + int(self.probe_interval_s * 1e9)

    def _begin_stall(self, last_beat_ns: int, now: int) -> tuple[_Stall | None, int]:
        loop = self.loop
        threshold_ns = self._threshold_ns
        retry = now + int(self.probe_interval_s * 1e9)
        if loop is None:
            return None, retry
        tid = self._loop_tid or taskdump.loop_thread_id(loop)
        if tid is None:
            return None, retry
        frame = current_frames().get(tid)
        batch_ns, _handle, index = _batch_start(frame, loop)
        if batch_ns is not None and last_beat_ns - 10_000_000_000 < batch_ns <= now:
            # asyncio's loops: the running batch began at batch_ns; the stall began then or at
            # the heartbeat if that ran inside this batch. Exact, so wait until it is long enough.
            start_ns = max(batch_ns, last_beat_ns)
            if now - start_ns < threshold_ns:
                return None, start_ns + threshold_ns
            # Known to have run from the stall's start only when it is the batch's first callback.
            exact = index == 0 and batch_ns >= last_beat_ns
        elif _is_idle_frame(frame):
            return None, retry  # in select(): the heartbeat is due any moment
        else:
            # Other loops (uvloop): the stall began within one beat interval after the last beat.
            start_ns = last_beat_ns
            if now - start_ns < threshold_ns + int(self.probe_interval_s * 1e9):
                return None, start_ns + threshold_ns + int(self.probe_interval_s * 1e9)
            exact = False
        stall = _Stall(tid, start_ns, now)
        stall.exact_start = exact
        self._take_sample(stall, frame, now)
        stall.next_sample_ns = now + int(self.sample_interval_s * 1e9)
        return stall, 0

    def _sample(self, stall: _Stall, now: int, sample_ns: int) -> None:
        try:
            frame = current_frames().get(stall.thread_id)
            if frame is not None:
                self._take_sample(stall, frame, now)
        except Exception:
            _log.debug("conctools: could not sample the loop thread", exc_info=True)
        if len(stall.samples) >= _MAX_STALL_SAMPLES:
            # Bounded: keep every other sample and sample half as often from now on.
            stall.samples = stall.samples[::2]
            stall.sample_every_ns = max(sample_ns, stall.sample_every_ns) * 2
        stall.next_sample_ns = now + max(sample_ns, stall.sample_every_ns)

    def _take_sample(self, stall: _Stall, frame: FrameType | None, now: int) -> None:
        """Who runs on the loop thread now (task or callback), and where: one :class:`Sample`."""
        loop = self.loop
        assert loop is not None
        if _is_idle_frame(frame) and stall.samples:
            return  # back in select(): the stall is over, its heartbeat just has not run yet
        stack = stall.stack_of(frame)
        if stall.samples and stack and stack[0].function == "_run_once" and stack[0].filename.startswith(_ASYNCIO_DIR):
            return  # between two callbacks: nobody to blame for this instant
        if stall.samples and not callback_frames(stack) and not _in_run_once(frame):
            return  # uvloop idle in C: no callback runs
        who, task_name, callback, created_at = _running(loop, frame, stack)
        stall.samples.append(
            Sample(
                t_ns=now,
                who=who,
                task_name=task_name,
                callback=callback,
                created_at=created_at,
                stack=stack,
                culprit=culprit_of(stack),
            )
        )

    def _missed(self, sent_ns: int, end_ns: int) -> None:
        """A stall that ended before the watchdog could look (it did not get the CPU in time)."""
        tid = self._loop_tid or 0
        stall = _Stall(tid, sent_ns, end_ns)
        self._finish(stall, end_ns)

    def _finish(self, stall: _Stall, end_ns: int) -> None:
        try:
            self._record_segments(stall, end_ns)
        except Exception:
            _log.exception("conctools: could not record a stall")

    def _record_segments(self, stall: _Stall, end_ns: int) -> None:
        """One event per segment of the stall: each with its own name, duration, culprit and stacks."""
        loop = self.loop
        stall_s = max(0, end_ns - stall.start_ns) / 1e9
        detected = max(0, stall.detected_ns - stall.start_ns) / 1e9
        # A task's slow call split from its next one only when each lasted half the threshold or more.
        min_part = max(2, round(self.threshold_s / 2 / max(self.sample_interval_s, stall.sample_every_ns / 1e9)))
        segments = cut_segments(stall.samples, stall.start_ns, end_ns, min_part=min_part)
        thread_name = thread_name_of(stall.thread_id)
        assert self.recorder is not None
        self.stalls += 1
        if not segments:  # never sampled
            event = SlowCallbackEvent(
                ts_ns=stall.start_ns,
                thread_id=stall.thread_id,
                thread_name=thread_name,
                loop_id=id(loop),
                duration_s=stall_s,
                threshold_s=self.threshold_s,
                callback="<unknown: the stall ended before it could be sampled>",
                culprit=None,
                detected_after_s=detected,
                stall_id=stall.start_ns,
                stall_s=stall_s,
            )
            self._stats.add_stall(event, ())
            self.recorder.record(event)
            return
        for i, seg in enumerate(segments):
            culprit, stack = seg.culprit()
            first = seg.first
            head = 0.0
            if i == 0 and not stall.exact_start:
                head = max(0, first.t_ns - seg.start_ns) / 1e9
            event = SlowCallbackEvent(
                ts_ns=seg.start_ns,
                thread_id=stall.thread_id,
                thread_name=thread_name,
                task_name=first.task_name,
                loop_id=id(loop),
                duration_s=max(0, seg.end_ns - seg.start_ns) / 1e9,
                threshold_s=self.threshold_s,
                callback=first.callback,
                culprit=_with_line(culprit) if culprit is not None else None,
                samples=_kept_stacks(seg.samples, self.max_samples),
                task_created_at=first.created_at,
                detected_after_s=detected,
                stall_id=stall.start_ns,
                stall_s=stall_s,
                segment=i,
                segments=len(segments),
                head_unsampled_s=head,
            )
            self._stats.add_stall(event, _with_lines(stack), new_stall=i == 0)
            self.recorder.record(event)
            if _log.isEnabledFor(logging.INFO):
                where = f" at {event.culprit.site} ({event.culprit.line})" if event.culprit is not None else ""
                _log.info("event loop blocked for %.3f s by %s%s", event.duration_s, event.callback, where)


_MAX_STALL_SAMPLES = 2048  # samples kept per stall (then halved, sampling half as often)


class _Stall:
    __slots__ = (
        "_frames",
        "_last_raw",
        "_last_stack",
        "detected_ns",
        "exact_start",
        "next_sample_ns",
        "sample_every_ns",
        "samples",
        "start_ns",
        "thread_id",
    )

    def __init__(self, thread_id: int, sent_ns: int, detected_ns: int) -> None:
        self.thread_id = thread_id
        self.start_ns = sent_ns
        self.detected_ns = detected_ns
        self.exact_start = False
        self.samples: list[Sample] = []
        self.next_sample_ns = detected_ns
        self.sample_every_ns = 0
        self._frames: dict[tuple[str, int, str], Frame] = {}
        self._last_raw: tuple[tuple[str, int, str], ...] = ()
        self._last_stack: tuple[Frame, ...] = ()

    def stack_of(self, frame: FrameType | None) -> tuple[Frame, ...]:
        """The thread's stack, innermost first, without conctools' frames; cheap when it repeats
        (the lines' text is read only for the stacks an event keeps)."""
        raw: list[tuple[str, int, str]] = []
        f = frame
        while f is not None and len(raw) < 64:
            code = f.f_code
            if not is_conctools_frame(code.co_filename):
                raw.append((code.co_filename, f.f_lineno or 0, code.co_name))
            f = f.f_back
        key = tuple(raw)
        if key == self._last_raw:
            return self._last_stack
        frames = self._frames
        stack = []
        for entry in key:
            record = frames.get(entry)
            if record is None:
                if len(frames) >= 4096:
                    frames.clear()
                record = frames[entry] = Frame(filename=entry[0], lineno=entry[1], function=entry[2])
            stack.append(record)
        self._last_raw, self._last_stack = key, tuple(stack)
        return self._last_stack


def _with_line(f: Frame) -> Frame:
    return f if f.line else frame_at(f.filename, f.lineno, f.function)


def _with_lines(stack: tuple[Frame, ...]) -> tuple[Frame, ...]:
    return tuple(_with_line(f) for f in stack)


def _kept_stacks(samples: tuple[Sample, ...], limit: int) -> tuple[tuple[Frame, ...], ...]:
    """At most ``limit`` of the segment's stacks, spread evenly over it, with their lines' text."""
    if len(samples) > limit:
        step = len(samples) / limit
        samples = tuple(samples[int(i * step)] for i in range(limit))
    return tuple(_with_lines(s.stack) for s in samples)


def _running(
    loop: asyncio.AbstractEventLoop, frame: FrameType | None, stack: tuple[Frame, ...]
) -> tuple[Hashable, str | None, str, str | None]:
    """``(identity, task name, callback in words, task creation site)`` of what runs on the loop now.

    The task comes from ``asyncio.current_task(loop)``; where that cannot be read from another
    thread, from the coroutine frame the callback entered. A plain callback is the handle being
    run (asyncio's loops) or the first frame entered from the loop (uvloop).
    """
    task = _current_task(loop)
    if task is None:
        task = _task_of_frames(loop, frame)
    if task is not None:
        name = _task_name(task)
        coro = taskdump._task_coro(task)
        callback = f"Task {name!r} ({getattr(coro, '__qualname__', type(coro).__name__)})"
        return ("task", id(task), name), name, callback, taskdump.creation_site(task)
    _, handle, _ = _batch_start(frame, loop)
    if handle is not None:
        return ("handle", id(handle)), None, _describe_handle(handle), None
    callback, code = _callback_from_stack(frame)
    return ("code", id(code) if code is not None else 0, callback), None, callback, None


_CO_COROUTINE = 0x80


def _task_of_frames(loop: asyncio.AbstractEventLoop, frame: FrameType | None) -> Any:
    """The task whose coroutine runs in ``frame``'s stack, when ``current_task`` cannot say."""
    coro_frames = set()
    f = frame
    depth = 0
    while f is not None and depth < 200:
        if f.f_code.co_flags & _CO_COROUTINE:
            coro_frames.add(id(f))
        f = f.f_back
        depth += 1
    if not coro_frames:
        return None
    for task in taskdump.pending_tasks(loop):
        coro = taskdump._task_coro(task)
        if id(getattr(coro, "cr_frame", None)) in coro_frames:
            return task
    return None


def _batch_start(frame: FrameType | None, loop: asyncio.AbstractEventLoop) -> tuple[int | None, Any, int | None]:
    """When the running batch of callbacks began, the handle being run and its index in the
    batch (asyncio's loops; ``None``s elsewhere).

    ``BaseEventLoop._run_once`` computes ``end_time = self.time() + clock_resolution`` right
    after ``select()`` returns and keeps the running ``handle`` and its index ``i`` in locals:
    reading them costs the loop nothing.
    """
    target = _ASYNCIO_DIR + "base_events.py"
    f = frame
    depth = 0
    while f is not None and depth < 200:
        code = f.f_code
        if code.co_name == "_run_once" and code.co_filename == target:
            try:
                local = f.f_locals
                end_time = local.get("end_time")
                handle = local.get("handle")
                index = local.get("i")
                resolution = float(getattr(loop, "_clock_resolution", 0.0))
            except Exception:
                return None, None, None
            index = index if isinstance(index, int) else None
            if isinstance(end_time, float) and abs(loop.time() - time.monotonic()) < 1e-3:  # not a virtual clock
                return int((end_time - resolution) * 1e9), handle, index
            return None, handle, index
        f = f.f_back
        depth += 1
    return None, None, None


def _in_run_once(frame: FrameType | None) -> bool:
    """An asyncio loop's ``_run_once`` is on the stack (a callback or the loop's own code runs)."""
    target = _ASYNCIO_DIR + "base_events.py"
    depth = 0
    while frame is not None and depth < 200:
        if frame.f_code.co_name == "_run_once" and frame.f_code.co_filename == target:
            return True
        frame = frame.f_back
        depth += 1
    return False


def _is_idle_frame(frame: FrameType | None) -> bool:
    """True when the loop thread sits in ``select()`` (asyncio's loops): idle, not stalled."""
    return frame is not None and frame.f_code.co_name == "select" and frame.f_code.co_filename.endswith("selectors.py")


def _describe_handle(handle: Any) -> str:
    """``callback module.func(args) at file:line`` for a plain ``call_soon``/``call_later`` handle."""
    cb = getattr(handle, "_callback", None)
    if cb is None:
        return _short(handle)
    func = getattr(cb, "func", cb)  # functools.partial
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    module = getattr(func, "__module__", None)
    if module and module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    args = ", ".join(_short(a, 30) for a in tuple(getattr(handle, "_args", None) or ())[:4])
    code = getattr(func, "__code__", None)
    where = f" at {code.co_filename}:{code.co_firstlineno}" if code is not None else ""
    return f"callback {name}({args}){where}"


def _short(obj: Any, limit: int = 120) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _callback_from_stack(frame: FrameType | None) -> tuple[str, Any]:
    """Loops without Python frames of their own (uvloop): the first frame entered from the loop,
    in words, and its code object (the callback's identity)."""
    chain: list[FrameType] = []
    f = frame
    while f is not None and len(chain) < 200:
        chain.append(f)
        f = f.f_back
    chain.reverse()  # outermost first
    entered = None
    for i, fr in enumerate(chain):
        name = fr.f_code.co_name
        if name in ("run_until_complete", "run_forever", "run") and (
            fr.f_code.co_filename.startswith(_ASYNCIO_DIR) or "uvloop" in fr.f_code.co_filename
        ):
            entered = i
    if entered is not None and entered + 1 < len(chain):
        code = chain[entered + 1].f_code
        return f"callback {code.co_qualname}() at {code.co_filename}:{code.co_firstlineno}", code
    return "<unknown callback>", None


def watch_loop(threshold_s: float = 0.1, **options: Any) -> LoopMonitor:
    """Watch the running loop inside ``async with`` (options as :class:`LoopMonitor`).

    >>> import asyncio
    >>> async def main():
    ...     async with watch_loop(threshold_s=0.1) as monitor:
    ...         await asyncio.sleep(0)
    ...     return monitor.stalls
    >>> asyncio.run(main())
    0
    """
    return LoopMonitor(None, threshold_s, **options)
