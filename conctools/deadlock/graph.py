"""The wait-for graph: pure functions of registry records (who waits for whom, and the cycles).

In the spirit of asyncio's ``tools.py``: plain data in, plain data out, nothing here touches the
running program.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from conctools._context import user_frame
from conctools.events import Frame, Participant
from conctools.registry import Party, PrimitiveState

__all__ = [
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
    "stuck_parties",
]

# A node of the wait-for graph: ("thread", thread_id) or ("task", id(task)).
PartyKey = tuple[str, int]


def describe_cycle(cycle: Sequence[Participant]) -> str:
    """One line per participant: ``thread 'a' waits for Lock 'b' held by thread 'b'``."""
    parts = [f"{p.who} waits for {p.waits_for} held by {p.held_by} at {p.wait_site}" for p in cycle]
    return "deadlock: " + "; ".join(parts)


def party_key(party: Party) -> PartyKey:
    """The graph node of ``party``: its task when it is a task, else its thread."""
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


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitEdge:
    """``waiter`` waits for ``holder``: on ``prim``, or (``prim is None``) for its event loop
    thread, which ``holder`` blocks in a synchronous wait."""

    waiter: Party
    holder: Party
    prim: PrimitiveState | None
    waiter_key: PartyKey
    holder_key: PartyKey


@dataclass(frozen=True, slots=True)
class WaitGraph:
    """The wait-for graph at one instant.

    ``edges`` maps each waiting party to its out-edges; ``waits`` maps it to the primitive
    it waits on (its own registry record); ``holds`` maps every party to what it holds.
    """

    edges: Mapping[PartyKey, tuple[WaitEdge, ...]]
    waits: Mapping[PartyKey, tuple[Party, PrimitiveState]]
    holds: Mapping[PartyKey, tuple[tuple[PrimitiveState, Party], ...]]


def build_wait_graph(prims: Iterable[PrimitiveState]) -> WaitGraph:
    """The wait-for graph of ``prims`` (registry records): pure, never touches the program.

    A wait on a threading primitive blocks the whole thread, so its node is the thread even
    when a task waits; a wait on an asyncio primitive is the task's own. An RLock's owner
    waiting on its own RLock is re-entry in progress, not an edge.
    """
    prims = tuple(prims)
    # Per thread: the party blocking it synchronously (a thread, or a task in a sync wait).
    sync_blockers: dict[int, Party] = {}
    for prim in prims:
        if _is_sync_kind(prim.kind):
            for waiter in prim.waiters:
                sync_blockers.setdefault(waiter.thread_id, waiter)

    def waiter_key(party: Party, prim: PrimitiveState) -> PartyKey:
        if _is_sync_kind(prim.kind):
            return ("thread", party.thread_id)
        return party_key(party)

    def holder_key(party: Party) -> PartyKey:
        blocker = sync_blockers.get(party.thread_id)
        if party.task_id is not None and blocker is not None and blocker.task_id == party.task_id:
            return ("thread", party.thread_id)  # the task blocks its own thread: one node
        return party_key(party)

    edges: dict[PartyKey, list[WaitEdge]] = {}
    waits: dict[PartyKey, tuple[Party, PrimitiveState]] = {}
    holds: dict[PartyKey, list[tuple[PrimitiveState, Party]]] = {}
    for prim in prims:
        for holder in prim.holders:
            holds.setdefault(holder_key(holder), []).append((prim, holder))
        for waiter in prim.waiters:
            key = waiter_key(waiter, prim)
            waits.setdefault(key, (waiter, prim))
            for holder in prim.holders:
                if _reentrant(prim.kind) and holder.thread_id == waiter.thread_id:
                    continue
                if len(prim.holders) > 1 and holder_key(holder) == key:
                    continue  # its own permit cannot come back while it waits: only the others can
                edge = WaitEdge(waiter=waiter, holder=holder, prim=prim, waiter_key=key, holder_key=holder_key(holder))
                edges.setdefault(key, []).append(edge)
    # A suspended task that holds something but waits on nothing in the registry still cannot
    # run while a synchronous wait blocks its event loop thread: it waits for that thread.
    for key, held in holds.items():
        if key[0] != "task" or key in waits:
            continue
        holder = held[0][1]
        blocker = sync_blockers.get(holder.thread_id)
        if blocker is not None:
            edge = WaitEdge(
                waiter=holder, holder=blocker, prim=None, waiter_key=key, holder_key=("thread", holder.thread_id)
            )
            edges.setdefault(key, []).append(edge)
    return WaitGraph(
        edges={k: tuple(v) for k, v in edges.items()},
        waits=waits,
        holds={k: tuple(v) for k, v in holds.items()},
    )


def stuck_parties(graph: WaitGraph, *, now_ns: int | None = None, min_wait_s: float = 0.0) -> frozenset[PartyKey]:
    """The parties that can never proceed: each waits, without a timeout, for ``min_wait_s``
    at least, and every holder of what it waits on is itself stuck.

    A waiter is released when ANY holder releases (a semaphore with several holders), so a
    party stays in the set only while all of its edges lead back into the set (the greatest
    fixpoint): cycles whose exits are all blocked, and the parties queued behind them.
    """
    now = time.monotonic_ns() if now_ns is None else now_ns
    min_wait_ns = int(min_wait_s * 1e9)

    def blocked(key: PartyKey) -> bool:
        wait = graph.waits.get(key)
        if wait is None:  # a task waiting for its loop thread: as stuck as that thread's waiter
            return True
        party = wait[0]
        return party.timeout_s is None and now - party.since_ns >= min_wait_ns

    stuck = {key for key, out in graph.edges.items() if out and blocked(key)}
    changed = True
    while changed:
        changed = False
        for key in list(stuck):
            if any(edge.holder_key not in stuck for edge in graph.edges[key]):
                stuck.discard(key)
                changed = True
    return frozenset(stuck)


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

    >>> find_deadlocks(build_wait_graph([]))
    []
    """
    stuck = stuck_parties(graph, now_ns=now_ns, min_wait_s=min_wait_s)
    if not stuck:
        return []
    adjacency: dict[PartyKey, list[PartyKey]] = {}
    for key in sorted(stuck):
        targets: list[PartyKey] = []
        for edge in graph.edges[key]:
            if edge.holder_key in stuck and edge.holder_key not in targets:
                targets.append(edge.holder_key)
        adjacency[key] = targets
    cycles = []
    for nodes in _elementary_cycles(adjacency, limit):
        chain = []
        for i, node in enumerate(nodes):
            nxt = nodes[(i + 1) % len(nodes)]
            edge = next(e for e in graph.edges[node] if e.holder_key == nxt)
            chain.append(edge)
        cycles.append(tuple(chain))
    return cycles


def cycle_key(cycle: Sequence[WaitEdge]) -> frozenset[tuple[PartyKey, int]]:
    """The identity of a cycle (who waits on what), to report each one once."""
    return frozenset((e.waiter_key, e.prim.prim_id if e.prim is not None else 0) for e in cycle)


def participants_of(
    cycle: Sequence[WaitEdge],
    graph: WaitGraph,
    stacks: Mapping[PartyKey, tuple[Frame, ...]],
    *,
    now_ns: int | None = None,
) -> tuple[Participant, ...]:
    """The cycle as :class:`~conctools.events.Participant` records, in cycle order."""
    now = time.monotonic_ns() if now_ns is None else now_ns
    # Two locks created on one line share a name: tell them apart by id, as jstack does.
    ids_by_label: dict[str, set[int]] = {}
    for edge in cycle:
        for prim, _ in [*graph.holds.get(edge.waiter_key, ()), *([(edge.prim, None)] if edge.prim else [])]:
            ids_by_label.setdefault(prim_label(prim), set()).add(prim.prim_id)

    def label(prim: PrimitiveState) -> str:
        text = prim_label(prim)
        return f"{text} <{prim.prim_id:#x}>" if len(ids_by_label.get(text, ())) > 1 else text

    # A lock taken by a thread (task unknown) whose thread a task of the cycle now blocks.
    blocking_task = {e.waiter_key: e.waiter.task_name for e in cycle if e.waiter_key[0] == "thread"}

    def holder_words(edge: WaitEdge) -> str:
        task = blocking_task.get(edge.holder_key)
        if edge.holder.task_name is None and task is not None:
            return f"{edge.holder.who}, now blocked in task {task!r}"
        return edge.holder.who

    out = []
    for edge in cycle:
        key = edge.waiter_key
        stack = stacks.get(key, ())
        held = graph.holds.get(key, ())
        if edge.prim is not None:
            waits_for = label(edge.prim)
            waits_for_id = edge.prim.prim_id
            wait_site = edge.waiter.site
            since = edge.waiter.since_ns
        else:
            waits_for = f"its event loop thread {edge.holder.thread_name!r}"
            waits_for_id = 0
            frame = user_frame(stack)
            wait_site = frame.site if frame is not None else "?"
            since = edge.holder.since_ns
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
            )
        )
    return tuple(out)
