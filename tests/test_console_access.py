"""Who gets into the console (issue 21): the owner with the secret, nobody else, on a real service."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conctools.console import ConsoleError, ConsoleMonitor, attach, start
from conctools.console.access import FailureBrake, find_consoles, private_dir
from tests._console_helpers import REFUSAL, ROOT, TelnetClient, console_client, read_secret, recv_all


@pytest.fixture(autouse=True)
def console_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test keeps its consoles' secret files in a private directory of its own."""
    path = tmp_path / "consoles"
    monkeypatch.setenv("CONCTOOLS_CONSOLE_DIR", str(path))
    return path


class Service:
    """A real asyncio service in a thread (a task named 'heartbeat'), with the console on it."""

    def __init__(self, **console: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="service-loop", daemon=True)
        self.thread.start()
        self.heartbeat = asyncio.run_coroutine_threadsafe(self._start_heartbeat(), self.loop).result(10)
        self.monitor: ConsoleMonitor = self.call(start, self.loop, port=0, **console)

    async def _start_heartbeat(self) -> asyncio.Task[None]:
        async def beat() -> None:
            while True:
                await asyncio.sleep(0.05)

        return asyncio.get_running_loop().create_task(beat(), name="heartbeat")

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    @property
    def secret(self) -> str:
        assert self.monitor.secret_path is not None
        return read_secret(self.monitor.secret_path)

    def stop(self) -> None:
        self.monitor.close()

        async def end_heartbeat() -> None:
            self.heartbeat.cancel()
            await asyncio.gather(self.heartbeat, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(end_heartbeat(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service(locals={"answer": 42})
    try:
        yield svc
    finally:
        svc.stop()


def _raw(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    """Connect, send ``payload``, return everything until the console closes the connection."""
    with socket.create_connection((host, port), timeout=10) as sock:
        try:
            sock.sendall(payload)
        except OSError:  # the console may close before everything is sent
            pass
        return recv_all(sock)


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "conctools.console" and "refused" in r.getMessage()]


def _listening_ports() -> set[int]:
    return {
        c.laddr.port for c in psutil.Process().net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr
    }


class TestRawClients:
    """A client without the secret never reaches a prompt or a command."""

    def test_no_secret_no_prompt_no_command(
        self, service: Service, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Commands sent as the first lines are refused; nothing runs, nothing but the refusal is sent."""
        caplog.set_level(logging.INFO, logger="conctools.console")
        marker = tmp_path / "pwned"
        payload = f"console\r\nopen({str(marker)!r}, 'w').close()\r\ncancel {id(service.heartbeat)}\r\n".encode()
        answer = _raw(service.monitor.port, payload)
        assert answer == REFUSAL  # no banner, no telnet negotiation, no prompt
        assert not marker.exists()
        assert not service.heartbeat.done(), "the task was cancelled by an unauthenticated client"
        assert any("wrong or missing secret" in m and "127.0.0.1:" in m for m in _refusals(caplog))
        assert service.secret not in caplog.text

    def test_silent_client_gets_nothing(self, service: Service) -> None:
        """A client that sends nothing is sent nothing (no prompt to start talking to)."""
        with socket.create_connection(("127.0.0.1", service.monitor.port), timeout=10) as sock:
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)

    def test_wrong_secret_refused_and_slowed_down(self, service: Service, caplog: pytest.LogCaptureFixture) -> None:
        """Each wrong secret is refused and logged; then each attempt waits longer; the owner gets in."""
        caplog.set_level(logging.WARNING, logger="conctools.console")
        for _ in range(3):
            assert _raw(service.monitor.port, secrets.token_urlsafe(32).encode() + b"\r\n") == REFUSAL
        assert service.monitor.brake.failures == 3
        logged = _refusals(caplog)
        assert len(logged) == 3
        assert "slowed down to one per 0.25 s" in logged[0] and "slowed down to one per 1.00 s" in logged[2]
        client = TelnetClient(service.monitor.port, service.secret)
        try:
            client.read_until("conctools >>>")
            client.command("ps", "heartbeat")
        finally:
            client.close()
        assert service.monitor.brake.failures == 0

    def test_long_garbage_refused(self, service: Service) -> None:
        """A first line past 512 bytes is refused without waiting for its end."""
        assert _raw(service.monitor.port, b"x" * 4096) == REFUSAL

    def test_web_ui_off_and_repl_without_port(self, service: Service) -> None:
        """The console listens on one port only, also while a client is inside `console` (aiomonitor opens
        a web UI on 20102 and a REPL on 20103 for anyone)."""
        before = _listening_ports()
        assert service.monitor.port in before
        assert service.monitor.webui_port is None
        client = TelnetClient(service.monitor.port, service.secret)
        try:
            client.read_until("conctools >>>")
            client.enter_console()
            mark = len(client.text)
            client.sock.sendall(b"answer + 1\r")
            client.read_until("43", start=mark)
            assert _listening_ports() == before
        finally:
            client.close()


class TestOwner:
    """With the secret, or through `conctools console`, every command works."""

    def test_every_command_with_the_secret(self, service: Service) -> None:
        """Telnet mode: aiomonitor's and conctools' commands, the REPL on the service's loop."""
        client = TelnetClient(service.monitor.port, service.secret)
        try:
            client.read_until("conctools >>>")
            for line, expect in (
                ("help", "Commands"),
                ("ps", "heartbeat"),
                ("loops", "#1"),
                ("locks", "Held or awaited now"),
                ("deadlocks", "so far"),
                ("slow", "callback"),
                ("threads", 'Thread "service-loop"'),
                ("resources", "rss"),
                ("profile start", "profiling every thread"),
                ("profile stop", "profiled"),
                ("stacktrace", "run_forever"),
                (f"where {id(service.heartbeat)}", "beat"),
                ("ps-terminated", "tasks terminated"),
            ):
                client.command(line, expect)
            victim = service.call(lambda: asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="victim"))
            client.command(f"cancel {id(victim)}", f"Cancelled task {id(victim)}")
            assert victim.cancelled()
            client.enter_console()
            mark = len(client.text)
            client.sock.sendall(b"threading.current_thread().name if (threading := __import__('threading')) else 0\r")
            client.read_until("'service-loop'", start=mark)
        finally:
            client.close()

    def test_conctools_console_pid_script_mode(self, service: Service) -> None:
        """`conctools console PID` with stdin not a terminal: a plain transcript, REPL included, exit 0."""
        done = console_client(
            os.getpid(), "ps\nlocks\nconsole\nanswer * 2\nprint('from', 'repl')\n\x04\nthreads\nexit\n"
        )
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "\x1b" not in out and "\xff" not in out  # plain text: no escapes, no telnet bytes
        assert "conctools >>> ps\n" in out and "heartbeat" in out
        assert "conctools >>> locks\nHeld or awaited now" in out
        assert ">>> answer * 2\n84\n" in out and "from repl" in out
        assert "The console session is closed." in out and 'Thread "service-loop"' in out

    def test_names_cannot_drive_the_terminal(self, service: Service) -> None:
        """A thread named with a terminal escape and a bidi override is shown escaped."""
        stop = threading.Event()
        evil = threading.Thread(target=stop.wait, name="evil\x1b[2J\u202eeman", daemon=True)
        evil.start()
        try:
            done = console_client(os.getpid(), "threads\n")
        finally:
            stop.set()
            evil.join(10)
        assert done.returncode == 0, done.stderr
        assert 'Thread "evil\\u001b[2J\\u202eeman"' in done.stdout
        assert "\x1b" not in done.stdout and "\u202e" not in done.stdout

    def test_conctools_console_finds_the_only_one(self, service: Service) -> None:
        """Without PID, the only console of the user is found; with --port, that one."""
        for extra in ((), ("--port", str(service.monitor.port))):
            done = console_client(None, "loops\n", *extra)
            assert done.returncode == 0, done.stderr
            assert f"pid {os.getpid()}" in done.stdout and "* #1  running  'service-loop'" in done.stdout

    def test_conctools_console_on_a_terminal(self, service: Service) -> None:
        """On a terminal: raw mode and telnet negotiation handled by the client; Ctrl-D leaves, exit 0."""
        pexpect = pytest.importorskip("pexpect")
        child = pexpect.spawn(
            sys.executable,
            ["-m", "conctools", "console", str(os.getpid())],
            cwd=str(ROOT),
            timeout=20,
            encoding="utf-8",
        )
        try:
            child.expect("conctools >>> ")
            child.send("locks\r")
            child.expect("Held or awaited now")
            child.expect("conctools >>> ")
            child.send("\x04")
            child.expect(pexpect.EOF)
        finally:
            child.close()
        assert child.exitstatus == 0


class TestClientErrors:
    """`conctools console` says in one line why it cannot open a console (exit 2)."""

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["999999999"], "no process 999999999"),
            (["{pid}"], "process {pid} has no conctools console"),  # this process (ids stay the same in every worker)
            (["--port", "1"], "no conctools console of yours listens on port 1"),
            ([], "no conctools console of yours is running"),
            (["-5"], "error"),
        ],
    )
    def test_one_line_errors(self, args: list[str], message: str) -> None:
        """No console, no process, bad input: one line on stderr, exit 2."""
        args = [a.format(pid=os.getpid()) for a in args]
        message = message.format(pid=os.getpid())
        done = subprocess.run(
            [sys.executable, "-m", "conctools", "console", *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


class TestSecretFile:
    """The secret lives in a 0600 file in a 0700 directory and nowhere else."""

    def test_modes_and_lifetime(self, console_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
        """Directory 0700 and file 0600, owned by the user; a new secret per start; the file goes at close."""
        caplog.set_level(logging.DEBUG, logger="conctools")
        first = attach(port=0)
        try:
            path = first.secret_path
            assert path is not None and path.parent == console_dir
            info, dir_info = os.lstat(path), os.lstat(console_dir)
            assert stat.S_IMODE(dir_info.st_mode) == 0o700 and dir_info.st_uid == os.geteuid()
            assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid() and stat.S_ISREG(info.st_mode)
            secret = read_secret(path)
            assert len(secret) >= 40
            assert secret not in first.where() and secret not in caplog.text
            second = attach(port=0)
            try:
                assert second.secret_path is not None and read_secret(second.secret_path) != secret
                assert {a.port for a in find_consoles(pid=os.getpid())} == {first.port, second.port}
            finally:
                second.close()
        finally:
            first.close()
        assert not path.exists()

    def test_loose_directory_is_tightened(self, console_dir: Path) -> None:
        """The user's own directory with a loose mode is set back to 0700 before a secret goes in."""
        console_dir.mkdir(mode=0o755)
        os.chmod(console_dir, 0o755)
        assert private_dir() == console_dir
        assert stat.S_IMODE(os.lstat(console_dir).st_mode) == 0o700

    def test_symlinked_directory_refused(self, console_dir: Path, tmp_path: Path) -> None:
        """A symlink where the directory should be is refused (someone may read what goes there)."""
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        console_dir.symlink_to(target)
        with pytest.raises(ConsoleError, match="unsafe console directory"):
            attach(port=0)
        assert list(target.iterdir()) == []


class TestRemote:
    """--allow-remote-console keeps its meaning and still asks for the secret."""

    def test_remote_needs_the_secret(self) -> None:
        """On 0.0.0.0 (with the warning): no secret, refused; the secret, in."""
        with pytest.warns(RuntimeWarning, match="reachable from the network"):
            monitor = attach("0.0.0.0", 0, allow_remote=True)
        try:
            assert _raw(monitor.port, b"locks\r\n") == REFUSAL
            assert monitor.secret_path is not None
            client = TelnetClient(monitor.port, read_secret(monitor.secret_path))
            try:
                client.read_until("conctools >>>")
                client.command("locks", "Held or awaited now")
            finally:
                client.close()
        finally:
            monitor.close()


class TestWebUI:
    """aiomonitor's web UI (it can cancel tasks) is behind the same secret when it is on at all."""

    def test_web_ui_needs_the_secret(self, caplog: pytest.LogCaptureFixture) -> None:
        """No secret or a wrong one: 401 and logged; Bearer or ?secret= (then a cookie): the page."""
        caplog.set_level(logging.WARNING, logger="conctools.console")
        svc = Service(webui_port=0)
        try:
            port = svc.monitor.webui_port
            assert port is not None and port != svc.monitor.port
            base = f"http://127.0.0.1:{port}"
            for headers in ({}, {"Authorization": "Bearer nope"}):
                with pytest.raises(urllib.error.HTTPError) as info:
                    urllib.request.urlopen(urllib.request.Request(base + "/", headers=headers), timeout=10)
                assert info.value.code == 401
            cancel = urllib.request.Request(
                base + "/api/task",
                data=f'{{"task_id": "{id(svc.heartbeat)}"}}'.encode(),
                headers={"Content-Type": "application/json"},
                method="DELETE",
            )
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(cancel, timeout=10)
            assert info.value.code == 401 and not svc.heartbeat.done()
            assert len(_refusals(caplog)) == 3
            ok = urllib.request.Request(base + "/", headers={"Authorization": f"Bearer {svc.secret}"})
            with urllib.request.urlopen(ok, timeout=10) as resp:
                assert resp.status == 200 and b"aiomonitor" in resp.read().lower()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
            with opener.open(f"{base}/?secret={svc.secret}", timeout=10) as resp:
                assert resp.status == 200 and "secret" not in resp.url
            with opener.open(base + "/", timeout=10) as resp:  # the cookie alone
                assert resp.status == 200
        finally:
            svc.stop()


# -- another user --------------------------------------------------------------------------------


@pytest.fixture
def other_user() -> Iterator[pwd.struct_passwd]:
    """A throwaway system user (needs root and useradd)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create another user; run the suite as root to check the other-user refusal")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("needs useradd/userdel to create another user")
    name = f"ctcon{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/false", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def reachable_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A console directory whose parents every user may traverse (as /tmp/conctools-UID is), so
    that only the console directory's own mode keeps the other user out."""
    parent = Path(f"/tmp/ctcon-{secrets.token_hex(4)}")
    parent.mkdir(mode=0o755)
    os.chmod(parent, 0o755)
    monkeypatch.setenv("CONCTOOLS_CONSOLE_DIR", str(parent / "consoles"))
    try:
        yield parent / "consoles"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


class TestOtherUser:
    """A connection from another user is refused, even with the right secret."""

    def test_other_user_refused_even_with_the_secret(
        self, other_user: pwd.struct_passwd, reachable_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """As another user: the secret file cannot be read, and a connection (with the stolen secret) is refused."""
        caplog.set_level(logging.WARNING, logger="conctools.console")
        svc = Service()
        try:
            as_other: dict[str, Any] = {"user": other_user.pw_uid, "group": other_user.pw_gid, "timeout": 30}
            listing = subprocess.run(["ls", str(reachable_dir.parent)], capture_output=True, text=True, **as_other)
            assert listing.returncode == 0 and "consoles" in listing.stdout  # only the 0700 directory stops them
            read = subprocess.run(["cat", str(svc.monitor.secret_path)], capture_output=True, text=True, **as_other)
            assert read.returncode != 0 and "Permission denied" in read.stderr
            script = (
                f"exec 3<>/dev/tcp/127.0.0.1/{svc.monitor.port}; "
                f"printf '%s\\r\\nps\\r\\nconsole\\r\\n' '{svc.secret}' >&3; cat <&3"
            )
            stolen = subprocess.run(["bash", "-c", script], capture_output=True, **as_other)
            assert stolen.stdout == REFUSAL, stolen
            assert any(f"belongs to another user (uid {other_user.pw_uid})" in m for m in _refusals(caplog))
            assert not svc.heartbeat.done()
            assert svc.monitor.brake.failures == 0  # told apart by the kernel: the owner is not slowed down
        finally:
            svc.stop()

    def test_conctools_console_as_another_user(
        self, service: Service, other_user: pwd.struct_passwd, reachable_dir: Path
    ) -> None:
        """`conctools console PID` run by another user: one line, exit 2, no session."""

        def usable(python: str) -> bool:
            try:
                return subprocess.run([python, "-c", "pass"], user=other_user.pw_uid, timeout=30).returncode == 0
            except OSError:
                return False

        candidates = (os.path.realpath(sys.executable), "/usr/bin/python3")
        python = next((p for p in candidates if os.path.exists(p) and usable(p)), None)
        if python is None:
            pytest.skip("no Python interpreter that the other user may run")
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        done = subprocess.run(
            [python, "-c", "import sys; from conctools.cli import main; sys.exit(main())", "console", str(os.getpid())],
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
            user=other_user.pw_uid,
            group=other_user.pw_gid,
            timeout=60,
        )
        assert done.returncode == 2, done
        assert f"process {os.getpid()} belongs to another user" in done.stderr


class TestBrake:
    """The brake's arithmetic, with a clock the test turns."""

    def test_spacing_grows_and_resets(self) -> None:
        """Spacing doubles per failure up to the cap; a success or a quiet spell forgets the failures."""
        now = [100.0]
        brake = FailureBrake(base_s=0.25, max_s=2.0, forget_after_s=60.0, clock=lambda: now[0])
        assert brake.reserve_s() == 0.0
        for _ in range(5):
            brake.failed()
        assert brake.penalty_s() == 2.0
        first = brake.reserve_s()
        assert first == 2.0 and brake.reserve_s() == 4.0  # parallel attempts queue up
        brake.succeeded()
        assert brake.reserve_s() == 0.0
        brake.failed()
        now[0] += 61.0
        assert brake.reserve_s() == 0.0
