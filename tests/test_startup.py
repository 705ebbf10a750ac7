"""`conctools run` start-up: every instrument is on when the program's first line runs, and what
the run does not need before the program (reporters, the console, load tests, exporters) is not
imported yet (issue 12's start-up target; the timing itself is in benchmarks/bench_run.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TIMEOUT = 60

FIRST_LINE = """
import json, sys, threading
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m.startswith("conctools")),
    "threads": sorted(t.name for t in threading.enumerate()),
    "lock": type(threading.Lock()).__module__,
}))
"""

# Imported on first use only: a run that prints its report imports the text reporters after the
# program; the console, the load tests, the exporters and the profiler only when asked for.
DEFERRED = (
    "conctools.reporting.text",
    "conctools.reporting.html",
    "conctools.reporting.trace",
    "conctools.reporting.findings",
    "conctools.reporting.locks_text",
    "conctools.loadtest",
    "conctools.console.launch",
    "conctools.console.server",
    "conctools.console.monitor",
    "conctools.exporters.otel",
    "conctools.exporters.pprof",
    "conctools.exporters.speedscope",
    "conctools.profiling",
    "conctools.server",
    "conctools.demo",
)


def run_first_line(tmp_path: Path, *options: str) -> tuple[dict[str, object], subprocess.CompletedProcess[str]]:
    script = tmp_path / "first.py"
    script.write_text(textwrap.dedent(FIRST_LINE))
    proc = subprocess.run(
        [sys.executable, "-m", "conctools", "run", *options, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    seen: dict[str, object] = json.loads(proc.stdout)
    return seen, proc


class TestStartup:
    """What is running and what is imported when the program starts."""

    def test_instruments_on_and_reporters_not_imported_at_the_first_line(self, tmp_path: Path) -> None:
        """At the program's first line the watchdog, sampler, GIL monitor, dump agent and child
        follower run and threading's locks are traced ones; no reporter, console, load test,
        exporter or profiler module is imported yet; the report is still printed at the end."""
        seen, proc = run_first_line(tmp_path)
        threads = seen["threads"]
        assert isinstance(threads, list)
        for role in ("watchdog", "resources", "gil", "agent", "children"):
            assert f"conctools-{role}" in threads, threads
        assert seen["lock"] == "conctools", seen["lock"]
        modules = seen["modules"]
        assert isinstance(modules, list)
        assert "conctools.deadlock.watchdog" in modules and "conctools.loopmon" in modules
        imported = [m for m in DEFERRED if m in modules or any(n.startswith(m + ".") for n in modules)]
        assert imported == [], imported
        assert "conctools report" in proc.stderr  # imported after the program, and used

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the GIL is found through /proc")
    def test_gil_found_before_the_program(self, tmp_path: Path) -> None:
        """The GIL calibration (a parked probe thread) finds the GIL, so even a program that ends at
        once gets the /proc method, not the bytecode heuristic; the probe is gone when it starts."""
        seen, _ = run_first_line(tmp_path, "--no-report", "--out", str(tmp_path / "out"))
        assert "conctools-gil-probe" not in seen["threads"]
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["sections"]["gil"]["method"] == "proc"
