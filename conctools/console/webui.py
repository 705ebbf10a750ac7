"""aiomonitor's web UI (which can cancel tasks), off unless asked for, and then behind the
console's secret: ``Authorization: Bearer SECRET``, or ``?secret=SECRET`` once (it sets an
HttpOnly, SameSite=Strict cookie and redirects to the same page without the secret in the URL).
The same checks as the telnet gate: another user's socket is refused, refusals are logged and
slowed down."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from conctools._log import get_logger
from conctools.console.access import FailureBrake, peer_uid, secret_matches

if TYPE_CHECKING:
    from conctools.console.monitor import ConsoleMonitor

__all__ = ["COOKIE", "start_webui"]

_log = get_logger("conctools.console")
COOKIE = "conctools_console"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _given_secret(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    return request.query.get("secret") or request.cookies.get(COOKIE) or ""


def _guard(secret: str, brake: FailureBrake) -> Any:
    @web.middleware
    async def guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
        peer = request.remote or "?"
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        uid = peer_uid(sock) if sock is not None else None
        given = _given_secret(request)
        if uid is not None and uid != os.geteuid():
            reason = f"the connecting process belongs to another user (uid {uid})"
        elif not given or not secret_matches(secret, given.encode()):
            reason = "wrong or missing secret"
        else:
            brake.succeeded()
            if "secret" in request.query:
                query = {k: v for k, v in request.query.items() if k != "secret"}
                response = web.HTTPFound(request.rel_url.with_query(query))
                response.set_cookie(COOKIE, given, httponly=True, samesite="Strict", path="/")
                raise response
            return await handler(request)
        if uid is None or uid == os.geteuid():  # another user's socket is told apart, not guessed
            wait_s = brake.reserve_s()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            brake.failed()
        _log.warning("conctools console: refused a web UI request from %s: %s", peer, reason)
        raise web.HTTPUnauthorized(text="conctools console: refused\n")

    return guard


async def start_webui(monitor: ConsoleMonitor, host: str, port: int, secret: str, brake: FailureBrake) -> web.AppRunner:
    """Serve aiomonitor's web UI for ``monitor`` on ``host:port``, guarded; returns its runner."""
    from aiomonitor.webui.app import init_webui

    app = await init_webui(monitor)
    app.middlewares.insert(0, _guard(secret, brake))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
