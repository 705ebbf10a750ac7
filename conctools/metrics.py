"""Prometheus metrics of a running program: ``conctools.metrics.start_http_server(port)``.

>>> import conctools.metrics
>>> server = conctools.metrics.start_http_server(9464)   # doctest: +SKIP
>>> # curl http://127.0.0.1:9464/metrics  ->  conctools_lock_wait_seconds_bucket{lock="accounts",...}

The metrics (:mod:`conctools.exporters.families`) are read from the current recorder at each
scrape; :func:`text` returns the same exposition as bytes. Needs ``pip install 'conctools[prometheus]'``.
"""

from __future__ import annotations

from conctools.exporters.prometheus import CONTENT_TYPE, MetricsServer, metrics_text, start_http_server

__all__ = ["CONTENT_TYPE", "MetricsServer", "start_http_server", "text"]

text = metrics_text
