"""Small unit formatters shared by log lines and reporters."""

from __future__ import annotations

__all__ = ["format_bytes", "format_duration"]


def format_duration(seconds: float) -> str:
    """A duration with its unit, at a precision a person reads at a glance.

    >>> format_duration(0.0123)
    '12.3 ms'
    >>> format_duration(2.5)
    '2.50 s'
    """
    s = abs(seconds)
    if s >= 100:
        return f"{seconds:.0f} s"
    if s >= 1:
        return f"{seconds:.2f} s"
    if s >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    if s >= 1e-6:
        return f"{seconds * 1e6:.3g} µs"
    return f"{seconds * 1e9:.0f} ns"


def format_bytes(n: float) -> str:
    """Bytes in binary units: ``format_bytes(3 * 2**20) == '3.0 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
