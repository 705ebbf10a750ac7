"""conctools' metrics for Prometheus, through prometheus_client (extra ``prometheus``).

:class:`ConctoolsCollector` turns :func:`~conctools.exporters.families.live_families` into
prometheus_client metric families at each scrape: ``conctools_lock_wait_seconds`` (a histogram
with ``lock`` and ``kind`` labels), ``conctools_loop_lag_seconds``, ``conctools_loop_stalls_total``,
``conctools_deadlocks_total`` and the rest (base units, ``_total`` counters). The text is
prometheus_client's own exposition (:func:`metrics_text`), served by :func:`start_http_server` in
a program, and by the sample server at ``GET /metrics``.
"""

from __future__ import annotations

import _thread
from collections.abc import Iterator
from typing import Any

from conctools.exporters import require
from conctools.exporters.families import Family, HistogramValue, live_families
from conctools.recorder import Recorder, get_recorder

__all__ = ["CONTENT_TYPE", "ConctoolsCollector", "MetricsServer", "metrics_text", "registry", "start_http_server"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ConctoolsCollector:
    """A prometheus_client collector of conctools' metrics (the current recorder's, unless given)."""

    def __init__(self, recorder: Recorder | None = None) -> None:
        require("prometheus", "conctools' Prometheus metrics")
        self._recorder = recorder

    def describe(self) -> list[Any]:
        """Nothing up front: registering must not take a reading (prometheus_client then collects)."""
        return []

    def collect(self) -> Iterator[Any]:
        """One scrape: every family, read now."""
        recorder = self._recorder if self._recorder is not None else get_recorder()
        for family in live_families(recorder):
            yield _to_prometheus(family)


def _to_prometheus(family: Family) -> Any:
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    labels = list(family.label_names)
    out: Any
    if family.kind == "histogram":
        out = HistogramMetricFamily(family.prometheus_name, family.help, labels=labels)
        for point in family.points:
            value = point.value
            assert isinstance(value, HistogramValue)
            out.add_metric([v for _, v in point.labels], value.cumulative(), sum_value=value.sum_s)
    else:
        out = CounterMetricFamily(family.prometheus_name, family.help, labels=labels)
        for point in family.points:
            assert not isinstance(point.value, HistogramValue)
            out.add_metric([v for _, v in point.labels], float(point.value))
    return out


def registry(recorder: Recorder | None = None) -> Any:
    """A ``CollectorRegistry`` holding only :class:`ConctoolsCollector` (the registry's own lock
    is a plain one even under ``trace_locks()``: conctools never waits on a traced lock of its own)."""
    require("prometheus", "conctools' Prometheus metrics")
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    if hasattr(reg, "_lock"):
        reg._lock = _thread.allocate_lock()
    reg.register(ConctoolsCollector(recorder))  # type: ignore[arg-type]
    return reg


def metrics_text(recorder: Recorder | None = None) -> bytes:
    """The Prometheus text exposition of conctools' metrics (what ``GET /metrics`` returns)."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(registry(recorder)))


class MetricsServer:
    """The HTTP server :func:`start_http_server` started: ``port`` it listens on, ``close()``."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server = server
        self._thread = thread
        self.host, self.port = server.server_address[:2]

    def close(self) -> None:
        """Stop serving and close the socket (returns once the serving thread ended)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def __repr__(self) -> str:
        return f"<MetricsServer http://{self.host}:{self.port}/metrics>"


def start_http_server(port: int, addr: str = "127.0.0.1", *, recorder: Recorder | None = None) -> MetricsServer:
    """Serve ``GET /metrics`` (prometheus_client's WSGI app) on ``addr:port`` from a daemon thread
    named ``conctools-metrics``; ``port=0`` picks a free port (``server.port``).

    >>> server = start_http_server(0)      # doctest: +SKIP
    >>> server.port, server.close()        # doctest: +SKIP
    """
    require("prometheus", "conctools.metrics.start_http_server")
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    from conctools._context import _plain_event, internal_thread

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # no access log on the program's stderr
            pass

    server: WSGIServer = make_server(addr, port, make_wsgi_app(registry(recorder)), handler_class=_Quiet)
    if hasattr(server, "_BaseServer__is_shut_down"):  # socketserver's Event: plain, not traced
        server._BaseServer__is_shut_down = _plain_event()  # type: ignore[attr-defined]
    thread = internal_thread(server.serve_forever, "conctools-metrics")
    thread.start()
    return MetricsServer(server, thread)


def add_metrics_route(app: Any, path: str = "/metrics") -> None:
    """Serve :func:`metrics_text` at ``GET path`` of an aiohttp application (the sample server's
    ``/metrics``). Read off the event loop; without prometheus_client, a 501 naming the pip command."""
    import asyncio

    from aiohttp import web

    from conctools.exporters import MissingExtra

    async def metrics(request: web.Request) -> web.Response:
        try:
            body = await asyncio.to_thread(metrics_text)
        except MissingExtra as exc:
            return web.Response(status=501, text=f"{exc}\n")
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get(path, metrics)
