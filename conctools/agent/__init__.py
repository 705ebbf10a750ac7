"""Look inside a running process without stopping it: ``conctools dump PID``, ``conctools top
PID`` and ``conctools ps``.

Java users run ``jstack PID`` and get every thread, the monitors each holds and waits for, and
the deadlocks found. conctools already knows all of that from inside a Python process (the lock
registry, the task walker, the watchdog's graph, the recorder); this package lets a person ask
for it from outside:

>>> conctools.enable_dump()        # doctest: +SKIP  (on in `conctools run` and `conctools serve`)
$ conctools dump 4242              # every thread, task, lock, wait and cycle; --json
$ conctools top 4242               # a live view, refreshed every second; q quits
$ conctools ps                     # this user's processes that can be dumped

How it is built:

- :mod:`~conctools.agent.server`: the agent, a ``conctools-agent`` daemon thread serving a Unix
  socket (0600, in the user's 0700 conctools directory; :mod:`~conctools.agent.location`). It
  answers only the process's own user (checked by the kernel, ``SO_PEERCRED``) and only the
  read-only questions of :mod:`~conctools.agent.protocol`: nothing a client sends is run.
- :mod:`~conctools.agent.dump`: the answers, from :mod:`~conctools.agent.threads`,
  :mod:`~conctools.agent.tasks` (``asyncio.capture_call_graph`` on 3.14+, conctools' walker
  before), :mod:`~conctools.agent.waits` (the registry and the deadlock watchdog's own graph,
  cycles and verdicts, through one adapter), :mod:`~conctools.agent.loops` (stalls and lag now),
  :mod:`~conctools.agent.sofar` (what the recorder found so far), :mod:`~conctools.agent.process`.
- :mod:`~conctools.agent.client`: asks a process, with every failure one line
  (:class:`AgentError`): another user's process, a dead one, a stale socket, no answer in time,
  a garbled answer. :mod:`~conctools.agent.attach` loads the agent into a process that was not
  started with it (CPython 3.14+, ``sys.remote_exec``).
- The text is rendered by pure reporters: :mod:`conctools.reporting.dump_text` and
  :mod:`conctools.reporting.top_text`; :mod:`~conctools.agent.top` drives the terminal.
"""

from __future__ import annotations

from conctools.agent.location import AgentError
from conctools.agent.server import DumpAgent, current_agent, enable_dump

__all__ = ["AgentError", "DumpAgent", "current_agent", "enable_dump"]
