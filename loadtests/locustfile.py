"""Locust users for the conctools sample server (``conctools serve``).

Run headless through ``conctools loadtest`` (a separate process: Locust monkey-patches the
interpreter with gevent) or directly::

    locust -f loadtests/locustfile.py --headless -u 20 -r 20 -t 20s --host http://127.0.0.1:8080

Two kinds of users: :class:`ServerUser` browses every endpoint, :class:`OrdersUser` (two users
in five) works with the orders database: it records orders, lists the latest ones and, now
and then, asks for the report. ``locust ... OrdersUser`` runs only those.

Task weights follow a plausible traffic mix: mostly cheap reads and async I/O, some writes,
few expensive calls. Each task checks its answer with ``catch_response``, so a wrong body is
a failure even with status 200. ``wait_time`` keeps each user at a few requests per second.
"""

from __future__ import annotations

import random
from typing import Any

import gevent
from locust import FastHttpUser, between, task

KEYS = [f"item-{i}" for i in range(50)]


def _check(response: Any, predicate: Any, what: str) -> None:
    """Mark ``response`` failed unless it is a 200 whose JSON satisfies ``predicate``."""
    if response.status_code != 200:
        response.failure(f"{what}: HTTP {response.status_code}")
        return
    try:
        data = response.json()
    except Exception:
        response.failure(f"{what}: not JSON")
        return
    if predicate(data):
        response.success()
    else:
        response.failure(f"{what}: unexpected body {str(data)[:80]}")


class ServerUser(FastHttpUser):
    """One client of the sample server, browsing with a realistic mix of endpoints."""

    weight = 3
    wait_time = between(0.05, 0.25)

    @task(10)
    def health(self) -> None:
        with self.client.get("/health", catch_response=True) as r:
            if r.status_code == 200 and r.text == "ok":
                r.success()
            else:
                r.failure(f"health: HTTP {r.status_code}")

    @task(20)
    def io(self) -> None:
        with self.client.get("/io?delay_ms=10", name="/io", catch_response=True) as r:
            _check(r, lambda d: d.get("waited_ms") == 10, "io")

    @task(12)
    def cache(self) -> None:
        key = random.choice(KEYS)
        with self.client.get(f"/cache?key={key}", name="/cache", catch_response=True) as r:
            _check(r, lambda d: d.get("key") == key and len(d.get("value", "")) == 16, "cache")

    @task(8)
    def counter(self) -> None:
        """A double click: two POSTs at once (each answered with its own count), as impatient users
        send them; the second meets the first inside the counter's critical section."""
        other = gevent.spawn(self._count)
        self._count()
        other.join()

    def _count(self) -> None:
        with self.client.post("/counter", catch_response=True) as r:
            _check(r, lambda d: isinstance(d.get("count"), int) and d["count"] > 0, "counter")

    @task(8)
    def downstream(self) -> None:
        with self.client.get("/downstream", catch_response=True) as r:
            _check(r, lambda d: d.get("downstream") == "ok", "downstream")

    @task(6)
    def jobs(self) -> None:
        with self.client.post("/jobs", data=b"hello", catch_response=True) as r:
            _check(r, lambda d: d.get("result") == "olleh", "jobs")

    @task(5)
    def transfer(self) -> None:
        with self.client.post("/transfer?amount=3", name="/transfer", catch_response=True) as r:
            _check(r, lambda d: isinstance(d.get("balance"), int), "transfer")

    @task(3)
    def audit(self) -> None:
        with self.client.get("/audit", catch_response=True) as r:
            _check(r, lambda d: isinstance(d.get("ledger_total"), int), "audit")

    @task(3)
    def blocking(self) -> None:
        with self.client.get("/blocking?ms=5", name="/blocking", catch_response=True) as r:
            _check(r, lambda d: d.get("slept_ms") == 5, "blocking")

    @task(2)
    def cpu(self) -> None:
        with self.client.get("/cpu?n=5000", name="/cpu", catch_response=True) as r:
            _check(r, lambda d: d.get("primes") == 669, "cpu")

    @task(3)
    def search(self) -> None:
        with self.client.get("/search?q=locks", name="/search", catch_response=True) as r:
            _check(r, lambda d: d.get("q") == "locks", "search")


SKUS = [f"sku-{i:02d}" for i in range(50)]


class OrdersUser(FastHttpUser):
    """A client of the orders database: records orders, lists them, reads the report."""

    weight = 2
    wait_time = between(0.05, 0.2)

    @task(10)
    def create_order(self) -> None:
        lines = [{"sku": random.choice(SKUS), "qty": random.randint(1, 3)} for _ in range(random.randint(1, 3))]
        body = {"customer": f"customer-{random.randrange(100):02d}", "items": lines}
        with self.client.post("/orders", json=body, catch_response=True) as r:
            _check(r, lambda d: isinstance(d.get("order_id"), int) and d.get("status") == "paid", "create order")

    @task(5)
    def list_orders(self) -> None:
        with self.client.get("/orders?limit=20", name="/orders", catch_response=True) as r:
            # An order being recorded right now may not have its lines yet: only the count is checked.
            _check(r, lambda d: len(d.get("orders", [])) == 20, "orders")

    @task(1)
    def report(self) -> None:
        with self.client.get("/orders/report", catch_response=True) as r:
            _check(r, lambda d: len(d.get("top_skus", [])) == 10, "report")
