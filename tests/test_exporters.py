"""Exporters: OpenTelemetry (a real OTLP/HTTP receiver), Prometheus (prometheus_client's parser),
pprof (decoded against profile.proto; ``go tool pprof`` where installed) and speedscope (its JSON
schema)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conctools.events import SpanEvent
from conctools.exporters.spantree import SpanTree, Trace

HERE = Path(__file__).parent
PROG = HERE / "scripts" / "exports_prog.py"
WAIT_LINE = next(i for i, line in enumerate(PROG.read_text().splitlines(), 1) if "# WAIT LINE" in line)


def run_conctools(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conctools", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def lock_row(report: Path) -> dict[str, Any]:
    rows = json.loads(report.read_text())["sections"]["locks"]
    (row,) = [r for r in rows if r["name"] == "exports_prog.py:10"]
    return row


class TestOpenTelemetry:
    def test_run_otel_sends_spans_waits_and_metrics(self, tmp_path: Path) -> None:
        """`conctools run --otel` sends every traced call as a span with its parent, thread, task and
        outcome, the lock wait as an event on the span that waited, and the metrics."""
        from _otlp_receiver import OtlpReceiver, attrs

        with OtlpReceiver() as rx:
            done = run_conctools(
                "run",
                "--otel",
                "--no-report",
                "--out",
                str(tmp_path),
                str(PROG),
                env={"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_SERVICE_NAME": "exports-test"},
            )
            assert done.returncode == 0, done.stderr
            assert rx.wait_for(lambda: rx.metrics and len(rx.spans()) >= 9, 20)
            spans = rx.spans()
            metrics = rx.last_metrics()
        by_id = {s.span_id: s for _, s in spans}
        names = sorted(s.name for _, s in spans)
        assert names == ["fetch", "fetch", "main", "post", "post", "post", "post", "settle", "settle"]
        assert all(attrs(res.attributes)["service.name"] == "exports-test" for res, _ in spans)
        for _, s in spans:
            a = attrs(s.attributes)
            parent = by_id.get(s.parent_span_id)
            if s.name in ("post", "fetch"):
                assert parent is not None and parent.trace_id == s.trace_id
                assert parent.name == {"post": "settle", "fetch": "main"}[s.name]
            else:
                assert s.parent_span_id == b""
            if s.name in ("post", "settle"):
                assert a["thread.name"] in ("worker-0", "worker-1") and "asyncio.task.name" not in a
            else:
                assert a["thread.name"] == "MainThread" and a["asyncio.task.name"].startswith("Task-")
        raised = [s for _, s in spans if attrs(s.attributes)["conctools.outcome"] == "raised"]
        assert [s.name for s in raised] == ["fetch"]
        assert attrs(raised[0].attributes)["error.type"] == "ValueError" and raised[0].status.code == 2
        waits = [(s, e) for _, s in spans for e in s.events if e.name == "conctools.lock.wait"]
        row = lock_row(tmp_path / "report.json")
        assert row["contentions"] >= 1 and len(waits) == row["contentions"]
        for s, e in waits:
            a = attrs(e.attributes)
            assert s.name == "post"  # the span that waited, not its caller
            assert a["conctools.lock.name"] == "exports_prog.py:10" and a["conctools.lock.site"].endswith(
                f"exports_prog.py:{WAIT_LINE}"
            )
            assert s.start_time_unix_nano <= e.time_unix_nano <= s.end_time_unix_nano
        points = {attrs(p.attributes)["lock"]: p for p in metrics["conctools.lock.wait"].histogram.data_points}
        rows = json.loads((tmp_path / "report.json").read_text())["sections"]["locks"]
        assert set(points) == {r["name"] for r in rows}  # the program's locks only: none of the exporter's
        point = points["exports_prog.py:10"]
        assert attrs(point.attributes)["kind"] == "Lock"
        assert point.count == row["contentions"] == sum(point.bucket_counts)
        assert abs(point.sum - row["wait_total_s"]) < 1e-6
        assert metrics["conctools.deadlocks"].sum.data_points[0].as_int == 0
        assert metrics["conctools.deadlocks"].sum.is_monotonic

    def test_report_otel_sends_a_saved_run(self, tmp_path: Path) -> None:
        """`conctools report saved.json --otel` sends the saved run's spans (with their parents) and its
        lock-wait metric, as `run --otel` would have."""
        from _otlp_receiver import OtlpReceiver, attrs

        done = run_conctools("run", "--no-report", "--out", str(tmp_path), str(PROG))
        assert done.returncode == 0, done.stderr
        row = lock_row(tmp_path / "report.json")
        with OtlpReceiver() as rx:
            sent = run_conctools(
                "report",
                str(tmp_path / "report.json"),
                "--otel",
                env={"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_SERVICE_NAME": "saved-run"},
            )
            assert sent.returncode == 0, sent.stderr
            assert rx.wait_for(lambda: rx.metrics and len(rx.spans()) >= 9, 20)
            spans = rx.spans()
            metrics = rx.last_metrics()
        assert sorted(s.name for _, s in spans) == [
            "fetch",
            "fetch",
            "main",
            "post",
            "post",
            "post",
            "post",
            "settle",
            "settle",
        ]
        assert all(attrs(res.attributes)["service.name"] == "saved-run" for res, _ in spans)
        by_id = {s.span_id: s for _, s in spans}
        for _, s in spans:
            if s.name in ("post", "fetch"):
                parent = by_id.get(s.parent_span_id)
                assert parent is not None and parent.name == {"post": "settle", "fetch": "main"}[s.name]
        points = {attrs(p.attributes)["lock"]: p for p in metrics["conctools.lock.wait"].histogram.data_points}
        assert points["exports_prog.py:10"].count == row["contentions"] >= 1

    def test_bad_otel_settings_are_one_line(self, tmp_path: Path) -> None:
        """An OTEL_* value conctools cannot honour: one line, exit 2, the program never starts."""
        marker = tmp_path / "ran"
        script = tmp_path / "p.py"
        script.write_text(f"open({str(marker)!r}, 'w').close()\n")
        done = run_conctools("run", "--otel", str(script), env={"OTEL_TRACES_EXPORTER": "zipkin"})
        assert done.returncode == 2 and not marker.exists()
        assert done.stderr.strip().splitlines() == [
            "conctools run: error: OTEL_TRACES_EXPORTER='zipkin': conctools supports otlp, console or none"
        ]

    def test_collector_down_never_holds_the_program(self, tmp_path: Path) -> None:
        """No collector listening: the program's output and exit status are unchanged, and it ends."""
        script = tmp_path / "p.py"
        script.write_text("import conctools\n@conctools.traced\ndef f(): return 1\nprint(f())\nraise SystemExit(3)\n")
        done = run_conctools(
            "run",
            "--otel",
            "--no-report",
            str(script),
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"},
        )
        assert done.returncode == 3 and done.stdout == "1\n"
        assert "Traceback" not in done.stderr


class TestSpanTree:
    def make(self, **kw: Any) -> SpanTree:
        counter = iter(range(1, 1000))
        return SpanTree(lambda name: Trace(next(counter)), salt=0, **kw)

    @staticmethod
    def span(span_id: int, parent: int | None, name: str = "s") -> SpanEvent:
        return SpanEvent(
            ts_ns=0,
            thread_id=1,
            thread_name="t",
            name=name,
            span_id=span_id,
            parent_id=parent,
            duration_s=0.0,
            outcome="ok",
        )

    def test_children_wait_for_their_root(self) -> None:
        """Children that end first are held, then placed in their root's trace with their parents."""
        tree = self.make()
        assert tree.add(self.span(3, 2), 0.0) == [] and tree.add(self.span(2, 1), 0.0) == []
        placed = tree.add(self.span(1, None), 0.0)
        assert {p.span.span_id: p.parent_span_id for p in placed} == {1: None, 2: tree.span_id(1), 3: tree.span_id(2)}
        assert {p.trace for p in placed} == {Trace(1)} and tree.held == 0

    def test_long_parent_reserves_a_trace(self) -> None:
        """Spans held past max_wait_s go out in a trace reserved for their running parent, which
        joins it when it ends; a late sibling joins it at once."""
        tree = self.make(max_wait_s=5.0)
        tree.add(self.span(2, 1), 0.0)
        assert tree.expire(1.0) == []
        (early,) = tree.expire(6.0)
        (late,) = tree.add(self.span(3, 1), 7.0)
        (root,) = tree.add(self.span(1, None), 8.0)
        assert early.trace == late.trace == root.trace and root.parent_span_id is None

    def test_split_subtree_links_to_its_parent(self) -> None:
        """Two reservations that meet: the later subtree keeps its trace and links to its parent."""
        tree = self.make(max_wait_s=1.0)
        tree.add(self.span(3, 2), 0.0)  # 0 <- 1 <- 2 <- 3 and 0 <- 4 <- 5
        tree.add(self.span(5, 4), 0.0)
        tree.expire(2.0)
        tree.add(self.span(2, 1), 3.0)
        tree.add(self.span(1, 0), 3.0)
        (four,) = tree.add(self.span(4, 0), 3.0)
        assert four.parent_span_id is None and four.linked_parent is not None
        assert four.linked_parent[1] == tree.span_id(0) and tree.split == 1


class TestPrometheus:
    def test_metrics_server_parsed_by_prometheus_client(self, recorder: Any) -> None:
        """start_http_server serves the lock wait histogram (a `lock` label) and `_total` counters,
        read back with prometheus_client's own parser."""
        from prometheus_client.parser import text_string_to_metric_families

        import conctools
        import conctools.metrics

        # A name no other test uses: the lock table is per name for the whole session.
        lock = conctools.Lock(name="accounts-metrics-server")
        holding = threading.Event()
        released = threading.Event()

        def hold() -> None:
            with lock:
                holding.set()
                released.wait(10)

        t = threading.Thread(target=hold)
        t.start()
        assert holding.wait(10)
        threading.Timer(0.05, released.set).start()
        with lock:
            pass
        t.join(10)
        server = conctools.metrics.start_http_server(0)
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read().decode()
        finally:
            server.close()
        families = {f.name: f for f in text_string_to_metric_families(body)}
        wait = families["conctools_lock_wait_seconds"]
        assert wait.type == "histogram"
        samples = {
            (s.name, s.labels.get("le")): s.value
            for s in wait.samples
            if s.labels.get("lock") == "accounts-metrics-server"
        }
        assert samples[("conctools_lock_wait_seconds_count", None)] == 1
        assert samples[("conctools_lock_wait_seconds_bucket", "+Inf")] == 1
        assert samples[("conctools_lock_wait_seconds_bucket", "0.01")] == 0  # it waited ~50 ms
        assert 0.04 < samples[("conctools_lock_wait_seconds_sum", None)] < 10
        contentions = families["conctools_lock_contentions"]
        assert contentions.type == "counter"
        ours = [s for s in contentions.samples if s.labels.get("lock") == "accounts-metrics-server"]
        assert [s.value for s in ours if s.name == "conctools_lock_contentions_total"] == [1]
        assert families["conctools_deadlocks"].samples[0].name == "conctools_deadlocks_total"

    @pytest.mark.asyncio
    async def test_sample_server_exposes_metrics(self) -> None:
        """The sample server answers GET /metrics in Prometheus' text format."""
        from aiohttp import ClientSession, web
        from prometheus_client.parser import text_string_to_metric_families

        from conctools.server.app import ServerOptions, create_app

        runner = web.AppRunner(create_app(ServerOptions(instrument=False)))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                names = {f.name for f in text_string_to_metric_families(await resp.text())}
        finally:
            await runner.cleanup()
        assert {"conctools_lock_wait_seconds", "conctools_loop_lag_seconds", "conctools_hangs"} <= names


def decode(path: Path) -> Any:
    from conctools.exporters.profile_proto import Profile

    return Profile.FromString(gzip.decompress(path.read_bytes()))


def sample_stacks(p: Any) -> list[tuple[list[str], list[int]]]:
    s = p.string_table
    funcs = {f.id: f for f in p.function}
    locs = {loc.id: loc for loc in p.location}
    out = []
    for sample in p.sample:
        frames = []
        for lid in sample.location_id:
            line = locs[lid].line[0]
            f = funcs[line.function_id]
            frames.append(f"{Path(s[f.filename]).name}:{line.line} {s[f.name]}")
        out.append((frames, list(sample.value)))
    return out


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`conctools run --profile --out DIR` of the test program, once for the module."""
    out = tmp_path_factory.mktemp("profile")
    done = run_conctools("run", "--profile", "--no-report", "--out", str(out), str(PROG))
    assert done.returncode == 0, done.stderr
    return out


class TestPprofAndSpeedscope:
    def test_locks_pb_gz(self, out: Path) -> None:
        """locks.pb.gz: Go's contention sample types, the waiter's stack with the program's wait line
        under the lock, and totals that are the lock table's."""
        p = decode(out / "locks.pb.gz")
        s = p.string_table
        assert [(s[t.type], s[t.unit]) for t in p.sample_type] == [("contentions", "count"), ("delay", "nanoseconds")]
        row = lock_row(out / "report.json")
        mine = [(frames, values) for frames, values in sample_stacks(p) if "'exports_prog.py:10'" in frames[0]]
        assert sum(v[0] for _, v in mine) == row["contentions"] >= 1
        assert abs(sum(v[1] for _, v in mine) - row["wait_total_s"] * 1e9) <= len(mine)
        frames = mine[0][0]
        assert frames[0] == "exports_prog.py:10 Lock 'exports_prog.py:10' (wait)"
        assert f"exports_prog.py:{WAIT_LINE} post" in frames and any(f.endswith(" settle") for f in frames)
        holders = decode(out / "locks-holders.pb.gz")
        stacks = sample_stacks(holders)
        assert all(frames[1].startswith("?:0 held by thread 'worker-") for frames, _ in stacks), stacks

    def test_profile_pb_gz(self, out: Path) -> None:
        """profile.pb.gz: yappi's wall clock in nanoseconds, on stacks of the program's functions."""
        p = decode(out / "profile.pb.gz")
        s = p.string_table
        assert [(s[t.type], s[t.unit]) for t in p.sample_type] == [("wall", "nanoseconds")]
        stacks = sample_stacks(p)
        posts = [(frames, v) for frames, v in stacks if frames[0].startswith("exports_prog.py:13 post")]
        assert posts and sum(v[0] for _, v in posts) > 0
        assert any("threading.py" in f for frames, _ in posts for f in frames)  # under the thread's run()

    @pytest.mark.skipif(shutil.which("go") is None, reason="go (golang-go) is not installed: go tool pprof not run")
    def test_go_tool_pprof_reads_them(self, out: Path) -> None:
        """`go tool pprof` reads both files and shows the program's functions."""
        for name, expect in (("locks.pb.gz", "post"), ("profile.pb.gz", "post")):
            done = subprocess.run(
                ["go", "tool", "pprof", "-top", "-cum", str(out / name)], capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, done.stderr
            assert expect in done.stdout

    def test_speedscope_schema(self, out: Path) -> None:
        """profile.speedscope.json passes speedscope's own file-format schema, with one profile per
        thread and per task group."""
        import jsonschema

        schema = json.loads((HERE / "data" / "speedscope-file-format-schema.json").read_text())
        doc = json.loads((out / "profile.speedscope.json").read_text())
        jsonschema.validate(doc, {**schema, "$ref": "#/definitions/FileFormat.File"})
        names = [p["name"] for p in doc["profiles"]]
        assert names[0] == "all threads (yappi wall clock)"
        assert "thread 'worker-0' (traced calls)" in names and "thread 'worker-1' (traced calls)" in names
        assert "tasks 'Task-*' (traced calls, own time)" in names
        frames = doc["shared"]["frames"]
        timeline = doc["profiles"][names.index("thread 'worker-0' (traced calls)")]
        opened = [frames[e["frame"]]["name"] for e in timeline["events"] if e["type"] == "O"]
        assert opened == ["settle", "post", "post"]

    def test_report_converts_a_saved_run(self, out: Path, tmp_path: Path) -> None:
        """`conctools report saved.json --pprof DIR --speedscope FILE` writes the same kinds of files."""
        done = run_conctools(
            "report", str(out / "report.json"), "--pprof", str(tmp_path), "--speedscope", str(tmp_path / "s.json")
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        row = lock_row(out / "report.json")
        p = decode(tmp_path / "locks.pb.gz")
        assert sum(v[0] for frames, v in sample_stacks(p) if "'exports_prog.py:10'" in frames[0]) == row["contentions"]
        assert json.loads((tmp_path / "s.json").read_text())["profiles"]


def test_embedded_descriptor_is_profile_proto() -> None:
    """The message classes carry every message and field of the shipped profile.proto."""
    import re

    from conctools.exporters import profile_proto

    text = (Path(profile_proto.__file__).parent / "profile.proto").read_text()
    for message, body in re.findall(r"^message (\w+) \{(.*?)^\}", text, re.S | re.M):
        fields = dict(
            (name, int(num)) for name, num in re.findall(r"^\s+(?:repeated\s+)?\w+ (\w+) = (\d+);", body, re.M)
        )
        cls = profile_proto.message_class(message)
        assert {f.name: f.number for f in cls.DESCRIPTOR.fields} == fields, message
