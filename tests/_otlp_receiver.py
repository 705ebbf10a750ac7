"""A real OTLP/HTTP receiver for the tests: an aiohttp app on 127.0.0.1 that decodes what the
OpenTelemetry exporter sends (``/v1/traces``, ``/v1/metrics``) with the opentelemetry-proto
package, as a collector would."""

from __future__ import annotations

import asyncio
import gzip
import threading
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class OtlpReceiver:
    """Start with ``with OtlpReceiver() as rx:``; ``rx.endpoint`` for OTEL_EXPORTER_OTLP_ENDPOINT."""

    def __init__(self) -> None:
        self.traces: list[Any] = []
        self.metrics: list[Any] = []
        self.requests = 0
        self._lock = threading.RLock()
        self._got = threading.Condition(self._lock)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="otlp-receiver", daemon=True)
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        assert self._ready.wait(10), "the OTLP receiver did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _body(self, request: web.Request) -> bytes:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return body

    async def _traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        msg = ExportTraceServiceRequest.FromString(await self._body(request))
        with self._got:
            self.traces.append(msg)
            self.requests += 1
            self._got.notify_all()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        msg = ExportMetricsServiceRequest.FromString(await self._body(request))
        with self._got:
            self.metrics.append(msg)
            self.requests += 1
            self._got.notify_all()
        return web.Response(
            body=ExportMetricsServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    # ---- what arrived ----
    def spans(self) -> list[tuple[Any, Any]]:
        """Every span received, with its resource: ``[(resource, span), ...]``."""
        with self._lock:
            return [
                (rs.resource, span)
                for req in self.traces
                for rs in req.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]

    def last_metrics(self) -> dict[str, Any]:
        """The latest data of each metric name received."""
        out: dict[str, Any] = {}
        with self._lock:
            for req in self.metrics:
                for rm in req.resource_metrics:
                    for sm in rm.scope_metrics:
                        for m in sm.metrics:
                            out[m.name] = m
        return out

    def wait_for(self, predicate: Any, timeout_s: float = 20.0) -> bool:
        with self._got:
            return self._got.wait_for(predicate, timeout_s)


def attrs(items: Any) -> dict[str, Any]:
    """OTLP ``KeyValue`` list -> dict of plain values."""
    out: dict[str, Any] = {}
    for kv in items:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = getattr(value, kind) if kind else None
    return out
