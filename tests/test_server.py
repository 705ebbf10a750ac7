"""The sample server: every endpoint on a real aiohttp test server, and each seeded bug found
by conctools under concurrent load."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from conctools.recorder import Recorder, Snapshot
from conctools.server import BUGS, ServerOptions, create_app, parse_bugs, service_of
from conctools.server.instruments import InstrumentOptions

APP_FILE = str(Path(__file__).resolve().parent.parent / "conctools" / "server" / "app.py")


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


async def _client(options: ServerOptions) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(options), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest_asyncio.fixture
async def client(recorder: Recorder) -> AsyncIterator[TestClient[Any, Any]]:
    """The instrumented server without bugs, on a real loopback socket."""
    c = await _client(ServerOptions(cpu_workers=1))
    try:
        yield c
    finally:
        await c.close()


@pytest_asyncio.fixture
async def plain_client() -> AsyncIterator[TestClient[Any, Any]]:
    """The uninstrumented server (stdlib primitives, no instruments)."""
    c = await _client(ServerOptions(instrument=False, cpu_workers=1))
    try:
        yield c
    finally:
        await c.close()


class TestParseBugs:
    """``--bugs`` parsing."""

    def test_all_and_empty_mean_every_bug(self) -> None:
        """``all`` and an empty value switch every bug on; ``None`` switches none."""
        assert parse_bugs("all") == frozenset(BUGS)
        assert parse_bugs("") == frozenset(BUGS)
        assert parse_bugs(None) == frozenset()

    def test_a_list_picks_those(self) -> None:
        """A comma list switches on exactly those bugs."""
        assert parse_bugs("blocking, inversion") == {"blocking", "inversion"}

    def test_unknown_bug_is_a_readable_error(self) -> None:
        """An unknown name raises ValueError naming it."""
        with pytest.raises(ValueError, match="'nope'"):
            parse_bugs("blocking,nope")


class TestEndpoints:
    """Every endpoint answers correctly on the instrumented server."""

    @pytest.mark.asyncio
    async def test_index_lists_endpoints(self, client: TestClient[Any, Any]) -> None:
        """``/`` lists every route and no bugs by default."""
        data = await (await client.get("/")).json()
        assert "GET /search" in data["endpoints"] and "POST /counter" in data["endpoints"]
        assert data["bugs"] == []

    @pytest.mark.asyncio
    async def test_health(self, client: TestClient[Any, Any]) -> None:
        """``/health`` answers ok."""
        resp = await client.get("/health")
        assert resp.status == 200 and await resp.text() == "ok"

    @pytest.mark.asyncio
    async def test_io(self, client: TestClient[Any, Any]) -> None:
        """``/io`` waits the requested delay."""
        assert (await (await client.get("/io?delay_ms=3")).json()) == {"waited_ms": 3}

    @pytest.mark.asyncio
    async def test_bad_parameter_is_400(self, client: TestClient[Any, Any]) -> None:
        """A bad or out-of-range number is a 400 with a readable message."""
        resp = await client.get("/io?delay_ms=abc")
        assert resp.status == 400 and "whole number" in await resp.text()
        assert (await client.get("/cpu?n=999999999")).status == 400

    @pytest.mark.asyncio
    async def test_cpu_in_process_pool(self, client: TestClient[Any, Any]) -> None:
        """``/cpu`` counts primes in a worker process."""
        data = await (await client.get("/cpu?n=100")).json()
        assert data == {"n": 100, "primes": 25}

    @pytest.mark.asyncio
    async def test_blocking_in_thread(self, client: TestClient[Any, Any]) -> None:
        """``/blocking`` runs the sync call in a thread."""
        data = await (await client.get("/blocking?ms=1")).json()
        assert data["slept_ms"] == 1 and len(data["digest"]) == 16

    @pytest.mark.asyncio
    async def test_counter_counts_concurrent_posts(self, client: TestClient[Any, Any]) -> None:
        """Concurrent ``/counter`` posts each get a distinct value."""
        responses = await asyncio.gather(*(client.post("/counter") for _ in range(20)))
        values = sorted([(await r.json())["count"] for r in responses])
        assert values == list(range(1, 21))

    @pytest.mark.asyncio
    async def test_downstream_semaphore(self, client: TestClient[Any, Any]) -> None:
        """``/downstream`` answers under concurrency (at most 4 inside at once)."""
        responses = await asyncio.gather(*(client.get("/downstream") for _ in range(12)))
        assert all(r.status == 200 for r in responses)

    @pytest.mark.asyncio
    async def test_jobs_queue(self, client: TestClient[Any, Any]) -> None:
        """``/jobs`` goes through the queue and a consumer answers."""
        data = await (await client.post("/jobs", data=b"abc")).json()
        assert data["result"] == "cba"

    @pytest.mark.asyncio
    async def test_cache(self, client: TestClient[Any, Any]) -> None:
        """``/cache`` misses, then hits, under the threading locks."""
        first = await (await client.get("/cache?key=k1")).json()
        second = await (await client.get("/cache?key=k1")).json()
        assert first == second
        service = service_of(client.server.app)  # type: ignore[union-attr]
        assert (service.cache_hits, service.cache_misses) == (1, 1)

    @pytest.mark.asyncio
    async def test_transfer_and_audit(self, client: TestClient[Any, Any]) -> None:
        """``/transfer`` moves money; ``/audit`` sums the ledger."""
        await client.post("/transfer?amount=5")
        await client.post("/transfer?amount=7")
        assert (await (await client.get("/audit")).json()) == {"ledger_total": 12}

    @pytest.mark.asyncio
    async def test_search(self, client: TestClient[Any, Any]) -> None:
        """``/search`` answers (without the bug it sleeps in a thread)."""
        data = await (await client.get("/search?q=abc")).json()
        assert data == {"q": "abc", "hits": 3}

    @pytest.mark.asyncio
    async def test_conctools_json_is_a_snapshot(self, client: TestClient[Any, Any]) -> None:
        """``/conctools`` serves the live report, loadable as a Snapshot with the handler spans."""
        await client.get("/health")
        resp = await client.get("/conctools")
        assert resp.content_type == "application/json"
        snapshot = Snapshot.from_dict(json.loads(await resp.text()))
        assert "GET /health" in {s.name for s in snapshot.spans}

    @pytest.mark.asyncio
    async def test_conctools_report_under_load(self, client: TestClient[Any, Any]) -> None:
        """The live report answers while requests keep recording spans."""

        async def load() -> None:
            for _ in range(30):
                await client.get("/health")
                await client.post("/counter")

        reports = [client.get("/conctools") for _ in range(5)]
        results = await asyncio.gather(*(load() for _ in range(4)), *reports)
        assert all(r.status == 200 for r in results[4:])

    @pytest.mark.asyncio
    async def test_conctools_text(self, client: TestClient[Any, Any]) -> None:
        """``/conctools?format=text`` serves the text report."""
        await client.get("/health")
        text = await (await client.get("/conctools?format=text")).text()
        assert "conctools report" in text and "GET /health" in text

    @pytest.mark.asyncio
    @pytest.mark.skipif(not _have("conctools.profiling"), reason="conctools.profiling has not landed")
    async def test_profile_on_request(self, client: TestClient[Any, Any]) -> None:
        """``/conctools/profile`` profiles the process for a moment and answers a table."""
        profiled = asyncio.create_task(client.get("/conctools/profile?seconds=0.5"))
        for _ in range(5):
            await client.get("/io?delay_ms=1")
        resp = await profiled
        assert resp.status == 200 and (await resp.text()).strip()
        assert (await client.get("/conctools/profile?seconds=-1")).status == 400

    @pytest.mark.asyncio
    async def test_instruments_run_with_the_server(self, client: TestClient[Any, Any]) -> None:
        """The instrumented server runs every instrument that is installed, without a task factory."""
        service = service_of(client.server.app)  # type: ignore[union-attr]
        expected = [
            name
            for name, module in (
                ("GIL monitor", "conctools.gil"),
                ("loop monitor", "conctools.loopmon"),
                ("deadlock watchdog", "conctools.deadlock"),
                ("resource sampler", "conctools.resources"),
                ("pool tracker", "conctools.pools"),
            )
            if _have(module)
        ]
        assert service.instruments_running == expected
        assert asyncio.get_running_loop().get_task_factory() is None  # per-request tasks stay cheap

    @pytest.mark.asyncio
    async def test_plain_server_answers_the_same(self, plain_client: TestClient[Any, Any]) -> None:
        """The uninstrumented server serves the same answers, with no instrument running."""
        assert service_of(plain_client.server.app).instruments_running == []  # type: ignore[union-attr]
        assert (await (await plain_client.post("/counter")).json()) == {"count": 1}
        assert (await (await plain_client.get("/audit")).json()) == {"ledger_total": 0}


class TestBugSwitches:
    """Bugs switch on globally and per request, and do not change answers."""

    @pytest.mark.asyncio
    async def test_per_request_switch(self, recorder: Recorder) -> None:
        """``?bug=1`` runs a bug on a server started without bugs; answers stay correct."""
        c = await _client(ServerOptions(cpu_workers=1))
        try:
            assert (await (await c.post("/counter?bug=1")).json()) == {"count": 1}
            assert (await (await c.get("/search?q=x&bug=1")).json())["q"] == "x"
            assert (await (await c.get("/audit?bug=1")).json()) == {"ledger_total": 0}
        finally:
            await c.close()

    @pytest.mark.asyncio
    async def test_index_names_the_bugs(self, recorder: Recorder) -> None:
        """A server started with bugs says so on ``/``."""
        c = await _client(ServerOptions(bugs=frozenset(BUGS), cpu_workers=1))
        try:
            assert (await (await c.get("/")).json())["bugs"] == sorted(BUGS)
        finally:
            await c.close()


async def _load_buggy_server(recorder: Recorder) -> Snapshot:
    """Run every seeded bug under concurrent load; return the recorder's snapshot."""
    if _have("conctools.lockorder"):
        from conctools import lockorder

        lockorder.reset()  # each cycle is reported once per process: start from a clean graph
    options = ServerOptions(
        bugs=frozenset(BUGS),
        cpu_workers=1,
        instruments=InstrumentOptions(loop_threshold_s=0.05, deadlock_timeout_s=30.0),
    )
    c = await _client(options)
    try:

        async def user(i: int) -> None:
            for _ in range(4):
                await c.post("/counter")
                await c.post(f"/transfer?amount={i + 1}")
                await c.get("/audit")
            if i < 2:
                await c.get("/search?q=slow")

        await asyncio.gather(*(user(i) for i in range(8)))
        return recorder.snapshot()
    finally:
        await c.close()


def _slow_callbacks(snapshot: Snapshot) -> list[dict[str, Any]]:
    return [e.to_dict() for e in snapshot.events if e.kind == "slow_callback"]


class TestSeededBugsFound:
    """Each seeded bug, run under load, is found by conctools (needs the instruments' modules)."""

    @pytest.mark.asyncio
    @pytest.mark.skipif(not _have("conctools.loopmon"), reason="the loop monitor has not landed")
    async def test_blocking_handler_is_a_slow_callback_at_its_line(self, recorder: Recorder) -> None:
        """The blocking ``/search`` shows as a slow callback whose culprit is the handler's sleep line."""
        snapshot = await _load_buggy_server(recorder)
        stalls = _slow_callbacks(snapshot)
        assert stalls, "no slow callback recorded"
        culprits = [s["culprit"] for s in stalls if s.get("culprit")]
        assert any(c["filename"] == APP_FILE and "BUG(blocking)" in c["line"] for c in culprits), culprits

    @pytest.mark.asyncio
    @pytest.mark.skipif(not _have("conctools.aio"), reason="conctools.aio has not landed")
    async def test_lock_held_across_await_is_contention(self, recorder: Recorder) -> None:
        """The ``counter`` lock held across an await shows contention in the lock table."""
        snapshot = await _load_buggy_server(recorder)
        waits = [e for e in snapshot.events if e.kind == "lock_wait" and getattr(e, "lock_name", "") == "counter"]
        assert waits, "no contended acquisition of 'counter' recorded"
        table = json.dumps(snapshot.sections.get("locks"))
        assert "counter" in table

    @pytest.mark.asyncio
    @pytest.mark.skipif(not _have("conctools.locks"), reason="conctools.locks has not landed")
    async def test_inversion_is_a_lock_order_event(self, recorder: Recorder) -> None:
        """``/transfer`` vs ``/audit`` is reported as a lock-order inversion of accounts and ledger."""
        snapshot = await _load_buggy_server(recorder)
        inversions = [e for e in snapshot.events if e.kind == "lock_order"]
        assert inversions, "no LockOrderEvent recorded"
        names = {n for e in inversions for n in getattr(e, "cycle", ())}
        assert {"accounts", "ledger"} <= names, names


class TestServeCommand:
    """``conctools serve`` as a process."""

    def test_bad_bug_name_is_one_line(self) -> None:
        """An unknown ``--bugs`` name is a one-line error, exit 2."""
        proc = subprocess.run(
            [sys.executable, "-m", "conctools", "serve", "--bugs", "nope", "--no-console"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and "nope" in proc.stderr
