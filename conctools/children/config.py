"""What a followed child needs to know to run under the same options: one JSON env variable.

``conctools run`` puts :data:`ENV_VAR` in the environment (with the bootstrap directory on
``PYTHONPATH``), so every Python child inherits it: through ``fork`` (memory), and through
``exec`` (``spawn``, ``forkserver``, ``subprocess``, ``os.exec*``) where the bootstrap's
``sitecustomize`` reads it back.
"""

from __future__ import annotations

import json
import os
import sys

from conctools._records import field, field_names, record
from conctools._typing import Any

__all__ = ["BOOT_DIR", "ENV_VAR", "FollowConfig"]

ENV_VAR = "CONCTOOLS_FOLLOW"
#: The directory put first on ``PYTHONPATH``: it holds only the bootstrap ``sitecustomize.py``.
BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot")
_SCHEMA = 1


@record(kw_only=True)
class FollowConfig:
    """The run a child belongs to: where it hands its data, and the options it runs under."""

    run_dir: str  # the per-run folder: one file per process
    root_pid: int  # the process ``conctools run`` runs in
    python: str = field(default_factory=lambda: "{}.{}".format(*sys.version_info[:2]))
    options: dict[str, Any] = field(default_factory=dict)  # RunOptions fields a child honours
    flush_interval_s: float = 0.5  # a child rewrites its file this often (at most this much is lost)
    pythonpath: str | None = None  # PYTHONPATH as it was before conctools put BOOT_DIR first
    stopping: bool = False  # conctools is stopping the stuck program: a child started now ends at once

    def to_env(self) -> str:
        """The value of :data:`ENV_VAR`."""
        return json.dumps(
            {"v": _SCHEMA, **{name: getattr(self, name) for name in field_names(self)}}, separators=(",", ":")
        )

    @classmethod
    def from_env(cls, text: str | None) -> FollowConfig | None:
        """The configuration in ``text`` (the env variable), or ``None`` if it is absent or not ours."""
        if not text:
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != _SCHEMA:
                return None
            return cls(
                run_dir=str(data["run_dir"]),
                root_pid=int(data["root_pid"]),
                python=str(data["python"]),
                options=dict(data.get("options") or {}),
                flush_interval_s=float(data.get("flush_interval_s", 0.5)),
                pythonpath=data.get("pythonpath"),
                stopping=bool(data.get("stopping", False)),
            )
        except (ValueError, KeyError, TypeError):
            return None
