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

import atexit
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

from conctools._context import current_frames, internal_thread, wait_lock
from conctools._log import get_logger
from conctools._typing import Any
from conctools.children import forking, mpsync, reaping
from conctools.children.chain import _link, build_chain, unresolved_links
from conctools.children.config import BOOT_DIR, ENV_VAR, FollowConfig
from conctools.children.lost import LostJobsCheck
from conctools.children.merge import exit_words, processes_section
from conctools.children.mpstuck import find_stuck, name_sites, resolve_targets
from conctools.children.pipes import writers_of
from conctools.children.procfile import ProcessIdentity, build_record, read_records, sync_state
from conctools.events import ProcessStuckEvent
from conctools.recorder import Recorder

__all__ = ["ChildFollower", "StuckCallback"]

_log = get_logger("conctools.children")

StuckCallback = Callable[[ProcessStuckEvent], object]
THREAD_NAME = "conctools-children"
_POLL_S = 0.2
# While the run folder stays empty and no child ended, the wait between polls doubles up to this: each poll
# takes the GIL, and taking it from a busy event loop (which releases it at every select(0)) costs dozens of
# futex wake-ups in the program's thread (issue 12). A child's first record is seen within this much.
_IDLE_POLL_S = 1.0


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
        self._stop = wait_lock()
        self._thread: threading.Thread | None = None
        self._handled: set[str] = set()
        self._empty_mtime_ns: int | None = None  # the run folder's mtime when last found empty (see poll)
        self.stopping = False  # a stuck child is stopping the run: the section says so
        timeout = options.get("deadlock_timeout_s")
        self._lost = LostJobsCheck(float(timeout)) if timeout else None
        self._timeout_s = float(timeout) if timeout else None

    # ---- control ----
    def start(self) -> ChildFollower:
        """Make the run folder, set the env, start the monitor."""
        self.run_dir = _make_run_dir(f"conctools-run-{os.getpid()}-")
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
        mpsync.install()  # forked children inherit it; spawned ones install it in their bootstrap
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
        wait = _POLL_S
        while not self._stop.acquire(timeout=wait):
            try:
                self.poll()
            except Exception:
                _log.exception("conctools: the child-process monitor failed")
            wait = min(2 * wait, _IDLE_POLL_S) if self._empty_mtime_ns is not None else _POLL_S
        self._stop.release()

    def poll(self) -> ProcessStuckEvent | None:
        """Look once for a child that found itself stuck; report the first new one."""
        if self.run_dir is None or os.getpid() != self.identity.pid:
            return None
        # While no child process wrote a record here and none ended there is nothing to look at (and no
        # frames to take, which would take the GIL from the program's threads five times a second: issue
        # 12). An unchanged folder is told by its mtime: one stat, where os.listdir() releases the GIL
        # for each entry it reads and hands it back and forth with a thread that computes (5 ms each).
        try:
            mtime_ns = os.stat(self.run_dir).st_mtime_ns
        except OSError:
            return None
        reaped = reaping.reaped()
        if mtime_ns == self._empty_mtime_ns and not reaped:
            return None
        try:
            entries = os.listdir(self.run_dir)
        except OSError:
            return None
        if not entries and not reaped:
            # (trusted once it is older than the clock's tick: a record written since then stamps a later one)
            self._empty_mtime_ns = mtime_ns if time.time_ns() - mtime_ns > 100_000_000 else None
            return None
        self._empty_mtime_ns = None
        names = [n for n in entries if n.endswith(".stuck") and n not in self._handled]
        for name in sorted(names):
            self._handled.add(name)
            alarm = _read_json(os.path.join(self.run_dir, name))
            if alarm is None:
                continue
            return self._report(self.explain(alarm))
        lost = self._check_lost()
        if lost is not None:
            return self._report(lost)
        shared = self._check_shared()
        if shared is not None:
            return self._report(shared)
        return None

    def sync_states(self) -> dict[int, dict[str, Any]]:
        """Every process's shared-primitive state (its ``.sync`` file; this process's own, live),
        with whether it still runs and, if not, how it ended."""
        states: dict[int, dict[str, Any]] = {}
        reaped = {int(r.get("pid") or 0): r for r in reaping.reaped()}
        for data in read_records(self.run_dir or "", ".sync"):
            pid = int(data.get("pid") or 0)
            if pid <= 0 or pid == self.identity.pid:
                continue
            # A process that wrote its last record may still be ending: gone means gone (its status known).
            alive = _alive(pid, data.get("started_wall"))
            ended = None
            if not alive:
                code = reaped.get(pid, {}).get("exit_code", data.get("exit_status"))
                if code is None:
                    code = _exit_code_unreaped(pid)
                if isinstance(code, int) and code < 0:
                    ended = f"was {exit_words(code)}"
                elif isinstance(code, int):
                    ended = f"exited with {exit_words(code)}"
                else:
                    ended = "ended"
            states[pid] = {**data, "name": data.get("name") or "?", "alive": alive, "ended": ended}
        own = sync_state()
        if own is not None:
            states[self.identity.pid] = {
                **own,
                "pid": self.identity.pid,
                "name": "MainProcess",
                "alive": True,
                "ended": None,
                "updated_wall": time.time(),
            }
        if own is not None:
            # A forked child killed before its first record had every SemLock this process had then.
            for pid, reap in reaped.items():
                code = reap.get("exit_code")
                if pid in states or reap.get("start_method") != "fork" or reap.get("terminated_by_parent"):
                    continue
                if isinstance(code, int) and code < 0:
                    states[pid] = {
                        "pid": pid,
                        "name": reap.get("name") or "?",
                        "alive": False,
                        "ended": f"was {exit_words(code)}",
                        "holds": [],
                        "waits": [],
                        "has": list(own.get("has") or ()),
                        "threads": [],
                    }
        return states

    def _check_shared(self) -> ProcessStuckEvent | None:
        """Processes stuck on each other through shared multiprocessing locks and events
        (:mod:`conctools.children.mpstuck`)."""
        if self._timeout_s is None or self.stuck or self.run_dir is None:
            return None
        states = self.sync_states()
        if not any(s.get("waits") for s in states.values()):
            return None
        finding = find_stuck(states, time.time(), self._timeout_s, self.identity.pid)
        if finding is None:
            return None
        alarm = {"pid": finding.pid, "verdict": finding.verdict, "reason": finding.reason}
        return self.explain(alarm, links=finding.links)

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
        reaped = reaping.reaped()
        if not any(r.get("exit_code") for r in reaped):
            self._lost.check({}, [], {})  # nothing died: nothing to keep either
            return None
        frames = current_frames()
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

    def explain(self, alarm: dict[str, Any], links: tuple[tuple[int, int], ...] = ()) -> ProcessStuckEvent:
        """The event for a stuck child: its finding, and the chain of waits that lead to it
        (``links``: the waits, ``(pid, thread id)``, of a cycle, in the order to read them)."""
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
        self._name_shared_waits(waits_by_pid)
        chain = build_chain(stuck_pid, waits_by_pid, names)
        if links:
            by_node = {(pid, int(w.get("thread_id") or 0)): (pid, w) for pid, ws in waits_by_pid.items() for w in ws}
            found = [by_node[node] for node in links if node in by_node]
            chain = tuple(_link(pid, w, list(w.get("target_pids") or ()), names) for pid, w in found) or chain
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

    def _name_shared_waits(self, waits_by_pid: dict[int, list[dict[str, Any]]]) -> None:
        """Waits on shared multiprocessing primitives: the processes they depend on (a lock's
        holder, an event's possible setters), and the words that name them."""
        if not any(w.get("kind") == "mpsync" for ws in waits_by_pid.values() for w in ws):
            return
        states = self.sync_states()
        for pid, waits in waits_by_pid.items():
            for wait in waits:
                if wait.get("kind") != "mpsync":
                    continue
                key = str(wait.get("sync_key") or "")
                targets, words = resolve_targets(pid, wait, states, self.identity.pid)
                wait["target_pids"] = targets
                wait["waits_on"] = name_sites(str(wait.get("waits_on") or ""), key, states) + words

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
            _remove_tree(run_dir)
        reaping.uninstall()
        mpsync.uninstall()

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _make_run_dir(prefix: str) -> str:
    """``tempfile.mkdtemp(prefix=prefix)`` without importing ``tempfile`` (and ``shutil``, ``random``: ~5 ms of
    every run's start-up) when ``$TMPDIR`` or ``/tmp`` takes it, as it does almost everywhere."""
    base = os.environ.get("TMPDIR") or "/tmp"
    for _ in range(4):
        path = os.path.join(base, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        except OSError:
            break
        return os.path.abspath(path)
    import tempfile

    return tempfile.mkdtemp(prefix=prefix)


def _remove_tree(top: str) -> None:
    """``shutil.rmtree(top, ignore_errors=True)`` for the run folder (files and folders of ours), without
    importing ``shutil`` at the end of every run; links are removed, never followed."""
    for root, dirs, files in os.walk(top, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(root, name))
        for name in dirs:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                if os.path.islink(path):
                    os.unlink(path)
                else:
                    os.rmdir(path)
    with contextlib.suppress(OSError):
        os.rmdir(top)


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


def _exit_code_unreaped(pid: int) -> int | None:
    """How a child of this process that the program has not reaped yet ended (``-signal`` when a
    signal killed it), read without reaping it (``WNOWAIT``: the program still reaps it)."""
    waitid = getattr(os, "waitid", None)
    if waitid is None:
        return None
    try:
        info = waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except (OSError, ValueError):
        return None
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return int(info.si_status)
    if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        return -int(info.si_status)
    return None


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
