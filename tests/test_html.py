"""report.html: self-contained, hostile names inert, and it renders in headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _report_samples import HOSTILE, HOSTILE_NAMES, LINE_SEP, QUOTES, rich_snapshot

from conctools.recorder import Recorder, Snapshot
from conctools.reporting.html import html_data, render_html, script_json

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DATA_RE = re.compile(r'<script type="application/json" id="conctools-data">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def rich() -> Snapshot:
    return rich_snapshot()


def embedded_data(page: str) -> object:
    m = DATA_RE.search(page)
    assert m is not None
    return json.loads(m.group(1))


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
        assert "alert(2)" not in page.replace("alert(2)\\u003c", "")  # only inside escaped JSON
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

    def test_self_contained(self, rich: Snapshot) -> None:
        """No external resource: no http(s) URL, no <link>, no src= attribute; a CSP forbids network."""
        page = render_html(rich)
        assert not re.search(r"https?://", page)
        assert "<link" not in page and " src=" not in page.split('id="conctools-data"')[0]
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

    def test_data_has_every_kind(self, rich: Snapshot) -> None:
        """The embedded data has the timeline, tables, problems, resources and sections."""
        data = html_data(rich)
        cats = {s[4] for s in data["timeline"]["slices"]}
        assert cats == {"span", "lock_wait", "lock_hold", "slow_callback"}
        assert data["timeline"]["flows"] and data["deadlocks"] and data["hangs"] and data["lock_orders"]
        assert data["slow_callbacks"][0]["culprit"].startswith("/app/prog.py:33")
        assert len(data["resources"]) == 4 and "cs" in data["resources"][1]
        assert {"locks", "profile"} <= set(data["sections"])
        assert {r["lock"] for r in data["lock_waits"]} == {HOSTILE, QUOTES}

    def test_slices_capped_longest_kept(self, rich: Snapshot, monkeypatch: pytest.MonkeyPatch) -> None:
        """Past MAX_SLICES the page keeps the longest slices and says how many it left out."""
        import conctools.reporting.html as html_module

        full = html_data(rich)["timeline"]["slices"]
        monkeypatch.setattr(html_module, "MAX_SLICES", 3)
        data = html_data(rich)
        kept = data["timeline"]["slices"]
        assert len(kept) == 3 and data["meta"]["truncated_slices"] == len(full) - 3
        assert sorted(s[2] for s in kept) == sorted(s[2] for s in full)[-3:]
        assert [s[1] for s in kept] == sorted(s[1] for s in kept)

    def test_empty_snapshot(self, recorder: Recorder) -> None:
        """A run with nothing recorded still renders a page."""
        page = render_html(recorder.snapshot())
        assert embedded_data(page)["timeline"]["tracks"] == []  # type: ignore[index]


def chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile_dir = tmp_path / "chromium-profile"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def console_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does it)")
class TestChromium:
    def test_renders_without_console_errors(self, rich: Snapshot, tmp_path: Path) -> None:
        """The page runs its script (data-rendered), logs nothing, and hostile names are text nodes."""
        page = tmp_path / "report.html"
        page.write_text(render_html(rich), encoding="utf-8")
        result = chromium(["--dump-dom", page.as_uri()], tmp_path)
        assert console_lines(result.stderr) == []
        dom = result.stdout
        assert 'data-rendered="1"' in dom
        assert "<img" not in dom  # the task named <img ...> never became an element
        assert "&lt;img src=x onerror=alert(1)&gt;" in dom
        assert "&lt;/script&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in dom
        assert "<table>" in dom and "<canvas" in dom

    def test_tables_sort_and_timeline_hovers(self, rich: Snapshot, tmp_path: Path) -> None:
        """Clicking a header sorts (numbers as numbers, both ways); hovering a slice shows its details."""
        page = render_html(rich)
        # The probe is a second inline script, so the page's hash-pinned CSP has to go for this test.
        page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
        probe = """<script>
        (function () {
          var out = {};
          var table = document.querySelector("#tables table");
          var th = Array.prototype.find.call(table.querySelectorAll("th"), function (h) {
            return h.textContent === "total";
          });
          function first() {
            return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[0].textContent; });
          }
          th.click(); out.asc = first();
          th.click(); out.desc = first();
          var canvas = document.getElementById("timeline"), tip = document.getElementById("tip");
          var rect = canvas.getBoundingClientRect();
          out.tip = "";
          for (var y = 32; y < rect.height && !out.tip; y += 20) {
            for (var x = 240; x < rect.width && !out.tip; x += 3) {
              canvas.dispatchEvent(new MouseEvent("mousemove", {clientX: rect.left + x, clientY: rect.top + y}));
              if (!tip.hidden) out.tip = tip.textContent;
            }
          }
          var wheel = {deltaY: -100, clientX: rect.left + 400, clientY: rect.top + 40};
          canvas.dispatchEvent(new WheelEvent("wheel", wheel));
          document.body.setAttribute("data-probe", JSON.stringify(out));
        })();
        </script></body>"""
        page = page.replace("</body>", probe)
        path = tmp_path / "probe.html"
        path.write_text(page, encoding="utf-8")
        result = chromium(["--dump-dom", "--window-size=1280,1000", path.as_uri()], tmp_path)
        assert console_lines(result.stderr) == []
        m = re.search(r'data-probe="([^"]*)"', result.stdout)
        assert m is not None, result.stdout[-2000:]
        import html as html_module

        out = json.loads(html_module.unescape(m.group(1)))
        assert out["asc"] == [QUOTES, HOSTILE]  # 1 ms before 2 ms
        assert out["desc"] == [HOSTILE, QUOTES]
        assert "took" in out["tip"] and "start" in out["tip"]

    def test_screenshot_shows_the_timeline(self, rich: Snapshot, tmp_path: Path) -> None:
        """A headless screenshot of the page is a real picture (not a blank page)."""
        page = tmp_path / "report.html"
        page.write_text(render_html(rich), encoding="utf-8")
        shot = tmp_path / "report.png"
        result = chromium([f"--screenshot={shot}", "--window-size=1280,1400", page.as_uri()], tmp_path)
        assert console_lines(result.stderr) == []
        assert shot.exists() and shot.stat().st_size > 40_000

    def test_real_run_report(self, tmp_path: Path) -> None:
        """report.html written by `conctools run --profile` of a threaded asyncio program renders cleanly."""
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
        out = tmp_path / "out"
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
                str(out),
                str(script),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        result = chromium(["--dump-dom", (out / "report.html").as_uri()], tmp_path)
        assert console_lines(result.stderr) == []
        assert 'data-rendered="1"' in result.stdout
        assert "Profile per asyncio task" in result.stdout
        assert "<img" not in result.stdout
        shot = tmp_path / "run.png"
        chromium([f"--screenshot={shot}", "--window-size=1280,1400", (out / "report.html").as_uri()], tmp_path)
        assert shot.stat().st_size > 40_000
        if SCREENSHOT_DIR is not None:
            shutil.copy(shot, SCREENSHOT_DIR / "report-real-run.png")


# Set CONCTOOLS_SCREENSHOT_DIR to keep the real-run screenshot for a person to look at.
_dir = __import__("os").environ.get("CONCTOOLS_SCREENSHOT_DIR")
SCREENSHOT_DIR = Path(_dir) if _dir else None
