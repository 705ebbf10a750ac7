"""report.html: self-contained, hostile names inert, findings first, bounded, and it works in headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _browser import CHROMIUM, SKIP_REASON, chromium, console_lines, keep_artefact, probe, screenshot
from _report_samples import HOSTILE, HOSTILE_NAMES, LINE_SEP, QUOTES, SCRIPT_END, rich_snapshot

import conctools.reporting.html as html_module
from conctools.recorder import Recorder, Snapshot
from conctools.reporting.html import html_data, render_html, script_json
from conctools.tracing import traced

DATA_RE = re.compile(r'<script type="application/json" id="conctools-data">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def rich() -> Snapshot:
    return rich_snapshot()


def embedded_data(page: str) -> dict[str, object]:
    m = DATA_RE.search(page)
    assert m is not None
    data = json.loads(m.group(1))
    assert isinstance(data, dict)
    return data


class TestScriptJson:
    def test_cannot_close_its_element(self) -> None:
        """<, >, &, U+2028 and U+2029 are escaped; the JSON still decodes to the same data."""
        data = {"names": [*HOSTILE_NAMES, "<!--", "]]>"]}
        text = script_json(data)
        for char in ("<", ">", "&", "\u2028", "\u2029"):
            assert char not in text
        assert json.loads(text) == data

    def test_non_finite_numbers(self) -> None:
        """NaN and infinity become null (JSON.parse rejects them)."""
        assert json.loads(script_json({"x": float("nan"), "y": float("inf")})) == {"x": None, "y": None}


class TestPage:
    def test_hostile_names_never_markup(self, rich: Snapshot) -> None:
        """No program-provided name appears raw in the page; each one round-trips through the data."""
        page = render_html(rich)
        assert "<img" not in page
        assert "alert(2)" not in page.replace("alert(2)\\u003c", "").replace("alert(2)&lt;", "")
        assert page.count("<script") == 2 and page.count("</script>") == 2
        assert "\u2028" not in page and "\u2029" not in page
        text = json.dumps(embedded_data(page), ensure_ascii=False)
        for name in HOSTILE_NAMES:
            assert json.dumps(name, ensure_ascii=False)[1:-1] in text

    def test_title_escaped(self, recorder: Recorder) -> None:
        """The command line in the <title> and header is HTML-escaped."""
        recorder.meta["command"] = f"prog.py {HOSTILE} {QUOTES}"
        page = render_html(recorder.snapshot())
        assert "prog.py &lt;img src=x onerror=alert(1)&gt; it&#x27;s &quot;quoted&quot; &amp;" in page

    def test_a_name_like_a_placeholder_stays_a_name(self, recorder: Recorder) -> None:
        """A span named like the page's placeholders is data, not a place to fill in."""
        for name in ("@DATA@", "@FINDINGS@", "@SCRIPT@"):
            with contextlib.suppress(ValueError), traced(name):
                raise ValueError(name)
        page = render_html(recorder.snapshot())
        assert page.count("<script") == 2
        assert "&#x27;@DATA@&#x27; raised 1 time in 1 calls" in page  # a finding, as text
        assert {s["span"] for s in embedded_data(page)["spans"]} == {"@DATA@", "@FINDINGS@", "@SCRIPT@"}  # type: ignore[attr-defined]

    def test_self_contained(self, rich: Snapshot) -> None:
        """No external resource: no http(s) URL, no <link>, no src= attribute; a CSP forbids network."""
        page = render_html(rich)
        assert not re.search(r"https?://", page.replace("http://www.w3.org/2000/svg", ""))
        assert "<link" not in page and not re.search(r"<[a-z]+\b[^>]*\ssrc=", page.split('id="conctools-data"')[0])
        csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
        assert csp is not None and "default-src 'none'" in csp.group(1)

    def test_script_cannot_break_out(self) -> None:
        """The inlined script holds nothing that changes how the HTML parser reads a script element."""
        script = (Path(__file__).parent.parent / "conctools" / "reporting" / "report.js").read_text()
        for token in ("</script", "<script", "<!--"):
            assert token not in script.lower()
        assert not re.search(r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\(", script)

    def test_csp_pins_the_script(self, rich: Snapshot) -> None:
        """The CSP allows exactly the page's own script, by hash."""
        page = render_html(rich)
        script = page.rsplit("<script>", 1)[1].split("</script>", 1)[0]
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"script-src 'sha256-{digest}'" in page

    def test_findings_come_first_as_markup(self, rich: Snapshot) -> None:
        """The ranked findings are HTML before the charts, the timeline and the data: they show
        before any script runs. Deadlocks and hangs rank first, each with a link to its detail."""
        page = render_html(rich)
        findings = page.index('id="findings"')
        assert findings < page.index('id="charts"') < page.index('id="timeline-section"') < page.index("conctools-data")
        titles = re.findall(r'<span class="sev">(\w+)</span> <span class="title">([^<]*)</span>', page)
        assert [sev for sev, _ in titles[:2]] == ["CRITICAL", "CRITICAL"]
        kinds = " | ".join(t for _, t in titles)
        assert titles[0][1].startswith("Deadlock:") and titles[1][1].startswith("Hang:")
        for expected in ("lock-order inversion", "Event loop blocked"):
            assert expected in kinds, kinds
        assert 'href="#deadlocks"' in page and 'href="#locks"' in page and 'href="#slow-callbacks"' in page

    def test_data_has_every_kind(self, rich: Snapshot) -> None:
        """The embedded data has the timeline, charts, tables, flame graphs, problems and sections."""
        data = html_data(rich)
        tl = data["timeline"]
        assert {tl["cats"][s[4]] for s in tl["slices"]} == {"span", "lock_wait", "lock_hold", "slow_callback"}
        assert tl["flows"] and tl["handoffs"] == len(tl["flows"])
        assert data["deadlocks"] and data["hangs"] and data["lock_orders"]
        assert data["slow_sites"][0]["culprit"] == "app/prog.py:33" and data["slow_sites"][0]["function"] == "blocking"
        assert {c["id"] for c in data["charts"]["series"]} >= {"loop-lag", "stalls", "lock-waits", "cpu", "rss"}
        assert {f["source"] for f in data["flames"]} == {"stalls", "lock_waits"}
        assert {r["lock"] for r in data["locks"]} == {HOSTILE, QUOTES}
        assert "profile" in data["sections"] and "locks" not in data["sections"]
        names = {data["strings"][t[1]] for t in tl["tracks"]}
        assert {"MainThread", SCRIPT_END, f"task {HOSTILE}", f"task {LINE_SEP}"} <= names

    def test_one_row_per_thread(self, rich: Snapshot) -> None:
        """Every thread is one track of the timeline whatever overlapped on it; tasks have their own."""
        tl = html_data(rich)["timeline"]
        threads = [t for t in tl["tracks"] if t[2] == "thread"]
        assert len(threads) == len({t[1] for t in threads})
        assert all(t[3] == t[0] for t in threads)  # a thread's track is its own thread

    def test_old_slices_summarised_not_dropped(self, rich: Snapshot, monkeypatch: pytest.MonkeyPatch) -> None:
        """Past MAX_SLICES the page keeps the newest (and the longest) slices and says how many
        older ones it summarised, and from when."""
        full = html_data(rich)["timeline"]
        monkeypatch.setattr(html_module, "MAX_SLICES", 4)
        monkeypatch.setattr(html_module, "MAX_LONGEST", 1)
        tl = html_data(rich)["timeline"]
        kept, summary = tl["slices"], tl["summarised"]
        assert len(kept) <= 5 and summary["slices"] == len(full["slices"]) - len(kept) > 0
        assert summary["of"] == len(full["slices"])
        newest = max(s[1] + s[2] for s in full["slices"])
        assert max(s[1] + s[2] for s in kept) == newest
        longest = max(s[2] for s in full["slices"])
        assert longest in {s[2] for s in kept}
        assert 0 < summary["before_us"] <= newest
        for band in tl["thread_bands"].values():  # the older activity is still drawn, as bands
            assert any(v > 0 for v in band)

    def test_empty_snapshot(self, recorder: Recorder) -> None:
        """A run with nothing recorded still renders a page, and says nothing was found."""
        page = render_html(recorder.snapshot())
        assert embedded_data(page)["timeline"]["tracks"] == []  # type: ignore[index]
        assert "Nothing found" in page


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
class TestChromium:
    def test_renders_without_console_errors(self, rich: Snapshot, tmp_path: Path) -> None:
        """The page runs its script (data-rendered), logs nothing, and hostile names are text nodes."""
        page = tmp_path / "report.html"
        page.write_text(render_html(rich), encoding="utf-8")
        result = chromium(["--dump-dom", "--virtual-time-budget=10000", page.as_uri()], tmp_path)
        assert console_lines(result.stderr) == []
        dom = result.stdout
        assert 'data-rendered="1"' in dom and 'data-error="' not in dom
        assert "<img" not in dom  # the task named <img ...> never became an element
        assert "&lt;img src=x onerror=alert(1)&gt;" in dom
        assert "&lt;/script&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in dom
        assert "<table" in dom and "<canvas" in dom and "<svg" in dom

    def test_empty_run_renders(self, recorder: Recorder, tmp_path: Path) -> None:
        """A run that recorded nothing: the page still draws, says so, and logs nothing."""
        body = "out.empty = texts('p.empty'); out.none = texts('p.none');"
        out, console = probe(render_html(recorder.snapshot()), body, tmp_path)
        assert console == [] and out["errors"] == [] and out["error"] is None, (console, out)
        assert out["none"] and "No thread or task recorded anything on the timeline." in out["empty"]

    def test_tables_sort_filter_keys_and_timeline_hovers(self, rich: Snapshot, tmp_path: Path) -> None:
        """A header sorts (numbers as numbers, largest first, then both ways), the filter narrows, arrow
        keys move between rows, Enter opens a row's detail; hovering a slice shows its details; zoom works."""
        body = """
          var box = document.getElementById("locks").parentNode, table = box.querySelector("table");
          function first() { return texts("tbody tr td:first-child", table); }
          var th = all("th button", table).filter(function (b) { return b.textContent === "wait p99"; })[0];
          th.click(); out.desc = first(); th.click(); out.asc = first();
          var input = box.querySelector("input[type=search]");
          input.value = "quoted"; input.dispatchEvent(new Event("input")); out.filtered = first();
          input.value = ""; input.dispatchEvent(new Event("input"));
          var row = table.tBodies[0].rows[0]; row.focus();
          row.dispatchEvent(new KeyboardEvent("keydown", {key: "ArrowDown", bubbles: true}));
          out.focused = document.activeElement === table.tBodies[0].rows[1];
          document.activeElement.dispatchEvent(new KeyboardEvent("keydown", {key: "Enter", bubbles: true}));
          out.detail = table.querySelector("tr.detail") ? table.querySelector("tr.detail").textContent : "";
          var canvas = document.getElementById("timeline"), tip = document.getElementById("tip");
          var rect = canvas.getBoundingClientRect();
          out.tip = "";
          for (var y = 10; y < rect.height && !out.tip; y += 20) {
            for (var x = 2; x < rect.width && !out.tip; x += 2) {
              canvas.dispatchEvent(new MouseEvent("mousemove", {clientX: rect.left + x, clientY: rect.top + y}));
              if (!tip.hidden && /took/.test(tip.textContent)) out.tip = tip.textContent;
            }
          }
          var at = {deltaY: -100, ctrlKey: true, clientX: rect.left + 100, clientY: rect.top + 10};
          canvas.dispatchEvent(new WheelEvent("wheel", at));
          canvas.focus(); canvas.dispatchEvent(new KeyboardEvent("keydown", {key: "+"}));
          out.axis = document.getElementById("axis").width > 0;
        """
        out, console = probe(render_html(rich), body, tmp_path)
        assert console == [] and out["errors"] == [] and out["error"] is None, (console, out)
        assert "probeError" not in out, out["probeError"]
        assert out["asc"] == [QUOTES, HOSTILE]  # 1 ms before 2 ms
        assert out["desc"] == [HOSTILE, QUOTES]
        assert out["filtered"] == [QUOTES]
        assert out["focused"] is True and "created at" in out["detail"]
        assert "took" in out["tip"] and "at " in out["tip"]

    def test_real_run_report(self, tmp_path: Path) -> None:
        """report.html written by `conctools run --profile` of a threaded asyncio program renders
        cleanly, with the profile's flame graphs (per thread, per task group) next to its tables."""
        script = tmp_path / "prog.py"
        script.write_text(
            "import asyncio, threading\n"
            "import conctools\n"
            "@conctools.traced\n"
            "def spin(n):\n"
            "    return sum(range(n))\n"
            "async def job():\n"
            "    for _ in range(3):\n"
            "        await asyncio.sleep(0.01)\n"
            "        spin(10_000)\n"
            "async def main():\n"
            f"    await asyncio.gather(*(asyncio.create_task(job(), name={HOSTILE!r} + str(i)) for i in range(2)))\n"
            f"t = threading.Thread(target=spin, args=(100_000,), name={LINE_SEP!r})\n"
            "t.start()\n"
            "asyncio.run(main())\n"
            "t.join()\n"
        )
        out_dir = tmp_path / "out"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "conctools",
                "run",
                "--profile",
                "--sample-interval",
                "0.02",
                "--out",
                str(out_dir),
                str(script),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        page = (out_dir / "report.html").read_text(encoding="utf-8")
        body = """
          out.graphs = texts("#flames select option");
          var c = document.querySelector("canvas.flame"); out.flame = c ? c.height : 0;
          out.tables = texts("#flames h2");
          out.img = document.getElementsByTagName("img").length;
        """
        out, console = probe(page, body, tmp_path)
        assert console == [] and out["errors"] == [] and out["error"] is None, (console, out)
        assert any(g.startswith("Profile: thread MainThread") for g in out["graphs"]), out["graphs"]
        assert "Profile: 2 tasks running job" in out["graphs"], out["graphs"]
        assert out["flame"] > 0 and out["img"] == 0
        assert "Profile per asyncio task" in out["tables"] and any(
            t.startswith("Profile: top functions") for t in out["tables"]
        )
        shot = tmp_path / "run.png"
        assert screenshot(out_dir / "report.html", shot, tmp_path, height=1400) == []
        keep_artefact(shot, "report-real-run.png")
