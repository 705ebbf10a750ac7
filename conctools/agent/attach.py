"""``conctools dump --attach PID``: load the agent into a process that was not started with it.

CPython 3.14 can run a script inside another Python process at its next safe point
(``sys.remote_exec``, PEP 768), given the rights to debug it (the same user with ptrace
allowed, or root). The script only imports conctools and calls :func:`conctools.enable_dump`;
then the dump goes through the agent as usual. Older Pythons get one line saying so.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from conctools.agent.client import ask, check_process
from conctools.agent.location import AgentError, agent_dir

__all__ = ["attach"]

_POLL_S = 0.05


def _script() -> str:
    # Where this conctools is: appended, so that a conctools the process has itself wins.
    root = str(Path(__file__).resolve().parents[2])
    return (
        "import sys\n"
        f"if {root!r} not in sys.path:\n"
        f"    sys.path.append({root!r})\n"
        "import conctools.agent\n"
        "conctools.agent.enable_dump()\n"
    )


def _answers(pid: int) -> bool:
    try:
        ask(pid, "hello", timeout_s=1.0)
    except AgentError:
        return False
    return True


def attach(pid: int, timeout_s: float = 10.0) -> None:
    """Make sure ``pid`` runs an agent, loading one with ``sys.remote_exec`` when it has none;
    :class:`AgentError` (one line) when it cannot."""
    remote_exec: Any = getattr(sys, "remote_exec", None)
    if remote_exec is None:
        version = ".".join(map(str, sys.version_info[:3]))
        raise AgentError(f"--attach needs CPython 3.14 or later (sys.remote_exec, PEP 768); this is Python {version}")
    check_process(pid)
    if _answers(pid):
        return
    directory = agent_dir(create=True)
    script = directory / f"attach-{pid}-{secrets.token_hex(4)}.py"
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_script())
        try:
            remote_exec(pid, os.fspath(script))
        except PermissionError:
            raise AgentError(
                f"no rights to attach to process {pid}: sys.remote_exec needs to debug it "
                "(ptrace: the same user with kernel.yama.ptrace_scope 0, or root)"
            ) from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise AgentError(f"cannot attach to process {pid}: {exc}") from None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _answers(pid):
                return
            time.sleep(_POLL_S)
        raise AgentError(
            f"process {pid} did not load the agent within {timeout_s:g} s "
            "(its main thread runs Python code for that; one blocked in a C call runs none)"
        )
    finally:
        try:
            os.unlink(script)
        except OSError:
            pass
