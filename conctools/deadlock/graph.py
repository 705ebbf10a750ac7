"""The wait-for graph: pure functions of registry records (who waits for whom, and the cycles).

In the spirit of asyncio's ``tools.py``: plain data in, plain data out, nothing here touches the
running program.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence

from conctools._context import user_frame
from conctools._records import record
from conctools.events import Frame, Participant
from conctools.registry import Party, PrimitiveState

__all__ = [
    "Dependency",
    "PartyKey",
    "WaitEdge",
    "WaitGraph",
    "build_wait_graph",
    "cycle_key",
    "describe_cycle",
    "find_deadlocks",
    "participants_of",
    "party_key",
    "prim_label",
    "stuck_edges",
    "stuck_parties",
]

# A node of the wait-for graph: ("thread", thread_id) or ("task", id(task)).
PartyKey = tuple[str, int]


def describe_cycle(cycle: Sequence[Participant]) -> str:
    """One line per participant: ``thread 'a' waits for Lock 'b' held by thread 'b'``."""
    parts = [f"{p.who} waits for {p.waits_for} held by {p.held_by} at {p.wait_site}" for p in cycle]
    return "deadlock: " + "; ".join(parts)


def short_file(filename: str) -> str:
    """``file.py``, or ``package/__init__.py``: how the lock registry writes sites."""
    base = os.path.basename(filename)
    if base in ("__init__.py", "__main__.py"):
        return os.path.join(os.path.basename(os.path.dirname(filename)), base)
    return base


def _holding_frame(stack: Sequence[Frame], sites: Sequence[str]) -> Frame | None:
    """The frame of a suspended task's await stack that holds what it took at ``sites``: the first
    one (innermost first) in the same file, past the line that took it (a best match: sites
    carry no function)."""
    for site in sites:
        filename, _, line = site.rpartition(":")
        if not line.isdigit():
            continue
        for f in stack:
            if short_file(f.filename) == filename and f.lineno > int(line):
                return f
    return None


def _exited(party: Party) -> bool:
    """A holder whose thread (or task) has ended: it will never release anything."""
    if getattr(party, "exited", False):
        return True
    if party.thread_id == 0 and party.thread_name.startswith("exited thread "):
        return True  # the C path's record of a lock left locked by a finished thread
    task = getattr(party, "task", None)
    if task is not None:
        try:
            return bool(task.done())
        except Exception:
            return False
    return False


def party_key(party: Party) -> PartyKey:
    """The graph node of ``party``: its task when it is a task, else its thread; an exited
    holder is a node of its own (never the live thread that reuses its id)."""
    if _exited(party):
        return ("exited", getattr(party, "thread_key", 0) or party.thread_id or (party.task_id or 0))
    if party.task_id is not None:
        return ("task", party.task_id)
    return ("thread", party.thread_id)


def prim_label(prim: PrimitiveState) -> str:
    """``Lock 'name'``: how reports name a primitive."""
    return f"{prim.kind} {prim.name!r}"


def _is_sync_kind(kind: str) -> bool:
    """A threading primitive: waiting on it blocks the whole thread (and its event loop)."""
    return not kind.startswith("aio.")


def _reentrant(kind: str) -> bool:
    return kind in ("RLock",) or kind.endswith(".RLock")


# Nodes that never release anything: an exited holder, or nobody at all (a job queued in an
# executor without a worker). A waiter whose every way out ends there waits forever.
_SINKS = frozenset({"exited", "nobody"})


@record(kw_only=True)
class Dependency:
    """A wait that is not on a registry primitive: a join, a future, an event loop, a task.

    ``waiter`` waits until any party of ``on`` acts (an empty ``on`` means nobody can: the wait
    never ends). ``sync``: the wait blocks the waiter's whole thread (and its event loop).
    ``kind`` is one of ``"join"``, ``"future"``, ``"loop"``, ``"loop-tasks"``, ``"await"``;
    ``what`` says what it waits for, in words.
    """

    waiter: Party
    on: tuple[Party, ...]
    what: str
    kind: str
    sync: bool = True


@record(kw_only=True)
class WaitEdge:
    """``waiter`` waits for ``holder``: on ``prim``, or (``prim is None``) for something else
    (``kind``, ``what``): its event loop thread, a thread it joins, a job, another task.

    The edges of one waiter with the same ``group`` are alternatives (any holder of a
    semaphore may release it); separate groups must all be satisfied (a suspended task needs
    what it awaits AND its loop's thread).
    """

    waiter: Party
    holder: Party
    prim: PrimitiveState | None
    waiter_key: PartyKey
    holder_key: PartyKey
    kind: str = "lock"
    what: str = ""
    group: int = 0


@record
class WaitGraph:
    """The wait-for graph at one instant.

    ``edges`` maps each waiting party to its out-edges; ``waits`` maps it to the primitive
    it waits on (its own registry record); ``holds`` maps every party to what it holds.
    """

    edges: Mapping[PartyKey, tuple[WaitEdge, ...]]
    waits: Mapping[PartyKey, tuple[Party, PrimitiveState]]
    holds: Mapping[PartyKey, tuple[tuple[PrimitiveState, Party], ...]]


def build_wait_graph(prims: Iterable[PrimitiveState], dependencies: Iterable[Dependency] = ()) -> WaitGraph:
    """The wait-for graph of ``prims`` (registry records) and ``dependencies`` (waits read from
    frames: joins, futures, loops, tasks): pure, never touches the program.

    A wait on a threading primitive blocks the whole thread, so its node is the thread even
    when a task waits; a wait on an asyncio primitive is the task's own. An RLock's owner
    waiting on its own RLock is re-entry in progress, not an edge.
    """
    prims = tuple(prims)
    dependencies = tuple(dependencies)
    # Per thread: the party blocking it synchronously (a thread, or a task in a sync wait).
    sync_blockers: dict[int, Party] = {}
    for prim in prims:
        if _is_sync_kind(prim.kind):
            for waiter in prim.waiters:
                sync_blockers.setdefault(waiter.thread_id, waiter)
    for dep in dependencies:
        if dep.sync and dep.kind != "loop-tasks":
            sync_blockers.setdefault(dep.waiter.thread_id, dep.waiter)

    def waiter_key(party: Party, prim: PrimitiveState) -> PartyKey:
        if _is_sync_kind(prim.kind):
            return ("thread", party.thread_id)
        return party_key(party)

    def holder_key(party: Party) -> PartyKey:
        key = party_key(party)
        if key[0] != "task":
            return key
        blocker = sync_blockers.get(party.thread_id)
        if blocker is not None and blocker.task_id == party.task_id:
            return ("thread", party.thread_id)  # the task blocks its own thread: one node
        return key

    edges: dict[PartyKey, list[WaitEdge]] = {}
    groups: dict[PartyKey, int] = {}

    def add(key: PartyKey, new: list[WaitEdge]) -> None:
        group = groups.get(key, 0)
        groups[key] = group + 1
        edges.setdefault(key, []).extend(
            WaitEdge(
                waiter=e.waiter,
                holder=e.holder,
                prim=e.prim,
                waiter_key=e.waiter_key,
                holder_key=e.holder_key,
                kind=e.kind,
                what=e.what,
                group=group,
            )
            for e in new
        )

    waits: dict[PartyKey, tuple[Party, PrimitiveState]] = {}
    holds: dict[PartyKey, list[tuple[PrimitiveState, Party]]] = {}
    for prim in prims:
        for holder in prim.holders:
            holds.setdefault(holder_key(holder), []).append((prim, holder))
        for waiter in prim.waiters:
            key = waiter_key(waiter, prim)
            waits.setdefault(key, (waiter, prim))
            new = []
            for holder in prim.holders:
                if _reentrant(prim.kind) and holder.thread_id == waiter.thread_id and not _exited(holder):
                    continue
                if len(prim.holders) > 1 and holder_key(holder) == key:
                    continue  # its own permit cannot come back while it waits: only the others can
                new.append(
                    WaitEdge(waiter=waiter, holder=holder, prim=prim, waiter_key=key, holder_key=holder_key(holder))
                )
            if new:
                add(key, new)
    for dep in dependencies:
        key = ("thread", dep.waiter.thread_id) if dep.sync else party_key(dep.waiter)
        on = dep.on
        if dep.kind == "loop":  # name the party that blocks the loop's thread, not the bare thread
            on = tuple(sync_blockers.get(h.thread_id, h) for h in on)
        if len(on) > 1:  # a worker waiting for its own pool: only the other workers can free it
            on = tuple(h for h in on if holder_key(h) != key) or on
        if on:
            new = [
                WaitEdge(
                    waiter=dep.waiter,
                    holder=h,
                    prim=None,
                    waiter_key=key,
                    holder_key=holder_key(h),
                    kind=dep.kind,
                    what=dep.what,
                )
                for h in on
            ]
        else:  # nobody could end it
            nobody = Party(thread_id=0, thread_name="nobody", task_name=None, task_id=None, site="?", since_ns=0)
            new = [
                WaitEdge(
                    waiter=dep.waiter,
                    holder=nobody,
                    prim=None,
                    waiter_key=key,
                    holder_key=("nobody", 0),
                    kind=dep.kind,
                    what=dep.what,
                )
            ]
        add(key, new)
    # A suspended task that holds something but waits on nothing known still cannot run
    # while a synchronous wait blocks its event loop thread: it waits for that thread.
    loop_waiters = {key for key, dep_list in edges.items() if any(e.kind == "loop" for e in dep_list)}
    for key, held in holds.items():
        if key[0] != "task" or key in loop_waiters:
            continue
        holder = held[0][1]
        blocker = sync_blockers.get(holder.thread_id)
        if blocker is not None:
            edge = WaitEdge(
                waiter=holder,
                holder=blocker,
                prim=None,
                waiter_key=key,
                holder_key=("thread", holder.thread_id),
                kind="loop",
            )
            add(key, [edge])
    return WaitGraph(
        edges={k: tuple(v) for k, v in edges.items()},
        waits=waits,
        holds={k: tuple(v) for k, v in holds.items()},
    )


def _forever(edge: WaitEdge, now: int, min_wait_ns: int) -> bool:
    """The wait behind ``edge`` has no timeout and has lasted ``min_wait_ns``.

    A suspended task's wait on its loop's thread, or on a job or coroutine of another thread
    (read from its future), needs no age of its own: a task cannot move while what it waits
    for is stuck, and the threads of the cycle must have waited ``min_wait_ns`` themselves.
    """
    if edge.kind == "loop" or (edge.prim is None and edge.waiter_key[0] == "task"):
        return True
    party = edge.waiter
    return party.timeout_s is None and now - party.since_ns >= min_wait_ns


def stuck_parties(graph: WaitGraph, *, now_ns: int | None = None, min_wait_s: float = 0.0) -> frozenset[PartyKey]:
    """The parties that can never proceed: one of their waits has no timeout, has lasted
    ``min_wait_s`` at least, and every party that could end it is itself stuck (or has exited).

    A waiter is released when ANY holder releases (a semaphore with several holders), so a
    wait stays stuck only while all of its edges lead back into the set (the greatest
    fixpoint): cycles whose exits are all blocked, and the parties queued behind them.
    """
    now = time.monotonic_ns() if now_ns is None else now_ns
    min_wait_ns = int(min_wait_s * 1e9)
    grouped: dict[PartyKey, list[list[WaitEdge]]] = {}
    for key, out in graph.edges.items():
        by_group: dict[int, list[WaitEdge]] = {}
        for edge in out:
            by_group.setdefault(edge.group, []).append(edge)
        kept = [g for g in by_group.values() if _forever(g[0], now, min_wait_ns)]
        if kept:
            grouped[key] = kept
    stuck = set(grouped)

    def inside(key: PartyKey) -> bool:
        return key in stuck or key[0] in _SINKS

    changed = True
    while changed:
        changed = False
        for key in list(stuck):
            if not any(all(inside(e.holder_key) for e in g) for g in grouped[key]):
                stuck.discard(key)
                changed = True
    return frozenset(stuck)


def stuck_edges(
    graph: WaitGraph, stuck: frozenset[PartyKey], *, now_ns: int, min_wait_s: float
) -> dict[PartyKey, list[WaitEdge]]:
    """For each stuck party, the edges of the waits that keep it stuck."""
    min_wait_ns = int(min_wait_s * 1e9)
    out: dict[PartyKey, list[WaitEdge]] = {}
    for key in stuck:
        by_group: dict[int, list[WaitEdge]] = {}
        for edge in graph.edges.get(key, ()):
            by_group.setdefault(edge.group, []).append(edge)
        for group in by_group.values():
            if _forever(group[0], now_ns, min_wait_ns) and all(
                e.holder_key in stuck or e.holder_key[0] in _SINKS for e in group
            ):
                out.setdefault(key, []).extend(group)
    return out


def _elementary_cycles(
    edges: Mapping[PartyKey, Sequence[PartyKey]], limit: int, max_steps: int = 100_000
) -> list[list[PartyKey]]:
    """Elementary cycles, each found once from its lowest node; at most ``limit`` of them.

    Bounded in work too (``max_steps``): a stuck semaphore shared by many threads makes a
    dense graph whose cycles are countless, and the watchdog must stay cheap.
    """
    order = {node: i for i, node in enumerate(edges)}
    cycles: list[list[PartyKey]] = []
    steps = 0
    for start in order:
        rank = order[start]
        path = [start]
        on_path = {start}
        stack: list[tuple[PartyKey, int]] = [(start, 0)]
        while stack:
            steps += 1
            if steps > max_steps or len(cycles) >= limit:
                return cycles
            node, i = stack[-1]
            targets = edges.get(node, ())
            if i >= len(targets):
                stack.pop()
                on_path.discard(path.pop())
                continue
            stack[-1] = (node, i + 1)
            nxt = targets[i]
            if nxt == start:
                cycles.append(list(path))
            elif nxt not in on_path and order.get(nxt, -1) > rank:
                stack.append((nxt, 0))
                path.append(nxt)
                on_path.add(nxt)
    return cycles


def find_deadlocks(
    graph: WaitGraph, *, now_ns: int | None = None, min_wait_s: float = 0.0, limit: int = 16
) -> list[tuple[WaitEdge, ...]]:
    """The deadlock cycles of ``graph``: each a tuple of edges, waiter of one = holder of the
    previous, among parties that are :func:`stuck <stuck_parties>`. Pure.

    Tasks that only await each other (an await cycle with no lock, thread or loop in it) are
    left to the hang report, which names the await cycle.

    >>> find_deadlocks(build_wait_graph([]))
    []
    """
    now = time.monotonic_ns() if now_ns is None else now_ns
    stuck = stuck_parties(graph, now_ns=now, min_wait_s=min_wait_s)
    if not stuck:
        return []
    keeping = stuck_edges(graph, stuck, now_ns=now, min_wait_s=min_wait_s)
    adjacency: dict[PartyKey, list[PartyKey]] = {}
    for key in sorted(stuck):
        targets: list[PartyKey] = []
        for edge in keeping.get(key, ()):
            if edge.holder_key in stuck and edge.holder_key not in targets:
                targets.append(edge.holder_key)
        adjacency[key] = targets
    cycles = []
    for nodes in _elementary_cycles(adjacency, limit):
        chain = []
        for i, node in enumerate(nodes):
            nxt = nodes[(i + 1) % len(nodes)]
            edge = next(e for e in keeping[node] if e.holder_key == nxt)
            chain.append(edge)
        if all(e.kind == "await" for e in chain):
            continue
        cycles.append(tuple(chain))
    return cycles


def cycle_key(cycle: Sequence[WaitEdge]) -> frozenset[tuple[PartyKey, int]]:
    """The identity of a cycle (who waits on what), to report each one once."""
    return frozenset(
        (e.waiter_key, e.prim.prim_id if e.prim is not None else hash((e.kind, e.holder_key))) for e in cycle
    )


def participants_of(
    cycle: Sequence[WaitEdge],
    graph: WaitGraph,
    stacks: Mapping[PartyKey, tuple[Frame, ...]],
    *,
    now_ns: int | None = None,
    aliases: Mapping[int, str] | None = None,
) -> tuple[Participant, ...]:
    """The cycle as :class:`~conctools.events.Participant` records, in cycle order.

    ``aliases`` names what a primitive also is (its id -> ``Condition 'c'`` for a Condition's lock).
    """
    now = time.monotonic_ns() if now_ns is None else now_ns
    # Two locks created on one line share a name: tell them apart by id, as jstack does.
    ids_by_label: dict[str, set[int]] = {}
    for edge in cycle:
        for prim, _ in [*graph.holds.get(edge.waiter_key, ()), *([(edge.prim, None)] if edge.prim else [])]:
            ids_by_label.setdefault(prim_label(prim), set()).add(prim.prim_id)

    def label(prim: PrimitiveState) -> str:
        text = prim_label(prim)
        if len(ids_by_label.get(text, ())) > 1:
            from conctools._lockname import ordinal_by_id  # which one, as every report says it: #1, #2

            ordinal = ordinal_by_id(prim.prim_id)
            if ordinal is not None:
                text = f"{prim.kind} {f'{prim.name} #{ordinal}'!r}"
        alias = (aliases or {}).get(prim.prim_id)
        return f"{text} (the lock of {alias})" if alias else text

    # A lock taken by a thread (task unknown) whose thread a task of the cycle now blocks.
    blocking_task = {e.waiter_key: e.waiter.task_name for e in cycle if e.waiter_key[0] == "thread"}

    def holder_words(edge: WaitEdge) -> str:
        task = blocking_task.get(edge.holder_key)
        if edge.prim is not None and edge.holder.task_name is None and task is not None:
            return (
                f"{edge.holder.who} (taken by a task of its event loop that was not recorded), now blocked in"
                f" task {task!r}"
            )
        return edge.holder.who

    out = []
    for edge in cycle:
        key = edge.waiter_key
        stack = stacks.get(key, ())
        held = graph.holds.get(key, ())
        unsure: tuple[tuple[PrimitiveState, Party], ...] = ()
        if key[0] == "thread" and edge.waiter.task_name is not None:
            # A task blocking its thread holds what it took itself; what its thread holds with no
            # task recorded may be another task's (a threading lock held across an await).
            unsure = tuple((p, h) for p, h in held if h.task_id is None)
            held = tuple((p, h) for p, h in held if h.task_id == edge.waiter.task_id)
        suspended_at = ""
        if key[0] == "task":
            top = _holding_frame(stack, [h.site for _, h in held]) or user_frame(stack)
            if top is not None:
                site = f"{short_file(top.filename)}:{top.lineno}"
                suspended_at = f"{site}: {top.line}" if top.line else site
        if edge.prim is not None:
            waits_for = label(edge.prim)
            waits_for_id = edge.prim.prim_id
            wait_site = edge.waiter.site
            since = edge.waiter.since_ns
        elif edge.kind == "loop":
            waits_for = f"its event loop thread {edge.holder.thread_name!r}"
            waits_for_id = 0
            wait_site = suspended_at.split(": ", 1)[0] if suspended_at else "?"
            since = edge.holder.since_ns
        else:
            waits_for = edge.what or edge.kind
            waits_for_id = 0
            wait_site = edge.waiter.site
            if wait_site in ("", "?"):
                frame = user_frame(stack)
                wait_site = f"{short_file(frame.filename)}:{frame.lineno}" if frame is not None else "?"
            since = edge.waiter.since_ns
        out.append(
            Participant(
                thread_id=edge.waiter.thread_id,
                thread_name=edge.waiter.thread_name,
                task_name=edge.waiter.task_name,
                waits_for=waits_for,
                waits_for_id=waits_for_id,
                wait_site=wait_site,
                held_by=holder_words(edge),
                holds=tuple(label(p) for p, _ in held),
                holds_sites=tuple(h.site for _, h in held),
                stack=stack,
                wait_s=max(0.0, (now - since) / 1e9),
                waits_kind=edge.kind if edge.prim is None else "lock",
                suspended_at=suspended_at,
                thread_holds=tuple(label(p) for p, _ in unsure),
                thread_holds_sites=tuple(h.site for _, h in unsure),
            )
        )
    return tuple(out)
