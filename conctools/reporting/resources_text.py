"""The resources section of the text report (priority 70): what CPU, memory and threads did."""

from __future__ import annotations

from typing import Any

from conctools._units import format_bytes, format_duration
from conctools.events import ResourceSampleEvent
from conctools.recorder import Snapshot

__all__ = ["resources_section"]


def _summary_from_events(snapshot: Snapshot) -> dict[str, Any] | None:
    samples = snapshot.of_kind(ResourceSampleEvent)
    if not samples:
        return None
    first, last = samples[0], samples[-1]
    return {
        "samples": len(samples),
        "cpu_percent_mean": sum(s.cpu_percent for s in samples) / len(samples),
        "cpu_percent_max": max(s.cpu_percent for s in samples),
        "rss_bytes_min": min(s.rss_bytes for s in samples),
        "rss_bytes_max": max(s.rss_bytes for s in samples),
        "rss_bytes_last": last.rss_bytes,
        "num_threads_max": max(s.num_threads for s in samples),
        "num_fds_max": max(s.num_fds for s in samples),
        "ctx_switches_voluntary": last.ctx_switches_voluntary - first.ctx_switches_voluntary,
        "ctx_switches_involuntary": last.ctx_switches_involuntary - first.ctx_switches_involuntary,
        "span_s": (last.ts_ns - first.ts_ns) / 1e9,
    }


def resources_section(snapshot: Snapshot, brief: bool) -> str | None:
    """CPU mean/peak, RSS range, peak threads and fds, context switches over the run."""
    summary = snapshot.sections.get("resources")
    if not isinstance(summary, dict) or "cpu_percent_max" not in summary:
        summary = _summary_from_events(snapshot)
    if summary is None:
        return None
    try:
        span = float(summary.get("span_s") or 0.0)
        vol = int(summary["ctx_switches_voluntary"])
        invol = int(summary["ctx_switches_involuntary"])
        cpu_mean, cpu_max = float(summary["cpu_percent_mean"]), float(summary["cpu_percent_max"])
        rss_min, rss_max, rss_last = (
            format_bytes(int(summary[k])) for k in ("rss_bytes_min", "rss_bytes_max", "rss_bytes_last")
        )
        lines = [
            f"Resources ({int(summary['samples'])} samples over {format_duration(span)})",
            f"  CPU:       mean {cpu_mean:.0f}%, peak {cpu_max:.0f}%",
            f"  memory:    RSS {rss_min} .. {rss_max} (last {rss_last})",
            f"  threads:   peak {int(summary['num_threads_max'])}"
            + (f" ({int(summary['threads_started'])} started)" if summary.get("threads_started") else "")
            + f"    open fds: peak {int(summary['num_fds_max'])}",
            f"  switches:  {vol} voluntary, {invol} involuntary"
            + (f" ({(vol + invol) / span:.0f}/s)" if span > 0 else ""),
        ]
    except (KeyError, TypeError, ValueError):
        return None
    return "\n".join(lines)
