"""Send conctools' spans, lock waits and metrics to OpenTelemetry: ``conctools.otel.instrument()``.

>>> import conctools.otel
>>> export = conctools.otel.instrument()      # doctest: +SKIP
>>> ...                                       # @traced spans and lock waits go to the OTLP endpoint
>>> export.shutdown()                         # doctest: +SKIP

Configured by the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME``, ...): see :mod:`conctools.exporters.otel`. ``conctools run --otel`` does the
same for a whole program. Needs ``pip install 'conctools[otel]'``.
"""

from __future__ import annotations

from conctools.exporters.otel import OtelConfigError, OtelExport, instrument, shutdown_all

__all__ = ["OtelConfigError", "OtelExport", "instrument", "shutdown_all"]
