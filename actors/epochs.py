"""EpochKeeper: renews every node's attestation, with fresh keys, each epoch.

Attestation admits a node to the TEE class for one epoch (`epoch_s`). Before a
node's epoch ends the keeper runs one renewal for it:

    registry.challenge -> executor.prepare_rotation(nonce) -> registry.renew
    -> executor.commit_rotation   (or abort_rotation if the registry refused)

The executor attests its *next* keys while still serving with the current
ones, and the registry switches keys and extends the attestation in one step,
so a healthy node never drops out of the TEE class and requests drawn under
the old keys still complete (the executor signs with whichever key the draw
named). Evidence that no longer verifies (revoked TCB, changed code) removes
the node from the class at once. `renew(node_ids)` runs a renewal on demand
(`verinfer attest all --rotate`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


class EpochKeeper:
    def __init__(self, registry: Any, epoch_s: float, renew_fraction: float = 0.8, poll_s: float | None = None):
        if not 0.0 < renew_fraction < 1.0:
            raise ValueError("renew_fraction must be in (0, 1)")
        self.registry = registry
        self.epoch_s = float(epoch_s)
        self.margin_s = self.epoch_s * (1.0 - renew_fraction)  # renew this long before an epoch ends
        self.poll_s = float(poll_s) if poll_s else max(0.05, self.margin_s / 4)
        self.history: list[dict] = []  # one entry per renewal round: when, which nodes, which passed
        self._tried: dict[str, float] = {}  # node -> last renewal attempt (failures retry once per margin)
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._stopped = False
        try:  # restarted by Ray after a crash: keep renewing as before
            import ray

            if ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed:
                self._task = asyncio.ensure_future(self._loop())
        except Exception:
            pass

    async def start(self) -> None:
        self._stopped = False
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        """Stop renewing. A renewal in flight finishes first (it is not cut between the
        registry's switch to the new keys and the node's), then no other starts."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
        async with self._lock:
            pass

    async def _loop(self) -> None:
        while True:
            try:
                now = time.time()
                due = [n for n in await self.registry.due_for_renewal.remote(self.margin_s)
                       if now - self._tried.get(n, -1e18) >= self.margin_s]
                if due:
                    await asyncio.shield(self.renew(due, scheduled=True))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep renewing the others; the failure is on record
                self.history.append({"at": time.time(), "error": f"{type(exc).__name__}: {exc}"})
            await asyncio.sleep(self.poll_s)

    async def renew(self, node_ids: list[str], scheduled: bool = False) -> list[dict]:
        """One renewal for each node (in parallel): results in the order given."""
        async with self._lock:  # one renewal at a time per node set: nonces are per node
            if scheduled and self._stopped:
                return []
            self._tried.update({n: time.time() for n in node_ids})
            handles = await self.registry.handles.remote(list(node_ids))
            results = await asyncio.gather(*(self._renew_one(n, handles[n]) for n in node_ids))
        self.history.append({"at": time.time(), "nodes": list(node_ids),
                             "ok": [n for n, r in zip(node_ids, results) if r["ok"]]})
        del self.history[:-1000]
        return list(results)

    async def _renew_one(self, node_id: str, executor: Any) -> dict:
        nonce = await self.registry.challenge.remote(node_id)
        try:
            nxt = await executor.prepare_rotation.remote(nonce)
        except Exception as exc:  # the node cannot attest: it keeps its keys until its epoch ends
            return {"ok": False, "reason": "no-evidence", "detail": f"{type(exc).__name__}: {exc}",
                    "digest": b"", "simulated": False, "tcb_version": None, "device_id": ""}
        try:
            res = await self.registry.renew.remote(node_id, nxt["pubkey"], nxt["kem_pub"], nxt["evidence"])
        except Exception:
            await executor.abort_rotation.remote()
            raise
        if res["ok"]:
            await executor.commit_rotation.remote()
        else:
            await executor.abort_rotation.remote()
        return res

    def status(self) -> dict:
        return {"epoch_s": self.epoch_s, "margin_s": self.margin_s, "running": bool(self._task and not self._task.done()),
                "renewals": len(self.history), "last": self.history[-1] if self.history else None}
