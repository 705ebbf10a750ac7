"""Headless Chromium for the report tests: load a page, run a probe in it, take screenshots.

Chromium runs as Debian ships it (``/usr/bin/chromium``), with a fresh profile and nothing that
reaches the network. A probe is a second inline script, so the page's hash-pinned CSP is taken
out of the probed copy (never out of the page a person opens).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "chromium is not installed (apt-get install chromium; .ci/run does it)"
ROOT = Path(__file__).resolve().parent.parent
# Screenshots are test artefacts: build/screenshots/ unless CONCTOOLS_SCREENSHOT_DIR says otherwise.
SCREENSHOT_DIR = Path(os.environ.get("CONCTOOLS_SCREENSHOT_DIR") or ROOT / "build" / "screenshots")


def chromium(args: list[str], tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with ``args`` and a new empty profile under ``tmp_path``."""
    assert CHROMIUM is not None
    profile_dir = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
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
        "--hide-scrollbars",
        f"--user-data-dir={profile_dir}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def console_lines(stderr: str) -> list[str]:
    """What the page logged to its console, and uncaught errors."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


# Runs after the page's own script; waits for it to finish drawing (data-rendered), then
# measures what a person sees and records it as JSON in the body's data-probe attribute.
PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message)); });
  var done = false;
  var timer = setInterval(function () {
    var b = document.body;
    if (done || !(b.getAttribute("data-rendered") || b.getAttribute("data-error"))) return;
    done = true; clearInterval(timer);
    var out = {errors: errors, error: b.getAttribute("data-error")};
    var all = function (sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); };
    var texts = function (sel, root) { return all(sel, root).map(function (e) { return e.textContent; }); };
    try { (function () { @PROBE@ })(); } catch (e) { out.probeError = String(e && e.stack || e); }
    b.setAttribute("data-probe", JSON.stringify(out));
  }, 20);
})();
</script></body>"""


def probe(
    page: str, body: str, tmp_path: Path, width: int = 1280, height: int = 800
) -> tuple[dict[str, Any], list[str]]:
    """Load ``page`` with ``body`` (JavaScript filling the object ``out``) run once it has drawn;
    return ``out`` and the console lines."""
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    page = page.replace("</body>", PROBE.replace("@PROBE@", body), 1)
    path = tmp_path / "probe.html"
    path.write_text(page, encoding="utf-8")
    result = chromium(
        ["--dump-dom", "--virtual-time-budget=20000", f"--window-size={width},{height}", path.as_uri()], tmp_path
    )
    m = re.search(r'data-probe="([^"]*)"', result.stdout)
    assert m is not None, (result.stdout[-3000:], result.stderr[-3000:])
    return json.loads(html.unescape(m.group(1))), console_lines(result.stderr)


def screenshot(page_path: Path, shot: Path, tmp_path: Path, width: int = 1280, height: int = 800) -> list[str]:
    """A screenshot of the page as a person opens it (its CSP in place); returns console lines."""
    shot.parent.mkdir(parents=True, exist_ok=True)
    result = chromium(
        [
            f"--screenshot={shot}",
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",
            page_path.as_uri(),
        ],
        tmp_path,
    )
    assert shot.exists() and shot.stat().st_size > 10_000, result.stderr[-2000:]
    return console_lines(result.stderr)


def keep_artefact(shot: Path, name: str) -> Path:
    """Copy a screenshot to the artefact folder (for a person, and for CI to upload)."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOT_DIR / name
    shutil.copy(shot, target)
    return target
