"""The sample server's database: SQLite behind a small connection pool, or PostgreSQL through asyncpg.

Both offer the handlers one small interface (:class:`Database`): ``async with db.connection()
as conn`` takes a connection from the pool and gives it back; ``conn.fetch_all(sql, *args)``
runs a query without blocking the event loop; ``db.fetch_all(...)`` is a one-query checkout.
SQL uses ``?`` placeholders (PostgreSQL's ``$1`` are substituted).

* :class:`SqliteDatabase` (the default): stdlib :mod:`sqlite3`, a file, ``size`` connections in
  an ``asyncio.Queue`` (the pool), each query run in a thread of a pool of the same size (the
  connection's holder owns it; SQLite itself runs without the GIL).
* :class:`PostgresDatabase` (``--db postgresql://...``): asyncpg's own pool.

``conn.raw`` is the synchronous door, there for the ``blocking-db`` bug: SQLite's
``sqlite3.Connection`` itself; for PostgreSQL a small synchronous client that runs the query on
a private loop in another thread and blocks until it is done (a sync facade over an async
driver, the same mistake).

No conctools imports here: the server names its pool through ``instruments``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

__all__ = ["Connection", "Database", "PostgresDatabase", "SqliteDatabase", "check_database_url", "open_database"]

SEED_ORDERS = 2000
SEED_ITEMS = 12000
SKUS = 50
Row = tuple[Any, ...]

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    customer TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS order_items (
    id INTEGER PRIMARY KEY,
    order_id INTEGER NOT NULL REFERENCES orders(id),
    sku TEXT NOT NULL,
    qty INTEGER NOT NULL,
    price_cents INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS order_items_order ON order_items(order_id);
"""

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id BIGSERIAL PRIMARY KEY,
    customer TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS order_items (
    id BIGSERIAL PRIMARY KEY,
    order_id BIGINT NOT NULL REFERENCES orders(id),
    sku TEXT NOT NULL,
    qty INTEGER NOT NULL,
    price_cents INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS order_items_order ON order_items(order_id);
"""


def _seed_rows() -> tuple[list[Row], list[Row]]:
    """A deterministic history: orders and their lines (fixed seed, so every run is alike)."""
    rnd = random.Random(19)
    orders = [(f"customer-{rnd.randrange(100):02d}", 1_700_000_000.0 + i * 60, "paid") for i in range(SEED_ORDERS)]
    items = [
        (
            rnd.randrange(1, SEED_ORDERS + 1),
            f"sku-{rnd.randrange(SKUS):02d}",
            rnd.randrange(1, 5),
            rnd.randrange(100, 5000),
        )
        for _ in range(SEED_ITEMS)
    ]
    return orders, items


class Connection:
    """One pooled connection, as the handlers use it."""

    async def fetch_all(self, sql: str, *args: Any) -> list[Row]:
        """Rows of a query, run without blocking the event loop."""
        raise NotImplementedError

    async def fetch_value(self, sql: str, *args: Any) -> Any:
        """The first column of the first row (``None`` when there is none)."""
        rows = await self.fetch_all(sql, *args)
        return rows[0][0] if rows else None

    async def execute_many(self, sql: str, rows: Sequence[Row]) -> None:
        """One statement for many rows."""
        raise NotImplementedError

    @property
    def raw(self) -> Any:
        """A synchronous connection: ``raw.execute(sql, args).fetchall()`` (blocks the caller)."""
        raise NotImplementedError


class Database:
    """A pool of connections to one database."""

    kind = "?"
    size = 0

    async def start(self) -> None:
        """Open the pool, create the schema, seed an empty database."""
        raise NotImplementedError

    async def close(self) -> None:
        """Close every connection."""
        raise NotImplementedError

    def connection(self) -> Any:
        """``async with db.connection() as conn``: a connection from the pool, given back after."""
        raise NotImplementedError

    @property
    def pool(self) -> Any:
        """The pool object itself (an ``asyncio.Queue`` of connections, or asyncpg's pool)."""
        raise NotImplementedError

    def describe(self) -> str:
        """``sqlite /path/orders.sqlite3 (4 connections)`` and the like."""
        raise NotImplementedError

    async def fetch_all(self, sql: str, *args: Any) -> list[Row]:
        """Take a connection, run one query, give the connection back."""
        async with self.connection() as conn:
            rows: list[Row] = await conn.fetch_all(sql, *args)
            return rows


# -- SQLite ------------------------------------------------------------------------------


class _SqliteConnection(Connection):
    def __init__(self, db: SqliteDatabase, conn: sqlite3.Connection) -> None:
        self._db = db
        self._conn = conn

    async def fetch_all(self, sql: str, *args: Any) -> list[Row]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db.executor, self._fetch, sql, args)

    def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Row]:
        return self._conn.execute(sql, args).fetchall()

    async def execute_many(self, sql: str, rows: Sequence[Row]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._db.executor, self._conn.executemany, sql, rows)

    @property
    def raw(self) -> sqlite3.Connection:
        return self._conn


class SqliteDatabase(Database):
    """``size`` connections to one SQLite file, handed out by an ``asyncio.Queue``."""

    kind = "sqlite"

    def __init__(self, path: Path, size: int = 4) -> None:
        self.path = path
        self.size = size
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=size, thread_name_prefix="db")
        self._conns: list[sqlite3.Connection] = []
        self._pool: asyncio.Queue[sqlite3.Connection] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Connecting, the schema and the seed touch the disk: all of it off the loop.
        self._conns = await loop.run_in_executor(self.executor, self._open_all)
        self._pool = asyncio.Queue()
        for conn in self._conns:
            self._pool.put_nowait(conn)

    def _open_all(self) -> list[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conns = []
        for _ in range(self.size):
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conns.append(conn)
        first = conns[0]
        first.executescript(_SQLITE_SCHEMA)
        if first.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 0:
            orders, items = _seed_rows()
            first.execute("BEGIN")
            first.executemany("INSERT INTO orders(customer, created_at, status) VALUES (?, ?, ?)", orders)
            first.executemany("INSERT INTO order_items(order_id, sku, qty, price_cents) VALUES (?, ?, ?, ?)", items)
            first.execute("COMMIT")
        return conns

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        conns, self._conns = self._conns, []

        def close_all() -> None:
            for conn in conns:
                conn.close()

        await loop.run_in_executor(self.executor, close_all)
        await loop.run_in_executor(None, lambda: self.executor.shutdown(wait=True))

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        assert self._pool is not None, "the database is not started"
        conn = await self._pool.get()
        try:
            yield _SqliteConnection(self, conn)
        finally:
            self._pool.put_nowait(conn)

    @property
    def pool(self) -> Any:
        return self._pool

    def describe(self) -> str:
        return f"sqlite {self.path} ({self.size} connections)"


# -- PostgreSQL --------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\?")


def _pg(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...``."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)


class _PgConnection(Connection):
    def __init__(self, db: PostgresDatabase, conn: Any) -> None:
        self._db = db
        self._conn = conn

    async def fetch_all(self, sql: str, *args: Any) -> list[Row]:
        return [tuple(r) for r in await self._conn.fetch(_pg(sql), *args)]

    async def execute_many(self, sql: str, rows: Sequence[Row]) -> None:
        await self._conn.executemany(_pg(sql), rows)

    @property
    def raw(self) -> _BlockingPg:
        return self._db.blocking()


class _BlockingResult:
    def __init__(self, rows: list[Row]) -> None:
        self._rows = rows

    def fetchall(self) -> list[Row]:
        return self._rows


class _BlockingPg:
    """A synchronous client: each call runs on a private loop thread and blocks until it is done."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="db-sync-client", daemon=True)
        self._thread.start()
        self._conn: Any = None

    def execute(self, sql: str, args: Sequence[Any] = ()) -> _BlockingResult:
        future = asyncio.run_coroutine_threadsafe(self._fetch(sql, tuple(args)), self._loop)
        return _BlockingResult(future.result(timeout=60))

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Row]:
        import asyncpg

        if self._conn is None:
            self._conn = await asyncpg.connect(self._dsn)
        return [tuple(r) for r in await self._conn.fetch(_pg(sql), *args)]

    def close(self) -> None:
        async def shut() -> None:
            if self._conn is not None:
                await self._conn.close()

        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()


class PostgresDatabase(Database):
    """asyncpg's pool of ``size`` connections."""

    kind = "postgresql"

    def __init__(self, dsn: str, size: int = 4) -> None:
        self.dsn = dsn
        self.size = size
        self._pool: Any = None
        self._blocking: _BlockingPg | None = None
        self._blocking_guard = threading.Lock()

    async def start(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(self.dsn, min_size=self.size, max_size=self.size)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(19)")  # two servers must not seed twice
            await conn.execute(_PG_SCHEMA)
            if await conn.fetchval("SELECT COUNT(*) FROM orders") == 0:
                orders, items = _seed_rows()
                await conn.executemany(_pg("INSERT INTO orders(customer, created_at, status) VALUES (?, ?, ?)"), orders)
                await conn.executemany(
                    _pg("INSERT INTO order_items(order_id, sku, qty, price_cents) VALUES (?, ?, ?, ?)"), items
                )

    async def close(self) -> None:
        if self._blocking is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._blocking.close)
            self._blocking = None
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        assert self._pool is not None, "the database is not started"
        async with self._pool.acquire() as conn:
            yield _PgConnection(self, conn)

    def blocking(self) -> _BlockingPg:
        with self._blocking_guard:
            if self._blocking is None:
                self._blocking = _BlockingPg(self.dsn)
            return self._blocking

    @property
    def pool(self) -> Any:
        return self._pool

    def describe(self) -> str:
        return f"postgresql ({self.size} connections, asyncpg)"


def check_database_url(url: str | None) -> None:
    """Raise ``ValueError`` (one line) when :func:`open_database` cannot use ``url``."""
    if url is None:
        return
    if url.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("asyncpg") is None:
            raise ValueError("PostgreSQL needs asyncpg: pip install 'conctools[server]'")
        return
    if url.startswith("sqlite:///") or "://" not in url:
        if not url.removeprefix("sqlite://").strip():
            raise ValueError("an empty SQLite path")
        return
    raise ValueError(f"unsupported database URL {url!r} (use postgresql://..., sqlite:///PATH or a file path)")


def open_database(url: str | None, folder: Path, size: int = 4) -> Database:
    """``postgresql://...`` -> asyncpg; ``sqlite:///path`` or a path -> that SQLite file; ``None``
    -> ``folder/orders.sqlite3``. Raises ``ValueError`` for another scheme."""
    if url is None:
        return SqliteDatabase(folder / "orders.sqlite3", size)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, size)
    if url.startswith("sqlite:///"):
        return SqliteDatabase(Path(url[len("sqlite://") :]), size)
    if "://" in url:
        raise ValueError(f"unsupported database URL {url!r} (use postgresql://..., sqlite:///PATH or a file path)")
    return SqliteDatabase(Path(os.path.expanduser(url)), size)
