"""Pool blame: who holds a pool's items while others wait, for pools built on the stdlib.

User programs run under ``conctools run`` (real subprocesses); the rest drives real queues,
threads and event loops in-process under ``track_pools()`` and reads the report a person reads.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import pickle
import queue
import re
import subprocess
import sys
import threading
import weakref
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest

from conctools import pools
from conctools.events import PoolExhaustedEvent, PoolHolder, event_from_dict
from conctools.recorder import Recorder
from conctools.reporting import render_text
from conctools.reporting.pools_text import pool_findings, pools_section

SCRIPTS = Path(__file__).resolve().parent / "scripts"
TIMEOUT = 60


def line_of(path: Path, marker: str) -> int:
    """The 1-based line of ``path`` that contains ``marker`` (exactly one)."""
    hits = [n for n, text in enumerate(path.read_text().splitlines(), 1) if marker in text]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def run_script(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conctools", "run", str(SCRIPTS / name)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def json_of_script(script: Path, pure: bool) -> dict[str, Any]:
    """Run ``python script`` on the C path or the pure-Python one; the JSON of its last line (exit 0 asserted).
    Its ``"c"``, when it prints one (``locks.SPEEDUPS``), is never true with ``CONCTOOLS_PURE_PYTHON=1``."""
    env = {k: v for k, v in os.environ.items() if k != "CONCTOOLS_PURE_PYTHON"}
    if pure:
        env["CONCTOOLS_PURE_PYTHON"] = "1"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert not (pure and data.get("c")), data
    return data


def section(recorder: Recorder) -> dict[str, Any]:
    data = recorder.snapshot().sections["pools"]
    assert isinstance(data, dict)
    return data


def only_pool(data: dict[str, Any]) -> dict[str, Any]:
    assert len(data["pools"]) == 1, data["pools"]
    row: dict[str, Any] = data["pools"][0]
    return row


class TestUnderConctoolsRun:
    """Pools in user programs, found by ``conctools run`` with no change to the program."""

    def test_asyncio_queue_pool_names_the_holders_and_their_await(self) -> None:
        """Handlers holding connections across ``await fetch_upstream()`` are named, with both lines."""
        script = SCRIPTS / "pool_asyncio_queue.py"
        proc = run_script(script.name)
        assert proc.returncode == 0, proc.stderr
        created = line_of(script, "pool: asyncio.Queue[str] = asyncio.Queue()")
        hold, acquire = line_of(script, "# HOLD"), line_of(script, "# ACQUIRE")
        head = re.search(rf"pool 'pool_asyncio_queue.py:{created}' exhausted for [^\n]*", proc.stderr)
        assert head is not None, proc.stderr
        # Every holder seen is the same culprit (no other group is listed), then the waits.
        assert (
            f": 3 of 3 items held; holders seen while it was exhausted: 100% tasks awaiting `fetch_upstream()` at "
            f"pool_asyncio_queue.py:{hold} (acquired at pool_asyncio_queue.py:{acquire}); 6 waits, p99 "
        ) in head[0], head[0]

    def test_queue_queue_pool_in_threads(self) -> None:
        """Threads holding connections inside ``slow_upstream()`` are named, with both lines."""
        script = SCRIPTS / "pool_threads.py"
        proc = run_script(script.name)
        assert proc.returncode == 0, proc.stderr
        created = line_of(script, "pool: queue.Queue[str] = queue.Queue()")
        hold, acquire = line_of(script, "# HOLD"), line_of(script, "# ACQUIRE")
        head = re.search(rf"pool 'pool_threads.py:{created}' exhausted for [^\n]*", proc.stderr)
        assert head is not None, proc.stderr
        assert ": 2 of 2 items held; holders seen while it was exhausted: " in head[0], head[0]
        # The holders were seen in slow_upstream() (a waiter that just got its item may be seen elsewhere).
        assert re.search(
            rf"[:,] \d+% threads in `slow_upstream\(\)` at pool_threads.py:{hold} "
            rf"\(acquired at pool_threads.py:{acquire}\)",
            head[0],
        ), head[0]
        assert "get()" not in head[0]  # the waiters never appear as holders

    def test_semaphore_guarded_pool(self) -> None:
        """A list behind ``asyncio.Semaphore(2)``: its slots' holders and where they await."""
        script = SCRIPTS / "pool_semaphore.py"
        proc = run_script(script.name)
        assert proc.returncode == 0, proc.stderr
        created = line_of(script, "slots = asyncio.Semaphore(2)")
        hold = line_of(script, "# HOLD")
        assert (
            f"pool 'pool_semaphore.py:{created}' exhausted for " in proc.stderr
            and f": 2 of 2 slots held; holders seen while it was exhausted: 100% tasks awaiting "
            f"`sleep()` at pool_semaphore.py:{hold}; 4 waits, p99 "
            in proc.stderr
        ), proc.stderr

    def test_healthy_pool_and_channel_report_nothing(self) -> None:
        """A pool that never ran dry and a producer/consumer queue are not pool problems."""
        proc = run_script("pool_healthy.py")
        assert proc.returncode == 0, proc.stderr
        assert "Pools (" not in proc.stderr and "pool '" not in proc.stderr, proc.stderr

    def test_hang_on_a_leaked_connection_names_the_leaker(self) -> None:
        """A wait forever for a connection a finished task kept: exit 87, and the pool names the leaker."""
        script = SCRIPTS / "pool_leaked.py"
        proc = subprocess.run(
            [sys.executable, "-m", "conctools", "run", "--deadlock-timeout", "2", str(script)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert proc.returncode == 87, proc.stderr
        leak = line_of(script, "# LEAK")
        assert re.search(
            r"pool 'pool_leaked.py:\d+' exhausted for [^\n]* \(still: 1 waiting now\): 1 of 1 items held; "
            rf"holders seen while it was exhausted: 100% tasks that finished without giving them back "
            rf"\(acquired at pool_leaked.py:{leak}\); 1 wait\n",
            proc.stderr,
        ), proc.stderr

    def test_n_plus_one_names_the_loop(self) -> None:
        """One take per row in a loop is an N+1 pattern at the loop's line, via the helper."""
        script = SCRIPTS / "pool_n_plus_one.py"
        proc = run_script(script.name)
        assert proc.returncode == 0, proc.stderr
        loop = line_of(script, "# PER ROW")
        helper = line_of(script, "conn = await pool.get()")
        found = re.search(
            rf"N\+1 pattern: task 'Task-1' took (\d+) items in a row from pool 'pool_n_plus_one.py:\d+', "
            rf"one after another, at pool_n_plus_one.py:{loop} in list_orders "
            rf"\(via pool_n_plus_one.py:{helper} in fetch\); (\d+) such runs",
            proc.stderr,
        )
        assert found is not None, proc.stderr
        assert int(found[1]) >= pools.REPEAT_MIN and int(found[2]) >= 1


class TestTracking:
    """In-process: counts, identities and the stdlib's behaviour under ``track_pools()``."""

    def test_counts_stay_exact_under_threads(self, recorder: Recorder) -> None:
        """Eight threads take and give back 4000 times: every take and return is counted."""
        with pools.track_pools():
            pool: queue.Queue[int] = queue.Queue()
            for n in range(3):
                pool.put(n)
            pool.get()  # one taken and given back by the main thread: the queue is a pool
            pool.put(0)

            def worker() -> None:
                for _ in range(500):
                    item = pool.get()
                    pool.put(item)

            threads = [threading.Thread(target=worker, name=f"w{i}") for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        row = only_pool(section(recorder))
        assert row["takes"] == row["returns"] == 4001
        assert row["held_now"] == 0 and row["available_now"] == 3

    def test_stdlib_behaviour_is_kept(self, recorder: Recorder) -> None:
        """Errors, timeouts, cancellation and coroutine-ness are the stdlib's own."""

        async def main() -> None:
            q: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
            assert inspect.iscoroutinefunction(asyncio.Queue.get)
            assert asyncio.Queue.get.__name__ == "get"
            with pytest.raises(asyncio.QueueEmpty):
                q.get_nowait()
            q.put_nowait("a")
            with pytest.raises(asyncio.QueueFull):
                q.put_nowait("b")
            item = await q.get()
            q.put_nowait(item)
            item = await q.get()
            q.put_nowait("x")  # fills the queue: the holder's give-back fails and it keeps the item
            with pytest.raises(asyncio.QueueFull):
                q.put_nowait(item)
            await q.get()
            q.put_nowait(item)
            await q.get()
            waiter = asyncio.create_task(q.get())
            await asyncio.sleep(0.01)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            q.put_nowait(item)
            assert await q.get() == item

        with pools.track_pools():
            asyncio.run(main())
            pickled: asyncio.Queue[int] = asyncio.Queue()
            pickled.put_nowait(1)
            pickled.put_nowait(pickled.get_nowait())
            copy = pickle.loads(pickle.dumps(pickled))
            assert copy.get_nowait() == 1 and deepcopy(pickled).qsize() == 1
            plain: queue.Queue[int] = queue.Queue()
            with pytest.raises(queue.Empty):
                plain.get(timeout=0.01)
            lifo: queue.LifoQueue[int] = queue.LifoQueue()
            for n in (1, 2, 3):
                lifo.put(n)
            assert [lifo.get() for _ in range(3)] == [3, 2, 1]
        row = next(p for p in section(recorder)["pools"] if p["kind"] == "asyncio.Queue")
        # Taken 5 times, given back 3 times (the failed give-back kept its holder): "x" and "a" are out.
        assert (row["takes"], row["returns"], row["held_now"]) == (5, 3, 2)
        assert row["waits"] == 1 and row["episodes"] == 1

    def test_odd_items_and_subclasses(self, recorder: Recorder) -> None:
        """Unhashable items that refuse comparison, and a subclass with its own ``_get``, work as before."""

        class Hostile:
            __hash__ = None  # type: ignore[assignment]

            def __eq__(self, other: object) -> bool:
                raise AssertionError("conctools compared an item")

        class Newest(queue.Queue):  # type: ignore[type-arg]
            def _get(self) -> Any:
                return self.queue.pop()

        with pools.track_pools():
            q: queue.Queue[Any] = Newest()
            items = [Hostile(), Hostile(), [1, 2]]
            for item in items:
                q.put(item)
            got = [q.get() for _ in range(3)]
            assert [id(x) for x in got] == [id(x) for x in reversed(items)]
            for item in got:
                q.put(item)
            state = q.__dict__["_conctools_pool"]
            assert (state.takes, state.returns, state.held) == (3, 3, {})

    def test_finished_holder_is_named_as_such(self, recorder: Recorder) -> None:
        """A task that ended with the only connection is reported as never giving it back."""
        here = Path(__file__).name

        async def leaky(pool: asyncio.Queue[str]) -> None:
            await pool.get()  # LEAK: never put back

        async def main() -> None:
            pool: asyncio.Queue[str] = asyncio.Queue()
            pool.put_nowait("conn")
            conn = await pool.get()
            pool.put_nowait(conn)
            await asyncio.create_task(leaky(pool))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pool.get(), 0.3)

        with pools.track_pools(threshold_s=0.1):
            asyncio.run(main())
        text = pools_section(recorder.snapshot(), False) or ""
        leak = line_of(Path(__file__), "# LEAK" + ": never put back")
        assert (
            f"1 of 1 items held; holders seen while it was exhausted: 100% tasks that finished without giving them "
            f"back (acquired at {here}:{leak}); 1 wait, p99 "
        ) in text, text
        events = [e for e in recorder.snapshot().events if isinstance(e, PoolExhaustedEvent)]
        assert len(events) == 1 and events[0].held == 1 and events[0].holders[0].state == "finished"

    def test_named_pool_and_bad_name_target(self, recorder: Recorder) -> None:
        """``name_pool`` names queues and semaphores; anything else is a TypeError naming the type."""

        async def main() -> None:
            pool: asyncio.Queue[int] = asyncio.Queue()
            pools.name_pool(pool, "db", items="connections")
            pool.put_nowait(1)
            item = await pool.get()
            waiter = asyncio.create_task(pool.get())
            await asyncio.sleep(0.15)
            pool.put_nowait(item)
            await waiter

        with pools.track_pools(threshold_s=0.1):
            asyncio.run(main())
        lines = pool_findings(section(recorder))
        assert len(lines) == 1 and lines[0].startswith("pool 'db' exhausted for "), lines
        assert "1 of 1 connections held" in lines[0], lines
        with pytest.raises(TypeError, match="int"):
            pools.name_pool(3, "x")

    def test_channel_is_not_a_pool(self, recorder: Recorder) -> None:
        """Consumers waiting on a producer/consumer queue are not reported as a pool, even when each
        new job lands at the address of one just consumed (a new object is not a give-back)."""

        async def main() -> None:
            jobs: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
            got = []

            async def consumer() -> None:
                while len(got) < 400:
                    job = await jobs.get()
                    got.append(job[0])  # the tuple itself is dropped: its memory is reused

            task = asyncio.create_task(consumer())
            for i in range(400):
                jobs.put_nowait((i, f"job-{i}"))
                await asyncio.sleep(0)
            await task
            assert got == list(range(400))

        with pools.track_pools():
            asyncio.run(main())
        data = section(recorder)
        assert data["pools"] == [] and data["repeats"] == []
        assert pools_section(recorder.snapshot(), False) is None

    def test_a_look_while_every_slot_is_handed_on_keeps_the_full_one(self, recorder: Recorder) -> None:
        """A look at an exhausted semaphore that lands after its holders released and before the woken
        waiters took their slots sees no holder ("0 of 0"). It must not replace the look that saw all
        three: the episode reports capacity 3 and its holders (the C-path test of the pool counts failed
        under load with capacity 0, when the background looker landed there)."""
        import time

        from conctools import aio
        from conctools.pools._patch import sem_states

        seen: dict[str, Any] = {}

        async def main() -> None:
            slots = aio.Semaphore(3, name="test-pool-handoff")
            for _ in range(3):
                await slots.acquire()

            async def job() -> None:
                async with slots:
                    await asyncio.sleep(0)

            waiters = [asyncio.create_task(job()) for _ in range(2)]
            states: list[Any] = []
            while not states or states[0].waiters < 2:
                await asyncio.sleep(0)
                states = [st for st in sem_states.values() if st.name == "test-pool-handoff"]
            (state,) = states
            state.look(slots, time.monotonic_ns())
            seen["full"] = state.episode_snapshot[1:]
            for _ in range(3):
                slots.release()  # every slot handed on; no woken waiter has run yet
            state.look(slots, time.monotonic_ns())
            seen["after"] = state.episode_snapshot[1:]
            await asyncio.gather(*waiters)

        with pools.track_pools():
            asyncio.run(main())
        assert seen == {"full": (3, 3), "after": (3, 3)}
        (longest,) = pools.pool_table()["longest"]
        assert longest["capacity"] == 3 and longest["held"] == 3, longest

    def test_asyncio_semaphore_waits_are_counted_once_each(self, recorder: Recorder) -> None:
        """38 of 40 tasks wait on a traced ``asyncio.Semaphore(2)``: the pool and the lock table each
        count 38 waits, nobody is left waiting, and the exhaustion is one episode."""
        from conctools import aio, locks, registry

        async def main() -> list[int]:
            slots = aio.Semaphore(2, name="test-pool-slots")
            done = []

            async def job(i: int) -> None:
                async with slots:
                    await asyncio.sleep(0)
                    done.append(i)

            await asyncio.gather(*(job(i) for i in range(40)))
            return done

        with pools.track_pools():
            assert len(registry.semaphore_hooks) == 1
            assert sorted(asyncio.run(main())) == list(range(40))
        assert registry.semaphore_hooks == []
        row = only_pool(section(recorder))
        assert row["pool"] == "test-pool-slots" and row["kind"] == "aio.Semaphore"
        assert row["waits"] == 38 and row["waiting_now"] == 0 and row["episodes"] == 1
        (lock,) = [r for r in locks.lock_table() if r["name"] == "test-pool-slots"]
        assert lock["contentions"] == 38 and lock["acquisitions"] == 40

    @pytest.mark.parametrize("pure", [False, True], ids=["c", "pure"])
    def test_asyncio_semaphore_pool_counts_are_exact_on_both_paths(self, pure: bool, tmp_path: Path) -> None:
        """197 of 200 tasks queue on ``aio.Semaphore(3)``: with the C hooks (waits that join an exhaustion
        under way are counted in C, in the C fields of the state's PoolCounters base) and the pure-Python ones
        alike, the pool counts 197 waits and 197 wait times in one episode of up to 197 waiters, blames the 3
        holding tasks, and the lock table agrees."""
        script = tmp_path / "sem_pool.py"
        script.write_text(
            "import asyncio, json\n"
            "from conctools import aio, locks, pools, registry\n"
            "from conctools.pools import pool_table\n"
            "from conctools.pools._patch import sem_states\n"
            "async def main():\n"
            "    slots = aio.Semaphore(3, name='slots')\n"
            "    async def job(i):\n"
            "        async with slots:\n"
            "            await asyncio.sleep(0)\n"
            "    await asyncio.gather(*(job(i) for i in range(200)))\n"
            "    return [s for s in sem_states.values() if s.name == 'slots']\n"
            "with pools.track_pools():\n"
            "    hooks = [getattr(f, '__module__', '') for f in registry.semaphore_hooks[0]]\n"
            "    (state,) = asyncio.run(main())\n"
            "table = pool_table()\n"
            "(lock,) = [r for r in locks.lock_table() if r['name'] == 'slots']\n"
            "print(json.dumps({'hooks': hooks, 'c': locks.SPEEDUPS, 'pool': table['pools'],\n"
            "    'longest': table['longest'],\n"
            "    'blame': [b['holders'] for b in table['blame']], 'hist': state.wait_hist.count,\n"
            "    'waiters': state.waiters, 'contentions': lock['contentions'], 'acq': lock['acquisitions'],\n"
            "    'bases': [t.__name__ for t in type(state).__mro__], 'in_dict': 'waits' in vars(state)}))\n"
        )
        data = json_of_script(script, pure)
        c_path = data["c"]  # (the C extension where it is built; never with CONCTOOLS_PURE_PYTHON=1)
        assert data["hooks"] == (["conctools._speedups"] * 2 if c_path else ["conctools.pools._patch"] * 2)
        (row,) = data["pool"]
        assert row["waits"] == 197 and row["waiting_now"] == 0 and row["episodes"] == 1, row
        assert data["hist"] == 197 and data["waiters"] == 0
        (longest,) = data["longest"]
        assert longest["waits"] == 197 and longest["max_waiters"] == 197 and longest["capacity"] == 3, longest
        assert data["blame"] and sum(data["blame"]) == 3 * row["samples"], data["blame"]
        assert data["contentions"] == 197 and data["acq"] == 200
        # The C hooks add to C fields of the state (its base, PoolCounters), not to its instance dict.
        assert data["bases"] == (["PoolState", "PoolCounters", "object"] if c_path else ["PoolState", "object"])
        assert data["in_dict"] is not c_path

    def test_a_state_in_a_cycle_through_its_c_fields_is_collected(self) -> None:
        """The fields that the semaphore fast paths read (mutex, ref, runs, episode_snapshot, listed, semaphore)
        are C fields of PoolState's PoolCounters base, read and stored as attributes; the garbage collector sees
        the objects among them: a state reachable only through a cycle via its runs or its exhaustion's look is
        freed."""
        from conctools.pools._state import SPEEDUPS, PoolState

        class Pool:
            pass

        pool = Pool()
        for field in ("runs", "episode_snapshot"):
            state = PoolState("asyncio.Semaphore", "slots", "p", "here.py:1", pool)
            assert state.ref() is pool and state.semaphore is True and state.listed is False
            assert state.runs == {} and state.episode_snapshot is None
            state.listed = True
            assert state.listed is True
            if SPEEDUPS is not None:  # C fields, not instance attributes
                assert not {"mutex", "ref", "runs", "episode_snapshot", "listed", "semaphore"} & set(vars(state))
            if field == "runs":
                state.runs[1] = state
            else:
                state.episode_snapshot = ((state,), 1, 1)
            ref = weakref.ref(state)
            del state
            gc.collect()
            assert ref() is None, field

    @pytest.mark.parametrize("pure", [False, True], ids=["c", "pure"])
    def test_a_table_read_mid_exhaustion_counts_the_waits_ended_so_far(self, pure: bool, tmp_path: Path) -> None:
        """Waits that end in an exhaustion's middle are counted in C (PoolCounters, no Python int per wait) and
        handed to the wait histogram when something reads it: a pool table taken while 4 of 10 waiters still
        wait shows the 6 ended waits, the longest of them at least as long as it was (it waited through 0.05 s
        of sleeps); after the exhaustion the histogram holds all 10, nothing left pending."""
        script = tmp_path / "mid_table.py"
        script.write_text(
            "import asyncio, json\n"
            "from conctools import aio, locks, pools\n"
            "from conctools.pools import pool_table\n"
            "from conctools.pools._patch import sem_states\n"
            "async def main():\n"
            "    slots = aio.Semaphore(1, name='gate')\n"
            "    done = [asyncio.Event() for _ in range(11)]\n"
            "    holding = []\n"
            "    async def job(i):\n"
            "        async with slots:\n"
            "            holding.append(i)\n"
            "            await done[i].wait()\n"
            "    tasks = [asyncio.create_task(job(i)) for i in range(11)]\n"
            "    await asyncio.sleep(0.05)  # job 0 holds the slot, 10 jobs wait\n"
            "    for i in range(6):\n"
            "        done[i].set()\n"
            "        while i + 1 not in holding:  # job i + 1 has the slot: its wait ended\n"
            "            await asyncio.sleep(0.001)\n"
            "    (state,) = [s for s in sem_states.values() if s.name == 'gate']\n"
            "    before = state.wait_hist.count\n"
            "    (mid,) = pool_table()['pools']\n"
            "    after = state.wait_hist.count\n"
            "    for e in done[6:]:\n"
            "        e.set()\n"
            "    await asyncio.gather(*tasks)\n"
            "    pending = state._take_hist() if hasattr(state, '_take_hist') else None\n"
            "    return mid, before, after, state.wait_hist.count, pending\n"
            "with pools.track_pools():\n"
            "    mid, before, after, final, pending = asyncio.run(main())\n"
            "print(json.dumps({'c': locks.SPEEDUPS, 'mid': mid, 'before': before, 'after': after, 'final': final,\n"
            "    'pending': pending}))\n"
        )
        data = json_of_script(script, pure)
        mid = data["mid"]
        assert mid["waits"] == 10 and mid["waiting_now"] == 4, mid
        assert data["after"] == 6, data  # the 6 ended waits, read through the table
        assert mid["wait_max_s"] >= 0.05 and mid["waited_s"] >= 0.05, mid
        # On the C path they were pending in C until the table read them (one that ended while pool blame's looker
        # held the state's mutex went the Python way, which adds at once); the pure path adds each in Python.
        assert data["before"] < 6 if data["c"] else data["before"] == 6, data
        assert data["final"] == 10 and data["pending"] is None, data

    @pytest.mark.parametrize("pure", [False, True], ids=["c", "pure"])
    def test_asyncio_queue_takes_are_exact_on_both_paths(self, pure: bool, tmp_path: Path) -> None:
        """With the C ``get_nowait``/``put_nowait`` (a channel's take counted in C, in the C field ``takes``)
        and the pure-Python wrappers alike: a channel of 3,000 items through 8 consumers counts 3,000 takes;
        a pool of 2 connections keeps its holder (the task, at the line that took it) and counts its returns;
        a queue made before tracking is named by the line of its first ``get_nowait()``."""
        script = tmp_path / "queue_pool.py"
        script.write_text(
            "import asyncio, json\n"
            "from conctools import locks, pools\n"
            "early = asyncio.Queue()\n"
            "async def main():\n"
            "    chan = asyncio.Queue(100)\n"
            "    got = []\n"
            "    async def consume():\n"
            "        while True:\n"
            "            got.append(await chan.get())\n"
            "            chan.task_done()\n"
            "    cs = [asyncio.create_task(consume()) for _ in range(8)]\n"
            "    for i in range(3000):\n"
            "        await chan.put(i)\n"
            "    await chan.join()\n"
            "    for c in cs:\n"
            "        c.cancel()\n"
            "    conns = asyncio.Queue()\n"
            "    for c in ('a', 'b'):\n"
            "        conns.put_nowait(c)\n"
            "    held = []\n"
            "    async def user():\n"
            "        conn = await conns.get()  # TAKE\n"
            "        held.append(len(conns._conctools_pool.held))\n"
            "        await asyncio.sleep(0)\n"
            "        conns.put_nowait(conn)\n"
            "    await asyncio.gather(*(user() for _ in range(6)))\n"
            "    early.put_nowait(1)\n"
            "    early.get_nowait()  # FIRST\n"
            "    return chan._conctools_pool, conns._conctools_pool, early._conctools_pool, len(got), held\n"
            "with pools.track_pools():\n"
            "    kind = type(asyncio.Queue.__dict__['get_nowait']).__name__\n"
            "    chan, conns, first, n, held = asyncio.run(main())\n"
            "print(json.dumps({'kind': kind, 'c': locks.SPEEDUPS, 'n': n,\n"
            "    'chan': [chan.takes, chan.returns, chan.identities, 'takes' in vars(chan)],\n"
            "    'conns': [conns.takes, conns.returns, conns.identities, len(conns.held)], 'held': held,\n"
            "    'first': first.created_at}))\n"
        )
        data = json_of_script(script, pure)
        c_path = data["c"]
        assert data["kind"] == ("QueueMethod" if c_path else "function")
        assert data["n"] == 3000
        # every take counted; in C, in the state's C field (not its instance dict)
        assert data["chan"] == [3000, 0, False, not c_path]
        assert data["conns"] == [6, 6, True, 0]
        assert data["held"] and all(h >= 1 for h in data["held"]), data["held"]
        assert data["first"] == f"first used at queue_pool.py:{line_of(script, '# FIRST')}"

    @pytest.mark.parametrize("pure", [False, True], ids=["c", "pure"])
    def test_thread_queue_takes_and_waits_are_exact_on_both_paths(self, pure: bool, tmp_path: Path) -> None:
        """queue.Queue's get/put with the C QueueMethods (a channel's take that finds an item counted in C) and
        with the pure-Python wrappers alike: 4 threads take 20,000 items from a Queue, a LifoQueue and a
        PriorityQueue (the stdlib's _qsize read in C) and a subclass with its own _qsize (the Python way):
        every take counted; a get that finds the queue empty waits and is counted as a wait; get(block=False)
        and get(timeout=...) on an empty queue raise queue.Empty as ever; a pool of connections keeps its
        holders and counts its returns."""
        script = tmp_path / "thread_queues.py"
        script.write_text(
            "import json, queue, threading, time\n"
            "from conctools import locks, pools\n"
            "class Sized(queue.Queue):\n"
            "    def _qsize(self):\n"
            "        return len(self.queue)\n"
            "def run():\n"
            "    out = {}\n"
            "    for cls in (queue.Queue, queue.LifoQueue, queue.PriorityQueue, Sized):\n"
            "        q = cls(100)\n"
            "        got = []\n"
            "        def consume():\n"
            "            while True:\n"
            "                item = q.get()\n"
            "                if item is None or item == 10**9:\n"
            "                    return\n"
            "                got.append(item)\n"
            "        ts = [threading.Thread(target=consume) for _ in range(4)]\n"
            "        for t in ts:\n"
            "            t.start()\n"
            "        for i in range(5000):\n"
            "            q.put(i, True, None) if i % 2 else q.put(i)\n"
            # every item taken before the sentinels go in: a LifoQueue hands the last put out first
            "        while q.qsize():\n"
            "            time.sleep(0.001)\n"
            "        for _ in ts:\n"
            "            q.put(10**9)\n"
            "        for t in ts:\n"
            "            t.join()\n"
            "        empty = []\n"
            "        for call in (lambda: q.get(block=False), lambda: q.get(False), lambda: q.get(timeout=0.01)):\n"
            "            try:\n"
            "                call()\n"
            "            except queue.Empty:\n"
            "                empty.append(True)\n"
            "        st = q._conctools_pool\n"
            "        out[cls.__name__] = [len(got), st.takes, st.identities, st.waits >= 1, len(empty)]\n"
            "    conns = queue.Queue()\n"
            "    for c in 'ab':\n"
            "        conns.put(c)\n"
            "    a = conns.get(); b = conns.get()\n"
            "    held = len(conns._conctools_pool.held)\n"
            "    conns.put(a); conns.put(b)\n"
            "    st = conns._conctools_pool\n"
            "    out['conns'] = [st.takes, st.returns, st.identities, held, len(st.held)]\n"
            "    return out\n"
            "with pools.track_pools():\n"
            "    kind = type(queue.Queue.__dict__['get']).__name__\n"
            "    out = run()\n"
            "print(json.dumps({'kind': kind, 'c': locks.SPEEDUPS, **out}))\n"
        )
        data = json_of_script(script, pure)
        c_path = data["c"]
        assert data["kind"] == ("QueueMethod" if c_path else "function")
        for name in ("Queue", "LifoQueue", "PriorityQueue", "Sized"):
            got, takes, identities, waited, empties = data[name]
            assert got == 5000 and takes == 5004 and identities is False, (name, data[name])
            assert waited and empties == 3, (name, data[name])
        assert data["conns"] == [2, 2, True, 2, 0]

    def test_a_failing_semaphore_hook_is_removed(self, recorder: Recorder, caplog: Any) -> None:
        """A semaphore hook that raises is logged and removed; the program's waits go on unchanged."""
        from conctools import aio, registry

        def broken(prim: Any) -> int:
            raise RuntimeError("hook failed on purpose")

        pair = (broken, lambda prim, token: None)

        async def main() -> int:
            slots = aio.Semaphore(1)
            done = []

            async def job(i: int) -> None:
                async with slots:
                    await asyncio.sleep(0)
                    done.append(i)

            await asyncio.gather(*(job(i) for i in range(5)))
            return len(done)

        registry.semaphore_hooks.append(pair)
        try:
            assert asyncio.run(main()) == 5
        finally:
            hooked = pair in registry.semaphore_hooks
            registry.semaphore_hooks[:] = [p for p in registry.semaphore_hooks if p is not pair]
        assert not hooked
        assert "hook failed on purpose" in caplog.text or "raised; removing them" in caplog.text

    def test_tracking_restores_the_stdlib(self) -> None:
        """Leaving the outermost block puts the stdlib's own methods back."""
        before = {(o, n): o.__dict__[n] for o, n in pools.patched_names()}
        with pools.track_pools(), pools.track_pools():
            assert asyncio.Queue.__dict__["get"] is not before[(asyncio.Queue, "get")]
        assert {(o, n): o.__dict__[n] for o, n in pools.patched_names()} == before

    def test_negative_threshold_is_refused(self) -> None:
        """A negative threshold is a ValueError before anything is patched."""
        with pytest.raises(ValueError, match="threshold_s"), pools.track_pools(threshold_s=-1):
            pass


class TestReport:
    """The pools section reads from recorded data alone."""

    def test_event_round_trips_through_json(self) -> None:
        """A PoolExhaustedEvent with its holders survives to_dict / event_from_dict."""
        holder = PoolHolder(
            who="task 'h' (thread 'MainThread')",
            party="task",
            state="awaiting",
            call="fetch_upstream()",
            site="app.py:412",
            function="handler",
            line="await fetch_upstream()",
            acquired_at="app.py:405",
            held_s=0.5,
        )
        event = PoolExhaustedEvent(
            ts_ns=1,
            thread_id=1,
            thread_name="MainThread",
            pool_name="db",
            pool_kind="asyncio.Queue",
            items="connections",
            duration_s=2.3,
            capacity=10,
            held=10,
            waits=37,
            max_waiters=12,
            holders=(holder,),
        )
        assert event_from_dict(event.to_dict()) == event

    def test_section_text(self, recorder: Recorder) -> None:
        """The issue's sentence: exhaustion, who holds how many items where, the waits."""
        holder = {
            "pool": "db",
            "party": "task",
            "state": "awaiting",
            "call": "fetch_upstream()",
            "site": "app.py:412",
            "function": "create",
            "acquired_at": "app.py:405",
            "line": "await fetch_upstream()",
        }
        running = {**holder, "call": "to_thread()", "site": "db.py:80", "function": "query"}
        recorder.add_section(
            "pools",
            lambda: {
                "threshold_s": 0.1,
                "pools": [
                    {
                        "pool": "db",
                        "kind": "asyncio.Queue",
                        "items": "connections",
                        "capacity": 10,
                        "takes": 900,
                        "waits": 37,
                        "waited_s": 20.0,
                        "wait_p50_s": 0.5,
                        "wait_p99_s": 1.9,
                        "wait_max_s": 2.0,
                        "exhausted_s": 2.3,
                        "episodes": 1,
                        "longest_s": 2.3,
                        "samples": 1,
                    }
                ],
                "blame": [{**holder, "holders": 8, "share": 0.8}, {**running, "holders": 2, "share": 0.2}],
                "longest": [{"pool": "db", "duration_s": 2.3, "capacity": 10, "held": 10, "waits": 37}],
                "holders": [{**holder, "who": f"task 't{i}'"} for i in range(8)] + [{**running, "who": "task 'q'"}] * 2,
                "repeats": [],
            },
        )
        text = render_text(recorder.snapshot())
        assert (
            "pool 'db' exhausted for 2.30 s: 10 of 10 connections held; holders seen while it was exhausted: "
            "80% tasks awaiting `fetch_upstream()` at app.py:412 (acquired at app.py:405), 20% tasks "
            "awaiting `to_thread()` at db.py:80 (acquired at app.py:405); 37 waits, p99 1.90 s"
        ) in text, text
        assert "task 't0': awaiting `fetch_upstream()` at app.py:412 (acquired at app.py:405)" in text

    def test_names_cannot_drive_the_terminal(self, recorder: Recorder) -> None:
        """A pool or task name with escapes is printed escaped."""
        recorder.add_section(
            "pools",
            lambda: {
                "threshold_s": 0.1,
                "pools": [{"pool": "db\x1b[31m", "waits": 1, "exhausted_s": 1.0, "longest_s": 1.0}],
                "longest": [{"pool": "db\x1b[31m", "held": 1, "capacity": 1}],
                "holders": [{"pool": "db\x1b[31m", "who": "task '\u202e'", "state": "running", "site": "a.py:1"}],
            },
        )
        text = pools_section(recorder.snapshot(), False) or ""
        assert "\x1b" not in text and "\u202e" not in text and "db\\x1b[31m" in text


class TestLookerWakeUps:
    """The looker's thread takes the GIL from the program's threads each time it wakes (issue 12)."""

    def test_many_short_exhaustions_wake_it_once(self) -> None:
        """A queue that runs dry and refills a thousand times within the first look's delay wakes the
        looker's thread a few times at most (once, unless the thread looks in between and finds the
        exhaustion it was told of over), not a thousand times: it looks at the table by then anyway."""
        import time

        from conctools.pools._looker import LOOK_AFTER_S, Looker

        class State:
            episode_start_ns = 0
            waiters = 1
            ref = None

        looker, state, pokes = Looker(), State(), []
        poke = looker._poke
        looker._poke = lambda: (pokes.append(1), poke())  # type: ignore[method-assign]
        looker.start()
        try:
            begun = time.monotonic_ns()
            for _ in range(1000):  # each a new exhaustion of the same pool
                state.episode_start_ns = time.monotonic_ns()
                looker.watch(state, None, state.episode_start_ns)
            window_ns = int(LOOK_AFTER_S[0] * 1e9)
            if time.monotonic_ns() - begun < window_ns:  # (a very slow machine could cross the first look)
                # (1, unless the thread's first look comes between the test's change of the state and its
                # watch(); it follows the new exhaustion then, where it used to drop it and be poked again:
                # up to 39 pokes on 3.13, whose hand-over gives the woken thread the GIL mid-change)
                assert 1 <= len(pokes) <= 3, len(pokes)
            assert id(state) in looker._watched  # the latest exhaustion is the one it will look at
        finally:
            looker.stop()
        assert looker._thread is None
