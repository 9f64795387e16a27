"""Batch-shaped calls: what an actor sends one destination within one event-loop tick
leaves as one call, and each caller still gets its own answer or its own error.

    box = Outbox(lambda items: ledger.escrow_many.remote(items))
    result = await box.call((rid, client_id, amount))   # joins whatever else this tick sends

The destination's `*_many` method answers with one entry per item, in order: the
value, or `Failed(error)` for an item that failed alone (`answer_each` builds that
list from a per-item coroutine). A batch call that fails as a whole (the
destination died) fails every item in it, as separate calls would have.

Only short calls go this way (draws, escrows, reveals, settlements): a batch
answers when its last item does. Executors' `execute` stays one call per
member, so a short request never waits for a long one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from actors.background import spawn


@dataclass(frozen=True)
class Failed:
    """One item of a batch call that raised; the caller of that item gets `error`."""

    error: BaseException


async def answer_each(fn: Callable[..., Awaitable[Any]], items: Iterable[tuple]) -> list:
    """Run `fn(*item)` for every item concurrently; a failure stays with its item."""
    answers = await asyncio.gather(*(fn(*item) for item in items), return_exceptions=True)
    return [Failed(a) if isinstance(a, BaseException) else a for a in answers]


class Outbox:
    """Coalesces calls to one destination; flushed once per event-loop tick."""

    def __init__(self, send: Callable[[list], Awaitable[list]], max_batch: int = 512):
        self._send = send
        self._max = max_batch
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._scheduled = False
        self._tasks: set = set()
        self.calls = 0
        self.batches = 0

    def call(self, item: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.append((item, fut))
        self.calls += 1
        if not self._scheduled:  # everything this tick adds goes out together, next tick
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        queue, self._queue, self._scheduled = self._queue, [], False
        for i in range(0, len(queue), self._max):
            self.batches += 1
            spawn(self._tasks, self._deliver(queue[i:i + self._max]))

    async def _deliver(self, batch: list) -> None:
        try:
            answers = await self._send([item for item, _ in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"a batch call answered {len(answers)} items for {len(batch)}")
        except asyncio.CancelledError:
            for _, fut in batch:
                fut.cancel()
            raise
        except BaseException as exc:  # the whole call failed: so did each item in it
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), answer in zip(batch, answers):
            _answer(fut, answer)

    def stats(self) -> dict:
        return {"calls": self.calls, "batches": self.batches,
                "per_batch": round(self.calls / self.batches, 2) if self.batches else 0.0}


def _answer(fut: asyncio.Future, answer: Any) -> None:
    if fut.done():  # its caller stopped waiting (cancelled)
        return
    if isinstance(answer, Failed):
        fut.set_exception(answer.error)
    else:
        fut.set_result(answer)
