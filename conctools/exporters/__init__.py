"""Exporters: conctools' findings in the formats of the tools people already run.

Each one is a consumer of recorded data and uses its ecosystem's own library and format:

- :mod:`conctools.exporters.otel`: spans, lock waits and metrics through the OpenTelemetry SDK and
  its OTLP exporter, configured by the standard ``OTEL_*`` variables (extra ``otel``).
- :mod:`conctools.exporters.prometheus`: the same metrics in prometheus_client's text format
  (extra ``prometheus``).
- :mod:`conctools.exporters.pprof`: ``profile.pb.gz`` and ``locks.pb.gz``, pprof's protobuf
  schema (``profile.proto``) through the ``protobuf`` package (extra ``pprof``).
- :mod:`conctools.exporters.speedscope`: ``profile.speedscope.json`` (no dependency).

:mod:`conctools.exporters.families` is the metric model they share (pure functions of recorded
data), :mod:`conctools.exporters.spantree` the span bookkeeping behind the OpenTelemetry export.
Without its extra, an exporter raises :class:`MissingExtra`, whose message names the pip command.
"""

from __future__ import annotations

import importlib

__all__ = ["EXTRAS", "MissingExtra", "require"]

# extra -> (what it gives, the modules it must make importable)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "otel": (
        "the OpenTelemetry SDK and its OTLP exporter",
        ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http"),
    ),
    "prometheus": ("prometheus_client", ("prometheus_client",)),
    "pprof": ("the protobuf package", ("google.protobuf",)),
}


class MissingExtra(ImportError):
    """An exporter's optional dependency is not installed; the message names the pip command."""

    def __init__(self, feature: str, extra: str) -> None:
        what = EXTRAS[extra][0]
        super().__init__(f"{feature} needs {what}: pip install 'conctools[{extra}]'")
        self.extra = extra


def require(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtra` unless the modules of ``extra`` import."""
    for module in EXTRAS[extra][1]:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtra(feature, extra) from None
