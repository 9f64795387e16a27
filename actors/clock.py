"""One timer for every open round: a heap of deadlines instead of a task per round.

`schedule(key, at)` sets (or moves, or with `at=None` clears) the one deadline a key
has; when its time comes, `due(key)` runs. Entries that were moved or cleared stay
in the heap until they surface and are skipped, so rescheduling costs one push.
A deadline never fires early: `due` runs once `time.time() >= at`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable

from actors.background import spawn


class Clock:
    def __init__(self, due: Callable[[str], Awaitable[None]], now: Callable[[], float] = time.time):
        self._due = due
        self._now = now
        self._heap: list[tuple[float, int, str]] = []
        self._at: dict[str, float] = {}  # key -> its current deadline
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._tasks: set = set()
        self.fired = 0

    def schedule(self, key: str, at: float | None) -> None:
        if at is None:
            self._at.pop(key, None)
            return
        if self._at.get(key) == at:
            return
        self._at[key] = at
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (at, next(self._seq), key))
        if self._loop_task is None or self._loop_task.done():
            self._wake = asyncio.Event()
            self._loop_task = spawn(self._tasks, self._run())
        elif earliest is None or at < earliest:
            self._wake.set()  # the loop sleeps until a later time: wake it to sleep less

    def pending(self) -> int:
        return len(self._at)

    async def _run(self) -> None:
        while True:
            now = self._now()
            while self._heap and self._heap[0][0] <= now:
                at, _, key = heapq.heappop(self._heap)
                if self._at.get(key) != at:
                    continue  # moved or cleared since
                del self._at[key]
                self.fired += 1
                spawn(self._tasks, self._due(key))
            if not self._heap:
                self._loop_task = None
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, self._heap[0][0] - self._now()))
            except asyncio.TimeoutError:
                pass
