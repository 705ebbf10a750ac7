"""Two request handlers wake on the same event and each makes a blocking call on the loop.

Both run in one loop iteration, one after the other: the loop is blocked ~0.8 s in one go.
"""

import asyncio
import time


def fetch_profile_sync(user: str) -> dict[str, str]:
    time.sleep(0.4)  # MARK: profile-sleep
    return {"user": user}


def render_invoice_sync(order: int) -> str:
    time.sleep(0.4)  # MARK: invoice-sleep
    return f"invoice {order}"


async def profile_handler(ready: asyncio.Event) -> None:
    await ready.wait()
    fetch_profile_sync("ada")


async def invoice_handler(ready: asyncio.Event) -> None:
    await ready.wait()
    render_invoice_sync(42)


async def main() -> None:
    ready = asyncio.Event()
    tasks = [
        asyncio.create_task(profile_handler(ready), name="GET /profile"),
        asyncio.create_task(invoice_handler(ready), name="GET /invoice"),
    ]
    await asyncio.sleep(0.05)
    ready.set()
    await asyncio.gather(*tasks)
    print("served")


asyncio.run(main())
