"""Not a bug: long waits that all end by themselves, each longer than the deadlock timeout.

A pool job that takes a while (waited for under a lock it does not need), a thread joined
while it sleeps, an event loop awaiting a thread, a coroutine a thread waits for, and an
asyncio.Event set from another thread later.
"""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

LONG = 1.8


def slow_job() -> int:
    time.sleep(LONG)
    return 1


def thread_waits_for_coroutine(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.run_coroutine_threadsafe(asyncio.sleep(LONG), loop).result()


async def loop_side() -> None:
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    threading.Timer(LONG, lambda: loop.call_soon_threadsafe(woken.set)).start()
    caller = threading.Thread(target=thread_waits_for_coroutine, args=(loop,), name="caller")
    caller.start()
    await asyncio.gather(asyncio.to_thread(time.sleep, LONG), woken.wait())
    await asyncio.to_thread(caller.join)


lock = threading.Lock()
sleeper = threading.Thread(target=time.sleep, args=(LONG,), name="sleeper")
sleeper.start()
with ThreadPoolExecutor(max_workers=2, thread_name_prefix="slow") as pool:
    with lock:  # held while waiting for a job that does not need it
        print(pool.submit(slow_job).result())
sleeper.join()
asyncio.run(loop_side())
print("done")
