"""Small unit formatters shared by log lines and reporters."""

from __future__ import annotations

__all__ = ["format_bytes", "format_duration"]


# (the magnitude below which a unit is tried, its scale, its format, its name, the rounded figure it must
# stay below)
_DURATION_UNITS = (
    (1e-6, 1e9, ".0f", "ns", 1000),
    (1e-3, 1e6, ".3g", "µs", 1000),
    (1.0, 1e3, ".3g", "ms", 1000),
    (100.0, 1.0, ".2f", "s", 100),
)


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
    for below, scale, spec, unit, bound in _DURATION_UNITS:
        if s < below:
            text = format(seconds * scale, spec)
            if "e" not in text and abs(float(text)) < bound:
                return f"{text} {unit}"
    return f"{seconds:.0f} s"


def format_bytes(n: float) -> str:
    """Bytes in binary units: ``format_bytes(3 * 2**20) == '3.0 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
