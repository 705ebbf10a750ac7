"""A small asyncio HTTP service that hangs: two endpoints take the same two locks in opposite
orders, so one request to each at the same moment deadlocks them (and every later request to
either endpoint queues behind). `/health` keeps answering: the process looks alive.

    conctools run --deadlock-timeout 0 examples/hung_service.py    # no 10 s watchdog exit: it hangs
    curl -s localhost:8765/transfer & curl -s localhost:8765/audit &
    conctools dump PID                                             # who waits for whom, and where

Only the standard library: the HTTP is a few lines over asyncio streams.
"""

from __future__ import annotations

import asyncio
import os
import sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8765

accounts = asyncio.Lock()
ledger = asyncio.Lock()


async def transfer() -> str:
    async with accounts:
        await asyncio.sleep(0.05)  # the database round trip
        async with ledger:
            return "transferred\n"


async def audit() -> str:
    async with ledger:
        await asyncio.sleep(0.05)
        async with accounts:
            return "audited\n"


async def health() -> str:
    return "ok\n"


ROUTES = {"/transfer": transfer, "/audit": audit, "/health": health}


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readline()
    while (await reader.readline()).strip():  # the headers
        pass
    parts = request.decode("latin-1").split()
    route = ROUTES.get(parts[1] if len(parts) > 1 else "")
    body = await route() if route is not None else "not found\n"
    status = "200 OK" if route is not None else "404 Not Found"
    writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode())
    await writer.drain()
    writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", PORT)
    print(f"hung_service: pid {os.getpid()}, listening on http://127.0.0.1:{PORT}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
