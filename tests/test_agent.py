"""The agent itself: where it listens and who may reach it, that it never runs what it is sent,
that a slow or silent client cannot hold it, forks, hostile objects, and one task format on every
Python (asyncio.capture_call_graph's shape on 3.14+)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

import conctools
from conctools.agent import current_agent, enable_dump
from conctools.agent import tasks as agent_tasks
from conctools.agent.client import ask
from conctools.agent.protocol import DUMP_SCHEMA, HELLO_SCHEMA, TOP_SCHEMA
from tests._dump_helpers import Program, run_under_conctools
from tests._dump_helpers import agent_env as agent_env  # the fixture
from tests._dump_helpers import conctools as run_conctools


def _raw(path: Path, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send ``payload`` as is and read until the agent closes the connection."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(payload)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


class TestAgent:
    """The agent of this very process."""

    def test_listens_privately_and_closes_cleanly(self, agent_env: dict[str, str]) -> None:
        """A 0600 socket in a 0700 directory, a conctools-agent daemon thread; close removes both."""
        agent = enable_dump()
        try:
            assert enable_dump() is agent and conctools.enable_dump is enable_dump
            assert agent.path is not None
            info = os.lstat(agent.path)
            assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
            assert stat.S_IMODE(os.lstat(agent.path.parent).st_mode) == 0o700
            threads = [t for t in threading.enumerate() if t.name == "conctools-agent"]
            assert len(threads) == 1 and threads[0].daemon
            hello = ask(os.getpid(), "hello", timeout_s=10)
            assert hello["schema"] == HELLO_SCHEMA and hello["process"]["pid"] == os.getpid()
            dump = ask(os.getpid(), "dump", timeout_s=10)
            assert dump["schema"] == DUMP_SCHEMA and dump["errors"] == []
            main = next(t for t in dump["threads"] if t["main"])
            assert any(f["function"] == "test_listens_privately_and_closes_cleanly" for f in main["stack"])
            assert ask(os.getpid(), "top", timeout_s=10)["schema"] == TOP_SCHEMA
            path = agent.path
        finally:
            agent.close()
        assert not path.exists() and current_agent() is None
        assert not any(t.name == "conctools-agent" and t.is_alive() for t in threading.enumerate())

    def test_never_runs_what_it_is_sent(self, agent_env: dict[str, str], tmp_path: Path) -> None:
        """Anything but a known question's name is refused, and nothing of it runs."""
        marker = tmp_path / "ran"
        agent = enable_dump()
        try:
            assert agent.path is not None
            for payload, reason in (
                (
                    json.dumps({"ask": f"__import__('os').system('touch {marker}')"}).encode() + b"\n",
                    "unknown question",
                ),
                (b"dump\n", "not a JSON line"),
                (b'{"ask": ["dump"]}\n', 'must be {"ask": QUESTION}'),
                (b"\xff\xfe\n", "not a JSON line"),
                (b"x" * 5000, "too long"),
            ):
                answer = json.loads(_raw(agent.path, payload))
                assert list(answer) == ["error"] and reason in answer["error"], (payload, answer)
            assert not marker.exists()
            assert ask(os.getpid(), "hello", timeout_s=10)["process"]["pid"] == os.getpid()
        finally:
            agent.close()

    def test_a_silent_client_cannot_hold_the_agent(self, agent_env: dict[str, str]) -> None:
        """A client that connects and says nothing is dropped; the next one is answered meanwhile."""
        agent = enable_dump()
        silent = socket.socket(socket.AF_UNIX)
        try:
            assert agent.path is not None
            silent.connect(str(agent.path))
            started = time.monotonic()
            assert ask(os.getpid(), "hello", timeout_s=15)["process"]["pid"] == os.getpid()
            assert time.monotonic() - started < 15
            silent.settimeout(15)
            assert json.loads(silent.recv(65536)) == {"error": "no question within the time allowed"}
        finally:
            silent.close()
            agent.close()


class TestPrograms:
    """The agent inside real programs."""

    def test_a_forked_child_leaves_the_parents_agent_alone(self, agent_env: dict[str, str]) -> None:
        """The child has no agent and does not remove the socket; the parent keeps answering."""
        code = (
            "import os, sys, conctools\n"
            "from conctools.agent import current_agent\n"
            "agent = conctools.enable_dump()\n"
            "child = os.fork()\n"
            "if child == 0:\n"
            "    print('child', current_agent() is None, os.path.exists(agent.path), flush=True)\n"
            "    sys.exit(0)\n"  # a normal exit: its atexit must not close the parent's agent
            "os.waitpid(child, 0)\n"
            "print('started', os.path.exists(agent.path), flush=True)\n"
            "sys.stdin.read()\n"
        )
        program = Program([sys.executable, "-c", code], agent_env)
        try:
            assert program.out.wait_for(r"^child ").string.strip() == "child True True"
            assert program.out.wait_for(r"^started ").string.strip() == "started True"
            done = run_conctools("dump", str(program.pid), env=agent_env)
            assert done.returncode == 0 and f"conctools dump of process {program.pid}" in done.stdout
        finally:
            program.stop()

    def test_hostile_objects_are_read_around(self, agent_env: dict[str, str]) -> None:
        """Raising attributes, properties and reprs, escapes in names: the dump works, the program sees nothing."""
        program = run_under_conctools("dump_hostile.py", agent_env)
        try:
            for args in ((), ("--json",)):
                done = run_conctools("dump", str(program.pid), *args, env=agent_env)
                assert done.returncode == 0, done.stderr
                assert "\x1b" not in done.stdout and "\u202e" not in done.stdout and "\x07" not in done.stdout
            text = run_conctools("dump", str(program.pid), env=agent_env).stdout
            assert "thread '\\x1b[2Jred\\u202ethread'" in text
            assert "task '\\x1b]0;pwned\\x07task\\u202e' [pending] waiter" in text
            assert "Parts the agent could not read" not in text
            top = run_conctools("top", str(program.pid), "-n", "1", env=agent_env)
            assert top.returncode == 0 and "\x1b" not in top.stdout
            mark = len(program.out.lines)
            program.send("status")
            deadline = time.monotonic() + 30
            while len(program.out.lines) <= mark and time.monotonic() < deadline:
                time.sleep(0.05)
            assert program.out.lines[mark].strip() == "status errors=[] task_done=False"
        finally:
            program.stop()


def _emulated_capture_call_graph(future: Any, /, *, depth: int = 1, limit: int | None = None) -> Any:
    """``asyncio.capture_call_graph`` as CPython 3.14 builds it for a task seen from another thread
    (``asyncio/graph.py``: the ``cr_await`` chain, innermost first, and who awaits the task), for
    the Pythons that do not have it."""
    entries = []
    coro = future.get_coro()
    while coro is not None and hasattr(coro, "cr_await"):
        if coro.cr_frame is not None:
            entries.append(types.SimpleNamespace(frame=coro.cr_frame))
        coro = coro.cr_await
    entries.reverse()
    parents = [types.SimpleNamespace(future=p) for p in _awaiters.get(id(future), ())]
    return types.SimpleNamespace(future=future, call_stack=tuple(entries), awaited_by=tuple(parents))


_awaiters: dict[int, list[Any]] = {}


class TestTaskFormat:
    """One row format for tasks, whichever source the await chain comes from."""

    def test_capture_call_graph_rows_match_the_walkers(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """On 3.14+ the stack and the awaiters come from the interpreter: the same rows as the walker's."""
        if hasattr(asyncio, "capture_call_graph"):
            pytest.skip("this Python has asyncio.capture_call_graph: the real one runs in the other tests")

        async def leaf(event: asyncio.Event) -> None:
            await event.wait()

        async def parent(event: asyncio.Event) -> None:
            await leaf(event)

        async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
            event = asyncio.Event()
            child = asyncio.create_task(parent(event), name="child")
            await asyncio.sleep(0)
            me = asyncio.current_task()
            _awaiters[id(child)] = [me]
            monkeypatch.setattr(agent_tasks, "_capture_call_graph", None)
            walker = agent_tasks.task_rows(*agent_tasks.task_infos())
            monkeypatch.setattr(agent_tasks, "_capture_call_graph", _emulated_capture_call_graph)
            graph = agent_tasks.task_rows(*agent_tasks.task_infos())
            event.set()
            await child
            return walker, graph, id(me)

        walker, graph, main_id = asyncio.run(main())
        by_name = {r["name"]: r for r in graph}
        assert [f["function"] for f in by_name["child"]["stack"]][:3] == ["wait", "leaf", "parent"]
        assert by_name["child"]["awaited_by"] == [main_id]  # the interpreter's word, not the reverse of awaits
        assert {r["name"]: r for r in walker}["child"]["awaited_by"] == []
        for old, new in zip(sorted(walker, key=lambda r: r["name"]), sorted(graph, key=lambda r: r["name"])):
            assert set(old) == set(new)
            assert [f["function"] for f in old["stack"]] == [f["function"] for f in new["stack"]]
