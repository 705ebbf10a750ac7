"""The built wheel, not only the source tree: it installs and runs on its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
class TestWheel:
    """Build the wheel, install it apart from the tree, run `conctools run` from it."""

    def test_wheel_contents_and_run(self, tmp_path: Path) -> None:
        """The wheel carries py.typed and every module, and its `conctools run` works."""
        dist = tmp_path / "dist"
        # Built from a copy of the sources: setuptools stages a build in the tree's build/, which the
        # suites of the other interpreters (`make test` runs them side by side) would share.
        source = tmp_path / "source"
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                ".git", ".venv*", "build", "dist", "*.egg-info", "*.so", "__pycache__", ".*_cache"
            ),
        )
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert build.returncode == 0, build.stderr
        (wheel,) = dist.glob("conctools-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
        assert "conctools/py.typed" in names
        assert "conctools/reporting/text.py" in names
        assert "conctools/children/_boot/sitecustomize.py" in names  # the bootstrap of followed children
        assert not any(n.startswith("tests/") for n in names)
        target = tmp_path / "site"
        install = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert install.returncode == 0, install.stderr
        env = dict(os.environ, PYTHONPATH=str(target))
        script = tmp_path / "prog.py"
        script.write_text(
            "import conctools, subprocess, sys\nprint(conctools.__file__)\nconctools.traced('w')(lambda: 1)()\n"
            "subprocess.run([sys.executable, '-c', 'import conctools'], check=True)\n"
        )
        run = subprocess.run(
            [sys.executable, "-m", "conctools", "run", str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip().startswith(str(target))
        assert "conctools report" in run.stderr
        assert "Processes: the program and 1 child process" in run.stderr  # followed from the installed wheel
