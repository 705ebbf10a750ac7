"""A new interpreter's bootstrap (spawn, ``subprocess`` of ``sys.executable``): at the program's first
line lock tracing and the record writer run and nothing else is imported; the sampler, the GIL
monitor and the watchdog start half a second in and then work; a child that ends before that still
hands its record over (issue 14: the cost of following spawned children)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

TIMEOUT = 120

PROGRAM = '''
import json, multiprocessing as mp, subprocess, sys, threading, time

FIRST = """
import json, sys, threading
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m.startswith(("conctools", "psutil"))),
    "threads": sorted(t.name for t in threading.enumerate()),
    "lock": type(threading.Lock()).__module__,
    "logging": "logging" in sys.modules,
    "stdlib": sorted(m for m in ("dataclasses", "inspect", "typing") if m in sys.modules),
}), flush=True)
"""

DEFERRED = ("conctools-watchdog", "conctools-gil", "conctools-resources")


def probe(queue):
    exec(FIRST, {})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
        any(t.name == role for t in threading.enumerate()) for role in DEFERRED
    ):
        sum(range(100_000))  # CPU for the GIL monitor and the sampler to see
    queue.put(sorted(t.name for t in threading.enumerate()))


def brief():
    lock = threading.Lock()  # created and taken at once: the lock table of a child that ends now
    with lock:
        pass


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=probe, args=(q,), name="prober")
    p.start()
    print(json.dumps({"later": q.get(timeout=90)}), flush=True)
    p.join()
    b = ctx.Process(target=brief, name="brief")
    b.start()
    b.join()
    subprocess.run([sys.executable, "-c", FIRST], check=True)
'''

# Imported only when the instrument that needs it starts (half a second in) or never in a child.
NOT_AT_FIRST_LINE = (
    "psutil",
    "conctools.runner",
    "conctools.deadlock",
    "conctools.gil",
    "conctools.resources",
    "conctools.casualties",
    "conctools.taskdump",
    "conctools.reporting",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The program above under ``conctools run``: what its children printed, and its report."""
    tmp = tmp_path_factory.mktemp("boot")
    script = tmp / "prog.py"
    script.write_text(textwrap.dedent(PROGRAM))
    out = tmp / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "conctools", "run", "--no-report", "--out", str(out), str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    report = json.loads((out / "report.json").read_text())
    return lines, report


def _child(report: dict[str, Any], name: str) -> dict[str, Any]:
    processes = report["sections"]["processes"]["processes"]
    found = [p for p in processes if p.get("name") == name]
    assert len(found) == 1, [p.get("name") for p in processes]
    return found[0]


def _imported(modules: list[str]) -> list[str]:
    return [m for m in NOT_AT_FIRST_LINE if any(n == m or n.startswith(m + ".") for n in modules)]


class TestBootstrapImports:
    """What a new interpreter has at its program's first line."""

    @pytest.mark.parametrize("which", [0, 2], ids=["spawn", "subprocess"])
    def test_lock_tracing_and_writer_only(self, run: tuple[list[dict[str, Any]], dict[str, Any]], which: int) -> None:
        """Locks are traced ones and the record writer runs; no sampler, GIL monitor or watchdog
        yet, and neither psutil, logging, nor the runner, the watchdog's or the reporters' modules
        are imported."""
        lines, _ = run
        seen = lines[which]
        assert seen["lock"] == "conctools", seen
        assert "conctools-children" in seen["threads"], seen["threads"]
        for role in ("conctools-watchdog", "conctools-gil", "conctools-resources"):
            assert role not in seen["threads"], seen["threads"]
        assert "conctools.locks" in seen["modules"] and "conctools.children.session" in seen["modules"]
        assert _imported(seen["modules"]) == []
        assert seen["logging"] is False  # conctools' loggers import it when they first log
        # Records are made without dataclasses (and its inspect); conctools reads typing's names
        # without importing it (a spawned child's multiprocessing imports it on its own).
        assert seen["stdlib"] == ([] if which == 2 else [m for m in seen["stdlib"] if m == "typing"])


class TestDeferredInstruments:
    """The instruments a spawned child starts half a second in are there, and report."""

    def test_they_start_and_report(self, run: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
        """The watchdog, GIL monitor and sampler threads start in a child that lives on; its report
        has the sampler's and the GIL monitor's sections."""
        lines, report = run
        later = lines[1]["later"]
        for role in ("conctools-watchdog", "conctools-gil", "conctools-resources"):
            assert role in later, later
        sections = _child(report, "prober")["report"]["sections"]
        assert sections["resources"]["samples"] >= 1
        assert sections["gil"]["samples"] >= 1

    def test_short_lived_child_hands_its_record(self, run: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
        """A spawned child that ends at once (before its deferred instruments) still hands over its
        final record: how it ended and its lock table, with the lock it took."""
        _, report = run
        brief = _child(report, "brief")
        assert brief["final"] is True and brief["exit_text"] == "exit status 0", brief
        sites = [entry["created_at"] for entry in brief["report"]["sections"]["locks"]]
        assert any(site.startswith("prog.py:") for site in sites), sites


class TestStartedWithoutPsutil:
    """The sampler reads /proc itself on Linux: the same figures psutil gives."""

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
    def test_same_figures_as_psutil(self) -> None:
        """Threads, fds and RSS equal psutil's read right after (psutil's fds count the descriptor it
        lists them with, one more); CPU time within a tick or two."""
        psutil = pytest.importorskip("psutil")
        from conctools.resources import _ProcSelf, _psutil_read

        mine = _ProcSelf().read()
        theirs = _psutil_read(psutil.Process())
        assert (mine[2], mine[3] + 1) == theirs[2:4]
        assert abs(mine[1] - theirs[1]) <= 1 << 20  # RSS: the same file, a page or so apart in time
        assert abs(mine[0] - theirs[0]) < 0.05
        assert mine[4] <= theirs[4] and mine[5] <= theirs[5]  # context switches only grow


def test_bootstrap_module_does_not_import_the_runner(tmp_path: Path) -> None:
    """The bootstrap module loads without the runner (and its watchdog, GIL and sampler imports)."""
    code = "import sys; import conctools.children.bootstrap; print('conctools.runner' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert out.stdout.strip() == "False", out.stderr


class TestLazyLogger:
    """conctools' module loggers are the real ones once used."""

    def test_same_logger_and_records_reach_handlers(self, caplog: pytest.LogCaptureFixture) -> None:
        """A lazy logger logs through ``logging.getLogger(name)``: its records reach the handlers."""
        import logging

        from conctools._log import get_logger

        lazy = get_logger("conctools.test-lazy")
        with caplog.at_level(logging.DEBUG, logger="conctools.test-lazy"):
            lazy.debug("seen %d", 1)
        assert [r.getMessage() for r in caplog.records if r.name == "conctools.test-lazy"] == ["seen 1"]
        assert lazy.getEffectiveLevel() == logging.getLogger("conctools.test-lazy").getEffectiveLevel()

    def test_imported_with_a_plain_lock(self) -> None:
        """Imported by a conctools logger under ``trace_locks()``, ``logging``'s own lock is a plain one
        (as when conctools imports it first) and ``threading``'s factories are the traced ones again."""
        code = (
            "import sys, threading\n"
            "from conctools._log import get_logger\n"
            "from conctools.locks import trace_locks\n"
            "with trace_locks():\n"
            "    assert 'logging' not in sys.modules\n"
            "    get_logger('conctools.x').debug('first use')\n"
            "    import logging\n"
            "    print(type(logging._lock).__module__, type(threading.RLock()).__module__)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
        assert out.stdout.split() == ["_thread", "conctools"], out.stderr
