"""Small unit formatters shared by log lines and reporters."""

from __future__ import annotations

__all__ = ["format_bytes", "format_duration"]


def format_duration(seconds: float) -> str:
    """A duration with its unit, at a precision a person reads at a glance.

    >>> format_duration(0.0123)
    '12.3 ms'
    >>> format_duration(2.5)
    '2.50 s'
    >>> format_duration(0.9996)  # rounded up to the next unit, not '1e+03 ms'
    '1.00 s'
    """
    s = abs(seconds)
    # Each unit while its rounded figure stays below the next unit (0.9996 s is "1.00 s", not "1e+03 ms").
    if s < 1e-6:
        text = f"{seconds * 1e9:.0f}"
        if abs(float(text)) < 1000:
            return f"{text} ns"
    if s < 1e-3:
        text = f"{seconds * 1e6:.3g}"
        if "e" not in text and abs(float(text)) < 1000:
            return f"{text} µs"
    if s < 1:
        text = f"{seconds * 1e3:.3g}"
        if "e" not in text and abs(float(text)) < 1000:
            return f"{text} ms"
    if s < 100:
        text = f"{seconds:.2f}"
        if abs(float(text)) < 100:
            return f"{text} s"
    return f"{seconds:.0f} s"


def format_bytes(n: float) -> str:
    """Bytes in binary units: ``format_bytes(3 * 2**20) == '3.0 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
