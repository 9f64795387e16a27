"""Gate (the gateway's admission control) as plain asyncio: limits, queueing, fair turns. No Ray."""

from __future__ import annotations

import asyncio

import pytest

from actors.gate import Gate
from protocols.quota import QuotaExceeded

Q = {"rpm": 1000, "tpm": 10**6, "concurrent": 100, "queue": 100}


def test_a_flooding_key_cannot_starve_a_light_one():
    async def go():
        gate = Gate(capacity=2, max_wait_s=30)
        order = []

        async def one(key, i):
            await gate.enter(key, Q, 1)
            order.append(key)

        await one("flood", -1)
        await one("flood", -2)  # the network is full now
        flood = [asyncio.create_task(one("flood", i)) for i in range(20)]
        await asyncio.sleep(0.01)
        light = asyncio.create_task(one("light", 0))
        await asyncio.sleep(0.01)
        for _ in range(3):  # three requests end: the light key's turn comes after one flood request
            gate.leave("flood")
            await asyncio.sleep(0.01)
        assert light.done() and order[2:5] == ["flood", "light", "flood"]
        for t in flood:
            t.cancel()
        return gate.stats()

    stats = asyncio.run(go())
    assert stats["admitted"]["light"] == 1


def test_fifo_baseline_makes_the_light_key_wait_behind_the_flood():
    async def go():
        gate = Gate(capacity=1, max_wait_s=30)
        gate.configure(fair=False)
        order = []

        async def one(key):
            await gate.enter(key, Q, 1)
            order.append(key)

        await one("flood")
        waiting = [asyncio.create_task(one("flood")) for _ in range(5)]
        await asyncio.sleep(0.01)
        light = asyncio.create_task(one("light"))
        await asyncio.sleep(0.01)
        for _ in range(6):
            gate.leave("x")
            await asyncio.sleep(0.01)
        await light
        for t in waiting:
            t.cancel()
        return order

    assert asyncio.run(go()) == ["flood"] * 6 + ["light"]


def test_limits_and_full_queues_refuse_with_retry_after_and_release_their_charge():
    async def go():
        gate = Gate(capacity=1, max_wait_s=0.05)
        q = dict(Q, queue=1, concurrent=3)
        await gate.enter("k", q, 1)
        waiter = asyncio.create_task(gate.enter("k", q, 1))
        await asyncio.sleep(0)
        with pytest.raises(QuotaExceeded) as full:  # one already waits: the key's queue is full
            await gate.enter("k", q, 1)
        with pytest.raises(QuotaExceeded):  # the waiter gives up when nothing frees in time
            await waiter
        assert gate.meters["k"].in_flight == 1  # refusals hold no place
        with pytest.raises(QuotaExceeded):
            await gate.enter("r", dict(Q, rpm=1), 1) or await gate.enter("r", dict(Q, rpm=1), 1)
        return full.value.retry_after

    assert asyncio.run(go()) >= 1.0
