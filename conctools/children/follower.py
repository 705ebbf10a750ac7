"""The run's side: a folder for the processes' files, the env that makes children follow, a
monitor for stuck children, the merged ``processes`` section, and no orphans.

:class:`ChildFollower` is entered by ``conctools run`` around the program. It

* makes a private run folder (``0700``, under the temporary directory) and puts the
  bootstrap on ``PYTHONPATH`` and :data:`~conctools.children.config.ENV_VAR` in the
  environment, so that every Python child follows (forks follow through fork hooks);
* wraps the places that reap children, to learn their exit statuses and CPU;
* runs a ``conctools-children`` thread that looks for a ``.stuck`` file: a child that found
  itself deadlocked or hung. It then reads every process's record, finds who waits on that
  child (:func:`~conctools.children.chain.build_chain`), records a
  :class:`~conctools.events.ProcessStuckEvent` and calls ``on_stuck`` (``conctools run``
  prints the report and exits 86 / 87);
* publishes the ``processes`` section: every process of the run, merged from the files
  (:mod:`conctools.children.merge`);
* kills the run's remaining child processes when ``conctools run`` stops a stuck program
  (:meth:`kill_children`), and removes the run folder when the run ends.
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from conctools._context import internal_thread
from conctools.children import forking, reaping
from conctools.children.chain import build_chain, unresolved_links
from conctools.children.config import BOOT_DIR, ENV_VAR, FollowConfig
from conctools.children.lost import LostJobsCheck
from conctools.children.merge import exit_words, processes_section
from conctools.children.pipes import writers_of
from conctools.children.procfile import ProcessIdentity, build_record, read_records
from conctools.events import ProcessStuckEvent
from conctools.recorder import Recorder

__all__ = ["ChildFollower", "StuckCallback"]

_log = logging.getLogger("conctools.children")

StuckCallback = Callable[[ProcessStuckEvent], object]
THREAD_NAME = "conctools-children"
_POLL_S = 0.2


class ChildFollower:
    """Follow the child processes of this (the run's main) process; a context manager.

    ``options`` are the run options children honour (JSON-able: ``capacity``, ``log_level``,
    ``sample_interval_s``, ``deadlock_timeout_s``, ``loop_threshold_s``, ``detect_blocking``,
    ``trace_locks``, ``lock_order``, ``lock_wait_threshold_s``, ``gil``); ``argv`` is the program's
    command line, for its section.
    """

    def __init__(
        self,
        options: dict[str, Any],
        recorder: Recorder,
        *,
        argv: list[str] | None = None,
        on_stuck: StuckCallback | None = None,
        flush_interval_s: float = 0.5,
    ) -> None:
        self.options = dict(options)
        self.recorder = recorder
        self.on_stuck = on_stuck
        self.flush_interval_s = flush_interval_s
        self.identity = ProcessIdentity.here("run", argv)
        self.run_dir: str | None = None
        self.stuck: list[ProcessStuckEvent] = []
        self._saved_env: dict[str, str | None] = {}
        self._stop = _thread.allocate_lock()
        self._thread: threading.Thread | None = None
        self._handled: set[str] = set()
        self.stopping = False  # a stuck child is stopping the run: the section says so
        timeout = options.get("deadlock_timeout_s")
        self._lost = LostJobsCheck(float(timeout)) if timeout else None

    # ---- control ----
    def start(self) -> ChildFollower:
        """Make the run folder, set the env, start the monitor."""
        self.run_dir = tempfile.mkdtemp(prefix=f"conctools-run-{os.getpid()}-")
        config = FollowConfig(
            run_dir=self.run_dir,
            root_pid=os.getpid(),
            options=self.options,
            flush_interval_s=self.flush_interval_s,
            pythonpath=os.environ.get("PYTHONPATH"),
        )
        self._set_env(ENV_VAR, config.to_env())
        previous = os.environ.get("PYTHONPATH")
        self._set_env("PYTHONPATH", BOOT_DIR + (os.pathsep + previous if previous else ""))
        forking.activate(config, root=True)
        reaping.install()
        self.recorder.add_section("processes", self.section)
        atexit.register(self._at_exit)
        self._stop.acquire()
        self._thread = internal_thread(self._run, THREAD_NAME)
        self._thread.start()
        return self

    def detach(self) -> None:
        """The program ended: children started from now on are not followed (the env is restored).

        The monitor and the run folder stay until the interpreter exits: ``multiprocessing``
        joins its children in an ``atexit`` hook, after the report, and a child stuck then
        must still stop the run rather than hang it.
        """
        forking.deactivate()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    def __enter__(self) -> ChildFollower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _set_env(self, name: str, value: str) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    # ---- the monitor ----
    def _run(self) -> None:
        while not self._stop.acquire(timeout=_POLL_S):
            try:
                self.poll()
            except Exception:
                _log.exception("conctools: the child-process monitor failed")
        self._stop.release()

    def poll(self) -> ProcessStuckEvent | None:
        """Look once for a child that found itself stuck; report the first new one."""
        if self.run_dir is None or os.getpid() != self.identity.pid:
            return None
        try:
            names = [n for n in os.listdir(self.run_dir) if n.endswith(".stuck") and n not in self._handled]
        except OSError:
            return None
        for name in sorted(names):
            self._handled.add(name)
            alarm = _read_json(os.path.join(self.run_dir, name))
            if alarm is None:
                continue
            return self._report(self.explain(alarm))
        lost = self._check_lost()
        if lost is not None:
            return self._report(lost)
        return None

    def _report(self, event: ProcessStuckEvent) -> ProcessStuckEvent:
        self.stopping = self.on_stuck is not None
        self.stuck.append(event)
        self.recorder.record(event)
        if self.on_stuck is not None:
            try:
                self.on_stuck(event)
            except Exception:
                _log.exception("conctools: on_stuck callback failed")
        return event

    def _check_lost(self) -> ProcessStuckEvent | None:
        """A pool of this process waiting forever for the jobs of a worker that died."""
        if self._lost is None or self.stuck:
            return None
        frames = sys._current_frames()
        reaped = reaping.reaped()
        if not any(r.get("exit_code") for r in reaped):
            self._lost.check({}, [], {})  # nothing died: nothing to keep either
            return None
        records = {int(r.get("pid") or 0): r for r in read_records(self.run_dir or "")}
        found = self._lost.check(frames, reaped, records)
        if found is None:
            return None
        dead = found.dead
        pid = int(dead.get("pid") or 0)
        reason = (
            f"{exit_words(int(dead['exit_code']))} while the pool had jobs; multiprocessing.Pool never runs "
            f"again a job whose worker died, so its results never come (the pool's other workers, pids "
            f"{', '.join(str(p) for p in found.workers)}, wait for work and its queues are empty)"
        )
        # The chain of the thread that waits on the pool (its current workers are what it names).
        event = self.explain({"pid": found.workers[0], "verdict": "dead", "reason": reason})
        chain = tuple(link for link in event.chain if link.thread_id == found.thread_id) or event.chain
        name = str(dead.get("name") or records.get(pid, {}).get("name") or "?")
        import dataclasses

        return dataclasses.replace(event, pid=pid, process_name=name, chain=chain)

    def explain(self, alarm: dict[str, Any]) -> ProcessStuckEvent:
        """The event for a stuck child: its finding, and the chain of waits that lead to it."""
        stuck_pid = int(alarm.get("pid") or 0)
        records = read_records(self.run_dir or "")
        names: dict[int, str] = {}
        waits_by_pid: dict[int, list[dict[str, Any]]] = {}
        live: list[int] = []
        for record in records:
            pid = int(record.get("pid") or 0)
            names[pid] = _name_of(record)
            waits_by_pid[pid] = list(record.get("waits") or [])
            if not record.get("final"):
                live.append(pid)
        mine = build_record(self.identity, None, final=False)
        names[self.identity.pid] = "MainProcess"
        waits_by_pid[self.identity.pid] = list(mine["waits"])
        candidates = [self.identity.pid, *live]
        for pid, waits in waits_by_pid.items():
            for wait in waits:
                if not wait.get("target_pids") and wait.get("pipe"):
                    writers = writers_of(wait["pipe"], pid, candidates)
                    if writers:
                        wait["target_pids"] = list(writers)
        chain = build_chain(stuck_pid, waits_by_pid, names)
        if not any(link.pid == self.identity.pid for link in chain):
            # The program's own threads that wait on some process conctools cannot name (a pipe whose
            # other end it cannot find): said as such, rather than left out or guessed.
            unknown = [dict(w, target_pids=[]) for w in waits_by_pid[self.identity.pid] if not w.get("target_pids")]
            chain = unresolved_links(self.identity.pid, unknown, names) + chain
        me = threading.current_thread()
        return ProcessStuckEvent(
            ts_ns=time.monotonic_ns(),
            thread_id=me.ident or 0,
            thread_name=me.name,
            pid=stuck_pid,
            process_name=names.get(stuck_pid, ""),
            verdict=str(alarm.get("verdict") or "hang"),
            reason=str(alarm.get("reason") or ""),
            chain=chain,
        )

    # ---- the merged section ----
    def section(self) -> dict[str, Any]:
        """The ``processes`` section: this process and every child whose file the run folder holds."""
        if os.getpid() != self.identity.pid:
            return {}
        records = read_records(self.run_dir or "") if self.run_dir else []
        user, system, peak = _self_usage()
        main = {
            "pid": self.identity.pid,
            "ppid": self.identity.ppid,
            "host": self.identity.host,
            "name": "MainProcess",
            "argv": self.identity.argv,
            "start_method": "run",
            "started_wall": self.identity.started_wall,
            "started_ns": self.identity.started_ns,
            "final": True,
            "exit_status": self.recorder.meta.get("exit_status"),
            "cpu_user_s": user,
            "cpu_system_s": system,
            "peak_rss_bytes": peak,
            "reaped": reaping.reaped(),
        }
        return processes_section(main, records, alive=_alive, stopping=self.stopping)

    # ---- the end ----
    def kill_children(self) -> list[int]:
        """SIGKILL every descendant of this process and every followed child still running
        (``conctools run`` is stopping a stuck program: like Ctrl-C, nothing it started outlives
        it). A child born meanwhile (a pool replacing a dead worker) ends at birth
        (:func:`~conctools.children.forking.stop_births`). ``multiprocessing``'s resource
        tracker is left to end by itself (it cleans up after the program). Returns the pids killed."""
        forking.stop_births()
        killed: list[int] = []
        for _ in range(5):
            targets = [p for p in _descendants() if p not in killed]
            for record in read_records(self.run_dir or ""):
                pid = int(record.get("pid") or 0)
                known = pid in killed or pid in targets
                if pid > 0 and not known and not record.get("final") and _alive(pid, record.get("started_wall")):
                    targets.append(pid)
            targets = [p for p in targets if p != os.getpid()]
            if not targets:
                break
            for pid in targets:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        return killed

    def close(self) -> None:
        """Stop the monitor and remove the run folder (this process only)."""
        if os.getpid() != self.identity.pid:
            return
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(RuntimeError):
                self._stop.release()
            if thread is not threading.current_thread():
                thread.join(2.0)
        run_dir, self.run_dir = self.run_dir, None
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
        reaping.uninstall()

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _descendants() -> list[int]:
    """Every live descendant of this process but multiprocessing's resource tracker."""
    try:
        import psutil

        out = []
        for child in psutil.Process().children(recursive=True):
            try:
                if any("multiprocessing.resource_tracker" in part for part in child.cmdline()):
                    continue
            except psutil.Error:
                pass
            out.append(child.pid)
        return out
    except Exception:
        return []


def _read_json(path: str) -> dict[str, Any] | None:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _name_of(record: dict[str, Any]) -> str:
    name = record.get("name")
    if name:
        return str(name)
    argv = record.get("argv") or []
    return os.path.basename(str(argv[0])) if argv else "?"


def _self_usage() -> tuple[float, float, int]:
    from conctools.children.procfile import cpu_and_rss

    return cpu_and_rss()


def _alive(pid: int, started_wall: Any = None) -> bool:
    """Whether ``pid`` still runs and is the process that started at ``started_wall`` (not a
    recycled pid): its start time from ``/proc`` must not be later than that."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    if started_wall is None:
        return True
    try:
        import psutil

        created = psutil.Process(pid).create_time()
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except Exception:
        return True
    return bool(created <= float(started_wall) + 1.0)
