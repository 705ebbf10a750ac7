"""A throwaway PostgreSQL server for the tests, from Debian's packaged binaries.

``.ci/run`` installs the ``postgresql`` package; elsewhere the tests that need a server skip
with a message saying why. The server runs as the ``postgres`` user when the tests run as root
(PostgreSQL refuses root), listens on 127.0.0.1 only, on a free port, with fsync off.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from conctools._net import free_port

START_TIMEOUT_S = 60


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be started here (the message says why)."""


def _bindir() -> Path | None:
    candidates = [shutil.which("pg_ctl") or "", *sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)]
    for cand in candidates:
        if cand and os.path.exists(cand):
            bindir = Path(os.path.realpath(cand)).parent
            if (bindir / "initdb").exists() and (bindir / "postgres").exists():
                return bindir
    return None


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; :meth:`stop` removes it."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            raise PostgresUnavailable(
                "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql"
            )
        self.bindir = bindir
        self.run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server") from None
            self.run_as = {"user": account.pw_uid, "group": account.pw_gid}
        self.root = Path(tempfile.mkdtemp(prefix="conctools-pg-", dir="/tmp"))
        if self.run_as:
            os.chown(self.root, self.run_as["user"], self.run_as["group"])
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._started = False

    def _run(self, *args: str) -> None:
        proc = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            cwd=self.root,
            **self.run_as,
        )
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise PostgresUnavailable(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-400:]} {tail}")

    def start(self) -> PostgresServer:
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C")
        options = f"-F -p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=50"
        self._run(
            "pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-w", "-t", "30", "-o", options, "start"
        )
        self._started = True
        return self

    def stop(self) -> None:
        try:
            if self._started:
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "-t", "30", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
