"""The ranked findings: what the text and HTML reports show first, from recorded runs."""

from __future__ import annotations

import asyncio
import re

import pytest
from _report_samples import rich_snapshot
from _scale_samples import scale_snapshot

from conctools.events import Frame, LockWaitEvent, SlowCallbackEvent
from conctools.recorder import Recorder, Snapshot
from conctools.reporting import findings as findings_module
from conctools.reporting import render_text
from conctools.reporting.findings import Finding, find, findings_section


@pytest.fixture(scope="module")
def rich() -> Snapshot:
    return rich_snapshot()


class TestRanking:
    def test_worst_first(self, rich: Snapshot) -> None:
        """A deadlock, then the hang, then the inversion, then what cost time; each with a detail link."""
        found = find(rich)
        assert [f.kind for f in found[:3]] == ["deadlock", "hang", "lock_order"]
        assert [f.severity for f in found[:2]] == ["critical", "critical"]
        stall = next(f for f in found if f.kind == "stall")
        assert stall.where == "app/prog.py:33" and "in blocking" in stall.title
        assert all(f.anchor and f.section for f in found)

    def test_server_scale(self) -> None:
        """A busy server: the inversion first, then stalls and contention by the time they cost,
        each lock with its waiting site and who held it (tasks by what they run)."""
        found = find(scale_snapshot(tasks=3_000, threads=10, duration_s=20.0))
        kinds = [f.kind for f in found]
        assert kinds[0] == "lock_order" and "stall" in kinds and "lock_contention" in kinds
        counter = next(f for f in found if f.title.startswith("Lock contention: 'counter'"))
        assert "hottest waiting sites: app.py:220 (200 waits)" in counter.evidence
        assert "held by tasks running POST /counter (199)" in counter.evidence
        costs = [f.impact_s for f in found if f.kind in ("stall", "lock_contention") and f.severity == "high"]
        assert costs == sorted(costs, reverse=True)

    def test_nothing_found(self, recorder: Recorder) -> None:
        """A quiet run has no findings and no findings section."""
        assert find(recorder.snapshot()) == []
        assert findings_section(recorder.snapshot(), False) is None
        assert "Findings" not in render_text(recorder.snapshot())

    def test_a_broken_finder_hides_nothing_else(self, rich: Snapshot, monkeypatch: pytest.MonkeyPatch) -> None:
        """A finder that raises is logged and skipped; the others still report; a new kind can be added."""

        def broken(snapshot: Snapshot) -> list[Finding]:
            raise RuntimeError("boom")

        def extra(snapshot: Snapshot) -> list[Finding]:
            return [Finding(kind="pool", severity="medium", title="pool exhausted 3 times", impact_s=99.0)]

        monkeypatch.setattr(findings_module, "FINDERS", [broken, *findings_module.FINDERS, extra])
        found = find(rich)
        assert found[0].kind == "deadlock" and any(f.kind == "pool" for f in found)


class TestText:
    def test_findings_open_the_report(self, rich: Snapshot) -> None:
        """report.txt: the header, then the ranked findings with severities in words, then the sections."""
        text = render_text(rich)
        head, rest = text.split("Findings (", 1)
        assert head.count("=" * 78) == 2
        assert rest.splitlines()[1].startswith("  1. [CRITICAL] Deadlock:")
        assert "-> see 'Slow callbacks' below" in rest
        assert rest.index("[CRITICAL]") < rest.index("Found one Python-level deadlock")

    def test_names_cannot_drive_the_terminal(self, recorder: Recorder) -> None:
        """A lock named with escape and bidi-override characters is printed with them escaped."""
        name = "evil\x1b[31m\u202e"
        recorder.record(
            LockWaitEvent(
                ts_ns=recorder.started_ns,
                thread_id=1,
                thread_name="T",
                lock_id=1,
                lock_name=name,
                lock_kind="Lock",
                wait_s=5.0,
                acquired=True,
                holder="thread 'U'",
                site="x.py:1",
            )
        )
        section = findings_section(recorder.snapshot(), False)
        assert section is not None and "Lock contention: 'evil\\x1b[31m\\u202e'" in section
        assert "\x1b" not in section and "\u202e" not in section

    def test_unknown_stall_site_is_said_so(self, recorder: Recorder) -> None:
        """Stalls that ended before a sample name no culprit line (they say why)."""
        recorder.record(
            SlowCallbackEvent(
                ts_ns=recorder.started_ns,
                thread_id=1,
                thread_name="MainThread",
                loop_id=1,
                duration_s=0.3,
                threshold_s=0.1,
                callback="<unknown: the stall ended before it could be sampled>",
                culprit=None,
            )
        )
        recorder.record(
            SlowCallbackEvent(
                ts_ns=recorder.started_ns,
                thread_id=1,
                thread_name="MainThread",
                loop_id=1,
                duration_s=0.2,
                threshold_s=0.1,
                callback="Task 'x' (main)",
                culprit=Frame(filename="/a/b/app.py", lineno=7, function="main", line="time.sleep(1)"),
            )
        )
        titles = [f.title for f in find(recorder.snapshot())]
        assert titles == [
            "Event loop blocked 1 time (300 ms) by a callback that ended before it could be sampled",
            "Event loop blocked 1 time, 200 ms in total, at b/app.py:7 in main",
        ]


class TestLockCreationSite:
    def test_sample_server_names_its_own_lines(self, recorder: Recorder) -> None:
        """The sample server's locks are named by the server's lines that made them, each its own,
        even when made inside a running event loop (they were all 'serve.py (asyncio.events.Handle._run)')."""
        pytest.importorskip("aiohttp")
        from conctools.server.app import SampleService, ServerOptions

        async def main() -> SampleService:
            await asyncio.sleep(0)
            return SampleService(ServerOptions(bugs=frozenset({"contention", "inversion"})))

        service = asyncio.run(main())
        locks = {"counter": service.counter_lock, "cache": service.cache_lock, "accounts": service.accounts_lock}
        created = {name: getattr(lock, "_ct_created", None) for name, lock in locks.items()}
        assert all(c is not None and re.fullmatch(r"app\.py:\d+", c) for c in created.values()), created
        assert len(set(created.values())) == 3, created
