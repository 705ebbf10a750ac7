"""The curated public surface: __all__ is sorted, complete and importable."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import conctools


class TestPublicSurface:
    """What `import conctools` promises."""

    def test_all_is_sorted_and_importable(self) -> None:
        """__all__ is sorted and every name in it exists."""
        assert list(conctools.__all__) == sorted(conctools.__all__)
        for name in conctools.__all__:
            assert hasattr(conctools, name), name

    def test_all_is_complete(self) -> None:
        """Every public attribute of the package is listed in __all__ (modules aside)."""
        public = {
            name
            for name, value in vars(conctools).items()
            if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
        }
        assert public <= set(conctools.__all__), public - set(conctools.__all__)

    def test_every_public_name_has_a_docstring(self) -> None:
        """Public classes and functions carry docstrings."""
        for name in conctools.__all__:
            value = getattr(conctools, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                assert inspect.getdoc(value), f"{name} has no docstring"

    def test_every_module_imports_cleanly(self) -> None:
        """Each module of the package imports on its own (no hidden import cycles)."""
        for info in pkgutil.walk_packages(conctools.__path__, "conctools."):
            if info.name.endswith("__main__"):
                continue
            importlib.import_module(info.name)

    def test_import_is_lazy_and_cheap(self) -> None:
        """`import conctools` loads neither yappi, psutil nor the lock machinery until used."""
        import subprocess
        import sys

        code = (
            "import sys, conctools;"
            "heavy = {'yappi', 'psutil', 'conctools.locks', 'conctools.deadlock', 'conctools.loopmon'};"
            "assert not heavy & set(sys.modules), heavy & set(sys.modules);"
            "assert conctools.Lock.__module__ == 'conctools' and 'conctools.locks' in sys.modules;"
            "assert conctools.aio.Lock is sys.modules['conctools.aio'].Lock;"
            "assert 'Lock' in dir(conctools)"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    def test_unknown_attribute(self) -> None:
        """A name conctools does not have is an AttributeError, as for any module."""
        import pytest

        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            _ = conctools.nope  # type: ignore[attr-defined]

    def test_importing_does_not_import_locust_or_start_threads(self) -> None:
        """Importing conctools neither imports locust (gevent patches) nor starts threads."""
        import subprocess
        import sys

        code = (
            "import sys, threading, conctools, conctools.cli;"
            "assert 'locust' not in sys.modules and 'gevent' not in sys.modules, 'locust imported';"
            "assert threading.active_count() == 1, threading.enumerate()"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
