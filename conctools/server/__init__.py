"""The sample async server: realistic concurrency patterns and three seeded bugs, instrumented
with conctools. ``conctools serve`` runs it; ``conctools demo`` loads it with Locust.

Importing this package needs aiohttp (``pip install 'conctools[server]'``).
"""

from __future__ import annotations

from conctools.server.app import BUGS, SampleService, ServerOptions, create_app, parse_bugs, service_of

__all__ = ["BUGS", "SampleService", "ServerOptions", "create_app", "parse_bugs", "service_of"]
