"""QuorumSelector: the randomness beacon and the record of every draw.

Draws are computed by protocols.selection from H(beacon || request id || label)
over the registry's eligible set, and each draw is recorded with its eligible
list so a receipt lets anyone recompute it. The beacon is fixed per network
epoch and published in receipts; it is not known to nodes before deployment.
"""

from __future__ import annotations

from typing import Any

import os

from protocols import crossval, selection
from protocols.errors import NotEnoughNodes, UnknownRequest


class QuorumSelector:
    def __init__(self, registry: Any, beacon: bytes, min_stake: int):
        self.registry = registry
        self.beacon = bytes(beacon)
        self.min_stake = int(min_stake)
        self.records: dict[str, list[dict]] = {}
        self.coins: dict[str, bytes] = {}  # request id -> secret coin seed (cross-validation)

    async def _views(self, model_id: str):
        version, views, keys = await self.registry.views.remote(model_id)
        return views, keys

    async def draw(self, request_id: str, model_id: str, n: int, label: str = "quorum",
                   exclude: tuple[str, ...] = (), det_class: str | None = None,
                   allow_fewer: bool = False, require_attested: bool = False, coin: bool = False) -> dict:
        """Draw n nodes; with allow_fewer, as many as are eligible (possibly none).

        coin=True (cross-validation) also fixes a secret coin seed for the request
        and returns only its commitment; `reveal_coin` opens it later."""
        views, keys = await self._views(model_id)
        seed = selection.draw_seed(self.beacon, request_id, label)
        if det_class is None:
            det_class = selection.choose_class(views, model_id, n, self.min_stake, seed, require_attested)
        pool = selection.eligible(views, model_id, self.min_stake, det_class, exclude, require_attested)
        if allow_fewer:
            n = min(n, len(pool))
        if n == 0:
            if not allow_fewer:
                raise NotEnoughNodes(f"no eligible node for {model_id!r}")
            chosen: list[str] = []
        else:
            chosen = selection.draw(pool, n, seed)
        record = {"label": label, "det_class": det_class, "seed": seed, "eligible": pool,
                  "exclude": sorted(exclude), "selected": chosen, "keys": [keys[c] for c in chosen]}
        self.records.setdefault(request_id, []).append(record)
        if coin and request_id not in self.coins:
            self.coins[request_id] = os.urandom(32)
        if request_id in self.coins:
            record = dict(record, coin_commit=crossval.coin_commit(self.coins[request_id]))
        return record

    def reveal_coin(self, request_id: str) -> bytes:
        """Open the coin; the aggregator asks only after the executor committed."""
        if request_id not in self.coins:
            raise UnknownRequest(f"no coin was committed for {request_id}")
        return self.coins[request_id]

    def record(self, request_id: str) -> dict:
        rec = {"beacon": self.beacon, "draws": list(self.records.get(request_id, []))}
        if request_id in self.coins:
            rec["coin_commit"] = crossval.coin_commit(self.coins[request_id])
        return rec

    def forget(self, request_id: str) -> None:
        self.records.pop(request_id, None)
        self.coins.pop(request_id, None)
