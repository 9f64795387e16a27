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

The control plane's own signing keys (actors.authority) rotate with the epochs
too: once per epoch the keeper asks every control-plane actor, itself included,
for a fresh key and hands the rotation statements to every actor and executor,
again at every poll, so one that was down when they were made still gets them.
Its calls are signed as the epoch keeper; a node's renewal is signed by the
node itself (the keeper passes the node's signed call on).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.authority import Controlled, Gatekeeper, Signed, bare, guarded

REBROADCAST_S = 10.0  # rotation statements go out again this often (an actor that was down gets them)
SWITCH_TRIES = 5  # broadcasts tried before a switch goes ahead regardless (re-broadcasts catch up)
MIN_ROTATION_S = 10.0  # control-plane keys rotate every epoch, but not more often than this (test epochs are seconds)


class EpochKeeper(Controlled):
    def __init__(self, registry: Any, epoch_s: float, renew_fraction: float = 0.8, poll_s: float | None = None,
                 control: dict | None = None, peers: dict | None = None):
        """peers: actor names of the other control-plane actors whose keys rotate with the
        epochs ({"ledger": ..., "selector": ..., "aggregators": [...]})."""
        if not 0.0 < renew_fraction < 1.0:
            raise ValueError("renew_fraction must be in (0, 1)")
        self.gate = Gatekeeper("epochs", control)
        self.registry = Signed(registry, self.gate, "registry")
        self.peer_names = dict(peers or {})
        st = self.gate.store
        self._statements: list[bytes] = [bytes(x) for x in (st.get("control", "statements", []) if st else [])]
        self._rotated_at = float(st.get("control", "rotated_at", 0.0) if st else 0.0) or time.time()
        self._broadcast_at = 0.0
        self.epoch_s = float(epoch_s)
        self.margin_s = self.epoch_s * (1.0 - renew_fraction)  # renew this long before an epoch ends
        self.poll_s = float(poll_s) if poll_s else max(0.05, self.margin_s / 4)
        self.history: list[dict] = []  # one entry per renewal round: when, which nodes, which passed
        self._tried: dict[str, float] = {}  # node -> last renewal attempt (failures retry once per margin)
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # node renewals
        self._keys_lock = asyncio.Lock()  # control-plane key rotations (never held by a renewal)
        self._keys_task: asyncio.Future | None = None
        self._stopped = False
        try:  # restarted by Ray after a crash: keep renewing as before
            import ray

            if ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed:
                self._task = asyncio.ensure_future(self._loop())
        except Exception:
            pass

    @guarded("epochs")
    async def start(self) -> None:
        self._stopped = False
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._loop())

    @guarded("epochs")
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
                    await asyncio.shield(self._renew(due, scheduled=True))
                # the control plane's keys: in the background, so renewals never wait on a rotation
                if self._keys_task is None or self._keys_task.done():
                    if self.peer_names and now - self._rotated_at >= max(self.epoch_s, MIN_ROTATION_S):
                        self._keys_task = asyncio.ensure_future(self._rotate_keys())
                    elif self._statements and now - self._broadcast_at >= REBROADCAST_S:
                        self._keys_task = asyncio.ensure_future(self._broadcast())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep renewing the others; the failure is on record
                self.history.append({"at": time.time(), "error": f"{type(exc).__name__}: {exc}"})
            await asyncio.sleep(self.poll_s)

    @guarded("epochs")
    async def renew(self, node_ids: list[str], scheduled: bool = False) -> list[dict]:
        """One renewal for each node (in parallel): results in the order given."""
        return await self._renew(node_ids, scheduled)

    async def _renew(self, node_ids: list[str], scheduled: bool = False) -> list[dict]:
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
        executor = Signed(executor, self.gate, "executor", node_id)
        nonce = await self.registry.challenge.remote(node_id)
        try:
            nxt = await executor.prepare_rotation.remote(nonce)
        except Exception as exc:  # the node cannot attest: it keeps its keys until its epoch ends
            return {"ok": False, "reason": "no-evidence", "detail": f"{type(exc).__name__}: {exc}",
                    "digest": b"", "simulated": False, "tcb_version": None, "device_id": ""}
        try:
            res = await self.registry.renew.remote(node_id, nxt["pubkey"], nxt["kem_pub"], nxt["evidence"],
                                                   auth=nxt["auth"])  # the node's own signed call
        except Exception:
            await executor.abort_rotation.remote()
            raise
        if res["ok"]:
            await executor.commit_rotation.remote()
        else:
            await executor.abort_rotation.remote()
        return res

    # --- the control plane's keys
    def _peers(self) -> dict[str, Any]:
        from actors.peers import find

        names = {"ledger": self.peer_names.get("ledger"), "selector": self.peer_names.get("selector")}
        names.update({f"aggregator/{k}": n for k, n in enumerate(self.peer_names.get("aggregators", []))})
        return {holder: find(n) for holder, n in names.items() if n}

    @guarded("epochs")
    async def rotate_keys(self) -> list[bytes]:
        """Every control-plane actor (this one included) takes a fresh signing key now;
        returns the rotation statements, which every actor and executor is given."""
        return await self._rotate_keys()

    async def _rotate_keys(self) -> list[bytes]:
        async with self._keys_lock:
            kinds = {"selector": "selector"}
            # (the ledger only checks calls: it signs none, so it has no key in the roster to rotate)
            peers = {h: a for h, a in self._peers().items() if a is not None and h != "ledger"}
            refs = [Signed(a, self.gate, kinds.get(h, "aggregator")).rotate_key.remote() for h, a in peers.items()]
            refs.append(self.registry.rotate_key.remote())
            got = [r for r in await asyncio.gather(*refs, return_exceptions=True) if isinstance(r, bytes)]
            got.append(self.gate.rotate())
            self._rotated_at = time.time()
            self._statements = (self._statements + got)[-512:]
            if self.gate.store is not None:
                self.gate.store.put_many([("control", "statements", self._statements),
                                          ("control", "rotated_at", self._rotated_at)])
            # every actor and executor holds the new keys before anyone signs with one; the old
            # keys sign on for GRACE_S, so a switch may wait for a broadcast that reached everyone
            for attempt in range(SWITCH_TRIES):
                if await self._broadcast() or attempt == SWITCH_TRIES - 1:
                    break
                await asyncio.sleep(1.0)
            switches = [Signed(a, self.gate, kinds.get(h, "aggregator")).switch_key.remote()
                        for h, a in peers.items()] + [self.registry.switch_key.remote()]
            await asyncio.gather(*switches, return_exceptions=True)
            self.gate.switch()
        return got

    async def _broadcast(self) -> bool:
        """Every actor and executor gets the statements (again: idempotent, cheap). True when
        each one took them or is gone (a restarted actor gets them from the next broadcast)."""
        from ray.exceptions import RayActorError

        self.gate.accept(self._statements)
        try:
            targets = list(self._peers().values()) + [bare(self.registry)]
            targets += list((await self.registry.handles.remote()).values())
        except Exception:
            return False
        self._broadcast_at = time.time()
        got = await asyncio.gather(*(t.accept_rotations.remote(self._statements) for t in targets if t is not None),
                                   return_exceptions=True)
        return all(not isinstance(g, BaseException) or isinstance(g, RayActorError) for g in got)

    def status(self) -> dict:
        ok = sum(len(h.get("ok", ())) for h in self.history)
        tried = sum(len(h.get("nodes", ())) for h in self.history)
        return {"epoch_s": self.epoch_s, "margin_s": self.margin_s, "running": bool(self._task and not self._task.done()),
                "renewals": len(self.history), "last": self.history[-1] if self.history else None,
                "node_renewals": ok, "node_renewal_failures": tried - ok,
                "errors": sum(1 for h in self.history if "error" in h), "key_rotated_at": self._rotated_at}
