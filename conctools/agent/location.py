"""Where the dump agents' sockets live, and the checks that keep other users out.

Each agent listens on ``dump-<pid>.sock`` in the user's private conctools directory, the one
the console keeps its secrets in (:func:`conctools.console.access.private_dir`: 0700, owned by
the user, not a symlink; ``$CONCTOOLS_CONSOLE_DIR``, else ``$XDG_RUNTIME_DIR/conctools``, else
``/tmp/conctools-<uid>``). The socket file itself is 0600. A client checks both before it
connects, and then the kernel's word on who listens (``SO_PEERCRED``): the right process of
the right user, or nothing.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from conctools.console.access import ConsoleError, _alive, private_dir

__all__ = [
    "MAX_SOCKET_PATH",
    "AgentError",
    "agent_dir",
    "check_socket",
    "listed_pids",
    "remove_stale",
    "socket_path",
]

# sun_path holds 108 bytes on Linux, with the terminating NUL (104 on the BSDs and macOS).
MAX_SOCKET_PATH = 103
_NAME = re.compile(r"^dump-(\d+)\.sock$")


class AgentError(Exception):
    """The dump agent cannot start, or cannot be asked: one line that says why."""


def agent_dir(*, create: bool = True) -> Path:
    """The private directory of this user's agents (created 0700 when ``create``)."""
    try:
        return private_dir(create=create)
    except ConsoleError as exc:
        raise AgentError(str(exc).replace("console directory", "conctools directory")) from None


def socket_path(pid: int, directory: Path | None = None) -> Path:
    """Where the agent of ``pid`` listens."""
    return (directory if directory is not None else agent_dir(create=False)) / f"dump-{pid}.sock"


def check_socket(path: Path) -> None:
    """:class:`AgentError` unless ``path`` is a socket of this user's that nobody else may open."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise AgentError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise AgentError(f"unsafe agent socket {path}: not a socket")
    if info.st_uid != os.geteuid():
        raise AgentError(f"unsafe agent socket {path}: owned by uid {info.st_uid}, not by this user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise AgentError(f"unsafe agent socket {path}: mode {stat.S_IMODE(info.st_mode):o}, not 600")


def listed_pids(directory: Path | None = None) -> list[int]:
    """The live processes that have an agent socket in the directory, by pid."""
    try:
        directory = directory if directory is not None else agent_dir(create=False)
        entries = os.listdir(directory)
    except (AgentError, OSError):
        return []
    pids = []
    for entry in entries:
        match = _NAME.match(entry)
        if match is not None and _alive(int(match.group(1))):
            pids.append(int(match.group(1)))
    return sorted(pids)


def remove_stale(directory: Path) -> None:
    """Delete the sockets left behind by agents whose process has ended (killed, ``os._exit``)."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        match = _NAME.match(entry)
        if match is not None and not _alive(int(match.group(1))):
            try:
                os.unlink(directory / entry)
            except OSError:
                pass
