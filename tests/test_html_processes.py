"""report.html of a run with child processes: one collapsible group per process in the timeline.

One real run (`conctools run` of a program with a fork Pool of 4 workers and a spawned child that
runs a thread and blocks its event loop) is shared by the tests; the page is driven in headless
Chromium, and what is asserted is what a person sees: headers with pid and name, rows laid out
or gone, the keyboard, and a finding's link that opens its process's group.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from _browser import CHROMIUM, SKIP_REASON, keep_artefact, probe, screenshot

import conctools.reporting.processes_timeline as processes_timeline
from conctools.recorder import Snapshot
from conctools.reporting.html import html_data, render_html

RUN_TIMEOUT = 240  # a busy machine with two shared cores: generous, and never a measure of speed
HOSTILE = "spawned <b>x</b>\u202eevil"  # markup and a right-to-left override in a process name
SHOWN = "spawned <b>x</b>\\u202eevil"  # how the page shows it: text, the override as its escape

PROGRAM = """
    import asyncio, multiprocessing as mp, threading, time
    import conctools

    @conctools.traced
    def square(x):
        time.sleep(0.005)
        return x * x

    @conctools.traced
    def helper():
        time.sleep(0.02)

    async def blocks():
        time.sleep(0.3)  # blocks the event loop: a stall in this child

    def spawned(ready):
        t = threading.Thread(target=helper, name="spawn-helper")
        t.start()
        t.join()
        asyncio.run(blocks())
        ready.set()

    if __name__ == "__main__":
        pool = mp.get_context("fork").Pool(4)
        print(sum(pool.map(square, range(40), chunksize=1)))
        pool.close()
        pool.join()
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        p = ctx.Process(target=spawned, args=(ready,), name=NAME)
        p.start()
        p.join()
        helper()
        assert ready.is_set()
    """


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`conctools run --out DIR prog.py`: the main process, 4 fork Pool workers, 1 spawned child."""
    tmp = tmp_path_factory.mktemp("processes")
    script = tmp / "prog.py"
    script.write_text(textwrap.dedent(PROGRAM).replace("NAME", repr(HOSTILE)))
    return conctools_run(script)


def conctools_run(script: Path) -> Path:
    """`conctools run --out DIR script` in the script's folder: exit 0, and DIR with its reports."""
    out = script.parent / "out"
    run = subprocess.run(
        [sys.executable, "-m", "conctools", "run", "--out", str(out), str(script)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=script.parent,
    )
    assert run.returncode == 0, run.stderr
    assert (out / "report.html").exists() and (out / "report.json").exists(), run.stderr
    return out


def processes(out: Path) -> list[dict[str, Any]]:
    report = json.loads((out / "report.json").read_text())
    return list(report["sections"]["processes"]["processes"])


def all_pids(out: Path) -> list[int]:
    return [int(p["pid"]) for p in processes(out)]


def spawned_pid(out: Path) -> int:
    (child,) = [p for p in processes(out) if p.get("start_method") == "spawn"]
    return int(child["pid"])


def snapshot_of(out: Path) -> Snapshot:
    return Snapshot.from_dict(json.loads((out / "report.json").read_text()))


class TestGroupsData:
    """What the page is given: one group per process, open or closed by the rule."""

    def test_one_group_per_process_main_open(self, run_dir: Path) -> None:
        """Six groups in the processes' order, each with pid, name and how it ended; the main one
        open, the five children closed (more than COLLAPSE_AFTER); the spawned child's stall counted."""
        groups = html_data(snapshot_of(run_dir))["timeline"]["processes"]
        procs = processes(run_dir)
        assert [(g["pid"], g["name"]) for g in groups] == [(p["pid"], p["name"]) for p in procs]
        assert len(groups) == 6 > processes_timeline.COLLAPSE_AFTER + 1
        assert [g["open"] for g in groups] == [True] + [False] * 5
        assert groups[0]["main"] and groups[0]["exit"] == "exit 0"
        assert all(g["exit"] == "exit status 0" for g in groups[1:])
        spawned = next(g for g in groups if g["pid"] == spawned_pid(run_dir))
        assert spawned["threads"] == 2 and spawned["problems"]["stalls"] >= 1
        assert spawned["anchor"] == f"process-{spawned['pid']}"

    def test_few_children_all_open(self, run_dir: Path) -> None:
        """With at most COLLAPSE_AFTER children every group starts open."""
        data = json.loads((run_dir / "report.json").read_text())
        section = data["sections"]["processes"]
        few = processes_timeline.COLLAPSE_AFTER + 1  # the main process and that many children
        section["processes"] = section["processes"][:few]
        groups = html_data(Snapshot.from_dict(data))["timeline"]["processes"]
        assert len(groups) == few and all(g["open"] for g in groups)

    def test_child_finding_links_to_its_group(self, run_dir: Path) -> None:
        """The spawned child's stall is a finding of the page, titled by its process, with a link
        to its group in the timeline; the name in it is escaped."""
        page = render_html(snapshot_of(run_dir))
        pid = spawned_pid(run_dir)
        assert f'href="#process-{pid}">in the timeline</a>' in page
        assert "<b>x</b>" not in page.split('id="conctools-data"')[0]
        titles = re.findall(r'<span class="title">([^<]*)</span>', page)
        assert any(t.startswith(f"process {pid} ") and "Event loop blocked" in t for t in titles), titles


class TestTablesOfEveryProcess:
    """The page's tables (stalls, spans, locks, waits for a signal) have every process's rows, in a
    column of their own, not only the main process's."""

    def test_rows_of_children(self, run_dir: Path) -> None:
        """The spawned child's stall is in the slow-callback table (its line, and placed on the run's
        timeline); the pool workers' and the spawned child's spans are in the spans table."""
        data = html_data(snapshot_of(run_dir))
        pid = spawned_pid(run_dir)
        label = f"pid {pid} \u00b7 {HOSTILE}"
        mine = [r for r in data["slow_sites"] if r.get("process") == label]
        # (A loaded machine can block the child's loop elsewhere too: that row is a real stall, not this one.)
        blocks = [r for r in mine if r.get("function") == "blocks"]
        assert len(blocks) == 1, mine
        stall = blocks[0]
        assert stall["culprit"].endswith("prog.py:15") and stall["function"] == "blocks", stall
        assert stall["stalls"] == 1 and stall["total_s"] >= 0.25 and sum(stall["spark"]) == 1, stall
        assert all(r.get("process") for r in data["slow_sites"] + data["spans"] + data["locks"])
        spans = {(r["process"], r["span"]): r["calls"] for r in data["spans"]}
        workers = {p["pid"]: p["name"] for p in processes(run_dir) if p.get("start_method") == "fork"}
        square = {k: v for k, v in spans.items() if k[1].endswith("square")}
        assert square and sum(square.values()) == 40, spans  # every job, by the worker that ran it
        assert all(any(k[0] == f"pid {w} \u00b7 {n}" for w, n in workers.items()) for k in square), square
        helpers = sorted(k[0] for k in spans if k[1].endswith("helper"))
        main_pid = processes(run_dir)[0]["pid"]
        assert helpers == sorted([label, f"pid {main_pid} \u00b7 MainProcess"]), spans

    def test_a_run_without_children_has_no_process_column(self, tmp_path: Path) -> None:
        script = tmp_path / "alone.py"
        script.write_text(
            "import conctools, time\n@conctools.traced\ndef work():\n    time.sleep(0.01)\nwork()\n", encoding="utf-8"
        )
        data = html_data(snapshot_of(conctools_run(script)))
        assert [r["span"] for r in data["spans"]] == ["work"]
        assert not any("process" in r for r in data["spans"] + data["slow_sites"] + data["locks"])

    @pytest.mark.browser
    @pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
    def test_the_process_column_in_chromium(self, run_dir: Path, tmp_path: Path) -> None:
        """In the browser: the slow-callback table has a "process" column whose cell names the
        spawned child as text (its markup not obeyed)."""
        body = """
          function grid(title) {
            var t = document.querySelector('table[aria-label="' + title + '"]');
            if (!t) return null;
            function texts(nodes) { return Array.prototype.map.call(nodes, function (n) { return n.textContent; }); }
            return {head: texts(t.querySelectorAll("thead th")),
                    rows: Array.prototype.map.call(t.querySelectorAll("tbody tr"), function (tr) {
                      return texts(tr.children);
                    })};
          }
          out.stalls = grid("Slow callbacks by culprit site");
          out.spans = grid("Traced spans");
          out.b = document.querySelectorAll("#tables b").length;
        """
        out, console = probe((run_dir / "report.html").read_text(encoding="utf-8"), body, tmp_path)
        assert console == [] and out["errors"] == [] and out["error"] is None, (console, out)
        assert "probeError" not in out, out["probeError"]
        stalls, spans = out["stalls"], out["spans"]
        assert stalls is not None and stalls["head"][:2] == ["process", "culprit"], stalls
        pid = spawned_pid(run_dir)
        assert any(r[0] == f"pid {pid} \u00b7 {SHOWN}" and r[1].endswith("prog.py:15") for r in stalls["rows"]), stalls
        assert spans is not None and spans["head"][:2] == ["process", "span"], spans
        assert out["b"] == 0


# Measures every row of the timeline's label column as laid out (box, computed style).
ROWS_JS = """
  function rows() {
    return all("#tl-rows .tlrow").map(function (r) {
      var box = r.getBoundingClientRect(), cs = getComputedStyle(r), b = r.querySelector("button");
      return {cls: r.className, text: r.textContent, id: r.id, h: box.height, w: box.width,
              shown: box.height > 0 && box.width > 0 && cs.display !== "none" && cs.visibility !== "hidden",
              expanded: r.getAttribute("aria-expanded"),
              button: b ? {expanded: b.getAttribute("aria-expanded"), label: b.getAttribute("aria-label"),
                           tag: b.tagName, type: b.type} : null};
    });
  }
  function canvasRows() { return document.getElementById("timeline").getBoundingClientRect().height / 20; }
"""


def row_named(rows: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["text"] == text and r["shown"]]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
class TestGroupsInChromium:
    """The groups in the browser: headers, collapse and expand, keyboard, links from findings."""

    def test_headers_and_default_state(self, run_dir: Path, tmp_path: Path) -> None:
        """One header per process, a real button with aria-expanded and the pid and name; the main
        process's thread row is laid out, the closed children's thread rows are not on the page."""
        body = ROWS_JS + "out.rows = rows(); out.canvas = canvasRows(); out.b = all('#tl-rows b').length;"
        out, console = probe((run_dir / "report.html").read_text(encoding="utf-8"), body, tmp_path)
        assert console == [] and out["errors"] == [] and out["error"] is None, (console, out)
        assert "probeError" not in out, out["probeError"]
        heads = [r for r in out["rows"] if "process" in r["cls"].split()]
        procs = processes(run_dir)
        assert len(heads) == len(procs) == 6
        for head, p in zip(heads, procs, strict=True):
            name = SHOWN if p["name"] == HOSTILE else p["name"]
            assert f"pid {p['pid']} \u00b7 {name} \u00b7 exit" in head["text"], head["text"]
            assert head["id"] == f"process-{p['pid']}" and head["shown"]
            assert head["button"]["tag"] == "BUTTON" and head["button"]["type"] == "button"
            assert f"pid {p['pid']}" in head["button"]["label"]
        assert [h["button"]["expanded"] for h in heads] == ["true"] + ["false"] * 5
        assert [h["expanded"] for h in heads] == ["true"] + ["false"] * 5
        spawned = heads[-1]
        assert "2 threads" in spawned["button"]["label"] and "stall" in spawned["button"]["label"]
        assert out["b"] == 0  # the <b> in the child's name stayed text
        (main_thread,) = row_named(out["rows"], "MainThread")  # the main process's: the only one shown
        assert main_thread["h"] == 20
        assert row_named(out["rows"], "spawn-helper") == []
        assert out["canvas"] == len(out["rows"]) == 7  # six headers and the main thread's row
        shot = tmp_path / "groups.png"
        assert screenshot(run_dir / "report.html", shot, tmp_path, height=1200) == []
        keep_artefact(shot, "report-process-groups.png")

    def test_click_and_keyboard_expand_and_collapse(self, run_dir: Path, tmp_path: Path) -> None:
        """Clicking a child's header lays out its thread rows (and the canvas grows by as many rows);
        ArrowLeft on the focused header closes it again, ArrowRight opens it; the main one collapses too."""
        pid = spawned_pid(run_dir)
        body = (
            ROWS_JS
            + f"""
          var head = function () {{ return document.getElementById("process-{pid}"); }};
          out.closed = rows(); out.closedCanvas = canvasRows();
          head().querySelector("button").click();
          out.opened = rows(); out.openedCanvas = canvasRows();
          out.focused = document.activeElement === head().querySelector("button");
          document.activeElement.dispatchEvent(new KeyboardEvent("keydown", {{key: "ArrowLeft", bubbles: true}}));
          out.keyClosed = rows();
          document.activeElement.dispatchEvent(new KeyboardEvent("keydown", {{key: "ArrowRight", bubbles: true}}));
          out.keyOpened = rows();
          document.getElementById("process-{all_pids(run_dir)[0]}").querySelector("button").click();
          out.mainClosed = rows();
        """
        )
        out, console = probe((run_dir / "report.html").read_text(encoding="utf-8"), body, tmp_path)
        assert console == [] and out["errors"] == [] and out["error"] is None, (console, out)
        assert "probeError" not in out, out["probeError"]
        assert row_named(out["closed"], "spawn-helper") == []
        (helper,) = row_named(out["opened"], "spawn-helper")
        assert helper["h"] == 20 and helper["w"] > 100 and "thread" in helper["cls"].split()
        assert len(row_named(out["opened"], "MainThread")) == 2  # the main process's and the child's
        head = next(r for r in out["opened"] if r["id"] == f"process-{pid}")
        assert head["expanded"] == "true" and head["button"]["expanded"] == "true"
        assert out["openedCanvas"] - out["closedCanvas"] == len(out["opened"]) - len(out["closed"]) >= 3
        assert out["focused"] is True
        assert row_named(out["keyClosed"], "spawn-helper") == []
        assert len(row_named(out["keyOpened"], "spawn-helper")) == 1
        assert len(row_named(out["mainClosed"], "MainThread")) == 1  # only the child's is left
        main_head = next(r for r in out["mainClosed"] if r["id"] == f"process-{all_pids(run_dir)[0]}")
        assert main_head["button"]["expanded"] == "false"

    def test_finding_link_opens_the_group(self, run_dir: Path, tmp_path: Path) -> None:
        """The child's finding's "in the timeline" link opens its closed group and shows its rows."""
        pid = spawned_pid(run_dir)
        body = (
            ROWS_JS
            + f"""
          out.before = rows();
          var link = document.querySelector('#findings a[href="#process-{pid}"]');
          out.link = link ? link.textContent : null;
          if (link) link.click();
          out.after = rows();
          var head = document.getElementById("process-{pid}").getBoundingClientRect();
          var box = document.getElementById("tl-body").getBoundingClientRect();
          out.inView = head.top >= box.top - 1 && head.bottom <= box.bottom + 1;
        """
        )
        out, console = probe((run_dir / "report.html").read_text(encoding="utf-8"), body, tmp_path)
        assert console == [] and out["errors"] == [] and out["error"] is None, (console, out)
        assert "probeError" not in out, out["probeError"]
        assert out["link"] == "in the timeline"
        assert row_named(out["before"], "spawn-helper") == []
        assert len(row_named(out["after"], "spawn-helper")) == 1
        head = next(r for r in out["after"] if r["id"] == f"process-{pid}")
        assert head["button"]["expanded"] == "true" and out["inView"] is True
