"""Gate: the gateway's admission control, shared by every gateway replica.

`enter(key, quota, tokens)` admits a request when its key's limits allow it and
the network has room (at most `capacity` requests in flight); when the network
is full it waits its key's turn (protocols.quota.FairQueue) for at most
`max_wait_s`. Refusals raise QuotaExceeded with a Retry-After. `leave(key)` is
called once the request ended. Nothing here touches the ledger.
"""

from __future__ import annotations

import asyncio
import time

from protocols.quota import FairQueue, Meter, Quota, QuotaExceeded


class Gate:
    def __init__(self, capacity: int = 64, max_wait_s: float = 30.0):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError("gate capacity must be a positive integer")
        self.capacity, self.max_wait_s = capacity, float(max_wait_s)
        self.meters: dict[str, Meter] = {}
        self.queue = FairQueue()
        self.in_flight = 0
        self.admitted: dict[str, int] = {}  # key -> requests admitted (fairness figures)
        self.refused: dict[str, int] = {}  # key -> requests refused (429: its rate, or a full network)
        self.fair = True  # False: one FIFO for everyone (the baseline the benchmark compares with)

    def configure(self, fair: bool = True, capacity: int | None = None) -> None:
        """Operators and benchmarks: fair turns or one FIFO; how many requests may be in flight."""
        self.fair = bool(fair)
        if capacity is not None:
            if not isinstance(capacity, int) or capacity < 1:
                raise ValueError("gate capacity must be a positive integer")
            self.capacity = capacity

    async def enter(self, key: str, quota: dict, tokens: int) -> None:
        try:
            await self._enter(key, quota, tokens)
        except QuotaExceeded:
            self.refused[key] = self.refused.get(key, 0) + 1
            raise

    async def _enter(self, key: str, quota: dict, tokens: int) -> None:
        q = Quota(**quota)
        meter = self.meters.setdefault(key, Meter())
        meter.check(q, int(tokens), time.time())
        meter.charge(int(tokens), time.time())  # counted from now: a waiting request holds its place
        if self.in_flight < self.capacity and not len(self.queue):
            self._admit(key)
            return
        lane = key if self.fair else "*"
        if self.queue.waiting(lane, key) >= q.queue:
            meter.done()
            raise QuotaExceeded(f"{q.queue} requests of this key already wait for capacity", 1.0)
        turn = asyncio.get_running_loop().create_future()
        turn.key = key
        self.queue.push(lane, turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), self.max_wait_s)
        except asyncio.TimeoutError:
            if self.queue.remove(lane, turn):
                meter.done()
                raise QuotaExceeded("the network is at capacity; try again", 1.0) from None
            await turn  # admitted just as the wait ended

    def _admit(self, key: str) -> None:
        self.in_flight += 1
        self.admitted[key] = self.admitted.get(key, 0) + 1

    def leave(self, key: str) -> None:
        if key in self.meters:
            self.meters[key].done()
        self.in_flight = max(0, self.in_flight - 1)
        while self.in_flight < self.capacity:
            nxt = self.queue.pop()
            if nxt is None:
                return
            _, turn = nxt
            if not turn.done():
                self._admit(turn.key)
                turn.set_result(None)

    def stats(self) -> dict:
        return {"in_flight": self.in_flight, "waiting": len(self.queue), "capacity": self.capacity,
                "admitted": dict(self.admitted), "refused": dict(self.refused)}
