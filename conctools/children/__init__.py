"""Child processes: follow them, merge their reports, explain a parent stuck on a child.

``conctools run`` follows the program's Python child processes by default
(``--no-follow-children`` to stop). How a child comes to run under the same options:

* **forks** (``multiprocessing``'s ``fork`` and ``forkserver`` start methods, ``Pool`` and
  ``ProcessPoolExecutor`` workers, ``os.fork()``): ``os.register_at_fork`` hooks
  (:mod:`conctools.children.forking`) restart conctools' threads in the child and give it an
  empty recorder of its own.
* **new interpreters** (the ``spawn`` start method, the forkserver process, ``subprocess`` or
  ``os.exec*`` of ``sys.executable``): the run puts a folder holding only a bootstrap
  ``sitecustomize.py`` first on ``PYTHONPATH`` and the run's options in ``CONCTOOLS_FOLLOW``;
  the bootstrap (:mod:`conctools.children.bootstrap`) starts the instruments before the
  program's first line, takes its folder off ``sys.path`` again, and imports the
  ``sitecustomize`` it shadows, if any. No ``.pth`` file, nothing installed, nothing written
  outside the run folder. Not followed: interpreters
  started with ``-I``, ``-E`` or ``-S``, with an ``env=`` that drops these two variables, or of
  another Python version; ``multiprocessing``'s resource tracker (its bookkeeping, not the program).

Each followed process (:mod:`conctools.children.session`) hands its data to the run through a
file of its own in a private run folder (:mod:`conctools.children.procfile`; coverage.py's
parallel mode is the model),
rewritten every half second and when it ends, so a child that crashes or is killed loses at
most its last half second; its parent's reaping adds its exit status (a signal too) and exact
CPU time. At the end the run's main process merges them into one report: the ``processes``
section (:mod:`conctools.children.merge`). A child that finds itself deadlocked or hung says
so at once; the main process then finds who waits on it across processes
(:mod:`conctools.children.chain`), reports the chain and stops the program (exit 86 / 87),
killing the run's remaining children (:mod:`conctools.children.follower`, the run's side). A
``Pool`` waiting forever for the jobs of a worker that died is found too
(:mod:`conctools.children.lost`), and so are processes stuck on each other through shared
``multiprocessing`` locks and events: each process notes who holds and waits on them
(:mod:`conctools.children.mpsync`) and the run judges (:mod:`conctools.children.mpstuck`).
"""

from __future__ import annotations

from conctools import _lazy
from conctools._typing import TYPE_CHECKING, Any
from conctools.children.config import ENV_VAR

if TYPE_CHECKING:
    from conctools.children.follower import ChildFollower
    from conctools.children.merge import merge_snapshots
    from conctools.children.session import is_followed_child

__all__ = ["ENV_VAR", "ChildFollower", "is_followed_child", "merge_snapshots"]

# Loaded when first used: a child process imports only what it runs (its start is on the clock).
_LAZY = {
    "ChildFollower": "conctools.children.follower",
    "merge_snapshots": "conctools.children.merge",
    "is_followed_child": "conctools.children.session",
}


def __getattr__(name: str) -> Any:
    return _lazy.load(__name__, globals(), _LAZY, name)
