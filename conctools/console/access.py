"""Who may open the console: a per-start secret in a private directory, the peer's user, and a
brake on repeated failures.

Why loopback TCP behind a secret, and not a Unix socket: the console must keep its telnet
workflow (``telnet``/``nc`` reach a TCP port, not a socket file), ``--allow-remote-console``
must still ask for the owner's secret over TCP anyway, and one mechanism is easier to get
right than two. Loopback alone is not enough (every local user reaches 127.0.0.1), so:

- Each start draws a new 256-bit secret (:func:`secrets.token_urlsafe`) and writes it to
  ``console-<pid>-<port>.secret`` (mode 0600) in a private directory (mode 0700, owned by
  the user, not a symlink): ``$CONCTOOLS_CONSOLE_DIR``, else ``$XDG_RUNTIME_DIR/conctools``,
  else ``/tmp/conctools-<uid>``. Its first line is the secret, the second ``host H``. The
  secret is never printed or logged; only its path is.
- A connection must send the secret as its first line before anything else is read; it is
  compared in constant time (:func:`hmac.compare_digest`). Nothing, not even a prompt, is
  sent before that.
- On Linux a connection from this machine is also checked against the kernel's socket table
  (``/proc/net/tcp``): a socket owned by another user is refused even with the right secret.
- Every refusal is logged on the ``conctools.console`` logger (never what was sent), and
  repeated failures are slowed down (:class:`FailureBrake`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
import struct
import time
from pathlib import Path

from conctools._records import record

__all__ = [
    "CONSOLE_DIR_ENV",
    "ConsoleAddress",
    "ConsoleError",
    "FailureBrake",
    "find_consoles",
    "peer_uid",
    "private_dir",
    "read_secret",
    "remove_secret",
    "secret_matches",
    "write_secret",
]

CONSOLE_DIR_ENV = "CONCTOOLS_CONSOLE_DIR"
_NAME = re.compile(r"^console-(\d+)-(\d+)\.secret$")


class ConsoleError(Exception):
    """The console cannot start or be reached as asked (a refused address, a busy port, an
    unsafe directory, no console for that process)."""


@record
class ConsoleAddress:
    """A console found in the private directory: the process, where it listens, its secret file."""

    pid: int
    port: int
    path: Path


def _default_dir() -> Path:
    override = os.environ.get(CONSOLE_DIR_ENV)
    if override:
        return Path(override)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        try:
            info = os.lstat(runtime)
        except OSError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            return Path(runtime) / "conctools"
    return Path(f"/tmp/conctools-{os.geteuid()}")


def private_dir(*, create: bool = True) -> Path:
    """The user's private console directory (0700, owned by this user, not a symlink).

    Creates it when missing (``create``); a directory that another user owns, or a symlink,
    is refused with :class:`ConsoleError` (someone may be waiting to read the secrets).
    """
    path = _default_dir()
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConsoleError(f"cannot create the console directory {path}: {exc.strerror or exc}") from None
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ConsoleError(f"no console directory {path}") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConsoleError(f"unsafe console directory {path}: not a plain directory")
    if info.st_uid != os.geteuid():
        raise ConsoleError(f"unsafe console directory {path}: owned by uid {info.st_uid}, not by this user")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def write_secret(pid: int, host: str, port: int) -> tuple[str, Path]:
    """Draw a new secret for the console of ``pid`` on ``host:port``; write it 0600. Returns
    ``(secret, path)``. Dead processes' leftover files are removed on the way."""
    import secrets  # here: `conctools run` reaches this module (the dump agent's directory) at start-up

    directory = private_dir()
    _remove_stale(directory)
    secret = secrets.token_urlsafe(32)
    path = directory / f"console-{pid}-{port}.secret"
    tmp = directory / f".console-{pid}-{port}-{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"{secret}\nhost {host}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return secret, path


def remove_secret(path: Path) -> None:
    """Delete a secret file (the console closed); a missing file is fine."""
    try:
        path.unlink()
    except OSError:
        pass


def read_secret(path: Path) -> tuple[str, str]:
    """``(secret, host)`` from a secret file this user owns with mode 0600; :class:`ConsoleError` else."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ConsoleError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise ConsoleError(f"unsafe secret file {path}: it must be this user's, mode 0600")
        data = os.read(fd, 4096).decode("utf-8", "replace")
    finally:
        os.close(fd)
    lines = data.splitlines()
    if not lines or not lines[0].strip():
        raise ConsoleError(f"{path} holds no secret")
    host = "127.0.0.1"
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        if key == "host" and value.strip():
            host = value.strip()
    return lines[0].strip(), host


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_consoles(pid: int | None = None, port: int | None = None) -> list[ConsoleAddress]:
    """This user's live consoles, filtered by process and/or port, oldest process first."""
    try:
        directory = private_dir(create=False)
    except ConsoleError:
        return []
    found = []
    for entry in os.listdir(directory):
        match = _NAME.match(entry)
        if match is None:
            continue
        entry_pid, entry_port = int(match.group(1)), int(match.group(2))
        if (pid is not None and entry_pid != pid) or (port is not None and entry_port != port):
            continue
        if _alive(entry_pid):
            found.append(ConsoleAddress(entry_pid, entry_port, directory / entry))
    return sorted(found, key=lambda a: (a.pid, a.port))


def _remove_stale(directory: Path) -> None:
    for entry in os.listdir(directory):
        match = _NAME.match(entry)
        if match is not None and not _alive(int(match.group(1))):
            remove_secret(directory / entry)


def secret_matches(expected: str, given: bytes) -> bool:
    """Constant-time comparison of the secret a client sent with the expected one."""
    import hmac

    return hmac.compare_digest(expected.encode(), given)


# -- the peer's user (Linux) ---------------------------------------------------------------------


def _decode_address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:1F90`` (as /proc/net/tcp prints it, 32-bit words in host order) -> (address, port)."""
    host_hex, _, port_hex = text.partition(":")
    raw = b"".join(struct.pack("=I", int(host_hex[i : i + 8], 16)) for i in range(0, len(host_hex), 8))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, int(port_hex, 16)


def _normal(host: str, port: int) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, port


def peer_uid(sock: socket.socket) -> int | None:
    """The user owning the other end of an accepted TCP connection, when that end is a socket
    on this machine (Linux: ``/proc/net/tcp`` and ``tcp6``); ``None`` when it is remote or
    cannot be told (another OS, another network namespace)."""
    try:
        local = sock.getsockname()
        peer = sock.getpeername()
        want_local = _normal(peer[0], peer[1])  # the peer's socket: its local end is our peer address
        want_remote = _normal(local[0], local[1])
    except (OSError, ValueError, IndexError):
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    if len(fields) < 8:
                        continue
                    try:
                        if _decode_address(fields[1]) == want_local and _decode_address(fields[2]) == want_remote:
                            return int(fields[7])
                    except ValueError:
                        continue
        except OSError:
            continue
    return None


# -- the brake -------------------------------------------------------------------------------------


class FailureBrake:
    """Slows down repeated failures: after ``n`` failures each new attempt waits its turn,
    ``base_s * 2**(n-1)`` seconds after the previous one (at most ``max_s``). Failures are
    forgotten after ``forget_after_s`` without one, or after a success. Used from one thread
    (the console's loop), so it needs no lock.

    >>> brake = FailureBrake(clock=lambda: 0.0)
    >>> brake.reserve_s(), brake.failed(), brake.reserve_s(), brake.reserve_s()
    (0.0, None, 0.25, 0.5)
    """

    def __init__(
        self,
        base_s: float = 0.25,
        max_s: float = 10.0,
        forget_after_s: float = 300.0,
        clock: object = None,
    ) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.forget_after_s = forget_after_s
        self._clock = clock if callable(clock) else time.monotonic
        self.failures = 0
        self._last_failure = 0.0
        self._next_slot = 0.0

    def _now(self) -> float:
        now: float = self._clock()
        return now

    def penalty_s(self) -> float:
        """The spacing between attempts after the failures so far."""
        if self.failures == 0:
            return 0.0
        return float(min(self.max_s, self.base_s * 2 ** (self.failures - 1)))

    def reserve_s(self) -> float:
        """Seconds the attempt starting now must wait before it is answered (0 without failures)."""
        now = self._now()
        if self.failures and now - self._last_failure > self.forget_after_s:
            self.failures = 0
        if self.failures == 0:
            return 0.0
        start = max(now, self._next_slot)
        self._next_slot = start + self.penalty_s()
        return start - now

    def failed(self) -> None:
        """Count a failed attempt."""
        now = self._now()
        self.failures += 1
        self._last_failure = now
        self._next_slot = max(self._next_slot, now + self.penalty_s())

    def succeeded(self) -> None:
        """The owner got in: forget the failures."""
        self.failures = 0
        self._next_slot = 0.0
