"""The sample aiohttp service: the patterns of concurrent Python, a database, and six seeded bugs.

Endpoints (every handler is a ``@traced`` span named ``"METHOD /path"``):

=====================  ===================================================================
``GET /``              the endpoint list and the bugs switched on
``GET /health``        a constant answer (the cheapest request)
``GET /io``            pure async I/O: awaits a simulated upstream (``?delay_ms=10``)
``GET /cpu``           CPU work offloaded to a process pool (``?n=20000``)
``GET /blocking``      blocking work offloaded with ``asyncio.to_thread`` (``?ms=5``)
``POST /counter``      shared state behind an asyncio lock (``counter``)
``GET /downstream``    a downstream limited by an asyncio semaphore (``downstream``, 4 slots)
``POST /jobs``         a producer/consumer queue served by consumer tasks
``GET /cache``         a thread-pool section with threading locks (``cache``, ``cache-stats``)
``POST /transfer``     thread pool: takes ``accounts`` then ``ledger``
``GET /audit``         thread pool: takes both locks too (order: see the bugs)
``GET /search``        a search that must not block the loop (see the bugs)
``POST /orders``       record an order (JSON ``{"customer": ..., "items": [{"sku": ..., "qty": ...}]}``):
                       the database, the payment service (``authorize_payment``), the database
``GET /orders``        the latest orders with their lines (``?limit=20``)
``GET /orders/report`` the SKUs most often found in two orders (a heavy query, ~0.3 s)
``GET /conctools``     the live conctools report (snapshot JSON; ``?format=text`` for text)
``GET /conctools/profile``  a yappi profile of the next ``?seconds=2`` (``?clock=wall|cpu``)
``GET /metrics``       conctools' metrics in Prometheus' text format (``conctools[prometheus]``)
=====================  ===================================================================

The seeded bugs (``--bugs`` switches all on, ``--bugs blocking,inversion`` some of them;
``?bug=1`` / ``?bug=0`` forces one request either way):

``blocking``
    ``GET /search`` calls a synchronous "index" on the event loop (``time.sleep``): every
    other request stalls meanwhile. conctools shows it as a slow callback whose culprit is
    the sleeping line of :meth:`SampleService.search`. Fixed: ``await asyncio.to_thread(...)``.
``contention``
    ``POST /counter`` keeps the ``counter`` lock across the awaited write to its store, so
    requests queue behind each other. conctools shows the contention in the lock table
    (waits, holders, the waiting site). Fixed: update under the lock, write after it.
``inversion``
    ``GET /audit`` takes ``ledger`` then ``accounts``, the reverse of ``POST /transfer``: a
    lock-order inversion (ABBA), reported as a potential deadlock even though this server
    never deadlocks: both sections run behind a gate invisible to conctools (a raw
    ``_thread`` lock), so the demo stays up. Without the gate, two pool threads can deadlock.
``blocking-db``
    ``GET /orders/report`` runs its heavy query through the synchronous ``sqlite3`` connection,
    on the event loop: a slow callback whose culprit is that line. Fixed: run it in the
    database's threads (``await conn.fetch_all(...)``, or an async driver).
``pool-hog``
    ``POST /orders`` keeps its connection while it awaits the payment service, so the pool (5
    connections) runs dry and every database request waits. conctools' pool report names the
    holders: tasks awaiting ``authorize_payment()`` at that line, acquired at the ``async with``
    above it. Fixed: give the connection back before the slow call.
``n-plus-one``
    ``GET /orders`` fetches the lines of each order with one query per order, in a loop: the
    pool is taken 21 times in a row from one line by one request (conctools reports the run
    and its lines). Fixed: one query for the lines of all of them.

The database is SQLite by default (a file in the report folder, or a temporary one), 5
connections in an ``asyncio.Queue``; ``--db postgresql://...`` uses asyncpg's pool instead.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import concurrent.futures
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from conctools.server.db import Connection, Database, open_database
from conctools.server.instruments import (
    InstrumentOptions,
    Instruments,
    aio_lock,
    aio_semaphore,
    lock_order_checking,
    name_pool,
    thread_lock,
)
from conctools.server.work import count_primes, slow_read

__all__ = ["BUGS", "SampleService", "ServerOptions", "create_app", "parse_bugs", "service_of"]

BUGS = ("blocking", "contention", "inversion", "blocking-db", "pool-hog", "n-plus-one")
SEARCH_BLOCK_S = 0.15  # how long the blocking bug stalls the loop: over the 0.1 s default threshold
STORE_WRITE_S = 0.025  # the counter's awaited write (a slow store makes the contention visible)
MAX_PROFILE_S = 30.0
PAYMENT_S = 0.25  # the payment service's answer time: what pool-hog keeps a connection through
ORDERS_SQL = "SELECT id, customer, status FROM orders ORDER BY id DESC LIMIT ?"
ITEMS_SQL = "SELECT order_id, sku, qty, price_cents FROM order_items WHERE order_id = ? ORDER BY id"
ITEMS_OF_LATEST_SQL = (
    "SELECT order_id, sku, qty, price_cents FROM order_items"
    " WHERE order_id IN (SELECT id FROM orders ORDER BY id DESC LIMIT ?) ORDER BY id"
)
NEW_ORDER_SQL = "INSERT INTO orders(customer, created_at, status) VALUES (?, ?, 'pending') RETURNING id"
NEW_ITEM_SQL = "INSERT INTO order_items(order_id, sku, qty, price_cents) VALUES (?, ?, ?, ?)"
PAID_SQL = "UPDATE orders SET status = 'paid' WHERE id = ?"
# Which SKUs turn up in two orders, over the latest 10000 order lines: a self-join of ~0.3 s in
# SQLite, on purpose (the blocking-db bug runs it on the event loop).
REPORT_SQL = (
    "WITH recent AS (SELECT order_id, sku FROM order_items ORDER BY id DESC LIMIT 10000)"
    " SELECT a.sku, COUNT(*) AS pairs FROM recent a JOIN recent b ON a.sku = b.sku AND a.order_id < b.order_id"
    " GROUP BY a.sku ORDER BY pairs DESC, a.sku LIMIT 10"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_bugs(text: str | None) -> frozenset[str]:
    """``"all"`` / ``""`` -> every bug; ``"blocking,inversion"`` -> those; ``None`` -> none.

    Raises ``ValueError`` naming the unknown bug.
    """
    if text is None:
        return frozenset()
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or names == ["all"]:
        return frozenset(BUGS)
    unknown = [n for n in names if n not in BUGS]
    if unknown:
        raise ValueError(f"unknown bug {unknown[0]!r} (choose from {', '.join(BUGS)}, or all)")
    return frozenset(names)


@dataclass(slots=True, kw_only=True)
class ServerOptions:
    """How the sample server runs: its bugs, its instruments and its pool sizes."""

    bugs: frozenset[str] = frozenset()
    instrument: bool = True
    instruments: InstrumentOptions = field(default_factory=InstrumentOptions)
    cpu_workers: int = 2
    thread_workers: int = 4
    consumers: int = 3
    downstream_limit: int = 4
    prewarm: bool = False  # start the process pool's workers at startup (``conctools serve`` does)
    db: str | None = None  # postgresql://..., sqlite:///PATH or a path; None: SQLite in db_dir
    db_dir: Path | None = None  # where the default SQLite file goes (None: a temporary folder)
    db_pool_size: int = 5


def _int_arg(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number, got {raw!r}\n") from None
    if not low <= value <= high:
        raise web.HTTPBadRequest(text=f"{name} must be between {low} and {high}, got {value}\n")
    return value


class SampleService:
    """The state the handlers share: locks, pools, the job queue, and the bug switches."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        traced = options.instrument
        self.counter_lock = aio_lock("counter", traced)
        self.downstream = aio_semaphore(options.downstream_limit, "downstream", traced)
        self.cache_lock = thread_lock("cache", traced)
        self.stats_lock = thread_lock("cache-stats", traced)
        # Lock-order checking records where every acquisition happens (a few µs each), so the
        # server pays it only for the locks that are ever nested: the bank's.
        with lock_order_checking(traced):
            self.accounts_lock = thread_lock("accounts", traced)
            self.ledger_lock = thread_lock("ledger", traced)
        # Keeps the inversion a *potential* deadlock: conctools does not see this raw lock.
        self._inversion_gate = _thread.allocate_lock()
        self.count = 0
        self.cache: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        self.balance = 1_000_000
        self.ledger: collections.deque[int] = collections.deque(maxlen=1000)
        self.jobs: asyncio.Queue[tuple[bytes, asyncio.Future[str]]] | None = None
        self._consumers: list[asyncio.Task[None]] = []
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=options.thread_workers, thread_name_prefix="cache-pool"
        )
        self._procs: concurrent.futures.ProcessPoolExecutor | None = None
        self._procs_guard = _thread.allocate_lock()  # two first /cpu requests must not make two pools
        self._instruments = Instruments(options.instruments) if options.instrument else None
        self.instruments_running: list[str] = []
        self._db_tmp: str | None = None
        self.db: Database | None = None

    # ---- lifecycle ----
    async def startup(self, app: web.Application) -> None:
        """Start the consumers and conctools' instruments (in the loop's thread)."""
        self.jobs = asyncio.Queue(maxsize=100)
        self._consumers = [
            asyncio.create_task(self._consume(), name=f"consumer-{i}") for i in range(self.options.consumers)
        ]
        if self._instruments is not None:
            self.instruments_running = self._instruments.start()
        folder = self.options.db_dir
        if folder is None and self.options.db is None:
            self._db_tmp = tempfile.mkdtemp(prefix="conctools-db-")
            folder = Path(self._db_tmp)
        self.db = open_database(self.options.db, folder or Path("."), self.options.db_pool_size)
        await self.db.start()
        name_pool(self.db.pool, "db", self.options.instrument, items="connections")
        if self.options.prewarm:
            # Start the process pool's workers before serving, so that spawning them (seconds) does
            # not land on the first /cpu requests; the first submit spawns synchronously: off the loop.
            first = await asyncio.to_thread(self._process_pool().submit, count_primes, 2)
            await asyncio.wrap_future(first)

    async def cleanup(self, app: web.Application) -> None:
        """Stop consumers, pools and instruments."""
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        if self.db is not None:
            await self.db.close()
        if self._db_tmp is not None:
            await asyncio.to_thread(shutil.rmtree, self._db_tmp, True)
        # Joining pool threads and worker processes blocks: do it off the loop.
        await asyncio.to_thread(self._threads.shutdown, wait=True, cancel_futures=True)
        if self._procs is not None:
            await asyncio.to_thread(self._procs.shutdown, wait=True, cancel_futures=True)
        if self._instruments is not None:
            self._instruments.stop()

    def bug(self, request: web.Request, name: str) -> bool:
        """Is bug ``name`` on for this request (``?bug=1|0`` overrides the server's switch)?"""
        forced = request.query.get("bug")
        if forced is not None:
            return forced not in ("0", "false", "no", "off")
        return name in self.options.bugs

    # ---- endpoints ----
    async def index(self, request: web.Request) -> web.Response:
        """The endpoint list and the bugs switched on."""
        routes = sorted({f"{r.method} {r.resource.canonical}" for r in request.app.router.routes() if r.resource})
        return web.json_response(
            {
                "service": "conctools sample server",
                "endpoints": routes,
                "bugs": sorted(self.options.bugs),
                "database": self.db.describe() if self.db is not None else None,
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        """A constant answer: the cheapest request there is."""
        return web.Response(text="ok")

    async def io(self, request: web.Request) -> web.Response:
        """Pure async I/O: wait for a simulated upstream without holding anything."""
        delay_ms = _int_arg(request, "delay_ms", 10, 0, 1000)
        await asyncio.sleep(delay_ms / 1000)
        return web.json_response({"waited_ms": delay_ms})

    async def cpu(self, request: web.Request) -> web.Response:
        """CPU work in the process pool: the loop stays free while a worker process computes."""
        n = _int_arg(request, "n", 20_000, 2, 200_000)
        if self._procs is None:  # the first submit spawns the workers: keep that off the loop
            future = await asyncio.to_thread(self._process_pool().submit, count_primes, n)
            primes = await asyncio.wrap_future(future)
        else:
            primes = await asyncio.get_running_loop().run_in_executor(self._procs, count_primes, n)
        return web.json_response({"n": n, "primes": primes})

    async def blocking(self, request: web.Request) -> web.Response:
        """Blocking work in a thread (``asyncio.to_thread``): the right way to call sync code."""
        ms = _int_arg(request, "ms", 5, 0, 1000)
        digest = await asyncio.to_thread(slow_read, ms / 1000)
        return web.json_response({"slept_ms": ms, "digest": digest})

    async def counter(self, request: web.Request) -> web.Response:
        """Shared state behind an asyncio lock, then an awaited write to a store."""
        if self.bug(request, "contention"):
            async with self.counter_lock:
                self.count += 1
                value = self.count
                await self._store_write(value)  # BUG(contention): the lock is held across this await
        else:
            async with self.counter_lock:
                self.count += 1
                value = self.count
            await self._store_write(value)
        return web.json_response({"count": value})

    async def downstream_call(self, request: web.Request) -> web.Response:
        """A downstream that takes at most ``downstream_limit`` calls at once."""
        async with self.downstream:
            await asyncio.sleep(0.01)
        return web.json_response({"downstream": "ok"})

    async def submit_job(self, request: web.Request) -> web.Response:
        """Producer side of the queue: enqueue the body, await the consumer's answer."""
        assert self.jobs is not None
        payload = await request.read()
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await self.jobs.put((payload[:4096], done))
        result = await asyncio.wait_for(done, timeout=10)
        return web.json_response({"result": result, "queued": self.jobs.qsize()})

    async def cache_get(self, request: web.Request) -> web.Response:
        """Read-through cache in the thread pool, guarded by threading locks."""
        key = request.query.get("key", "home")[:64]
        value = await asyncio.get_running_loop().run_in_executor(self._threads, self._cached, key)
        return web.json_response({"key": key, "value": value})

    async def transfer(self, request: web.Request) -> web.Response:
        """Move money: ``accounts`` then ``ledger``, in the thread pool."""
        amount = _int_arg(request, "amount", 1, 1, 1000)
        balance = await asyncio.get_running_loop().run_in_executor(self._threads, self._transfer, amount)
        return web.json_response({"balance": balance})

    async def audit(self, request: web.Request) -> web.Response:
        """Check the books: both locks, in the thread pool (in the wrong order with the bug)."""
        inverted = self.bug(request, "inversion")
        total = await asyncio.get_running_loop().run_in_executor(self._threads, self._audit, inverted)
        return web.json_response({"ledger_total": total})

    async def search(self, request: web.Request) -> web.Response:
        """Search a (simulated) synchronous index."""
        query = request.query.get("q", "")[:64]
        if self.bug(request, "blocking"):
            time.sleep(SEARCH_BLOCK_S)  # BUG(blocking): a synchronous call on the event loop stalls everyone
        else:
            await asyncio.to_thread(time.sleep, SEARCH_BLOCK_S)
        return web.json_response({"q": query, "hits": len(query) % 7})

    async def create_order(self, request: web.Request) -> web.Response:
        """Record an order: write it, have the payment service authorize it, mark it paid."""
        customer, lines = await _order_body(request)
        total = sum(qty * price for _, qty, price in lines)
        db = self._database()
        if self.bug(request, "pool-hog"):
            async with db.connection() as conn:
                order_id = await _insert_order(conn, customer, lines)
                await self.authorize_payment(order_id, total)  # BUG(pool-hog): holds the connection across this await
                await conn.fetch_all(PAID_SQL, order_id)
        else:
            async with db.connection() as conn:
                order_id = await _insert_order(conn, customer, lines)
            await self.authorize_payment(order_id, total)
            async with db.connection() as conn:
                await conn.fetch_all(PAID_SQL, order_id)
        return web.json_response({"order_id": order_id, "total_cents": total, "status": "paid"})

    async def list_orders(self, request: web.Request) -> web.Response:
        """The latest orders, each with its lines."""
        limit = _int_arg(request, "limit", 20, 1, 100)
        db = self._database()
        orders = await db.fetch_all(ORDERS_SQL, limit)
        lines: list[tuple[object, ...]] = []
        if self.bug(request, "n-plus-one"):
            for order_id, _customer, _status in orders:
                lines += await db.fetch_all(ITEMS_SQL, order_id)  # BUG(n-plus-one): one query per order
        else:
            lines = await db.fetch_all(ITEMS_OF_LATEST_SQL, limit)
        by_order: dict[object, list[dict[str, object]]] = {order_id: [] for order_id, _, _ in orders}
        for order_id, sku, qty, price in lines:
            if order_id in by_order:
                by_order[order_id].append({"sku": sku, "qty": qty, "price_cents": price})
        return web.json_response(
            {"orders": [{"id": o, "customer": c, "status": s, "items": by_order[o]} for o, c, s in orders]}
        )

    async def orders_report(self, request: web.Request) -> web.Response:
        """The SKUs most often found in two different orders (a heavy query)."""
        db = self._database()
        if self.bug(request, "blocking-db"):
            async with db.connection() as conn:
                rows = conn.raw.execute(REPORT_SQL).fetchall()  # BUG(blocking-db): a synchronous query on the loop
        else:
            rows = await db.fetch_all(REPORT_SQL)
        return web.json_response({"top_skus": [{"sku": sku, "pairs": pairs} for sku, pairs in rows]})

    async def authorize_payment(self, order_id: int, total_cents: int) -> str:
        """The payment service (simulated): it answers after ``PAYMENT_S``."""
        await asyncio.sleep(PAYMENT_S)
        return f"auth-{order_id}-{total_cents}"

    async def conctools_report(self, request: web.Request) -> web.Response:
        """The live conctools report: the recorder's snapshot, built off the loop."""
        from conctools.recorder import get_recorder
        from conctools.reporting import render_json, render_text

        recorder = get_recorder()
        snapshot = await asyncio.to_thread(recorder.snapshot)
        if request.query.get("format") == "text":
            return web.Response(text=await asyncio.to_thread(render_text, snapshot))
        body = await asyncio.to_thread(render_json, snapshot)
        return web.Response(text=body, content_type="application/json")

    async def conctools_profile(self, request: web.Request) -> web.Response:
        """Profile the whole process with yappi for ``?seconds`` and answer the top functions."""
        raw = request.query.get("seconds", "2")
        try:
            seconds = float(raw)
        except ValueError:
            raise web.HTTPBadRequest(text=f"seconds must be a number, got {raw!r}\n") from None
        if not 0 < seconds <= MAX_PROFILE_S:
            raise web.HTTPBadRequest(text=f"seconds must be in (0, {MAX_PROFILE_S:g}], got {raw}\n")
        clock = request.query.get("clock", "wall")
        if clock not in ("wall", "cpu"):
            raise web.HTTPBadRequest(text=f"clock must be wall or cpu, got {clock!r}\n")
        try:
            from conctools.profiling import Profile, ProfileError
        except ImportError:
            raise web.HTTPNotImplemented(text="conctools.profiling is not available\n") from None
        session = Profile(clock, section=False)  # type: ignore[arg-type]
        try:
            session.start()
        except ProfileError as exc:
            raise web.HTTPConflict(text=f"{exc}\n") from None
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(session.stop)
        return web.Response(text=session.top(25))

    # ---- the work behind the endpoints ----
    def _process_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._procs_guard:
            if self._procs is None:
                # spawn: forking a process that runs threads (pools, conctools' watchdogs) is unsafe.
                self._procs = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self.options.cpu_workers, mp_context=multiprocessing.get_context("spawn")
                )
            return self._procs

    def _database(self) -> Database:
        if self.db is None:
            raise web.HTTPServiceUnavailable(text="the database is not open\n")
        return self.db

    async def _store_write(self, value: int) -> None:
        await asyncio.sleep(STORE_WRITE_S)

    async def _consume(self) -> None:
        assert self.jobs is not None
        while True:
            payload, done = await self.jobs.get()
            try:
                await asyncio.sleep(0.002)
                if not done.done():
                    done.set_result(payload[::-1].decode("utf-8", "replace")[:64])
            finally:
                self.jobs.task_done()

    def _cached(self, key: str) -> str:
        with self.cache_lock:
            value = self.cache.get(key)
        hit = value is not None
        if value is None:
            value = slow_read(0.001, key.encode())
            with self.cache_lock:
                self.cache[key] = value
                while len(self.cache) > 1000:
                    self.cache.popitem(last=False)
        with self.stats_lock:
            if hit:
                self.cache_hits += 1
            else:
                self.cache_misses += 1
        return value

    def _transfer(self, amount: int) -> int:
        with self._inversion_gate, self.accounts_lock:
            self.balance -= amount
            with self.ledger_lock:
                self.ledger.append(amount)
            return self.balance

    def _audit(self, inverted: bool) -> int:
        with self._inversion_gate:
            if inverted:
                with self.ledger_lock, self.accounts_lock:  # BUG(inversion): ledger then accounts, /transfer's reverse
                    return sum(self.ledger)
            with self.accounts_lock, self.ledger_lock:
                return sum(self.ledger)


def _price_cents(sku: str) -> int:
    """The catalogue: a fixed price per SKU."""
    return 100 + 37 * (sum(sku.encode()) % 100)


async def _order_body(request: web.Request) -> tuple[str, list[tuple[str, int, int]]]:
    """``(customer, [(sku, qty, price_cents), ...])`` from the JSON body; 400 when it is not one."""
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be JSON\n") from None
    customer = body.get("customer") if isinstance(body, dict) else None
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(customer, str) or not 0 < len(customer) <= 64:
        raise web.HTTPBadRequest(text="customer must be a name of 1 to 64 characters\n")
    if not isinstance(items, list) or not 0 < len(items) <= 20:
        raise web.HTTPBadRequest(text="items must be a list of 1 to 20 lines\n")
    lines = []
    for item in items:
        sku = item.get("sku") if isinstance(item, dict) else None
        qty = item.get("qty") if isinstance(item, dict) else None
        if not isinstance(sku, str) or not 0 < len(sku) <= 32 or type(qty) is not int or not 0 < qty <= 100:
            raise web.HTTPBadRequest(text="each item needs a sku (1 to 32 characters) and a qty (1 to 100)\n")
        lines.append((sku, qty, _price_cents(sku)))
    return customer, lines


async def _insert_order(conn: Connection, customer: str, lines: list[tuple[str, int, int]]) -> int:
    order_id = int(await conn.fetch_value(NEW_ORDER_SQL, customer, time.time()))
    await conn.execute_many(NEW_ITEM_SQL, [(order_id, sku, qty, price) for sku, qty, price in lines])
    return order_id


SERVICE_KEY: web.AppKey[SampleService] = web.AppKey("conctools.service", SampleService)


def _wrap(handler: Handler, name: str, instrument: bool) -> Handler:
    if not instrument:
        return handler
    from conctools.tracing import traced

    wrapped: Handler = traced(name)(handler)
    return wrapped


def create_app(options: ServerOptions | None = None) -> web.Application:
    """Build the sample application (instrumented unless ``options.instrument`` is False)."""
    opts = options if options is not None else ServerOptions()
    service = SampleService(opts)
    app = web.Application()
    app[SERVICE_KEY] = service
    app.on_startup.append(service.startup)
    app.on_cleanup.append(service.cleanup)
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/", service.index),
        ("GET", "/health", service.health),
        ("GET", "/io", service.io),
        ("GET", "/cpu", service.cpu),
        ("GET", "/blocking", service.blocking),
        ("POST", "/counter", service.counter),
        ("GET", "/downstream", service.downstream_call),
        ("POST", "/jobs", service.submit_job),
        ("GET", "/cache", service.cache_get),
        ("POST", "/transfer", service.transfer),
        ("GET", "/audit", service.audit),
        ("GET", "/search", service.search),
        ("POST", "/orders", service.create_order),
        ("GET", "/orders", service.list_orders),
        ("GET", "/orders/report", service.orders_report),
        ("GET", "/conctools", service.conctools_report),
        ("GET", "/conctools/profile", service.conctools_profile),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _wrap(handler, f"{method} {path}", opts.instrument))
    from conctools.exporters.prometheus import add_metrics_route

    add_metrics_route(app)
    return app


def service_of(app: web.Application) -> SampleService:
    """The :class:`SampleService` behind an app made by :func:`create_app`."""
    return app[SERVICE_KEY]
