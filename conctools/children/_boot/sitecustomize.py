"""conctools' bootstrap for followed child processes (``conctools run`` puts this folder first
on ``PYTHONPATH``). It follows this interpreter when the run asked for it, then hands over to
the ``sitecustomize`` that this one shadows, if there is one. It never raises, and it parses
on any Python (another interpreter may inherit ``PYTHONPATH``): type comments, no f-strings.
"""


def _follow():
    # type: () -> None
    # No collection while conctools starts: what it makes lives as long as the process, and
    # start_from_env ends with gc.freeze() (the collections it would trigger were wasted work).
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        from conctools.children.bootstrap import start_from_env

        start_from_env()
    except Exception:
        pass
    finally:
        if enabled:
            gc.enable()


def _chain():
    # type: () -> None
    """Import the next ``sitecustomize`` on the path, as if this one had not been there."""
    import importlib
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    while here in sys.path:
        sys.path.remove(here)
    mine = sys.modules.pop("sitecustomize", None)
    try:
        importlib.import_module("sitecustomize")
    except ImportError as exc:
        if getattr(exc, "name", "sitecustomize") != "sitecustomize":
            raise
        if mine is not None:
            sys.modules["sitecustomize"] = mine


_follow()
try:
    _chain()
except Exception:
    import traceback

    traceback.print_exc()
