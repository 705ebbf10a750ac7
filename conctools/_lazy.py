"""Names a package imports on first use (PEP 562), for its ``__getattr__`` and ``__dir__``:
``conctools``, ``conctools.children``, ``conctools.console`` and ``conctools.reporting`` keep
their start-up small this way (``conctools run`` imports only what the run needs)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableMapping

from conctools._typing import Any


def load(package: str, namespace: MutableMapping[str, Any], lazy: Mapping[str, str], name: str) -> Any:
    """``package.name``, imported from the module ``lazy[name]`` (or that module itself when it is
    ``package.name``) and kept in ``namespace``; ``AttributeError`` for a name it does not offer."""
    module_name = lazy.get(name)
    if module_name is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name == f"{package}.{name}" else getattr(module, name)
    namespace[name] = value
    return value


def names(namespace: Mapping[str, Any], lazy: Mapping[str, str]) -> list[str]:
    """``dir()`` of the package: what it has, and what it imports on first use."""
    return sorted(set(namespace) | set(lazy))
