"""conctools' spans, lock waits and metrics through the OpenTelemetry SDK (extra ``otel``).

:func:`instrument` adds a sink to the recorder. Every ``@traced`` span becomes an OpenTelemetry
span (same name, start and end, parent; attributes ``thread.name``, ``thread.id``,
``asyncio.task.name``, ``conctools.outcome``, ``error.type`` and an ERROR status when it raised);
each lock wait of at least the lock-wait threshold becomes a ``conctools.lock.wait`` span event on
the span that waited; the metrics of :mod:`conctools.exporters.families` are exported as
cumulative OpenTelemetry metrics (histograms with explicit bounds, monotonic sums).

Everything goes through the SDK's standard exporters, configured by the standard variables:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (and the ``_TRACES_`` / ``_METRICS_`` variants, headers, timeout,
compression, certificates), ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the default, or
``grpc`` with ``opentelemetry-exporter-otlp-proto-grpc``), ``OTEL_TRACES_EXPORTER`` /
``OTEL_METRICS_EXPORTER`` (``otlp``, ``console`` or ``none``), ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` (+ ``_ARG``), ``OTEL_METRIC_EXPORT_INTERVAL``
(milliseconds, default 60000) and ``OTEL_SDK_DISABLED``.

Cost: nothing while not instrumented. Instrumented, a span costs its event object and a deque
append on the program's thread; the rest (trees, OpenTelemetry spans, encoding, network) runs on
the ``conctools-otel`` thread, once a second. Spans wait there until their root ends (see
:mod:`conctools.exporters.spantree`), at most ``max_wait_s``; at most ``QUEUE_MAX`` spans and
waits wait for that thread, later ones are counted as dropped. Export failures are logged by the
SDK and never reach the program; :meth:`OtelExport.shutdown` gives up after ``timeout_s``.
"""

from __future__ import annotations

import _thread
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from conctools._log import get_logger
from conctools.events import Event, LockWaitEvent, SpanEvent
from conctools.exporters import require
from conctools.exporters.families import Family, HistogramValue, families_from, live_families
from conctools.exporters.spantree import Placed, SpanTree, Trace, WaitIndex
from conctools.recorder import Recorder, Snapshot, get_recorder

__all__ = ["QUEUE_MAX", "OtelConfigError", "OtelExport", "instrument", "send_snapshot", "shutdown_all"]

_log = get_logger("conctools.otel")

QUEUE_MAX = 65_536
TICK_S = 1.0
WAIT_RETENTION_NS = 600 * 10**9  # a wait no span covered after 10 minutes is forgotten


class OtelConfigError(ValueError):
    """An ``OTEL_*`` setting conctools cannot honour (one readable line)."""


def _exporter_choice(signal: str) -> str:
    value = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").strip().lower() or "otlp"
    choice = value.split(",")[0].strip()
    if choice not in ("otlp", "console", "none"):
        raise OtelConfigError(f"OTEL_{signal.upper()}_EXPORTER={value!r}: conctools supports otlp, console or none")
    return choice


def _protocol(signal: str) -> str:
    value = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if value not in ("http/protobuf", "grpc"):
        raise OtelConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={value!r}: conctools supports http/protobuf or grpc")
    return value


def _span_exporter() -> Any:
    choice = _exporter_choice("traces")
    if choice == "none":
        return None
    if choice == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if _protocol("traces") == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise OtelConfigError(
                "OTLP over grpc needs its exporter: pip install opentelemetry-exporter-otlp-proto-grpc"
            ) from None
        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return HttpSpanExporter()


def _metric_exporter() -> Any:
    choice = _exporter_choice("metrics")
    if choice == "none":
        return None
    if choice == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    if _protocol("metrics") == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        except ImportError:
            raise OtelConfigError(
                "OTLP over grpc needs its exporter: pip install opentelemetry-exporter-otlp-proto-grpc"
            ) from None
        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

    return HttpMetricExporter()


def _metric_interval_s() -> float:
    raw = os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")
    try:
        value = float(raw) / 1000.0
    except ValueError:
        raise OtelConfigError(f"OTEL_METRIC_EXPORT_INTERVAL={raw!r}: expected milliseconds") from None
    if not value > 0:
        raise OtelConfigError(f"OTEL_METRIC_EXPORT_INTERVAL={raw!r}: must be more than 0")
    return value


def _resource(service_name: str | None) -> Any:
    from opentelemetry.sdk.resources import Resource

    from conctools import __version__

    attributes: dict[str, Any] = {
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": sys.version.split()[0],
        "telemetry.auto.version": __version__,
    }
    env_names = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if service_name and not env_names:
        attributes["service.name"] = service_name
    return Resource.create(attributes)


def _preset_ids() -> Any:
    """An SDK ``IdGenerator`` that hands out the ids the exporter thread chose for the next span."""
    from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

    class PresetIds(IdGenerator):
        def __init__(self) -> None:
            self.span_id = 0
            self.trace_id = 0
            self._random = RandomIdGenerator()

        def generate_span_id(self) -> int:
            value, self.span_id = self.span_id, 0
            return value or self._random.generate_span_id()

        def generate_trace_id(self) -> int:
            value, self.trace_id = self.trace_id, 0
            return value or self._random.generate_trace_id()

    return PresetIds()


class OtelExport:
    """One recorder's export to OpenTelemetry (see the module docstring). Made by :func:`instrument`."""

    def __init__(
        self,
        recorder: Recorder,
        *,
        service_name: str | None = None,
        span_exporter: Any = "env",
        metric_exporter: Any = "env",
        metric_interval_s: float | None = None,
        max_wait_s: float = 10.0,
        families: Callable[[], list[Family]] | None = None,
        offset_ns: int | None = None,
    ) -> None:
        require("otel", "the OpenTelemetry export")
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

        self.recorder = recorder
        self._span_exporter = _span_exporter() if span_exporter == "env" else span_exporter
        self._metric_exporter = _metric_exporter() if metric_exporter == "env" else metric_exporter
        self._metric_interval_s = metric_interval_s if metric_interval_s is not None else _metric_interval_s()
        self._resource = _resource(service_name)
        self._ids = _preset_ids()
        ended: list[Any] = []
        self._ended = ended

        class Collect(SpanProcessor):  # the exporter thread exports what it made, in one batch per tick
            def on_end(self, span: Any) -> None:
                ended.append(span)

        self._provider = TracerProvider(resource=self._resource, id_generator=self._ids)
        self._provider.add_span_processor(Collect())
        from conctools import __version__

        self._tracer = self._provider.get_tracer("conctools", __version__)
        self._sampler = self._provider.sampler
        self._tree = SpanTree(self._new_trace, max_wait_s=max_wait_s)
        self._waits = WaitIndex()
        self._queue: deque[Event] = deque()
        self._dropped = 0
        # monotonic (events) -> epoch (OTLP)
        self._offset_ns = offset_ns if offset_ns is not None else time.time_ns() - time.monotonic_ns()
        self._start_epoch_ns = recorder.started_ns + self._offset_ns
        self._families = families if families is not None else lambda: live_families(recorder)
        self._next_metrics = time.monotonic() + self._metric_interval_s
        self._stop = _thread.allocate_lock()  # held while running: its release wakes the thread
        self._stop.acquire()
        self._work = _thread.allocate_lock()  # one tick at a time (the thread's, or shutdown's)
        self._closed = False
        from conctools._context import internal_thread

        self._thread = internal_thread(self._run, "conctools-otel")
        recorder.add_sink(self._sink)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<OtelExport {'closed' if self._closed else 'running'}, {self._dropped} dropped>"

    # ---- the program's side: as cheap as a sink can be ----
    def _sink(self, event: Event) -> None:
        if isinstance(event, (SpanEvent, LockWaitEvent)):
            if len(self._queue) < QUEUE_MAX:
                self._queue.append(event)
            else:
                self._dropped += 1  # approximate under races: informative only

    # ---- the exporter thread ----
    def _run(self) -> None:
        while not self._stop.acquire(timeout=TICK_S):
            self.tick()
        self._stop.release()

    def tick(self, *, final: bool = False) -> None:
        """Export what arrived (and, ``final``, everything still held, and the metrics). Never raises."""
        with self._work:
            try:
                self._tick(final)
            except Exception:
                _log.exception("conctools: the OpenTelemetry export failed")

    def _tick(self, final: bool) -> None:
        flush = getattr(sys.modules.get("conctools.locks"), "flush_waits", None)
        if callable(flush):  # lock waits that ended but are not recorded yet (where locks defers them)
            flush()
        threshold_get = getattr(sys.modules.get("conctools.locks"), "wait_threshold_s", None)
        threshold = float(threshold_get()) if callable(threshold_get) else 0.0
        spans: list[SpanEvent] = []
        while self._queue:
            event = self._queue.popleft()
            if isinstance(event, SpanEvent):
                spans.append(event)
            elif isinstance(event, LockWaitEvent) and event.wait_s >= threshold:
                self._waits.add(event)
        now = time.monotonic()
        placed: list[Placed] = []
        for span in spans:
            placed += self._tree.add(span, now)
        placed += self._tree.expire(now, everything=final)
        if placed and self._span_exporter is not None:
            waits = self._waits.attach(placed)
            for p in placed:
                self._emit(p, waits.get(p.span.span_id, ()))
        self._waits.forget_before(time.monotonic_ns() - WAIT_RETENTION_NS)
        if self._ended:
            batch, self._ended[:] = list(self._ended), []
            self._span_exporter.export(batch)
        if self._metric_exporter is not None and (final or now >= self._next_metrics):
            self._next_metrics = now + self._metric_interval_s
            self._metric_exporter.export(self._metrics_data(self._families()))

    def _new_trace(self, name: str) -> Trace:
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        trace_id = RandomIdGenerator().generate_trace_id()
        try:
            decision: Any = self._sampler.should_sample(None, trace_id, name).decision
            sampled = decision.is_sampled()
        except Exception:
            sampled = True
        return Trace(trace_id, bool(sampled))

    def _emit(self, placed: Placed, waits: Sequence[LockWaitEvent]) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

        span = placed.span
        flags = TraceFlags(TraceFlags.SAMPLED if placed.trace.sampled else TraceFlags.DEFAULT)
        context = None
        if placed.parent_span_id is not None:
            parent = SpanContext(placed.trace.trace_id, placed.parent_span_id, is_remote=False, trace_flags=flags)
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        links = []
        if placed.linked_parent is not None:
            other, other_span = placed.linked_parent
            other_flags = TraceFlags(TraceFlags.SAMPLED if other.sampled else TraceFlags.DEFAULT)
            links.append(
                Link(
                    SpanContext(other.trace_id, other_span, is_remote=False, trace_flags=other_flags),
                    {"conctools.link": "parent"},
                )
            )
        attributes: dict[str, Any] = {
            "thread.name": span.thread_name,
            "thread.id": span.thread_id,
            "conctools.outcome": span.outcome,
        }
        if span.task_name is not None:
            attributes["asyncio.task.name"] = span.task_name
        if span.exc_type is not None:
            attributes["error.type"] = span.exc_type
        if span.args is not None:
            attributes["conctools.args"] = span.args
        self._ids.trace_id = placed.trace.trace_id
        self._ids.span_id = self._tree.span_id(span.span_id)
        start = span.ts_ns + self._offset_ns
        otel_span = self._tracer.start_span(
            span.name, context=context, kind=SpanKind.INTERNAL, attributes=attributes, links=links, start_time=start
        )
        for wait in waits:
            event_attributes: dict[str, Any] = {
                "conctools.lock.name": wait.lock_name,
                "conctools.lock.kind": wait.lock_kind,
                "conctools.lock.wait_s": wait.wait_s,
                "conctools.lock.acquired": wait.acquired,
                "conctools.lock.site": wait.site,
            }
            if wait.holder is not None:
                event_attributes["conctools.lock.holder"] = wait.holder
            otel_span.add_event("conctools.lock.wait", event_attributes, timestamp=wait.ts_ns + self._offset_ns)
        if span.outcome == "raised":
            otel_span.set_status(Status(StatusCode.ERROR, span.exc_type))
        otel_span.end(end_time=start + int(span.duration_s * 1e9))

    def _metrics_data(self, families: list[Family]) -> Any:
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Histogram,
            HistogramDataPoint,
            Metric,
            MetricsData,
            NumberDataPoint,
            ResourceMetrics,
            ScopeMetrics,
            Sum,
        )
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from conctools import __version__

        now = time.time_ns()
        start = self._start_epoch_ns
        cumulative = AggregationTemporality.CUMULATIVE
        metrics = []
        for family in families:
            if not family.points:  # an OTLP metric carries at least one point
                continue
            data: Any
            if family.kind == "histogram":
                points = []
                for p in family.points:
                    v = p.value
                    assert isinstance(v, HistogramValue)
                    points.append(
                        HistogramDataPoint(
                            attributes=dict(p.labels),
                            start_time_unix_nano=start,
                            time_unix_nano=now,
                            count=v.count,
                            sum=v.sum_s,
                            bucket_counts=list(v.counts),
                            explicit_bounds=list(v.bounds_s),
                            min=None,  # type: ignore[arg-type]  # not kept: left unset in OTLP
                            max=v.max_s,  # type: ignore[arg-type]
                        )
                    )
                data = Histogram(data_points=points, aggregation_temporality=cumulative)
            else:
                numbers = [
                    NumberDataPoint(
                        attributes=dict(p.labels),
                        start_time_unix_nano=start,
                        time_unix_nano=now,
                        value=float(p.value) if family.unit == "s" else round(p.value),
                    )
                    for p in family.points
                    if not isinstance(p.value, HistogramValue)
                ]
                data = Sum(data_points=numbers, aggregation_temporality=cumulative, is_monotonic=True)
            metrics.append(Metric(name=family.name, description=family.help, unit=family.unit, data=data))
        scope = InstrumentationScope("conctools", __version__)
        return MetricsData(
            resource_metrics=[
                ResourceMetrics(
                    resource=self._resource,
                    scope_metrics=[ScopeMetrics(scope=scope, metrics=metrics, schema_url="")],
                    schema_url="",
                )
            ]
        )

    # ---- control ----
    def feed(self, events: Sequence[Event]) -> None:
        """Queue events as the sink would (spans and lock waits of a saved run)."""
        for event in events:
            if len(self._queue) >= QUEUE_MAX:
                self.tick()
            self._sink(event)

    @property
    def dropped(self) -> int:
        """Spans and waits that found the queue full (not exported)."""
        return self._dropped

    def force_flush(self) -> None:
        """Export now what arrived so far (spans still waiting for their root stay held)."""
        self.tick()

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Stop: export everything (held spans too) and the metrics, close the exporters.

        Returns False when that did not finish within ``timeout_s`` (an unreachable collector):
        the program is never held longer than that.
        """
        if self._closed:
            return True
        self._closed = True
        self.recorder.remove_sink(self._sink)
        _unregister(self)
        finished = _thread.allocate_lock()
        finished.acquire()

        def final() -> None:
            try:
                self._stop.release()
                self._thread.join(timeout_s)
                self.tick(final=True)
                for exporter in (self._span_exporter, self._metric_exporter):
                    if exporter is not None:
                        try:
                            exporter.shutdown()
                        except Exception:
                            _log.debug("conctools: closing an OpenTelemetry exporter failed", exc_info=True)
            finally:
                finished.release()

        from conctools._context import internal_thread

        internal_thread(final, "conctools-otel-shutdown").start()
        ok = finished.acquire(timeout=timeout_s)
        if not ok:
            _log.warning("conctools: the OpenTelemetry export did not finish within %.0f s; giving up", timeout_s)
        return bool(ok)


_active_lock = _thread.allocate_lock()
_active: dict[int, OtelExport] = {}


def _unregister(export: OtelExport) -> None:
    with _active_lock:
        if _active.get(id(export.recorder)) is export:
            del _active[id(export.recorder)]


def instrument(
    recorder: Recorder | None = None,
    *,
    service_name: str | None = None,
    span_exporter: Any = "env",
    metric_exporter: Any = "env",
    metric_interval_s: float | None = None,
) -> OtelExport | None:
    """Export ``recorder``'s spans, lock waits and metrics (the current recorder's by default)
    through OpenTelemetry, configured by the ``OTEL_*`` variables; ``None`` when
    ``OTEL_SDK_DISABLED=true``. Instrumenting a recorder twice returns the first export.

    ``span_exporter`` / ``metric_exporter``: an SDK ``SpanExporter`` / ``MetricExporter`` instead of
    the one the environment names (``None``: no spans / no metrics).

    Raises :class:`~conctools.exporters.MissingExtra` without the ``otel`` extra and
    :class:`OtelConfigError` for a setting it cannot honour.
    """
    require("otel", "conctools.otel.instrument()")
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    rec = recorder if recorder is not None else get_recorder()
    with _active_lock:
        existing = _active.get(id(rec))
        if existing is not None and existing.recorder is rec:
            return existing
    export = OtelExport(
        rec,
        service_name=service_name,
        span_exporter=span_exporter,
        metric_exporter=metric_exporter,
        metric_interval_s=metric_interval_s,
    )
    with _active_lock:
        _active[id(rec)] = export
    return export


def shutdown_all(timeout_s: float = 5.0) -> None:
    """Shut every running export down (what ``conctools run --otel`` does when the program ends)."""
    with _active_lock:
        exports = list(_active.values())
    for export in exports:
        export.shutdown(timeout_s)


def send_snapshot(snapshot: Snapshot, *, timeout_s: float = 10.0, **exporters: Any) -> int:
    """Send a saved run's spans (with their lock waits) and metrics through OpenTelemetry, at the
    times they happened; returns the number of spans sent. ``exporters``: as :func:`instrument`."""
    require("otel", "conctools report --otel")
    spans = [e for e in snapshot.events if isinstance(e, SpanEvent)]
    waits = [e for e in snapshot.events if isinstance(e, LockWaitEvent)]
    holder = Recorder(capacity=1)
    holder.started_ns = snapshot.started_ns
    export = OtelExport(
        holder,
        service_name=str(snapshot.meta.get("command") or "conctools"),
        families=lambda: families_from(snapshot.sections, snapshot.counts),
        offset_ns=round(snapshot.started_wall * 1e9) - snapshot.started_ns,
        **exporters,
    )
    export.feed([*waits, *spans])
    export.shutdown(timeout_s)
    return len(spans)
