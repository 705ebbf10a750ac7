"""``conctools loadtest``: bounds and errors, Locust's result files, and real short Locust runs
(single process and ``--processes 2``) against a real ``conctools serve`` on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conctools._net import free_port
from conctools.loadtest import (
    LoadTestError,
    LoadTestOptions,
    default_locustfile,
    locust_command,
    read_summary,
    run_loadtest,
    validate,
)

STATS_CSV = """Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,\
Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,\
99.9%,99.99%,100%
GET,/health,100,0,2,2.5,1,9,2,50.0,0.0,2,3,3,3,4,5,7,8,9,9,9
POST,/counter,50,1,30,31,25,90,12,25.0,0.5,30,31,32,33,40,60,80,90,90,90,90
,Aggregated,150,1,3,12,1,90,5,75.0,0.5,3,4,5,6,30,40,70,80,90,90,90
"""


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conctools", *args], capture_output=True, text=True, timeout=timeout)


class TestValidate:
    """Every run is bounded and targets loopback unless a host is named."""

    def test_defaults_are_valid(self) -> None:
        """The defaults validate and find the repository's locustfile."""
        assert validate(LoadTestOptions()) == default_locustfile()

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            (LoadTestOptions(users=0), "--users"),
            (LoadTestOptions(users=100_000), "--users"),
            (LoadTestOptions(duration_s=0), "--duration"),
            (LoadTestOptions(duration_s=1e9), "--duration"),
            (LoadTestOptions(processes=0), "--processes"),
            (LoadTestOptions(spawn_rate=-1), "--spawn-rate"),
            (LoadTestOptions(host="ftp://127.0.0.1"), "http"),
            (LoadTestOptions(host="http://10.0.0.1:8080"), "non-loopback"),
            (LoadTestOptions(locustfile=Path("/nonexistent/locustfile.py")), "not found"),
        ],
    )
    def test_bad_options_are_refused(self, options: LoadTestOptions, message: str) -> None:
        """Out-of-bounds or remote options raise LoadTestError naming the problem."""
        with pytest.raises(LoadTestError, match=message):
            validate(options)

    def test_explicit_remote_host_is_allowed(self) -> None:
        """A non-loopback host given explicitly passes (with a warning at run time)."""
        validate(LoadTestOptions(host="http://10.0.0.1:8080", allow_remote=True))

    def test_command_is_headless_and_bounded(self, tmp_path: Path) -> None:
        """The Locust command line is headless, bounded in users and time, and writes CSV/HTML/JSON."""
        options = LoadTestOptions(users=7, duration_s=2.5, out_dir=tmp_path, processes=2)
        cmd = locust_command(options, validate(options))
        assert cmd[:3] == [sys.executable, "-m", "locust"]
        joined = " ".join(cmd)
        for flag in ("--headless", "--users 7", "--run-time 3s", "--csv", "--html", "--json-file", "--processes 2"):
            assert flag in joined
        assert "--master-bind-host 127.0.0.1" in joined

    def test_user_classes_pick_the_users(self, tmp_path: Path) -> None:
        """``user_classes`` are passed to Locust by name; a name that is not a Python name is refused."""
        options = LoadTestOptions(out_dir=tmp_path, user_classes=("OrdersUser",))
        assert locust_command(options, validate(options))[-1] == "OrdersUser"
        with pytest.raises(LoadTestError, match="Python name"):
            validate(LoadTestOptions(user_classes=("--host=http://evil",)))

    def test_master_and_worker_commands(self, tmp_path: Path) -> None:
        """--master waits for its workers on a loopback port; a worker joins its master and nothing else."""
        master = LoadTestOptions(
            users=4, duration_s=3, out_dir=tmp_path, role="master", expect_workers=2, master_port=5999
        )
        joined = " ".join(locust_command(master, validate(master)))
        for flag in ("--headless", "--users 4", "--master", "--expect-workers 2", "--master-bind-host 127.0.0.1",
                     "--master-bind-port 5999", "--csv", "--run-time 3s"):  # fmt: skip
            assert flag in joined
        assert "--processes" not in joined
        worker = LoadTestOptions(role="worker", master_host="127.0.0.1", master_port=5999, out_dir=tmp_path)
        cmd = locust_command(worker, validate(worker))
        assert cmd[3:] == ["-f", str(default_locustfile()), "--worker", "--master-host", "127.0.0.1",
                           "--master-port", "5999", "--loglevel", "INFO"]  # fmt: skip

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            (LoadTestOptions(role="master"), "--expect-workers"),
            (LoadTestOptions(role="master", expect_workers=2, processes=2), "--processes"),
            (LoadTestOptions(role="worker", processes=2), "--processes"),
            (LoadTestOptions(expect_workers=2), "goes with --master"),
        ],
    )
    def test_bad_distributed_options(self, options: LoadTestOptions, message: str) -> None:
        """A master without workers to expect, or --processes mixed with a role, is refused."""
        with pytest.raises(LoadTestError, match=message):
            validate(options)

    def test_locust_is_not_imported_here(self) -> None:
        """conctools.loadtest never imports locust (gevent must not patch a traced process)."""
        code = "import conctools.loadtest, conctools.cli, sys; print('locust' in sys.modules, 'gevent' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "False False"


class TestSummary:
    """Locust's CSV becomes a summary."""

    def test_read_summary(self, tmp_path: Path) -> None:
        """Totals come from the Aggregated row, endpoints from the others."""
        path = tmp_path / "locust_stats.csv"
        path.write_text(STATS_CSV)
        summary = read_summary(path)
        assert (summary.requests, summary.failures, summary.rps) == (150, 1, 75.0)
        assert (summary.p50_ms, summary.p95_ms, summary.p99_ms) == (3.0, 40.0, 80.0)
        assert [e.name for e in summary.endpoints] == ["/health", "/counter"]
        text = summary.format()
        assert "requests 150, failures 1" in text and "p99 80 ms" in text and "POST /counter 90 ms" in text


class TestCommandLine:
    """Bad input is one line and exit status 2."""

    @pytest.mark.parametrize(
        "args",
        [
            ["loadtest", "--users", "0"],
            ["loadtest", "--duration", "-3"],
            ["loadtest", "--users", "5000"],
            ["loadtest", "--host", "not a url"],
            ["loadtest", "--locustfile", "/nonexistent.py"],
            ["loadtest", "--master"],
            ["loadtest", "--master", "--worker"],
            ["loadtest", "--master-host", "127.0.0.1"],
            ["loadtest", "--worker", "--master-bind-host", "0.0.0.0"],
            ["loadtest", "--worker", "--master-port", "70000"],
        ],
    )
    def test_one_line_errors(self, args: list[str]) -> None:
        """Each bad input gets exactly one line on stderr and exit 2."""
        proc = _cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "error" in proc.stderr


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A real ``conctools serve`` (no bugs, no console) on a free loopback port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "conctools", "serve", "--port", "0", "--no-console", "--no-report"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on " in line, line
        yield line.split("listening on ", 1)[1].split()[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.load
class TestRealLocust:
    """Short real Locust runs (a few seconds, loopback, bounded)."""

    def test_single_process_run(self, server_url: str, tmp_path: Path) -> None:
        """A 3 s run answers requests without failures and writes Locust's files and a summary."""
        result = run_loadtest(LoadTestOptions(host=server_url, users=5, duration_s=3, out_dir=tmp_path))
        assert result.returncode == 0, result.output[-2000:]
        assert result.summary is not None
        assert result.summary.requests > 10 and result.summary.failures == 0, result.summary
        names = {p.name for p in result.files}
        assert {"locust_stats.csv", "locust.html", "locust.json", "summary.json"} <= names
        # Which endpoints a short run hits is random (weighted tasks; few requests on a busy machine):
        # every request is counted under an endpoint of the locustfile, and several endpoints were hit.
        endpoints = [e for e in result.summary.endpoints if e.name != "Aggregated"]
        assert len(endpoints) >= 3, result.summary
        assert sum(e.requests for e in endpoints) == result.summary.requests, result.summary
        assert all(e.name.startswith("/") for e in endpoints), result.summary

    def test_two_processes(self, server_url: str, tmp_path: Path) -> None:
        """``--processes 2`` runs Locust's master and two workers and still sums up the run."""
        proc = _cli(
            "loadtest", "--host", server_url, "--users", "6", "--duration", "3", "--processes", "2",
            "--out", str(tmp_path), timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert "requests " in proc.stdout and "failures 0 " in proc.stdout
        log = (tmp_path / "locust.log").read_text()
        assert "2 workers connected" in log, log[-2000:]

    def test_master_and_two_workers(self, server_url: str, tmp_path: Path) -> None:
        """``--master --expect-workers 2`` and two ``--worker`` processes on loopback (as on two machines):
        the master waits for both, sums the run up and writes the same files as a one-process run."""
        port = free_port()
        base = [sys.executable, "-m", "conctools", "loadtest"]
        master = subprocess.Popen(
            [*base, "--master", "--expect-workers", "2", "--master-port", str(port), "--host", server_url,
             "--users", "6", "--duration", "3", "--out", str(tmp_path / "master")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        workers = [
            subprocess.Popen(
                [
                    *base,
                    "--worker",
                    "--master-host",
                    "127.0.0.1",
                    "--master-port",
                    str(port),
                    "--duration",
                    "60",
                    "--out",
                    str(tmp_path / f"worker{i}"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        try:
            out, err = master.communicate(timeout=150)
            ended = [w.communicate(timeout=60) for w in workers]
        finally:
            for proc in (master, *workers):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert master.returncode == 0, err + out
        assert "requests " in out and "failures 0 " in out, out
        names = {p.name for p in (tmp_path / "master").iterdir()}
        assert {"locust_stats.csv", "locust.html", "locust.json", "summary.json", "locust.log"} <= names
        log = (tmp_path / "master" / "locust.log").read_text()
        assert "2 workers connected" in log, log[-2000:]
        for worker, (w_out, w_err) in zip(workers, ended, strict=True):
            assert worker.returncode == 0, w_err + w_out
            assert "worker ended (exit 0)" in w_out
