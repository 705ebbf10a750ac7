"""`pytest -n N --conctools` (pytest-xdist): a worker's channel thread is not the program's, so a
test's hang is found there as without xdist (it never was: that thread always waits on its pipe,
so the run looked able to progress), and a healthy test is still no alarm."""

from __future__ import annotations

import textwrap

import pytest

from tests.test_pytest_plugin import outcomes, run

pytest_plugins = ["pytester"]
pytest.importorskip("xdist")

TESTS = textwrap.dedent(
    """
    import threading, time

    def test_hangs():
        ev = threading.Event()
        parked = threading.Thread(target=ev.wait, name="parked")
        parked.start()
        parked.join()

    def test_sleeps_past_the_timeout():
        time.sleep(3)
    """
)


def test_hang_found_in_an_xdist_worker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_xd=TESTS)
    result = run(
        pytester, "-n", "1", "--conctools", "--conctools-deadlock-timeout", "1", "-rA", "-p", "xdist", timeout=120
    )
    found = outcomes(result)
    assert found.get("test_hangs") == "FAILED", result.stdout.str()[-3000:]
    assert found.get("test_sleeps_past_the_timeout") == "PASSED", result.stdout.str()[-3000:]
    text = result.stdout.str()
    assert "hang: nothing progressed" in text and "parked" in text, text[-3000:]
