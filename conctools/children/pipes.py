"""Who holds the other end of a pipe or a socket pair: the processes that could send what a
reader waits for (Linux: ``/proc/PID/fd`` and ``/proc/PID/fdinfo``; the peer of a Unix socket
from the kernel's ``sock_diag``). Everywhere else, and whenever the kernel does not say,
the answer is "unknown", and reports say so.

Only read when a report is being made (a chain of waits across processes): never on a hot path.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections.abc import Iterable

__all__ = ["writers_of"]

_IDENT = re.compile(r"^(pipe|socket):\[(\d+)\]$")
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLMSG_ERROR = 2
_UDIAG_SHOW_PEER = 0x4
_UNIX_DIAG_PEER = 2


def _unix_peer(inode: int) -> int | None:
    """The inode of the peer of the Unix socket ``inode`` (sock_diag), or ``None``."""
    family = getattr(socket, "AF_NETLINK", None)
    if family is None:
        return None
    req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, inode, _UDIAG_SHOW_PEER, 0xFFFFFFFF, 0xFFFFFFFF)
    header = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    try:
        with socket.socket(family, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.sendto(header + req, (0, 0))
            data = nl.recv(65536)
    except OSError:
        return None
    if len(data) < 16 + 16:
        return None
    length, kind = struct.unpack_from("=IH", data, 0)
    if kind == _NLMSG_ERROR or kind != _SOCK_DIAG_BY_FAMILY:
        return None
    offset = 16 + 16  # nlmsghdr, unix_diag_msg
    end = min(length, len(data))
    while offset + 4 <= end:
        attr_len, attr_type = struct.unpack_from("=HH", data, offset)
        if attr_len < 4:
            return None
        if attr_type == _UNIX_DIAG_PEER and attr_len >= 8:
            peer: int = struct.unpack_from("=I", data, offset + 4)[0]
            return peer or None
        offset += (attr_len + 3) & ~3
    return None


def _holds(pid: int, ident: str, *, writable: bool) -> bool:
    """Whether process ``pid`` has ``ident`` (``pipe:[N]``) open (for writing, if asked)."""
    base = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(base)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{base}/{fd}") != ident:
                continue
        except OSError:
            continue
        if not writable:
            return True
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as f:
                for line in f:
                    if line.startswith("flags:"):
                        if int(line.split()[1], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                            return True
                        break
        except (OSError, ValueError, IndexError):
            continue
    return False


def writers_of(ident: str | None, reader_pid: int, candidates: Iterable[int]) -> tuple[int, ...] | None:
    """The ``candidates`` that hold the end of ``ident`` (as ``/proc`` names the fd the reader
    waits on) that writes to the reader; ``None`` when it cannot be told."""
    if not ident:
        return None
    match = _IDENT.match(ident)
    if match is None:
        return None
    kind, inode = match.group(1), int(match.group(2))
    if kind == "pipe":
        target, writable = ident, True
    else:
        peer = _unix_peer(inode)
        if peer is None:
            return None
        target, writable = f"socket:[{peer}]", False
    return tuple(pid for pid in candidates if pid != reader_pid and _holds(pid, target, writable=writable))
