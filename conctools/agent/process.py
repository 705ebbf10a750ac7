"""Who the process is (pid, command line, start time) and what it uses now (CPU, memory,
threads, file descriptors), for the agent's answers."""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Any

from conctools.recorder import Recorder

__all__ = ["program_words", "resources_now", "who_am_i"]

_MAX_COMMAND = 300


def program_words(argv: list[str]) -> str:
    """The command line as a person typed it: ``conctools run app.py`` rather than the
    interpreter's path and the ``conctools`` script's."""
    words = [str(w).replace("\n", "\\n") for w in argv]  # one line, whatever `python -c` was given
    if len(words) > 1 and os.path.basename(words[0]).startswith("python") and os.path.basename(words[1]) == "conctools":
        words = words[1:]
    if words:
        words[0] = os.path.basename(words[0])
    text = shlex.join(words)
    return text if len(text) <= _MAX_COMMAND else text[: _MAX_COMMAND - 3] + "..."


def _started_wall() -> float | None:
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:
        return None


def who_am_i(recorder: Recorder) -> dict[str, Any]:
    """The process's identity: pid, command line, Python, conctools, when it started."""
    from conctools import __version__

    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    started = _started_wall()
    now = time.time()
    return {
        "pid": os.getpid(),
        "argv": argv,
        "command": program_words(argv),
        "run_command": recorder.meta.get("command"),
        "executable": sys.executable,
        "python": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "conctools": __version__,
        "started_wall": started,
        "uptime_s": now - started if started is not None else None,
        "recording_since_wall": recorder.started_wall,
    }


def resources_now() -> dict[str, Any]:
    """CPU seconds (user, system), resident memory, threads, file descriptors and context switches
    now (psutil; the CPU seconds alone without it)."""
    times = os.times()
    out: dict[str, Any] = {
        "cpu_user_s": times.user,
        "cpu_system_s": times.system,
        "rss_bytes": None,
        "num_threads": None,
        "num_fds": None,
        "ctx_switches_voluntary": None,
        "ctx_switches_involuntary": None,
    }
    try:
        import psutil

        proc = psutil.Process()
        with proc.oneshot():
            out["rss_bytes"] = proc.memory_info().rss
            out["num_threads"] = proc.num_threads()
            out["num_fds"] = proc.num_fds() if hasattr(proc, "num_fds") else None
            switches = proc.num_ctx_switches()
            out["ctx_switches_voluntary"] = switches.voluntary
            out["ctx_switches_involuntary"] = switches.involuntary
    except Exception:
        pass
    return out
