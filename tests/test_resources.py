"""The psutil sampler: a named daemon thread, real samples, bounded series, a summary section."""

from __future__ import annotations

import os
import threading
import time

import pytest

from conctools.events import ResourceSampleEvent
from conctools.recorder import Recorder
from conctools.resources import THREAD_NAME, ResourceSampler, sample_resources


def wait_for(predicate: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


class TestSampler:
    def test_named_daemon_thread(self, recorder: Recorder) -> None:
        """The sampler runs as daemon thread 'conctools-resources' and stops on exit."""
        with sample_resources(interval_s=0.01) as sampler:
            mine = [t for t in threading.enumerate() if t.name == THREAD_NAME]
            assert len(mine) == 1 and mine[0].daemon
            assert sampler.running
        assert not sampler.running
        assert not [t for t in threading.enumerate() if t.name == THREAD_NAME]

    def test_samples_are_real(self, recorder: Recorder) -> None:
        """Samples carry this process's RSS, thread count, fds and monotonic switch counters."""
        with sample_resources(interval_s=0.01) as sampler:
            assert wait_for(lambda: sampler.count >= 5)
            files = [open(os.devnull) for _ in range(20)]  # noqa: SIM115
            try:
                assert wait_for(lambda: recorder.snapshot().of_kind(ResourceSampleEvent)[-1].num_fds >= 20)
            finally:
                for f in files:
                    f.close()
        samples = recorder.snapshot().of_kind(ResourceSampleEvent)
        assert len(samples) >= 5
        assert all(s.rss_bytes > 1_000_000 and s.num_threads >= 1 and s.cpu_percent >= 0 for s in samples)
        assert all(s.thread_name == THREAD_NAME for s in samples[1:-1])
        vol = [s.ctx_switches_voluntary for s in samples]
        assert vol == sorted(vol)
        assert [s.ts_ns for s in samples] == sorted(s.ts_ns for s in samples)

    def test_first_and_last_sample_even_when_short(self, recorder: Recorder) -> None:
        """A block shorter than the interval still gets a sample at start and at stop."""
        with sample_resources(interval_s=60):
            pass
        assert len(recorder.snapshot().of_kind(ResourceSampleEvent)) == 2

    def test_stop_is_prompt(self, recorder: Recorder) -> None:
        """stop() wakes the sampler at once instead of waiting out a long interval."""
        sampler = sample_resources(interval_s=30).start()
        started = time.monotonic()
        sampler.stop()
        assert time.monotonic() - started < 5

    def test_bad_interval(self) -> None:
        """A zero, negative or infinite interval is a ValueError."""
        for bad in (0, -1, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="interval_s"):
                ResourceSampler(bad)


class TestSummary:
    def test_series_is_bounded(self, recorder: Recorder) -> None:
        """The series keeps at most max_points samples however long the run, spread over all of it."""
        sampler = ResourceSampler(interval_s=3600, recorder=recorder, max_points=8)
        sampler.start()
        try:
            for _ in range(100):
                sampler.sample()
        finally:
            sampler.stop()
        summary = sampler.summary()
        assert summary["samples"] == 102
        assert 2 <= len(summary["series"]) < 8
        first_ts = recorder.snapshot().of_kind(ResourceSampleEvent)[0].ts_ns
        assert summary["series"][0]["ts_ns"] == first_ts

    def test_section_published(self, recorder: Recorder) -> None:
        """The 'resources' section has peaks, means and deltas, JSON-able."""
        with sample_resources(interval_s=0.01) as sampler:
            assert wait_for(lambda: sampler.count >= 3)
        section = recorder.snapshot().sections["resources"]
        assert section["samples"] >= 3
        assert section["rss_bytes_max"] >= section["rss_bytes_min"] > 0
        assert section["num_threads_max"] >= 2  # the program's thread and the sampler
        assert section["ctx_switches_voluntary"] >= 0
        assert 0 <= section["cpu_percent_mean"] <= section["cpu_percent_max"]


class TestTextSection:
    def test_from_section_and_from_events(self, recorder: Recorder) -> None:
        """The resources section reads the sampler's summary, or the sample events without one."""
        from conctools.reporting.resources_text import resources_section

        assert resources_section(recorder.snapshot(), False) is None
        with sample_resources(interval_s=0.01) as sampler:
            assert wait_for(lambda: sampler.count >= 3)
        text = resources_section(recorder.snapshot(), False)
        assert text is not None and text.startswith("Resources (") and "RSS" in text and "peak" in text
        recorder.remove_section("resources")
        from_events = resources_section(recorder.snapshot(), False)
        assert from_events is not None and from_events.splitlines()[1:] == text.splitlines()[1:]


class TestShortRuns:
    """What short runs got wrong (issue 18, item 15): a first-sample CPU spike and uncounted threads."""

    def test_cpu_peak_is_never_a_ticks_rounding(self) -> None:
        """The first sample, taken right after start, used to read one CPU tick over microseconds as
        thousands of percent (about 1 run in 70): 600 short runs never exceed what the cores can give."""
        import os

        peaks = []
        for _ in range(600):
            with sample_resources(interval_s=60, recorder=Recorder()) as sampler:
                pass
            peaks.append(sampler.summary()["cpu_percent_max"])
        ceiling = 100.0 * (os.cpu_count() or 1) * 1.5  # generous: a measured window is at least 50 ms
        assert max(peaks) <= ceiling, sorted(peaks)[-5:]

    def test_threads_that_no_sample_saw_are_counted(self, recorder: Recorder) -> None:
        """50 threads alive together and 150 short ones, between two samples: peak >= 51, 200 started."""
        from conctools.reporting.resources_text import resources_section

        release = threading.Event()
        with sample_resources(interval_s=60, recorder=recorder) as sampler:
            waiting = [threading.Thread(target=release.wait, name=f"w{i}") for i in range(50)]
            for t in waiting:
                t.start()
            short = [threading.Thread(target=lambda: None) for _ in range(150)]
            for t in short:
                t.start()
            for t in short:
                t.join()
            release.set()
            for t in waiting:
                t.join()
        summary = sampler.summary()
        assert summary["samples"] == 2  # the first and the last: no sample fell while they ran
        assert summary["threads_started"] == 200
        assert summary["num_threads_max"] >= 51
        text = resources_section(recorder.snapshot(), False) or ""
        assert "(200 started)" in text


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="/proc")
class TestReadsHoldTheGil:
    """On Linux a sample reads /proc with the GIL held (issue 12): Python's file objects and os.listdir()
    release it at every call and entry, and each time it came back only when a thread that computes gave
    it up (its switch interval): ~10 hand-overs, ~50 ms, per sample."""

    def test_no_call_that_releases_the_gil(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With the file objects and directory listings of Python out of reach, a sample still reads
        the same threads and descriptors (each way the descriptors are counted: the kernel's count, or a
        listing through libc)."""
        import builtins

        from conctools.resources import _ProcSelf

        proc = _ProcSelf()
        if proc._reader is None:
            pytest.skip("no ctypes here: the files are read through Python's calls")
        fd_size = proc._fd_size

        def refused(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"a call that releases the GIL: {args}")

        # A thread of an earlier test may still end (or a descriptor close) between two reads: the four reads
        # are taken again until they agree, a few times at most; reads that are wrong disagree every time.
        for _ in range(20):
            proc._fd_size = fd_size
            before = proc.read()
            with monkeypatch.context() as patched:
                for name in ("listdir", "scandir", "read", "open"):
                    patched.setattr(os, name, refused)
                patched.setattr(builtins, "open", refused)
                during = proc.read()
                proc._fd_size = False  # a kernel before 6.2: a listing through libc
                listed = proc.read()
            after = proc.read()
            if during[2:4] == listed[2:4] == before[2:4] == after[2:4]:
                break
            time.sleep(0.05)
        assert during[2:4] == listed[2:4] == before[2:4] == after[2:4]
        assert during[1] > 0 and during[0] >= before[0]
