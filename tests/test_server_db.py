"""The sample server's database: the orders endpoints on SQLite and PostgreSQL, and its three
database bugs (blocking-db, pool-hog, n-plus-one) found by conctools with the right lines, under
concurrent requests in-process and under real Locust load; nothing found with the bugs off."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from _postgres import PostgresServer, PostgresUnavailable
from aiohttp.test_utils import TestClient, TestServer

from conctools import pools
from conctools.events import SlowCallbackEvent
from conctools.recorder import Recorder, Snapshot
from conctools.reporting import load_json
from conctools.reporting.pools_text import n_plus_one_lines, pool_findings
from conctools.server import ServerOptions, create_app
from conctools.server.instruments import InstrumentOptions

APP_FILE = Path(__file__).resolve().parent.parent / "conctools" / "server" / "app.py"
DB_BUGS = frozenset({"blocking-db", "pool-hog", "n-plus-one"})
ORDER = {"customer": "customer-01", "items": [{"sku": "sku-03", "qty": 2}, {"sku": "sku-11", "qty": 1}]}


def app_line(marker: str) -> int:
    """The line of the sample app holding ``marker`` (exactly one)."""
    hits = [n for n, text in enumerate(APP_FILE.read_text().splitlines(), 1) if marker in text]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def acquire_line(bug_line: int) -> int:
    """The ``async with db.connection()`` line that the pool-hog line sits in."""
    lines = APP_FILE.read_text().splitlines()
    for n in range(bug_line - 1, 0, -1):
        if "async with db.connection() as conn:" in lines[n - 1]:
            return n
    raise AssertionError("no `async with db.connection()` above the pool-hog line")


class Findings:
    """What conctools found about the database in one snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.section = snapshot.sections.get("pools")
        self.stalls = [
            e
            for e in snapshot.of_kind(SlowCallbackEvent)
            if e.culprit is not None and e.culprit.filename == str(APP_FILE)
        ]
        self.pool_lines = [line for line in pool_findings(self.section) if line.startswith("pool 'db' ")]
        self.n_plus_one = [line for line in n_plus_one_lines(self.section) if "from pool 'db'" in line]

    def db_stalls(self) -> list[int]:
        report = app_line("BUG(blocking-db)")
        return [e.culprit.lineno for e in self.stalls if e.culprit is not None and e.culprit.lineno == report]

    def assert_bugs_found(self) -> None:
        """Each database bug is reported at its line; pool-hog with its holders and their await."""
        assert self.db_stalls(), f"no stall at the blocking-db line: {[e.culprit for e in self.stalls]}"
        hog = app_line("BUG(pool-hog)")
        assert self.pool_lines, f"pool 'db' not reported as exhausted: {self.section}"
        # The first (largest) group of holders: tasks awaiting the payment call, taken at the `async with`.
        assert re.search(
            rf"holders seen while it was exhausted: \d+% tasks awaiting `authorize_payment\(\)` at app.py:{hog} "
            rf"\(acquired at app.py:{acquire_line(hog)}\)",
            self.pool_lines[0],
        ), self.pool_lines[0]
        loop = app_line("BUG(n-plus-one)")
        assert any(f"at app.py:{loop} in list_orders" in line for line in self.n_plus_one), self.n_plus_one

    def assert_nothing_found(self) -> None:
        """No stall in the app's database lines, no exhausted pool, no N+1 run."""
        assert not self.db_stalls() and not self.pool_lines and not self.n_plus_one, (
            [e.culprit for e in self.stalls],
            self.pool_lines,
            self.n_plus_one,
        )


# -- in-process, concurrent requests ---------------------------------------------------------


async def _client(options: ServerOptions) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(options), host="127.0.0.1"))
    await client.start_server()
    return client


def _options(bugs: frozenset[str] = frozenset(), **kwargs: Any) -> ServerOptions:
    return ServerOptions(
        bugs=bugs,
        cpu_workers=1,
        instruments=InstrumentOptions(loop_threshold_s=0.05, deadlock_timeout_s=30.0),
        **kwargs,
    )


async def _shop(client: TestClient[Any, Any], users: int, rounds: int = 3) -> None:
    """``users`` clients, each: record an order, list orders, and (two of them) read the report."""

    async def user(i: int) -> None:
        for _ in range(rounds):
            r = await client.post("/orders", json=ORDER)
            assert r.status == 200, await r.text()
            r = await client.get("/orders?limit=20")
            assert len((await r.json())["orders"]) == 20
        if i < 2:
            r = await client.get("/orders/report")
            assert len((await r.json())["top_skus"]) == 10

    await asyncio.gather(*(user(i) for i in range(users)))


@pytest_asyncio.fixture
async def client(recorder: Recorder, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """The instrumented server without bugs, its SQLite file in ``tmp_path``."""
    c = await _client(_options(db_dir=tmp_path))
    try:
        yield c
    finally:
        await c.close()


class TestOrdersEndpoints:
    """The orders endpoints answer correctly on SQLite."""

    @pytest.mark.asyncio
    async def test_create_list_report(self, client: TestClient[Any, Any], tmp_path: Path) -> None:
        """An order is recorded, listed first with its lines, and the report answers."""
        r = await client.post("/orders", json=ORDER)
        created = await r.json()
        assert r.status == 200 and created["status"] == "paid" and created["total_cents"] > 0
        latest = (await (await client.get("/orders?limit=5")).json())["orders"]
        assert latest[0]["id"] == created["order_id"] and latest[0]["status"] == "paid"
        assert [i["sku"] for i in latest[0]["items"]] == ["sku-03", "sku-11"]
        report = (await (await client.get("/orders/report")).json())["top_skus"]
        assert len(report) == 10 and all(row["pairs"] > 0 for row in report)
        assert (tmp_path / "orders.sqlite3").exists()
        index = await (await client.get("/")).json()
        assert index["database"].startswith("sqlite ") and "POST /orders" in index["endpoints"]

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "body",
        [b"not json", b'{"customer": "", "items": []}', b'{"customer": "a", "items": [{"sku": "x", "qty": 0}]}'],
    )
    async def test_bad_order_is_400(self, client: TestClient[Any, Any], body: bytes) -> None:
        """A malformed order is refused with 400 and a one-line reason."""
        r = await client.post("/orders", data=body)
        assert r.status == 400 and (await r.text()).count("\n") == 1

    @pytest.mark.asyncio
    async def test_bugs_per_request_keep_answers(self, client: TestClient[Any, Any]) -> None:
        """``?bug=1`` runs each database bug on a server without bugs; the answers stay the same."""
        fixed = await (await client.get("/orders?limit=5")).json()
        buggy = await (await client.get("/orders?limit=5&bug=1")).json()
        assert buggy == fixed
        assert (await client.post("/orders?bug=1", json=ORDER)).status == 200
        fixed_report = await (await client.get("/orders/report")).json()
        assert await (await client.get("/orders/report?bug=1")).json() == fixed_report


class TestDatabaseBugsInProcess:
    """Each database bug under concurrent requests, found with the right line."""

    @pytest.mark.asyncio
    async def test_each_bug_found_with_its_line(self, recorder: Recorder, tmp_path: Path) -> None:
        """blocking-db: a stall at its line; pool-hog: holders awaiting the payment call; n-plus-one: the loop."""
        c = await _client(_options(DB_BUGS, db_dir=tmp_path))
        try:
            await _shop(c, users=12)
        finally:
            await c.close()
        Findings(recorder.snapshot()).assert_bugs_found()

    @pytest.mark.asyncio
    async def test_nothing_found_with_the_bugs_off(self, recorder: Recorder, tmp_path: Path) -> None:
        """The fixed code under as many clients as connections: no stall, no dry pool, no N+1."""
        c = await _client(_options(db_dir=tmp_path))
        try:
            await _shop(c, users=4)
        finally:
            await c.close()
        findings = Findings(recorder.snapshot())
        findings.assert_nothing_found()
        rows = findings.section["pools"] if findings.section else []
        assert not any(p["pool"] == "db" and p["waits"] for p in rows), rows  # it never even ran dry


# -- under real Locust load -------------------------------------------------------------------


def _serve_under_locust(out: Path, bugs: str | None, users: int, duration_s: float) -> Snapshot:
    """``conctools serve`` as a child process, loaded by Locust's OrdersUser; returns its report."""
    from conctools.loadtest import LoadTestOptions, run_loadtest

    cmd = [sys.executable, "-m", "conctools", "serve", "--port", "0", "--no-console", "--no-report", "--out", str(out)]
    cmd += ["--loop-threshold", "0.05"]  # the blocking query takes ~0.3 s here: a faster machine still stalls
    cmd += ["--bugs", bugs] if bugs else []
    out.mkdir(parents=True, exist_ok=True)
    with (out / "server.log").open("w") as log:
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            assert "listening on " in line, (out / "server.log").read_text()
            url = line.split("listening on ", 1)[1].split()[0]
            result = run_loadtest(
                LoadTestOptions(host=url, users=users, duration_s=duration_s, out_dir=out, user_classes=("OrdersUser",))
            )
            assert result.summary is not None and result.summary.requests > 0, result.output[-2000:]
            assert result.summary.failures == 0, (out / "locust_failures.csv").read_text()
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return load_json(out / "report.json")


@pytest.mark.load
class TestUnderLocust:
    """The server with SQLite under real Locust load (a few seconds each)."""

    def test_database_bugs_found(self, tmp_path: Path) -> None:
        """Ten order clients for 8 s: each database bug is found with its line and holders."""
        snapshot = _serve_under_locust(tmp_path / "buggy", "blocking-db,pool-hog,n-plus-one", users=10, duration_s=8)
        Findings(snapshot).assert_bugs_found()
        assert (tmp_path / "buggy" / "orders.sqlite3").exists()

    def test_nothing_found_with_the_bugs_off(self, tmp_path: Path) -> None:
        """Four order clients (one per connection, at most) for 6 s: no database finding."""
        snapshot = _serve_under_locust(tmp_path / "fixed", None, users=4, duration_s=6)
        Findings(snapshot).assert_nothing_found()


# -- PostgreSQL through asyncpg -------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server of our own (Debian's package); the tests skip with the reason when none starts."""
    pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install 'conctools[server]'")
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        yield server.dsn
    finally:
        server.stop()


class TestPostgres:
    """``--db postgresql://``: the same endpoints and the same pool blame through asyncpg's pool."""

    @pytest.mark.asyncio
    async def test_endpoints_on_postgresql(self, recorder: Recorder, postgres: str) -> None:
        """Orders are recorded, listed and reported from PostgreSQL."""
        c = await _client(_options(db=postgres))
        try:
            index = await (await c.get("/")).json()
            assert index["database"].startswith("postgresql ")
            created = await (await c.post("/orders", json=ORDER)).json()
            latest = (await (await c.get("/orders?limit=3")).json())["orders"]
            assert latest[0]["id"] == created["order_id"] and len(latest[0]["items"]) == 2
            assert len((await (await c.get("/orders/report")).json())["top_skus"]) == 10
            assert len((await (await c.get("/orders/report?bug=1")).json())["top_skus"]) == 10
        finally:
            await c.close()

    @pytest.mark.asyncio
    async def test_pool_hog_on_asyncpg_pool(self, recorder: Recorder, postgres: str) -> None:
        """pool-hog with asyncpg: the pool is named, its kind is asyncpg's, and the holders are blamed."""
        c = await _client(_options(frozenset({"pool-hog", "n-plus-one"}), db=postgres))
        try:
            await _shop(c, users=12, rounds=2)
        finally:
            await c.close()
        findings = Findings(recorder.snapshot())
        row = next(p for p in findings.section["pools"] if p["pool"] == "db")
        assert row["kind"] == "asyncpg.Pool" and row["items"] == "connections"
        hog = app_line("BUG(pool-hog)")
        assert findings.pool_lines and (
            f"tasks awaiting `authorize_payment()` at app.py:{hog} (acquired at app.py:{acquire_line(hog)})"
            in findings.pool_lines[0]
        ), findings.pool_lines
        loop = app_line("BUG(n-plus-one)")
        assert any(f"at app.py:{loop} in list_orders" in line for line in findings.n_plus_one), findings.n_plus_one

    @pytest.mark.asyncio
    async def test_asyncpg_pool_in_user_code(self, recorder: Recorder, postgres: str) -> None:
        """A program's own asyncpg pool: holders awaiting a slow call inside ``async with pool.acquire()``."""
        import asyncpg

        here = Path(__file__).name

        async def fetch_upstream() -> None:
            await asyncio.sleep(0.3)

        async def handler(pool: Any) -> None:
            async with pool.acquire() as conn:  # ACQUIRE-PG
                await conn.fetchval("SELECT 1")
                await fetch_upstream()  # HOLD-PG

        with pools.track_pools(threshold_s=0.1):
            pool = await asyncpg.create_pool(postgres, min_size=2, max_size=2)  # CREATE-PG
            try:
                await asyncio.gather(*(handler(pool) for _ in range(6)))
            finally:
                await pool.close()
        me = Path(__file__)
        acquire, hold = _line(me, "# ACQUIRE" + "-PG"), _line(me, "# HOLD" + "-PG")
        lines = pool_findings(recorder.snapshot().sections["pools"])
        assert len(lines) == 1 and lines[0].startswith(f"pool '{here}:{_line(me, '# CREATE' + '-PG')}' "), lines
        # The largest group: tasks awaiting the slow call inside `async with pool.acquire()` (a holder seen
        # while asyncpg resets its connection on release is awaiting `__aexit__()` at the acquire line).
        assert re.search(
            rf"2 of 2 connections held; holders seen while it was exhausted: \d+% tasks awaiting `fetch_upstream\(\)` "
            rf"at {here}:{hold} \(acquired at {here}:{acquire}\)",
            lines[0],
        ), lines


def _line(path: Path, marker: str) -> int:
    hits = [n for n, text in enumerate(path.read_text().splitlines(), 1) if marker in text]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


class TestServeDbFlag:
    """``conctools serve --db``: bad input is one line."""

    def test_bad_db_url_is_one_line(self) -> None:
        """An unsupported scheme is a one-line error, exit 2, before anything starts."""
        proc = subprocess.run(
            [sys.executable, "-m", "conctools", "serve", "--db", "mysql://x/y", "--no-console"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "mysql" in proc.stderr
