"""`conctools dump PID` on real programs: deadlocked threads and tasks under `conctools run`, a
hang, a healthy program, and the sample server under load. Each dump must name the culprits with
their lines, and leave the program running, unchanged."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests._dump_helpers import ROOT, SCRIPTS, Program, conctools, dump_until, line_of, run_under_conctools
from tests._dump_helpers import agent_env as agent_env  # the fixture

DEADLOCK = "Found one Python-level deadlock:"


def validate_dump(doc: Any) -> None:
    """``doc`` follows docs/dump.schema.json."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "docs" / "dump.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)


def _deadlock_block(text: str) -> str:
    start = text.index(DEADLOCK)
    return text[start : text.index("Stacks of the threads and tasks listed above:", start)]


def _without_durations(text: str) -> str:
    return re.sub(r"\d+(\.\d+)? (s|ms|µs|ns)\b", "T", text)


def _site_of_creation(script: Path, assignment: str) -> str:
    for number, line in enumerate(script.read_text().splitlines(), 1):
        if line.strip().startswith(assignment):
            return f"{script.name}:{number}"
    raise AssertionError(assignment)


def _wait_new_line(program: Program, pattern: str, after: int, timeout: float = 30.0) -> re.Match[str]:
    """The first line matching ``pattern`` among the program's output lines after index ``after``."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    out = program.out
    with out._cond:
        while True:
            for line in out.lines[after:]:
                match = regex.search(line)
                if match is not None:
                    return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no new line matching {pattern!r}; got:\n{''.join(out.lines)[-2000:]}")
            out._cond.wait(remaining)


class TestDeadlockedThreads:
    """Two threads in an ABBA deadlock, under `conctools run --deadlock-timeout 0`."""

    def test_dump_names_the_cycle_and_the_program_runs_on(self, agent_env: dict[str, str]) -> None:
        """The cycle in the watchdog's words with names and lines; the program answers afterwards, unchanged."""
        script = SCRIPTS / "dump_abba_threads.py"
        accounts = f"Lock '{_site_of_creation(script, 'accounts =')}'"
        ledger = f"Lock '{_site_of_creation(script, 'ledger =')}'"
        program = run_under_conctools(script.name, agent_env)
        try:
            text = dump_until(program.pid, re.escape(DEADLOCK), agent_env)
            block = _deadlock_block(text)
            name = script.name
            assert re.search(
                rf"thread 'transfer':\n  waiting for {re.escape(ledger)},\n  which is held by thread 'audit'\n"
                rf"  waits at {name}:{line_of(script, 'waits: transfer')}, for [^\n]+\n"
                rf"  holds {re.escape(accounts)}, acquired at {name}:{line_of(script, 'holds: transfer')}\n",
                block,
            ), block
            assert re.search(
                rf"thread 'audit':\n  waiting for {re.escape(accounts)},\n  which is held by thread 'transfer'\n"
                rf"  waits at {name}:{line_of(script, 'waits: audit')}, for [^\n]+\n"
                rf"  holds {re.escape(ledger)}, acquired at {name}:{line_of(script, 'holds: audit')}\n",
                block,
            ), block
            assert "MainThread" not in block  # main reads stdin: no part of the cycle
            assert "Found 1 deadlock now." in text
            # Every thread, with its stack at the waiting line; the locks with holders and waiters.
            assert re.search(r"thread 'transfer' \(id \d+, native \d+\) \(daemon\) \[waiting\]:", text)
            assert f"at transfer ({script}:{line_of(script, 'waits: transfer')})" in text
            assert f"{ledger} (created at {name}:" in text
            assert "    held by thread 'audit'" in text and f"taken at {name}:{line_of(script, 'holds: audit')}" in text
            assert re.search(
                rf"thread 'audit' waits for {re.escape(accounts)} held by thread 'transfer' at "
                rf"{name}:{line_of(script, 'waits: audit')}",
                text,
            )
            assert program.proc.poll() is None
            mark = len(program.out.lines)
            program.send("status")
            status = _wait_new_line(program, r"^status ", mark)
            assert status.string.strip() == "status alive=transfer,audit accounts=True ledger=True"
            again = conctools("dump", str(program.pid), env=agent_env)
            assert again.returncode == 0, again.stderr
            assert _without_durations(_deadlock_block(again.stdout)) == _without_durations(block)
            program.send("quit")
            assert program.proc.wait(timeout=30) == 3
            program.out.wait_for(r"^bye")
            report = program.stderr_when_closed()
            assert "conctools report" in report and DEADLOCK not in report  # the dumps recorded nothing in the run
        finally:
            program.stop()

    def test_json_has_the_cycle_and_every_thread(self, agent_env: dict[str, str]) -> None:
        """`--json`: the same facts as data (the deadlock event, each thread's state and stack)."""
        program = run_under_conctools("dump_abba_threads.py", agent_env)
        try:
            dump_until(program.pid, re.escape(DEADLOCK), agent_env)
            done = conctools("dump", str(program.pid), "--json", env=agent_env)
            assert done.returncode == 0, done.stderr
            doc = json.loads(done.stdout)
            validate_dump(doc)
            assert doc["schema"] == "conctools.dump/1" and doc["process"]["pid"] == program.pid
            (deadlock,) = doc["wait_for"]["deadlocks"]
            assert {p["thread_name"] for p in deadlock["participants"]} == {"transfer", "audit"}
            threads = {t["name"]: t for t in doc["threads"]}
            assert threads["transfer"]["state"] == "waiting" and threads["transfer"]["blocked"]
            assert threads["transfer"]["stack"][0]["function"] == "transfer"
            assert threads["MainThread"]["main"] and not threads["MainThread"]["own"]
            assert threads["conctools-agent"]["own"] and threads["conctools-agent"]["state"] == "conctools"
            assert len(doc["locks"]) == 2 and all(len(lock["waiters"]) == 1 for lock in doc["locks"])
            assert doc["errors"] == []
        finally:
            program.stop()


class TestDeadlockedTasks:
    """Two asyncio tasks in an ABBA deadlock while the loop keeps running a heartbeat."""

    def test_dump_names_the_tasks_and_the_loop_runs_on(self, agent_env: dict[str, str]) -> None:
        """The cycle between the tasks with their lines, every task's await chain; the loop beats on."""
        script = SCRIPTS / "dump_abba_tasks.py"
        name = script.name
        program = run_under_conctools(script.name, agent_env)
        try:
            text = dump_until(program.pid, re.escape(DEADLOCK), agent_env)
            block = _deadlock_block(text)
            waits, holds = line_of(script, "waits: worker"), line_of(script, "holds: worker")
            for me, other in (("refresh-cache", "write-db"), ("write-db", "refresh-cache")):
                assert re.search(
                    rf"task '{me}' \(thread 'MainThread'\):\n  waiting for aio\.Lock '{name}:\d+',\n"
                    rf"  which is held by task '{other}' \(thread 'MainThread'\)\n"
                    rf"  waits at {name}:{waits}, for [^\n]+\n"
                    rf"  holds aio\.Lock '{name}:\d+', acquired at {name}:{holds}\n",
                    block,
                ), block
            assert "heartbeat" not in block
            # The tasks: each with what it awaits, who awaits it, and its await chain at the line.
            assert re.search(r"task 'refresh-cache' \[pending\] worker  created at [^\n]+:\n", text)
            assert "    - awaited by 'Task-1'" in text
            assert f"    at worker ({script}:{waits})" in text
            assert re.search(  # running, if the dump caught it between two sleeps
                r"task 'heartbeat' \[(pending\] heartbeat[^\n]*:\n    - awaits asyncio\.sleep\(0\.02\)|running\])", text
            )
            assert re.search(r"event loop \S+ in thread 'MainThread': 4 tasks", text)
            mark = len(program.out.lines)
            program.send("status")
            first = int(_wait_new_line(program, r"^status beats=(\d+)", mark).group(1))
            mark = len(program.out.lines)
            program.send("status")
            second = int(_wait_new_line(program, r"^status beats=(\d+)", mark).group(1))
            deadline = time.monotonic() + 10
            while second <= first and time.monotonic() < deadline:
                mark = len(program.out.lines)
                program.send("status")
                second = int(_wait_new_line(program, r"^status beats=(\d+)", mark).group(1))
            assert second > first  # the loop still runs after the dump
            again = conctools("dump", str(program.pid), env=agent_env)
            assert _without_durations(_deadlock_block(again.stdout)) == _without_durations(block)
            doc = json.loads(conctools("dump", str(program.pid), "--json", env=agent_env).stdout)
            validate_dump(doc)
            tasks = {t["name"]: t for t in doc["tasks"]}
            assert tasks["refresh-cache"]["awaits_kind"] == "lock"
            assert tasks["refresh-cache"]["awaited_by"] == [tasks["Task-1"]["id"]]
            assert tasks["Task-1"]["awaits_kind"] == "gather"
            program.send("quit")
            assert program.proc.wait(timeout=30) == 3
        finally:
            program.stop()


class TestHangAndHealth:
    """The hang verdict is the watchdog's, and a healthy program gets none."""

    def test_event_never_set_is_a_hang_in_the_watchdogs_words(self, agent_env: dict[str, str]) -> None:
        """A worker waits on an Event nobody sets, main joins it: the watchdog's hang report."""
        script = SCRIPTS / "dump_event_never_set.py"
        program = run_under_conctools(script.name, agent_env)
        try:
            text = dump_until(program.pid, r"Hang: the program stopped making progress", agent_env)
            assert "all 2 threads wait forever on something only another waiting one could release" in text
            assert re.search(r"thread 'worker' \[waiting\]:\n    - waits on threading\.Event\.wait\(\)", text), text
            assert f"at worker ({script}:{line_of(script, 'waits: worker')})" in text
            assert "threading.Thread.join() of thread 'worker'" in text
            assert DEADLOCK not in text
            assert program.proc.poll() is None
        finally:
            program.stop()

    def test_healthy_idle_program_is_neither_deadlocked_nor_hung(self, agent_env: dict[str, str]) -> None:
        """Timed waits, accept() and sleep: no deadlock, no hang, each thread's state as it is."""
        script = SCRIPTS / "dump_healthy.py"
        program = run_under_conctools(script.name, agent_env)
        try:
            text = dump_until(program.pid, r"thread 'ticker'", agent_env)
            assert DEADLOCK not in text and "Hang:" not in text
            assert re.search(r"thread 'ticker' [^\n]*\[waiting \(timeout 0\.5s\)\]", text), text
            ticker = SCRIPTS / "healthy_idle.py"
            assert f"at ticker ({ticker}:{line_of_text(ticker, 'while not stop.wait(0.5):')[0]})" in text
            assert re.search(r"thread 'sleeper' [^\n]*\[running\]", text)
            assert "nobody waits for anybody on a traced lock" in text
            program.send("quit")
            assert program.proc.wait(timeout=30) == 0
        finally:
            program.stop()


def _load(base: str, stop: threading.Event, answered: threading.Event, errors: list[str]) -> None:
    """Plain aiohttp load: 16 workers on /counter (the contended lock), /downstream and /io."""
    import aiohttp

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        paths = [("POST", "/counter?bug=1"), ("GET", "/downstream"), ("GET", "/io")]
        i = n
        while not stop.is_set():
            method, path = paths[i % len(paths)]
            i += 1
            try:
                async with session.request(method, base + path) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors.append(f"{method} {path}: {resp.status}")
                    answered.set()
            except aiohttp.ClientError as exc:
                errors.append(f"{method} {path}: {exc!r}")

    async def main() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(worker(session, n) for n in range(16)))

    asyncio.run(main())


@pytest.mark.slow
class TestServerUnderLoad:
    """The sample server, loaded by a plain aiohttp client while it is dumped."""

    def test_dump_and_top_of_the_sample_server_under_load(self, agent_env: dict[str, str]) -> None:
        """Tasks, loop, lock table with the contended lock; the server serves on, unchanged."""
        pytest.importorskip("aiohttp")
        server = Program(
            [sys.executable, "-m", "conctools", "serve", "--port", "0", "--no-console", "--no-report"], agent_env
        )
        stop, answered, errors = threading.Event(), threading.Event(), []
        load = None
        try:
            url = server.out.wait_for(r"listening on (http://\S+)", timeout=90).group(1)
            hint = server.out.wait_for(r"`conctools dump (\d+)`", timeout=30)
            assert int(hint.group(1)) == server.pid
            load = threading.Thread(target=_load, args=(url, stop, answered, errors), name="test-load", daemon=True)
            load.start()
            assert answered.wait(60)
            done = conctools("dump", str(server.pid), "--json", env=agent_env)
            assert done.returncode == 0, done.stderr
            doc = json.loads(done.stdout)
            validate_dump(doc)
            assert "-m conctools serve --port 0" in doc["process"]["command"]
            assert doc["tasks_total"] >= 1 and doc["errors"] == []
            (loop,) = doc["loops"]
            assert loop["thread_name"] == "MainThread" and loop["monitored"]
            text = conctools("dump", str(server.pid), env=agent_env)
            assert text.returncode == 0 and "Tasks (" in text.stdout and "Traceback" not in text.stdout
            top = conctools("top", str(server.pid), "-n", "2", "--interval", "0.3", env=agent_env)
            assert top.returncode == 0, top.stderr
            assert top.stdout.count("conctools top - pid") == 2 and "\x1b" not in top.stdout
            time.sleep(1.0)  # a little more load, so the lock table has contention for sure
            stop.set()
            load.join(60)
            after = json.loads(conctools("dump", str(server.pid), "--json", env=agent_env).stdout)
            rows = {r["name"]: r for r in after["so_far"]["sections"]["locks"]}
            assert rows["counter"]["contentions"] > 0
            assert "Locks (" in conctools("dump", str(server.pid), env=agent_env).stdout
            with urllib.request.urlopen(url + "/health", timeout=10) as resp:
                assert resp.status == 200
            assert not errors, errors[:5]
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(timeout=60) == 0
            assert not any("Traceback" in line for line in server.err.lines), "".join(server.err.lines)
        finally:
            stop.set()
            if load is not None:
                load.join(30)
            server.stop()


class TestReadmeExample:
    """The README's hung service, as the README runs it."""

    def test_hung_service(self, agent_env: dict[str, str]) -> None:
        """Two requests deadlock the two handlers; /health still answers; the dump names both tasks and lines."""
        script = ROOT / "examples" / "hung_service.py"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        service = Program(
            [sys.executable, "-m", "conctools", "run", "--deadlock-timeout", "0", str(script), str(port)], agent_env
        )
        try:
            service.out.wait_for(rf"hung_service: pid {service.pid}, listening on http://127\.0\.0\.1:{port}")
            base = f"http://127.0.0.1:{port}"
            for path in ("/transfer", "/audit"):  # these two never answer
                threading.Thread(target=_get_quietly, args=(base + path,), daemon=True).start()
            text = dump_until(service.pid, re.escape(DEADLOCK), agent_env)
            block = _deadlock_block(text)
            # transfer waits for the ledger inside the accounts; audit for the accounts inside the ledger
            transfer_waits = line_of_text(script, "async with ledger:")[0]
            audit_waits = line_of_text(script, "async with accounts:")[1]
            for waits in (transfer_waits, audit_waits):
                wait = (
                    rf"waiting for aio\.Lock 'hung_service\.py:\d+',\n[^\n]+\n  waits at hung_service\.py:{waits}, for"
                )
                assert re.search(wait, block), block
            assert f"at transfer ({script}:{transfer_waits})" in text and f"at audit ({script}:{audit_waits})" in text
            with urllib.request.urlopen(base + "/health", timeout=10) as resp:
                assert resp.read() == b"ok\n"
        finally:
            service.stop()


def _get_quietly(url: str) -> None:
    try:
        urllib.request.urlopen(url, timeout=120).read()
    except OSError:
        pass


def line_of_text(path: Path, text: str) -> list[int]:
    """The numbers of the lines of ``path`` that read ``text`` (stripped)."""
    return [n for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip() == text]
