"""A coroutine holds a threading lock while it awaits a job in a thread (asyncio.to_thread); the
job needs the same lock: the worker waits for the task, the task waits for the worker."""

import asyncio
import threading

stats_lock = threading.Lock()
stats: dict[str, int] = {}


def persist() -> dict[str, int]:
    with stats_lock:  # MARK: worker-blocks
        return dict(stats)


async def flush() -> None:
    with stats_lock:  # MARK: task-acquires
        stats["flushes"] = stats.get("flushes", 0) + 1
        await asyncio.to_thread(persist)  # MARK: task-awaits


asyncio.run(flush())
