"""The blame of a deadlock in words: who blocks whom, where, and how such cycles are avoided.

Pure: :func:`explain` reads the cycle's participants (and what the watchdog found out about
ambiguous holders) and returns one paragraph and the advice that fits its shape. Every output
format carries the same paragraph, so text, JSON, HTML and Perfetto blame the same party.
"""

from __future__ import annotations

from collections.abc import Sequence

from conctools.events import Participant

__all__ = ["explain"]

ADVICE_LOCK_ACROSS_AWAIT = (
    "A threading lock held across an await blocks the event loop as soon as another task of the same loop wants it:"
    " use an asyncio.Lock in coroutines, or never hold a threading lock across an await."
)
ADVICE_THREADSAFE_UNDER_LOCK = (
    "Do not wait for a coroutine of an event loop (run_coroutine_threadsafe(...).result()) while holding a lock that"
    " code on that loop takes; release it first, or keep the loop's code off that lock (an asyncio.Lock, or"
    " asyncio.to_thread for the blocking part)."
)
ADVICE_OWN_LOOP = (
    "run_coroutine_threadsafe(coro, loop).result() on the loop's own thread can never return: the loop runs the"
    " coroutine only once its thread is free. Await the coroutine instead."
)
ADVICE_JOIN_UNDER_LOCK = (
    "A thread joins another while holding what the other needs: release it before join(), or join with a timeout."
)
ADVICE_JOB_UNDER_LOCK = (
    "A thread waits for a job while holding what the job needs: release it before waiting for the result, or hand"
    " the job what it needs."
)
ADVICE_POOL_ON_ITSELF = (
    "Every worker of the pool waits for a job queued behind it: run the inner jobs in another pool, or give the"
    " pool more workers than the depth of nested submissions."
)
ADVICE_AWAIT_JOB_UNDER_LOCK = (
    "A task awaits a job (to_thread, run_in_executor) while holding a threading lock that the job needs: release"
    " it before the await; never hold a threading lock across an await."
)
ADVICE_LOOP_BLOCKED = (
    "An event loop's thread blocks in a synchronous wait (a lock, a join, Future.result()) on something that needs"
    " the loop itself: await it instead (asyncio.to_thread, asyncio.wrap_future), so the loop keeps running."
)
ADVICE_LOCK_ORDER = (
    "Take these locks in one global order everywhere, so that no two parties hold them in opposite orders."
)
ADVICE_SELF = (
    "A non-reentrant lock taken twice by the same thread waits for itself: use an RLock if re-entry is intended,"
    " or release it before the second acquisition."
)
ADVICE_GENERATOR = (
    "A lock taken inside a generator stays held while the generator is suspended at its yield: exhaust or close()"
    " the generator (or take the lock around the loop that consumes it) before taking the lock again."
)


def _is_async_lock(label: str) -> bool:
    return label.startswith("aio.")


def _holding(p: Participant) -> str:
    if not p.holds:
        return ""
    parts = []
    for name, site in zip(p.holds, p.holds_sites, strict=False):
        parts.append(f"{name}, taken at {site}" if site and site != "?" else name)
    return f" (holding {'; '.join(parts)})"


def _taken_at(p: Participant, lock: str) -> str:
    """Where ``p`` (or, not recorded which task, its thread) took ``lock``."""
    for names, sites in ((p.holds, p.holds_sites), (p.thread_holds, p.thread_holds_sites)):
        if lock in names:
            i = names.index(lock)
            return sites[i] if i < len(sites) else "?"
    return "?"


def _step(p: Participant) -> str:
    """One participant's wait as a clause of the paragraph."""
    who = p.who
    if p.waits_kind == "lock":
        if p.task_name is not None and not _is_async_lock(p.waits_for):
            return (
                f"{who}{_holding(p)} blocks its event loop's thread at {p.wait_site}, waiting for {p.waits_for},"
                f" held by {p.held_by}"
            )
        return f"{who}{_holding(p)} waits at {p.wait_site} for {p.waits_for}, held by {p.held_by}"
    if p.waits_kind == "loop":
        where = f", suspended at {p.suspended_at}" if p.suspended_at else ""
        return f"{who}{_holding(p)}{where}, cannot resume while {p.held_by} blocks its event loop's thread"
    return f"{who}{_holding(p)} waits at {p.wait_site} for {p.waits_for}"


def explain(participants: Sequence[Participant], notes: Sequence[str] = ()) -> tuple[str, tuple[str, ...]]:
    """``(summary, advice)`` for one deadlock cycle (``notes``: what the watchdog learnt about
    an ambiguous holder, such as the suspended task or generator that probably holds a lock)."""
    if not participants:
        return "", ()
    if len(participants) == 1:
        return _explain_self(participants[0], notes)
    advice: list[str] = []
    summary = ""
    loop_waiter = next((p for p in participants if p.waits_kind == "loop"), None)
    if loop_waiter is not None:
        blocked = [
            p
            for p in participants
            if p is not loop_waiter
            and p.waits_kind == "lock"
            and not _is_async_lock(p.waits_for)
            and p.waits_for in loop_waiter.holds
        ]
        if blocked:
            r = blocked[0]
            site = _taken_at(loop_waiter, r.waits_for)
            suspended = f", suspended now at {loop_waiter.suspended_at}" if loop_waiter.suspended_at else ""
            summary = (
                f"{r.who} blocks the event loop's thread {r.thread_name!r} at {r.wait_site}, waiting for {r.waits_for},"
                f" which is held by task {loop_waiter.task_name!r} (acquired at {site}{suspended}); that task cannot"
                " resume while its loop's thread is blocked, so it never releases it."
            )
            advice.append(ADVICE_LOCK_ACROSS_AWAIT)
    if not summary:
        summary = "; ".join(_step(p) for p in participants) + ": none of them can go on."
    kinds = {p.waits_kind for p in participants}
    # Threading locks held on a loop's thread by a task that is suspended (or by the idle loop's thread).
    loop_held = {
        p.thread_name
        for p in participants
        if (p.suspended_at or p.waits_kind == "loop-tasks") and any(not _is_async_lock(h) for h in p.holds)
    }
    for p in participants:
        awaiting = bool(p.suspended_at)  # a suspended task awaits; otherwise the wait blocks its thread
        if p.waits_kind == "future" and awaiting and p.thread_name in loop_held:
            advice.append(ADVICE_AWAIT_JOB_UNDER_LOCK)
        elif p.waits_kind == "future" and "run_coroutine_threadsafe" in p.waits_for and p.holds:
            advice.append(ADVICE_THREADSAFE_UNDER_LOCK)
        elif p.waits_kind == "future" and "queued in" in p.waits_for:
            advice.append(ADVICE_POOL_ON_ITSELF)
        elif p.waits_kind == "future" and p.holds:
            advice.append(ADVICE_JOB_UNDER_LOCK)
        elif p.waits_kind == "join" and p.holds:
            advice.append(ADVICE_JOIN_UNDER_LOCK)
    if any(p.task_name is not None and not p.suspended_at and p.waits_kind in ("future", "join") for p in participants):
        advice.append(ADVICE_LOOP_BLOCKED)
    if kinds == {"lock"} and not advice:
        advice.append(ADVICE_LOCK_ORDER)
    return summary, tuple(dict.fromkeys(advice))


def _explain_self(p: Participant, notes: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    extra = f" {' '.join(notes)}" if notes else ""
    if p.waits_kind == "future" and "queued in" in p.waits_for:
        summary = (
            f"{p.who} waits at {p.wait_site} for {p.waits_for}: the job can only run on the thread that waits for it."
        )
        return summary, (ADVICE_POOL_ON_ITSELF,)
    if p.waits_kind == "future":
        summary = (
            f"{p.who} waits at {p.wait_site} for {p.waits_for}: that is its own event loop, which cannot run"
            " anything while its thread waits."
        )
        return summary, (ADVICE_OWN_LOOP,)
    if p.task_name is not None and not _is_async_lock(p.waits_for) and p.waits_for not in p.holds:
        site = _taken_at(p, p.waits_for)
        taken = f" (taken at {site})" if site not in ("", "?") else ""
        summary = (
            f"{p.who} blocks the event loop's thread {p.thread_name!r} at {p.wait_site}, waiting for {p.waits_for},"
            f" which this same thread holds{taken}. conctools did not record which task took it: most likely"
            " another task of this loop that holds it across an await (it cannot resume while the thread is"
            f" blocked), or this task taking it twice.{extra}"
        )
        return summary, (ADVICE_LOCK_ACROSS_AWAIT,)
    site = _taken_at(p, p.waits_for)
    taken = f", taken at {site}" if site not in ("", "?") else ""
    summary = f"{p.who} waits at {p.wait_site} for {p.waits_for}, which it holds itself{taken}.{extra}"
    advice = ADVICE_GENERATOR if any("generator" in n for n in notes) else ADVICE_SELF
    return summary, (advice,)
