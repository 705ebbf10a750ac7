"""Flame graphs: from a real yappi profile's call graphs, and from recorded stacks."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from conctools.events import Frame
from conctools.profiling import profile
from conctools.recorder import Recorder
from conctools.reporting.flame import flame_from_graph, flame_from_stacks, flames


def leaf(n: int) -> int:
    return sum(range(n))


def middle() -> None:
    leaf(200_000)
    leaf(100_000)


def top() -> None:
    middle()
    leaf(20_000)


async def handler() -> None:
    await asyncio.sleep(0.01)
    top()


async def serve() -> None:
    await asyncio.gather(*(asyncio.create_task(handler(), name=f"request-{i}") for i in range(3)))


def paths_to(node: list[Any], name: str, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every path from ``node`` to a frame of function ``name`` (function names only)."""
    here = (*path, node[0].split()[0])
    found = [here] if here[-1] == name else []
    for child in node[2]:
        found += paths_to(child, name, here)
    return found


class TestProfileGraphs:
    def test_per_thread_and_per_task_group(self, recorder: Recorder) -> None:
        """One graph per thread and one for the three tasks that run `handler`; the flame graph of
        each nests leaf under middle under top, with the time the profile measured."""
        with profile() as p:
            t = threading.Thread(target=top, name="cruncher")
            t.start()
            t.join()
            asyncio.run(serve())
        graphs = p.summary()["call_graphs"]
        by_name = {(g["kind"], g["name"]): g for g in graphs}
        assert ("thread", "cruncher") in by_name and ("thread", "MainThread") in by_name
        group = by_name[("tasks", "handler")]
        assert group["tasks"] == 3
        for g in (by_name[("thread", "cruncher")], group):
            root = flame_from_graph(g)
            assert root is not None
            paths = {p[-3:] for p in paths_to(root, "leaf")}
            assert ("top", "middle", "leaf") in paths, paths
        graph = by_name[("thread", "cruncher")]
        cruncher = flame_from_graph(graph)
        assert cruncher is not None
        total_of = {f[0]: f[3] for f in graph["functions"]}
        run = cruncher[2][0]  # a root keeps the whole time the profile measured for it
        name = run[0].split()[0]  # "run", or "Thread.run" (yappi names it by qualname on 3.12+)
        assert name.endswith("run") and run[1] == total_of[name]
        titles = [f["title"] for f in flames(recorder.snapshot())]
        assert "Profile: thread cruncher" in titles and "Profile: 3 tasks running handler" in titles

    def test_recursion_and_bad_data(self) -> None:
        """A recursive edge does not loop forever; malformed graphs give no flame graph."""
        graph = {
            "name": "t",
            "functions": [["a", "x.py", 1, 1.0, 0.1, 1], ["b", "x.py", 2, 0.9, 0.9, 5]],
            "edges": [[0, 1, 0.9, 1], [1, 0, 0.5, 1], [1, 1, 0.2, 3]],
        }
        root = flame_from_graph(graph)
        assert root is not None and root[2][0][0].startswith("a ") and root[2][0][2][0][0].startswith("b ")
        assert flame_from_graph({"functions": "nope"}) is None
        assert flame_from_graph({"functions": [["a", "x", "not a line", 1, 1, 1]], "edges": []}) is None


class TestStackGraphs:
    def test_weighted_stacks_without_plumbing(self) -> None:
        """Stacks (innermost first) add up by weight; the event loop's frames are left out."""

        def frames(*names: str) -> tuple[Frame, ...]:
            return tuple(
                Frame(
                    filename="/usr/lib/python3.11/asyncio/events.py" if n == "_run" else "/app/a.py",
                    lineno=1,
                    function=n,
                )
                for n in names
            )

        root = flame_from_stacks(
            [(frames("search", "_run", "main"), 0.3), (frames("write", "_run", "main"), 0.1)], "blocked"
        )
        assert root is not None and root[1] == 0.4
        main = root[2][0]
        assert main[0].startswith("main") and [c[0].split()[0] for c in main[2]] == ["search", "write"]
        assert flame_from_stacks([], "none") is None
