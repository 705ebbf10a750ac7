"""Objects that fight being looked at: locals named `self` whose attributes, properties and repr
raise, names made of terminal escapes and bidirectional overrides, a future whose repr raises.
A dump must read around all of it and leave the program as it was: nothing raised into it."""

import asyncio
import os
import sys
import threading

errors: list[str] = []
threading.excepthook = lambda args: errors.append(f"thread: {args.exc_type.__name__}")
sys.unraisablehook = lambda args: errors.append(f"unraisable: {args.exc_type.__name__}")


class Hostile:
    def __getattr__(self, name: str) -> object:
        raise RuntimeError(f"no {name}")

    @property
    def maxsize(self) -> int:
        raise RuntimeError("no maxsize")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class HostileFuture(asyncio.Future):  # type: ignore[type-arg]
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


park = threading.Event()


def worker() -> None:
    self = Hostile()  # the watchdog reads `self` from frames
    park.wait()
    print(self is not None)


async def waiter(future: asyncio.Future) -> None:  # type: ignore[type-arg]
    self = Hostile()
    await future
    print(self)


async def main() -> None:
    future = HostileFuture()
    task = asyncio.create_task(waiter(future), name="\x1b]0;pwned\x07task\u202e")
    threading.Thread(target=worker, name="\x1b[2Jred\u202ethread", daemon=True).start()
    print("started", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() == "status":
            print(f"status errors={errors} task_done={task.done()}", flush=True)
        elif line.strip() in ("quit", ""):
            break
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
