"""What the ``instr_*.py`` benchmarks share: a Python snippet run under valgrind's callgrind, and the
instructions one item of it costs (N items against 2N: start-up, imports and set-up cancel out).

    from _callgrind import instructions, per_item, require_valgrind, run_cases, print_table

Instruction counts do not move with the machine's load (a shared 2-core machine moves wall times by
10% and more), which is why the cost work of issue 12 is judged by them first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

_T = TypeVar("_T")
_V = TypeVar("_V")


def require_valgrind(script: str) -> None:
    """Exit with status 2 and a one-line error when valgrind is missing."""
    if shutil.which("valgrind") is None:
        print(f"{script}: valgrind is not installed (Debian package valgrind)", file=sys.stderr)
        raise SystemExit(2)


def run(code: str, n: int, *, out: str = "/dev/null", env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``python -c code n`` under callgrind: (instructions collected, the run's stderr)."""
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", code, str(n)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, **env} if env is not None else None,
    )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if not match:
        raise RuntimeError(result.stderr[-2000:])
    return int(match.group(1)), result.stderr


def instructions(code: str, n: int, **kwargs: Any) -> int:
    """The instructions of ``python -c code n`` under callgrind (see :func:`run`)."""
    return run(code, n, **kwargs)[0]


def per_item(code: str, n: int, **kwargs: Any) -> float:
    """The instructions one item costs: the run with ``2n`` items minus the one with ``n``, over ``n``."""
    return (instructions(code, 2 * n, **kwargs) - instructions(code, n, **kwargs)) / n


def run_cases(measure: Callable[[_V], _T], cases: Mapping[str, _V]) -> dict[str, _T]:
    """``measure`` of every case, two at a time (the machine has two cores), in the cases' order."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(cases, pool.map(measure, cases.values())))


def print_table(title: str, headers: Iterable[str], rows: Iterable[Iterable[object]]) -> None:
    """A Markdown table under its title, as the README quotes it."""
    headers = list(headers)
    print(f"{title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|---|" + "---:|" * (len(headers) - 1))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
