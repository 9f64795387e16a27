"""QuorumSelector: the randomness beacon and the record of every draw.

Draws are computed by protocols.selection from H(beacon || request id || label)
over the registry's eligible set, and each draw is recorded with its eligible
list so a receipt lets anyone recompute it. The beacon is fixed per network
epoch and published in receipts; it is not known to nodes before deployment.
"""

from __future__ import annotations

from typing import Any

from protocols import selection
from protocols.errors import NotEnoughNodes


class QuorumSelector:
    def __init__(self, registry: Any, beacon: bytes, min_stake: int):
        self.registry = registry
        self.beacon = bytes(beacon)
        self.min_stake = int(min_stake)
        self.records: dict[str, list[dict]] = {}

    async def _views(self, model_id: str):
        version, views, keys = await self.registry.views.remote(model_id)
        return views, keys

    async def draw(self, request_id: str, model_id: str, n: int, label: str = "quorum",
                   exclude: tuple[str, ...] = (), det_class: str | None = None,
                   allow_fewer: bool = False, require_attested: bool = False) -> dict:
        """Draw n nodes; with allow_fewer, as many as are eligible (possibly none)."""
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
        return record

    def record(self, request_id: str) -> dict:
        return {"beacon": self.beacon, "draws": list(self.records.get(request_id, []))}

    def forget(self, request_id: str) -> None:
        self.records.pop(request_id, None)
