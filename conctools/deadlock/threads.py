"""What a thread is doing, read from outside: its frames, its registry wait, untraced locks.

:func:`classify_thread` tells the hang detector whether a thread is blocked forever (a wait
without a timeout on something only another thread or task could release) or not (running,
sleeping, in ``select()``/``recv()``, or any wait with a timeout). Untraced locks are recognised
from the bytecode the waiting frame is executing.
"""

from __future__ import annotations

import _thread
import functools
import os
import re
import threading
import types
from collections.abc import Mapping, Sequence
from types import FrameType

from conctools._context import frames_of
from conctools._imports import imported
from conctools._records import field, record
from conctools._typing import TYPE_CHECKING, Any
from conctools.deadlock.graph import prim_label
from conctools.events import Frame
from conctools.registry import Party, PrimitiveState

if TYPE_CHECKING:
    import dis

__all__ = ["ThreadState", "classify_thread"]

_STDLIB_DIR = os.path.dirname(threading.__file__) + os.sep
_THREADING_PY = _STDLIB_DIR + "threading.py"
_QUEUE_PY = _STDLIB_DIR + "queue.py"
_FUTURES_DIR = _STDLIB_DIR + "concurrent" + os.sep + "futures" + os.sep
_SELECTORS_PY = _STDLIB_DIR + "selectors.py"
_ASYNCIO_DIR = _STDLIB_DIR + "asyncio" + os.sep
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# Frames that belong to the waiting machinery rather than to the program.
_MACHINERY = (_THREADING_PY, _QUEUE_PY, _FUTURES_DIR, _PKG_DIR)
# Machinery frames that start a thread or a job: where the program's own code begins.
_BOUNDARIES = frozenset({"run", "_bootstrap", "_bootstrap_inner", "_worker"})


@record(kw_only=True)
class ThreadState:
    """One thread as the hang detector sees it.

    ``blocked`` means it waits, without a timeout, on something only another thread or task
    could release; ``join_target`` is the thread it joins, if it joins one.
    """

    thread_id: int
    state: str  # "waiting", "joining", "idle", "loop idle forever", "running", "event loop"
    waits_on: str | None
    blocked: bool
    join_target: int | None = None
    stack: tuple[Frame, ...] = field(default=())


def _local(frame: FrameType, name: str) -> Any:
    """A local of another thread's frame, read-only; ``None`` if it cannot be read."""
    try:
        return frame.f_locals.get(name)
    except Exception:
        return None


def _api_name(frame: FrameType) -> str:
    """The outermost frame of the waiting machinery (``Event.wait``, ``Queue.get``, ...)."""
    api = frame
    f: FrameType | None = frame
    depth = 0
    while f is not None and depth < 16:
        if not f.f_code.co_filename.startswith(_MACHINERY) or f.f_code.co_name in _BOUNDARIES:
            break
        if not f.f_code.co_filename.startswith(_PKG_DIR):
            api = f
        f = f.f_back
        depth += 1
    code = api.f_code
    qualname = getattr(code, "co_qualname", code.co_name)
    if api.f_code.co_filename.startswith(_FUTURES_DIR) and qualname == "wait":
        return "concurrent.futures.wait()"
    module = "queue" if api.f_code.co_filename == _QUEUE_PY else "threading"
    if api.f_code.co_filename.startswith(_FUTURES_DIR):
        module = "concurrent.futures"
    return f"{module}.{qualname}()" + _api_detail(api, qualname)


def _api_detail(frame: FrameType, qualname: str) -> str:
    """What the waited-on object says about itself: a job not started, an empty queue."""
    owner = _local(frame, "self")
    try:
        if qualname == "Future.result":
            state = getattr(owner, "_state", None)
            if state == "PENDING":
                return " (not started or not set yet)"
            if state == "RUNNING":
                return " of a running job"
        elif qualname == "Queue.join":
            unfinished = int(owner.unfinished_tasks)
            puts = getattr(getattr(owner, "not_empty", None), "_ct_progress", None)  # a traced Condition: notifies
            counts = (
                f" ({puts} put, {puts - unfinished} task_done)" if isinstance(puts, int) and puts >= unfinished else ""
            )
            return f": {unfinished} unfinished task{'' if unfinished == 1 else 's'}{counts}"
        elif qualname == "Barrier.wait":
            return f" ({owner.n_waiting} of {owner.parties} parties arrived)"
        elif qualname == "Condition.wait_for":
            predicate = _local(frame, "predicate")
            code = getattr(predicate, "__code__", None)
            if code is not None:
                where = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"
                return f" (until its predicate, {getattr(predicate, '__qualname__', '?')} at {where}, is true)"
        elif qualname == "Queue.get":
            return f" (the queue is empty; {owner.maxsize or 'no'} max size)"
        elif qualname == "Queue.put":
            return f" (the queue is full: {owner.maxsize} items)"
    except Exception:
        pass
    return ""


def _first_foreign(frame: FrameType | None) -> FrameType | None:
    """The innermost frame outside conctools."""
    depth = 0
    while frame is not None and depth < 32 and frame.f_code.co_filename.startswith(_PKG_DIR):
        frame = frame.f_back
        depth += 1
    return frame


def _stack(frame: FrameType | None) -> tuple[Frame, ...]:
    """The thread's stack, innermost first, without conctools' frames nor runpy's below the program."""
    stack = frames_of(frame)
    end = len(stack)
    while end > 0 and (stack[end - 1].filename == "<frozen runpy>" or stack[end - 1].filename.endswith("runpy.py")):
        end -= 1
    return stack[:end]


def _on_stack(frame: FrameType | None, filename: str, function: str) -> bool:
    depth = 0
    while frame is not None and depth < 200:
        if frame.f_code.co_name == function and frame.f_code.co_filename == filename:
            return True
        frame = frame.f_back
        depth += 1
    return False


def _describe_prim_wait(party: Party, prim: PrimitiveState) -> str:
    label = prim_label(prim)
    if prim.holders:
        return f"{label} held by {holders_words(prim)}"
    if prim.kind.endswith("Event"):
        return f"{label} (not set)"
    if prim.kind.endswith("Condition"):
        return f"{label} (waiting for a notify)"
    return label


def _names(names: Sequence[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def holders_words(prim: PrimitiveState) -> str:
    """Who holds ``prim``, in words: exited holders as such, by their own names; a holder listed
    once per permit it holds; a live thread that both holds and waits for a non-reentrant
    primitive flagged (an id the primitive recorded may be an exited thread's, reused)."""
    alive = {t.ident for t in threading.enumerate()}
    exited = [h for h in prim.holders if _exited(h)]
    live = [h for h in prim.holders if not _exited(h)]
    parts = []
    if exited:
        unnamed = sorted({h.thread_name.removeprefix("exited thread ") for h in exited if _unnamed(h)})
        names = sorted({h.thread_name for h in exited if not _unnamed(h)})
        tasks = sorted({h.task_name for h in exited if h.task_name is not None})
        sites = sorted({h.site for h in exited if h.site and h.site != "?"})
        whos = []
        if names:
            whos.append(f"exited thread{'s' if len(names) > 1 else ''} {_names(names)}")
        if unnamed:
            ids = ", ".join(unnamed)
            whos.append(f"an exited thread{'s' if len(unnamed) > 1 else ''} (id {ids}, its name was not recorded)")
        who = " and ".join(whos)
        if tasks:
            who += f" (in task{'s' if len(tasks) > 1 else ''} {_names(tasks)})"
        where = f"acquired at {', '.join(sites)}, never released" if sites else "never released"
        parts.append(f"{who} ({where})")
    waiting = {w.thread_id for w in prim.waiters}
    counts: dict[tuple[str, str, int], int] = {}
    for h in live:
        key = (h.who, h.site if h.site and h.site != "?" else "", h.thread_id)
        counts[key] = counts.get(key, 0) + 1
    for (who, site, tid), n in counts.items():
        words = who + (f" since {site}" if site else "")
        if n > 1:
            words += f" ({n} permits)"
        if tid not in alive:
            words += ", which has finished without releasing it"
        elif tid in waiting and not prim.kind.endswith("RLock"):
            words += (
                " (which also waits for it: this thread holds it and waits again, or the id belonged to an"
                " exited thread before it)"
            )
        parts.append(words)
    return "; ".join(parts)


def _unnamed(party: Party) -> bool:
    """The C path's record of an exited owner: its id, not its name."""
    return party.thread_id == 0 and party.thread_name.startswith("exited thread ")


def _exited(party: Party) -> bool:
    if getattr(party, "exited", False):
        return True
    return party.thread_id == 0 and party.thread_name.startswith("exited thread ")


def classify_thread(
    thread_id: int,
    frame: FrameType | None,
    registry_wait: tuple[Party, PrimitiveState] | None = None,
    loops: Mapping[int, tuple[bool, str]] | None = None,
    *,
    with_stack: bool = True,
    read_bytecode: bool = True,
) -> ThreadState:
    """What thread ``thread_id`` does, from its innermost frame and its registry wait.

    ``loops`` maps a thread id to ``(idle_forever, description)`` of the event loop it
    runs. Only recognised waits without a timeout count as blocked; anything else (running
    code, ``time.sleep``, ``recv()``, ``select()`` with timers or sockets, unknown C calls)
    does not, so a healthy idle program is never called hung. ``with_stack=False`` skips
    the (costly) stack capture; ``read_bytecode=False`` skips looking for an untraced lock
    at the current instruction (pointless while the thread is seen moving).
    """
    stack = _stack(frame) if with_stack else ()
    if registry_wait is not None:
        party, prim = registry_wait
        blocked = party.timeout_s is None
        what = _describe_prim_wait(party, prim) + f", at {party.site}"
        # A traced primitive inside the stdlib (Queue.get's Condition): name the stdlib call too.
        outer = _first_foreign(frame)
        if outer is not None and outer.f_code.co_filename.startswith(_MACHINERY):
            api = _api_name(outer)
            if not (api.startswith("threading.Condition.wait()") and not prim.kind.endswith("Condition")):
                what = f"{api}: {what}"  # (a Semaphore's own internal Condition says nothing more)
        return ThreadState(
            thread_id=thread_id,
            state="waiting" if blocked else f"waiting (timeout {party.timeout_s}s)",
            waits_on=what,
            blocked=blocked,
            stack=stack,
        )
    if frame is None:
        return ThreadState(thread_id=thread_id, state="unknown", waits_on=None, blocked=False, stack=stack)
    code = frame.f_code
    filename, function = code.co_filename, code.co_name
    if filename == _THREADING_PY and function == "wait":  # Condition.wait, under every threading wait
        timeout = _local(frame, "timeout")
        what = _api_name(frame)
        if timeout is None:
            return ThreadState(thread_id=thread_id, state="waiting", waits_on=what, blocked=True, stack=stack)
        return ThreadState(
            thread_id=thread_id, state=f"waiting (timeout {timeout}s)", waits_on=what, blocked=False, stack=stack
        )
    if filename == _THREADING_PY and function in ("_wait_for_tstate_lock", "join"):
        target = _local(frame, "self")
        if function == "_wait_for_tstate_lock":
            forever = _local(frame, "block") is not False and _local(frame, "timeout") in (-1, None)
        else:
            forever = _local(frame, "timeout") is None
        target_id = getattr(target, "ident", None)
        name = getattr(target, "name", "?")
        return ThreadState(
            thread_id=thread_id,
            state="joining" if forever else "joining (with a timeout)",
            waits_on=f"threading.Thread.join() of thread {name!r}",
            blocked=forever,
            join_target=target_id if isinstance(target_id, int) else None,
            stack=stack,
        )
    if (filename.startswith(_MP_DIR) and function in ("poll", "wait")) or (
        filename == _REAPING_PY and function == "_mp_poll"  # Popen.poll, wrapped when children are followed
    ):
        joined = _process_join(frame)
        if joined is not None:
            blocked, what = joined
            return ThreadState(
                thread_id=thread_id,
                state="joining a process" if blocked else "joining a process (it may still finish)",
                waits_on=what,
                blocked=blocked,
                stack=stack,
            )
    if filename.startswith(_FUTURES_DIR) and function == "_worker":
        return ThreadState(
            thread_id=thread_id,
            state="idle",
            waits_on="work from its ThreadPoolExecutor (an idle pool worker)",
            blocked=True,
            stack=stack,
        )
    if loops is not None and thread_id in loops and _on_stack(frame, _ASYNCIO_DIR + "base_events.py", "_run_once"):
        idle_forever, description = loops[thread_id]
        if filename == _SELECTORS_PY and idle_forever:
            return ThreadState(
                thread_id=thread_id, state="loop idle forever", waits_on=description, blocked=True, stack=stack
            )
        state = "event loop" if filename == _SELECTORS_PY else "running"
        return ThreadState(thread_id=thread_id, state=state, waits_on=description, blocked=False, stack=stack)
    raw = _raw_lock_wait(frame, thread_id) if read_bytecode and not filename.startswith(_PKG_DIR) else None
    if raw is not None:
        return ThreadState(thread_id=thread_id, state="waiting", waits_on=raw, blocked=True, stack=stack)
    return ThreadState(thread_id=thread_id, state="running", waits_on=None, blocked=False, stack=stack)


# -- child processes ----------------------------------------------------------------------------

_MP_DIR = _STDLIB_DIR + "multiprocessing" + os.sep
_REAPING_PY = os.path.join(_PKG_DIR, "children", "reaping.py")
_F_GETPIPE_SZ = 1032  # Linux


def _process_join(frame: FrameType) -> tuple[bool, str] | None:
    """A ``multiprocessing.Process.join()`` without a timeout: ``(blocked, words)``.

    conctools does not see inside the child. It calls the join blocked forever only on the
    documented pitfall it can see from here: a ``multiprocessing.Queue`` the parent handed the
    child (or holds) has a full pipe that nobody reads, so the child cannot exit (its feeder
    thread waits for room to flush what it put()) while this thread waits for it to exit.
    """
    process = None
    f: FrameType | None = frame
    depth = 0
    while f is not None and depth < 6:
        if f.f_code.co_filename == _MP_DIR + "process.py" and f.f_code.co_name == "join":
            process = _local(f, "self")
            if _local(f, "timeout") is not None:
                return None
            break
        f = f.f_back
        depth += 1
    if process is None:
        return None
    name = getattr(process, "name", "?")
    what = f"multiprocessing.Process.join() of process {name!r} (pid {getattr(process, 'pid', '?')})"
    for q, where in _queues_near(process, f):
        full = _full_pipe(q)
        if full:
            return True, (
                f"{what}; the multiprocessing.Queue {where} has {full // 1024} KiB unread in its pipe, which is"
                " full: that process cannot exit before what it put() there is read (its feeder thread waits for"
                " room in the pipe), and nothing reads it while this thread waits in join(). Read the queue"
                " before join(). (conctools does not see inside the child: this is what the parent shows.)"
            )
    return False, what


def _queues_near(process: Any, frame: FrameType | None) -> list[tuple[Any, str]]:
    """``multiprocessing.Queue`` objects handed to ``process`` or named by the joining code."""
    found: list[tuple[Any, str]] = []

    def note(value: Any, where: str) -> None:
        kind = type(value)
        if (
            kind.__name__ in ("Queue", "JoinableQueue")
            and kind.__module__ == "multiprocessing.queues"
            and all(value is not q for q, _ in found)
        ):
            found.append((value, where))

    for value in (*tuple(getattr(process, "_args", ()) or ()), *dict(getattr(process, "_kwargs", {}) or {}).values()):
        note(value, f"passed to process {getattr(process, 'name', '?')!r}")
    f = frame.f_back if frame is not None else None
    depth = 0
    while f is not None and depth < 8:
        try:
            local = dict(f.f_locals)
        except Exception:
            local = {}
        for key, value in local.items():
            note(value, f"{key!r}")
        for key in f.f_code.co_names:
            value = f.f_globals.get(key)
            if value is not None:
                note(value, f"{key!r}")
        f = f.f_back
        depth += 1
    return found


def _full_pipe(q: Any) -> int:
    """Bytes unread in a ``multiprocessing.Queue``'s pipe when the pipe is full, else 0."""
    try:
        import fcntl
        import struct
        import termios

        fd = q._reader.fileno()
        available = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        try:
            capacity = fcntl.fcntl(fd, _F_GETPIPE_SZ)
        except OSError:
            capacity = 65536
        # Full: less than a page left (the writer's partial first page is never filled up).
        return int(available) if available >= capacity - 4096 else 0
    except Exception:
        return 0


# -- untraced locks, recognised from the bytecode -----------------------------------------

_RAW_LOCK = type(_thread.allocate_lock())
_RAW_RLOCK = type(_thread.RLock())
_LOADS_LOCAL = frozenset({"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW", "LOAD_DEREF", "LOAD_NAME"})
_LOADS_GLOBAL = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_RAW_OWNER = re.compile(r"owner=(\d+)")


def _static_attr(obj: Any, name: str) -> Any:
    """``obj.name`` without running any of the program's code (no properties, no __getattr__)."""
    try:
        value = imported("inspect").getattr_static(obj, name)  # imported here: a followed child does without
    except AttributeError:
        return None
    if isinstance(value, types.MemberDescriptorType):  # a __slots__ attribute
        try:
            return value.__get__(obj, type(obj))
        except AttributeError:
            return None
    return value


def _resolve(frame: FrameType, chain: Sequence[dis.Instruction]) -> tuple[Any, str] | None:
    """The object a ``LOAD_* name`` + ``LOAD_ATTR``s chain loads in ``frame``, and its source text."""
    if not chain:
        return None
    base, attrs = chain[0], chain[1:]
    name = str(base.argval)
    if base.opname in ("LOAD_GLOBAL", "LOAD_NAME") and base.opname not in _LOADS_LOCAL:
        obj = frame.f_globals.get(name, frame.f_builtins.get(name))
    else:
        obj = _local(frame, name)
        if obj is None and base.opname == "LOAD_NAME":
            obj = frame.f_globals.get(name)
    for attr in attrs:
        if obj is None:
            return None
        obj = _static_attr(obj, str(attr.argval))
    return obj, ".".join([name, *(str(a.argval) for a in attrs)])


@functools.lru_cache(maxsize=256)
def _instructions(code: types.CodeType) -> tuple[list[dis.Instruction], dict[int, int]]:
    """A code object's instructions and an offset -> position index (cached: dis is slow)."""
    instructions = list(imported("dis").get_instructions(code))
    return instructions, {ins.offset: i for i, ins in enumerate(instructions)}


def _raw_lock_wait(frame: FrameType, thread_id: int) -> str | None:
    """``with lock:`` / ``lock.acquire()`` on an untraced, locked ``threading.Lock``/``RLock``,
    recognised from the instruction the frame is executing; ``None`` if it is anything else.

    Only blocking acquires without a timeout count; the stall window of the caller (the
    frame must not move for the whole timeout) rules out a passing moment.
    """
    try:
        instructions, index = _instructions(frame.f_code)
        at = index[frame.f_lasti]
    except Exception:  # no instruction at f_lasti (a CACHE entry, an odd frame): not recognised
        return None
    current = instructions[at]
    end = at
    if current.opname == "BEFORE_WITH":
        pass
    elif current.opname == "CALL":
        # <load chain> LOAD_METHOD/LOAD_ATTR acquire [LOAD_CONST True] [PRECALL] CALL
        args = [ins for ins in instructions[:at] if ins.opname not in ("PRECALL", "CACHE")][-(current.arg or 0) - 1 :]
        method, given = args[0], args[1:]
        if method.opname not in ("LOAD_METHOD", "LOAD_ATTR") or method.argval not in ("acquire", "__enter__"):
            return None
        if any(not (a.opname == "LOAD_CONST" and a.argval is True) for a in given) or len(given) > 1:
            return None  # a timeout or non-blocking acquire: not forever
        end = index[method.offset]
    else:
        return None
    chain: list[dis.Instruction] = []
    k = end - 1
    while k >= 0 and instructions[k].opname == "LOAD_ATTR":
        chain.insert(0, instructions[k])
        k -= 1
    if k < 0 or instructions[k].opname not in _LOADS_LOCAL | _LOADS_GLOBAL:
        return None
    chain.insert(0, instructions[k])
    resolved = _resolve(frame, chain)
    if resolved is None:
        return None
    obj, text = resolved
    if isinstance(obj, _RAW_LOCK):
        if not obj.locked():
            return None
        return f"threading.Lock {text!r} (untraced, locked)"
    if isinstance(obj, _RAW_RLOCK):
        match = _RAW_OWNER.search(repr(obj))
        owner = int(match.group(1)) if match else 0
        if owner in (0, thread_id):  # free, or re-entry: it does not block
            return None
        names = {t.ident: t.name for t in threading.enumerate()}
        return f"threading.RLock {text!r} (untraced) held by thread {names.get(owner, owner)!r}"
    return None
