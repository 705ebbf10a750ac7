"""The unit formatters every report uses (``conctools._units``)."""

from __future__ import annotations

import pytest

from conctools._units import format_bytes, format_duration


class TestFormatDuration:
    """A duration reads as a number and a unit, at three significant figures."""

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0.0123, "12.3 ms"),
            (2.5, "2.50 s"),
            (0.000123, "123 µs"),
            (1.5e-7, "150 ns"),
            (250.0, "250 s"),
            (-0.5, "-500 ms"),
        ],
    )
    def test_each_unit(self, seconds: float, text: str) -> None:
        """Each unit in its range."""
        assert format_duration(seconds) == text

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [(0.9996, "1.00 s"), (0.0009996, "1 ms"), (9.9996e-7, "1 µs"), (99.996, "100 s")],
    )
    def test_rounding_up_to_the_next_unit_reads_in_that_unit(self, seconds: float, text: str) -> None:
        """A wait of 999.6 ms was printed '1e+03 ms' (a report a person reads, and which
        ``conctools dump`` twice in a row did not match with its durations masked)."""
        assert format_duration(seconds) == text


def test_format_bytes() -> None:
    """Bytes in binary units."""
    assert format_bytes(3 * 2**20) == "3.0 MiB"
    assert format_bytes(512) == "512 B"
