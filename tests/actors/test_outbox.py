"""Batch-shaped calls (actors.outbox) and the deadline heap (actors.clock), without Ray."""

from __future__ import annotations

import asyncio
import time

import pytest

from actors.clock import Clock
from actors.outbox import Failed, Outbox, answer_each


class Dest:
    """A destination with a `*_many` method that records each batch it receives."""

    def __init__(self):
        self.batches: list[list] = []

    async def double(self, x):
        if x < 0:
            raise ValueError(f"negative {x}")
        await asyncio.sleep(0)
        return 2 * x

    async def double_many(self, items):
        self.batches.append(list(items))
        return await answer_each(self.double, [(x,) for x in items])


def test_calls_of_one_tick_leave_as_one_batch_and_each_caller_gets_its_own_answer():
    async def main():
        dest = Dest()
        box = Outbox(dest.double_many)
        got = await asyncio.gather(*(box.call(i) for i in range(10)))
        later = await box.call(7)  # a later tick: its own batch
        return dest, box, got, later

    dest, box, got, later = asyncio.run(main())
    assert got == [2 * i for i in range(10)] and later == 14
    assert dest.batches == [list(range(10)), [7]]
    assert box.stats() == {"calls": 11, "batches": 2, "per_batch": 5.5}


def test_an_item_that_fails_fails_alone():
    async def main():
        dest = Dest()
        box = Outbox(dest.double_many)
        return await asyncio.gather(box.call(1), box.call(-1), box.call(3), return_exceptions=True), dest

    (a, b, c), dest = asyncio.run(main())
    assert (a, c) == (2, 6) and isinstance(b, ValueError) and "negative -1" in str(b)
    assert len(dest.batches) == 1


def test_a_batch_call_that_fails_as_a_whole_fails_every_item_in_it():
    class Died(Exception):
        pass

    async def send(items):
        raise Died("the destination died")

    async def short(items):  # a destination that answers fewer items than it was sent
        return [1]

    async def main():
        box, bad = Outbox(send), Outbox(short)
        died = await asyncio.gather(*(box.call(i) for i in range(3)), return_exceptions=True)
        short_ = await asyncio.gather(bad.call(1), bad.call(2), return_exceptions=True)
        return died, short_

    died, short_ = asyncio.run(main())
    assert all(isinstance(e, Died) for e in died)
    assert all(isinstance(e, RuntimeError) for e in short_)  # never a silent mismatch of answers


def test_batches_are_bounded():
    async def main():
        dest = Dest()
        box = Outbox(dest.double_many, max_batch=4)
        got = await asyncio.gather(*(box.call(i) for i in range(10)))
        return dest, got

    dest, got = asyncio.run(main())
    assert got == [2 * i for i in range(10)]
    assert [len(b) for b in dest.batches] == [4, 4, 2]


def test_answer_each_keeps_order_and_wraps_failures():
    async def main():
        return await answer_each(Dest().double, [(1,), (-2,), (3,)])

    a, b, c = asyncio.run(main())
    assert (a, c) == (2, 6) and isinstance(b, Failed) and isinstance(b.error, ValueError)


def test_deadlines_fire_in_order_never_early_and_moved_or_cleared_ones_do_not_fire():
    async def main():
        fired: list[tuple[str, float]] = []
        due = {}

        async def on_due(key):
            fired.append((key, time.time()))

        clock = Clock(on_due)
        t0 = time.time()
        for key, dt in (("c", 0.15), ("a", 0.05), ("b", 0.10), ("moved", 0.02), ("cleared", 0.03)):
            due[key] = t0 + dt
            clock.schedule(key, due[key])
        due["moved"] = t0 + 0.2
        clock.schedule("moved", due["moved"])  # moved later: fires once, at the new time
        clock.schedule("cleared", None)
        early = t0 + 0.01
        clock.schedule("early", early)  # earlier than everything: wakes the sleeping heap
        due["early"] = early
        await asyncio.sleep(0.35)
        return fired, due, clock

    fired, due, clock = asyncio.run(main())
    assert [k for k, _ in fired] == ["early", "a", "b", "c", "moved"]
    assert all(at >= due[k] for k, at in fired)  # never early
    assert clock.pending() == 0 and clock.fired == 5


def test_a_key_rescheduled_from_its_own_due_call_fires_again():
    async def main():
        clock = None
        count = []

        async def on_due(key):
            count.append(key)
            if len(count) < 3:
                clock.schedule(key, time.time() + 0.01)

        clock = Clock(on_due)
        clock.schedule("r", time.time() + 0.01)
        await asyncio.sleep(0.2)
        return count

    assert asyncio.run(main()) == ["r", "r", "r"]


@pytest.mark.parametrize("n", [1, 500])
def test_many_rounds_share_one_timer_task(n):
    async def main():
        fired = []

        async def on_due(key):
            fired.append(key)

        clock = Clock(on_due)
        before = len(asyncio.all_tasks())
        for i in range(n):
            clock.schedule(f"r{i}", time.time() + 0.02)
        during = len(asyncio.all_tasks()) - before
        await asyncio.sleep(0.1)
        return fired, during

    fired, during = asyncio.run(main())
    assert sorted(fired) == sorted(f"r{i}" for i in range(n))
    assert during == 1  # one heap task, not one per round
