"""A thread and an asyncio task deadlock: the task holds a threading lock the thread wants,
and blocks its event loop waiting for the lock the thread holds."""

import asyncio
import threading

config_lock = threading.Lock()
stats_lock = threading.Lock()
thread_holds_stats = threading.Event()
task_holds_config = threading.Event()


def reporter() -> None:
    task_holds_config.wait()
    with stats_lock:
        thread_holds_stats.set()
        with config_lock:
            print("never")


async def reload_config() -> None:
    with config_lock:
        task_holds_config.set()
        await asyncio.to_thread(thread_holds_stats.wait)
        with stats_lock:  # blocks the event loop thread: a synchronous wait inside a task
            print("never")


async def main() -> None:
    threading.Thread(target=reporter, name="reporter", daemon=True).start()
    await asyncio.create_task(reload_config(), name="reload-config")


if __name__ == "__main__":
    asyncio.run(main())
