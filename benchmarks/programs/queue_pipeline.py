"""A ``queue.Queue`` pipeline with several stages: parse -> enrich -> aggregate, two threads
per stage, bounded queues between them, sentinels to shut down, ``join()`` to drain.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from typing import Any

ITEMS = 50_000
PER_STAGE = 2
DONE = object()


def stage(inbox: queue.Queue[Any], outbox: queue.Queue[Any] | None, work: Any) -> None:
    while True:
        item = inbox.get()
        try:
            if item is DONE:
                return
            result = work(item)
            if outbox is not None:
                outbox.put(result)
        finally:
            inbox.task_done()


def main() -> None:
    raw: queue.Queue[Any] = queue.Queue(maxsize=200)
    parsed: queue.Queue[Any] = queue.Queue(maxsize=200)
    enriched: queue.Queue[Any] = queue.Queue(maxsize=200)
    totals: dict[str, int] = {}
    totals_lock = threading.Lock()

    def parse(line: str) -> dict[str, Any]:
        return json.loads(line)

    def enrich(record: dict[str, Any]) -> dict[str, Any]:
        record["bucket"] = f"b{record['n'] % 16}"
        return record

    def aggregate(record: dict[str, Any]) -> None:
        with totals_lock:
            totals[record["bucket"]] = totals.get(record["bucket"], 0) + record["n"]

    stages = [(raw, parsed, parse), (parsed, enriched, enrich), (enriched, None, aggregate)]
    threads = [
        threading.Thread(target=stage, args=spec, name=f"{spec[2].__name__}-{i}")
        for spec in stages
        for i in range(PER_STAGE)
    ]
    for t in threads:
        t.start()
    for n in range(ITEMS):
        raw.put(json.dumps({"n": n, "payload": "x" * 40}))
    for inbox, _, _ in stages:
        inbox.join()
        for _ in range(PER_STAGE):
            inbox.put(DONE)
    for t in threads:
        t.join()
    assert sum(totals.values()) == ITEMS * (ITEMS - 1) // 2


if __name__ == "__main__" and not os.environ.get("BENCH_IMPORTS_ONLY"):
    main()
