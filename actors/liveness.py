"""Bringing back nodes taken out for lateness: challenge each until it answers.

A node slashed for a timeout (or for withholding its reveal) stops being drawn
(protocols.settlement.effects says which). The Reviver challenges it every
`interval_s` through the registry (protocols.liveness signs and checks the
answers); once the node answers, the registry makes it live again. An answer under a key the registry
does not hold means the node restarted: the registry is asked to `rejoin` it
(which challenges the registered node for its fresh keys).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from actors.background import spawn


class Reviver:
    def __init__(self, registry: Any, handle: Callable[[str], Awaitable[Any]], interval_s: float,
                 answer_timeout_s: float, tasks: set):
        self.registry, self._handle = registry, handle
        self.interval_s, self.answer_timeout_s = float(interval_s), float(answer_timeout_s)
        self._tasks = tasks  # the owner's background task set (referenced until done)
        self._loops: dict[str, asyncio.Task] = {}  # node -> its challenge loop

    def revive(self, node_id: str) -> None:
        if node_id not in self._loops:
            self._loops[node_id] = spawn(self._tasks, self._loop(node_id))

    async def _loop(self, node_id: str) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                try:
                    nonce = await self.registry.liveness_challenge.remote(node_id)
                    sig = await asyncio.wait_for(
                        (await self._handle(node_id)).answer_liveness.remote(nonce), self.answer_timeout_s)
                    if await self.registry.answer_liveness.remote(node_id, sig):
                        return
                    # signed, but not by the key on record: the node restarted with fresh keys
                    # (and its own request to rejoin failed): have the registry prove them
                    await self.registry.rejoin.remote(node_id)
                except Exception:  # still stalled (or gone): try again next interval
                    continue
        finally:
            self._loops.pop(node_id, None)
