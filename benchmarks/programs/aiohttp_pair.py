"""An aiohttp server and its client on 127.0.0.1: 2,000 requests, 20 at a time, over a
keep-alive connection pool, against handlers that share an ``asyncio.Lock``-guarded counter
and a JSON body.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import ClientSession, TCPConnector, web

REQUESTS = 2_000
CONCURRENCY = 20


def make_app() -> web.Application:
    lock = asyncio.Lock()
    hits = {"n": 0}

    async def item(request: web.Request) -> web.Response:
        async with lock:
            hits["n"] += 1
        return web.json_response({"id": int(request.match_info["id"]), "hits": hits["n"]})

    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"echo": body})

    app = web.Application()
    app.router.add_get("/item/{id}", item)
    app.router.add_post("/echo", echo)
    return app


async def main() -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    slots = asyncio.Semaphore(CONCURRENCY)
    try:
        async with ClientSession(connector=TCPConnector(limit=CONCURRENCY)) as session:

            async def one(i: int) -> None:
                async with slots:
                    if i % 4:
                        async with session.get(f"{base}/item/{i}") as resp:
                            assert (await resp.json())["id"] == i
                    else:
                        async with session.post(f"{base}/echo", json={"i": i}) as resp:
                            assert (await resp.json())["echo"]["i"] == i

            await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    finally:
        await runner.cleanup()


if __name__ == "__main__" and not os.environ.get("BENCH_IMPORTS_ONLY"):
    asyncio.run(main())
