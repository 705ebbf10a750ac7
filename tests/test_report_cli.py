"""`conctools run --out` writes every report; `conctools report` re-renders a saved one."""

from __future__ import annotations

import json
import pstats
import subprocess
import sys
from pathlib import Path

import pytest
from _report_samples import HOSTILE, rich_snapshot

from conctools.recorder import Snapshot
from conctools.reporting import load_json, render_json, render_text
from conctools.reporting.html import render_html
from conctools.reporting.trace import render_trace

PROGRAM = """\
import asyncio, threading
def spin(n):
    return sum(range(n))
async def job():
    await asyncio.sleep(0.01)
    spin(5000)
async def main():
    await asyncio.gather(asyncio.create_task(job(), name="job-a"), asyncio.create_task(job(), name="job-b"))
t = threading.Thread(target=spin, args=(50_000,), name="cruncher")
t.start()
asyncio.run(main())
t.join()
"""


def conctools(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conctools", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "prog.py"
    path.write_text(PROGRAM)
    return path


class TestRunWritesReports:
    def test_profile_run_writes_everything(self, program: Path, tmp_path: Path) -> None:
        """--profile --out DIR writes text, JSON, trace, HTML, pstat and callgrind."""
        out = tmp_path / "out"
        result = conctools("run", "--profile", "--sample-interval", "0.01", "--out", str(out), str(program))
        assert result.returncode == 0, result.stderr
        names = {p.name for p in out.iterdir()}
        assert names == {
            "report.txt",
            "report.json",
            "trace.json",
            "report.html",
            "profile.pstat",
            "profile.callgrind",
            "profile.pb.gz",  # pprof and speedscope (tests/test_exporters.py)
            "profile.speedscope.json",
        }
        assert "Profile (wall clock" in result.stderr and "Resources (" in result.stderr
        stats = pstats.Stats(str(out / "profile.pstat"))
        assert any(k[2] == "spin" for k in stats.stats)  # type: ignore[attr-defined]
        assert (out / "profile.callgrind").read_text().startswith("version: 1\n")
        snapshot = load_json(out / "report.json")
        prof = snapshot.sections["profile"]
        assert {"cruncher", "MainThread"} <= {t["name"] for t in prof["threads"]}
        assert {"job-a", "job-b"} <= {t["name"] for t in prof["tasks"]}
        assert snapshot.sections["resources"]["samples"] >= 2
        assert json.loads((out / "trace.json").read_text())["traceEvents"]

    def test_cpu_clock_and_no_sampling(self, program: Path, tmp_path: Path) -> None:
        """--profile-clock cpu is used; --sample-interval 0 switches the sampler off."""
        out = tmp_path / "out"
        result = conctools(
            "run", "--profile", "--profile-clock", "cpu", "--sample-interval", "0", "--out", str(out), str(program)
        )
        assert result.returncode == 0, result.stderr
        snapshot = load_json(out / "report.json")
        assert snapshot.sections["profile"]["clock"] == "cpu"
        assert "resources" not in snapshot.sections
        assert "resource_sample" not in snapshot.counts

    def test_without_profile_no_profile_files(self, program: Path, tmp_path: Path) -> None:
        """Without --profile there is no profile section and no profile files."""
        out = tmp_path / "out"
        assert conctools("run", "--out", str(out), str(program)).returncode == 0
        assert not (out / "profile.pstat").exists()
        assert "profile" not in load_json(out / "report.json").sections

    @pytest.mark.parametrize(
        "bad", [["--sample-interval", "-1"], ["--sample-interval", "x"], ["--profile-clock", "gpu"]]
    )
    def test_bad_flags(self, program: Path, bad: list[str]) -> None:
        """A bad flag value is one line on stderr and exit 2."""
        result = conctools("run", *bad, str(program))
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def live() -> Snapshot:
    return rich_snapshot()


@pytest.fixture(scope="module")
def saved(live: Snapshot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "report.json"
    path.write_text(render_json(live), encoding="utf-8")
    return path


class TestReportCommand:
    def test_rerender_equals_live_rendering(self, live: Snapshot, saved: Path) -> None:
        """Rendering from the saved JSON gives what the live snapshot gave (the reporters are pure)."""
        snapshot = load_json(saved)
        assert render_trace(snapshot) == render_trace(live)
        assert render_html(snapshot) == render_html(live)
        assert render_text(snapshot) == render_text(live)
        assert HOSTILE in render_text(snapshot)

    def test_text_by_default(self, saved: Path) -> None:
        """With no output option, the text report goes to stdout."""
        result = conctools("report", str(saved))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("=" * 78) and "Profile (wall clock" in result.stdout

    def test_directory_means_its_report_json(self, saved: Path) -> None:
        """`conctools report DIR` reads DIR/report.json."""
        result = conctools("report", str(saved.parent))
        assert result.returncode == 0, result.stderr
        assert "conctools report" in result.stdout

    def test_html_and_trace(self, saved: Path, tmp_path: Path) -> None:
        """--html and --trace write the files; --text prints as well."""
        html, trace = tmp_path / "r.html", tmp_path / "t.json"
        result = conctools("report", str(saved), "--html", str(html), "--trace", str(trace), "--text")
        assert result.returncode == 0, result.stderr
        assert html.read_text().startswith("<!DOCTYPE html>")
        assert json.loads(trace.read_text())["traceEvents"]
        assert "conctools report" in result.stdout
        quiet = conctools("report", str(saved), "--trace", str(trace))
        assert quiet.stdout == ""

    @pytest.mark.parametrize(
        "content, message",
        [
            ("{not json", "not valid JSON"),
            ('{"traceEvents": []}', "not a conctools report"),
            ('{"schema": "conctools.report/99"}', "not a conctools report"),
            ('{"schema": "conctools.report/1", "events": 3}', "corrupt conctools report"),
            ("[1, 2]", "not a conctools report"),
            ("\udcff", "cannot read"),
        ],
    )
    def test_bad_file_one_line(self, tmp_path: Path, content: str, message: str) -> None:
        """A corrupt or foreign file is one line on stderr and exit 2, never a traceback."""
        path = tmp_path / "report.json"
        path.write_bytes(content.encode("utf-8", "surrogateescape"))
        result = conctools("report", str(path))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr

    def test_wrong_value_types(self, saved: Path, tmp_path: Path) -> None:
        """A report whose events hold values of the wrong type is one line and exit 2."""
        doc = json.loads(saved.read_text())
        span = next(e for e in doc["events"] if e["kind"] == "span")
        span["ts_ns"], span["duration_s"] = "soon", "long"
        path = tmp_path / "report.json"
        path.write_text(json.dumps(doc))
        for extra in (["--trace", str(tmp_path / "t.json")], ["--html", str(tmp_path / "r.html")]):
            result = conctools("report", str(path), *extra)
            assert result.returncode == 2, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and "corrupt" in result.stderr

    def test_missing_file_and_directory(self, tmp_path: Path) -> None:
        """A missing path or a directory is one line and exit 2."""
        for target, message in ((tmp_path / "nope.json", "no such file"), (tmp_path, "is a directory")):
            result = conctools("report", str(target))
            assert result.returncode == 2 and message in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1

    def test_unwritable_output(self, saved: Path, tmp_path: Path) -> None:
        """An output path in a missing directory is one line and exit 2."""
        result = conctools("report", str(saved), "--html", str(tmp_path / "no" / "such" / "r.html"))
        assert result.returncode == 2 and "cannot write" in result.stderr
        assert "Traceback" not in result.stderr

    def test_no_argument(self) -> None:
        """`conctools report` without a file is a usage error."""
        result = conctools("report")
        assert result.returncode == 2 and "Traceback" not in result.stderr
