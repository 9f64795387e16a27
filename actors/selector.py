"""QuorumSelector: the VRF key behind every draw, and the record of each draw.

Draws are computed by protocols.selection from the selector's VRF output over
(request id, draw label) and the registry's eligible set. Each draw is recorded
with its eligible list and VRF proof, so a receipt lets anyone check it against
the selector's VRF public key, while nobody without the secret key can compute
a draw in advance. The cross-validation coin is the VRF output for label
"coin": committed at draw time, opened after the executor commits. Obfuscated
draws stay secret: their records are disclosed only after an embargo (`disclose`).

Durable (actors.store): the VRF and signing keys, every draw record, coin
seeds, and each obfuscated request's mapping (pseudonym -> node, salt, tickets
not yet sent) are written before the call returns and reloaded on restart. The
keys, coins, draws and mappings are in sealed tables: the file alone unblinds nobody.

Why over 400 lines: the plain draws and the obfuscated ones (tickets, bindings,
unblinding) share the same records, store and keys; ObfuscatingSelector extends
QuorumSelector in place rather than a second actor.
"""

from __future__ import annotations

from typing import Any

import asyncio
import os
import time

from actors.background import spawn
from actors.outbox import answer_each
from actors.store import open_store
from protocols import crossval, obfuscation, selection, vrf
from protocols.canonical import pack
from protocols.crypto import SigningKey
from actors.authority import Controlled, Gatekeeper, Signed, guarded
from protocols.errors import InvalidParams, NotEnoughNodes, UnknownRequest
from protocols.messages import ReplayedMessage
from protocols.settlement import Binding

COIN = "coin"  # the VRF label of the cross-validation coin


class QuorumSelector(Controlled):
    """Draws for aggregator shards only, takes views pushed by the registry only, and opens
    coins and pseudonyms only for the aggregator (actors.authority)."""

    SEALED = ("keys", "coins", "obf", "draws")  # draws of obfuscated requests are secret too

    def __init__(self, registry: Any, min_stake: int, vrf_key: bytes | None = None, embargo_s: float = 86400.0,
                 store: dict | None = None, control: dict | None = None):
        self.gate = Gatekeeper("selector", control)
        self.registry = registry
        self.store = open_store(store, sealed=self.SEALED)
        saved = self.store.get("keys", "vrf") if self.store is not None else None
        self.vrf = vrf.VrfKey(saved if saved is not None else vrf_key)
        if self.store is not None and saved is None:
            self.store.put("keys", "vrf", self.vrf._key.export_key(format="DER"))
        self.min_stake = int(min_stake)
        self.embargo_s = float(embargo_s)  # obfuscated draws are disclosed to auditors only after this
        self.records: dict[str, list[dict]] = {}
        self.coins: dict[str, tuple[bytes, bytes]] = {}  # request id -> (coin seed, VRF proof), cross-validation
        self._drawn_at: dict[str, float] = {}
        self._version, self._all_views, self._all_keys = -1, None, {}
        self._attestations: dict = {}
        self.owners: dict[str, int] = {}  # request id -> the aggregator shard it belongs to
        self._owners_saved: set[str] = set()
        if self.store is not None:
            self.owners = dict(self.store.items("owners"))
            self._owners_saved = set(self.owners)
            for rid, row in self.store.items("draws"):
                self.records[rid], self._drawn_at[rid] = list(row["records"]), float(row["drawn_at"])
            self.coins = {rid: (bytes(c[0]), bytes(c[1])) for rid, c in self.store.items("coins")}

    def _save_draws(self, request_id: str) -> None:
        if self.store is None:
            return
        rows = [("draws", request_id, {"records": self.records[request_id], "drawn_at": self._drawn_at[request_id]})]
        if request_id in self.owners and request_id not in self._owners_saved:
            rows.append(("owners", request_id, self.owners[request_id]))
            self._owners_saved.add(request_id)
        if request_id in self.coins:
            rows.append(("coins", request_id, list(self.coins[request_id])))
        self.store.put_many(rows)

    async def _views(self, model_id: str):
        if self._all_views is None:  # no push yet, or a delta was missed: ask once
            self._on_registry(*(await self.registry.views.remote(None)))
        return [v for v in self._all_views.values() if v.model_id == model_id], self._all_keys

    @guarded("selector")
    async def draw_many(self, draws: list) -> list:
        """`draw(**kw)` for each map of arguments (an aggregator shard sends one tick's draws
        together); one entry per draw: its record, or Failed(error) for that draw alone."""
        return await answer_each(lambda kw: self._draw_retrying(**kw), [(kw,) for kw in draws])

    @guarded("selector")
    async def draw(self, request_id: str, model_id: str, n: int, label: str = "quorum",
                   exclude: tuple[str, ...] = (), det_class: str | None = None,
                   allow_fewer: bool = False, require_attested: bool = False, coin: bool = False,
                   within: tuple[str, ...] | None = None, owner: int | None = None,
                   tolerant: bool = False) -> dict:
        """Draw n nodes; with allow_fewer, as many as are eligible (possibly none).
        owner: the aggregator shard asking. A request is drawn for one shard only: the
        same request through another shard is a replay (the shards' guards are their own).
        within: only these nodes may be drawn (a sealed prompt's recipients); the
        others are recorded as excluded, so the receipt still recomputes the draw.

        tolerant: draw across the model's tolerance group (hardware, dtype and batching
        may differ) when it has one; else within one exact determinism class.

        coin=True (cross-validation) also fixes a secret coin seed for the request
        and returns only its commitment; `reveal_coin` opens it later."""
        return await self._draw_retrying(request_id, model_id, n, label, exclude, det_class, allow_fewer,
                                         require_attested, coin, within, owner, tolerant)

    async def _draw_retrying(self, request_id: str, model_id: str, n: int, label: str = "quorum",
                             exclude: tuple[str, ...] = (), det_class: str | None = None,
                             allow_fewer: bool = False, require_attested: bool = False, coin: bool = False,
                             within: tuple[str, ...] | None = None, owner: int | None = None,
                             tolerant: bool = False) -> dict:
        try:
            return await self._draw(request_id, model_id, n, label, exclude, det_class, allow_fewer,
                                    require_attested, coin, within, owner, tolerant)
        except NotEnoughNodes:  # the view may trail the registry by a push: ask it once, then decide
            self._all_views, self._version = None, -1
            return await self._draw(request_id, model_id, n, label, exclude, det_class, allow_fewer,
                                    require_attested, coin, within, owner, tolerant)

    async def _draw(self, request_id, model_id, n, label, exclude, det_class, allow_fewer, require_attested,
                    coin, within, owner=None, tolerant=False) -> dict:
        views, keys = await self._views(model_id)
        if within is not None:
            allowed = set(within)
            exclude = tuple(sorted(set(exclude) | {v.node_id for v in views if v.node_id not in allowed}))
        self._check_owner(request_id, owner)
        for r in self.records.get(request_id, []):
            if r["label"] == label:
                if _same_draw(r, model_id, n, exclude, det_class, require_attested):  # a retried call
                    return self._with_coin(request_id, r)
                raise InvalidParams(f"{request_id} was already drawn for {label!r}")
        seed, proof = selection.draw_randomness(self.vrf, request_id, label)
        now = time.time()
        if det_class is None:
            det_class = selection.choose_class(views, model_id, n, self.min_stake, seed, require_attested, now,
                                               tolerant)
        pool = selection.eligible(views, model_id, self.min_stake, det_class, exclude, require_attested, now)
        asked = n
        if allow_fewer:
            n = min(n, len(pool))
        if n == 0:
            if not allow_fewer:
                raise NotEnoughNodes(f"no eligible node for {model_id!r}")
            chosen: list[str] = []
        else:
            chosen = selection.draw(pool, n, seed)
        record = {"label": label, "owner": owner, "det_class": det_class, "seed": seed, "proof": proof, "asked": asked, "eligible": pool,
                  "exclude": sorted(exclude), "selected": chosen, "keys": [keys[c] for c in chosen],
                  "require_attested": require_attested,
                  "attestations": {c: self._attestations[c] for c in chosen if c in self._attestations}}
        self.records.setdefault(request_id, []).append(record)
        self._drawn_at.setdefault(request_id, now)
        if coin and request_id not in self.coins:
            beta, pi = self.vrf.output(vrf.draw_alpha(request_id, COIN))
            self.coins[request_id] = (beta, pi)
        self._save_draws(request_id)
        return self._with_coin(request_id, record)

    def _check_owner(self, request_id: str, owner: int | None) -> None:
        """A request belongs to the first shard that drew for it, for good (kept after `forget`)."""
        if owner is None:
            return
        held = self.owners.setdefault(request_id, owner)
        if held != owner:
            raise ReplayedMessage(f"request {request_id} is already served by another aggregator shard")
        # (saved with the draw record, in one write: see _save_draws)

    def _with_coin(self, request_id: str, record: dict) -> dict:
        if request_id in self.coins:
            record = dict(record, coin_commit=crossval.coin_commit(self.coins[request_id][0]))
        return record

    @guarded("selector")
    def reveal_coin(self, request_id: str) -> tuple[bytes, bytes]:
        """Open the coin (seed, VRF proof); the aggregator asks only after the executor committed."""
        if request_id not in self.coins:
            raise UnknownRequest(f"no coin was committed for {request_id}")
        return self.coins[request_id]

    @guarded("selector")
    def vrf_secret(self) -> bytes:
        """Experiments and demos only: the VRF's secret key, so the operator can preview
        draws (pick a request id that draws a given node). Nobody else may ask."""
        return self.vrf.export()

    def vrf_public(self) -> bytes:
        """The VRF public key receipts are checked against (DER)."""
        return self.vrf.public

    def disclose(self, request_id: str, now: float | None = None) -> dict:
        """An auditor's view of every draw of a request, with its VRF proofs: for an
        obfuscated request only once the embargo has passed since its draw."""
        if request_id not in self.records:
            raise UnknownRequest(f"no draw for {request_id}")
        now = time.time() if now is None else float(now)
        if request_id in getattr(self, "obf", {}) and now < self._drawn_at[request_id] + self.embargo_s:
            raise InvalidParams(f"obfuscated draws of {request_id} are under embargo until "
                                f"{self._drawn_at[request_id] + self.embargo_s:.0f}")
        return {"vrf_key": self.vrf.public, "draws": list(self.records[request_id])}

    @guarded("selector")
    def on_registry(self, version: int, views: list, keys: dict, attestations: dict | None = None) -> None:
        """The registry's full view (on subscribing, or when a delta was missed)."""
        self._on_registry(version, views, keys, attestations)

    def _on_registry(self, version: int, views: list, keys: dict, attestations: dict | None = None) -> None:
        if version > self._version:
            self._version, self._all_views = version, {v.node_id: v for v in views}
            self._all_keys, self._attestations = dict(keys), dict(attestations or {})

    @guarded("selector")
    def on_registry_delta(self, delta: dict) -> None:
        """The registry pushes what changed, so a draw never waits on it. A delta that
        does not follow the view held here (one was missed) drops the view: the next
        draw asks for the whole of it."""
        self._on_registry_delta(delta)

    def _on_registry_delta(self, delta: dict) -> None:
        if delta["version"] <= self._version:
            return
        if self._all_views is None or delta["base"] != self._version:
            self._all_views, self._version = None, -1
            return
        for nid in delta["removed"]:
            self._all_views.pop(nid, None)
            self._all_keys.pop(nid, None)
            self._attestations.pop(nid, None)
        for v in delta["views"]:
            self._all_views[v.node_id] = v
            self._attestations.pop(v.node_id, None)
        self._all_keys.update(delta["keys"])
        self._attestations.update(delta["attestations"])
        self._version = delta["version"]

    def record(self, request_id: str) -> dict:
        if request_id in getattr(self, "obf", {}):
            raise InvalidParams("obfuscated draws are secret: see disclose")
        rec = {"vrf_key": self.vrf.public, "draws": list(self.records.get(request_id, []))}
        if request_id in self.coins:
            rec["coin_commit"] = crossval.coin_commit(self.coins[request_id][0])
        return rec

    @guarded("selector")
    def forget(self, request_id: str) -> None:
        self._forget(request_id)

    def _forget(self, request_id: str) -> None:
        self.records.pop(request_id, None)
        self.coins.pop(request_id, None)
        self._drawn_at.pop(request_id, None)
        if self.store is not None:
            self.store.put_many((), [(t, request_id) for t in ("draws", "coins", "obf")])


class ObfuscatingSelector(QuorumSelector):
    """Adds Node Obfuscation: the selector alone knows which node hides behind
    which pseudonym. It dispatches sealed tickets, relays reveal requests,
    binds each pseudonym to its node's account at the ledger (which checks the
    binding against the mapping commitment when the aggregator settles), and
    unblinds only on request (checked by the aggregator against the same
    commitment), so honest identities never reach the aggregator. It moves no
    money itself."""

    def __init__(self, registry: Any, min_stake: int, key_seed: bytes | None = None, vrf_key: bytes | None = None,
                 embargo_s: float = 86400.0, store: dict | None = None, control: dict | None = None):
        super().__init__(registry, min_stake, vrf_key, embargo_s, store, control)
        saved = self.store.get("keys", "signing") if self.store is not None else None
        self.key = SigningKey(bytes(saved) if saved is not None else key_seed or os.urandom(32))
        if self.store is not None and saved is None:
            self.store.put("keys", "signing", self.key.seed)
        self.aggregator = None
        self.ledger = None
        # request id -> {"members": {pid: (node id, salt, pseudonym key, role, attestation | None, replacement)},
        #                "served": set(node ids), "held": tickets not yet sent}
        self.obf: dict[str, dict] = {}
        self._tasks: set = set()  # background watchers, referenced until done
        self._handle_cache: dict = {}
        self.frame: str | None = None  # experiments only: a lying selector names this node when unblinding
        self.misbind = False  # experiments only: ... or binds every pseudonym to it at the ledger
        if self.store is not None:
            peers = self.store.get("meta", "peers")
            if peers:  # restarted: the peers bind gave us, by name
                from actors.peers import find

                self.aggregator, self.ledger = [find(n) for n in peers["aggregators"]], find(peers["ledger"])
            for rid, row in self.store.items("obf"):
                self.obf[rid] = {"members": {p: tuple(m) for p, m in row["members"].items()},
                                 "served": set(row["served"]), "held": [tuple(h) for h in row["held"]],
                                 "reply_to": row.get("reply_to", 0), "draws": dict(row.get("draws", {}))}

    def _save_obf(self, request_id: str) -> None:
        if self.store is not None and request_id in self.obf:
            st = self.obf[request_id]
            self.store.put("obf", request_id, {"members": {p: list(m) for p, m in st["members"].items()},
                                               "served": sorted(st["served"]), "held": [list(h) for h in st["held"]],
                                               "reply_to": st.get("reply_to", 0), "draws": st.get("draws", {})})

    @guarded("selector")
    def set_behaviour(self, frame: str | None, misbind: bool = False) -> None:
        """Experiments only: `frame` = a node id this selector falsely names for every slashed
        pseudonym (the aggregator must catch it against the committed mapping); with
        `misbind`, it instead binds every pseudonym to `frame` at the ledger, to redirect
        the payments (the ledger must catch it against the same mapping); None = honest."""
        self.frame, self.misbind = (None, False) if frame is None else (frame, bool(misbind))

    @guarded("selector")
    def bind(self, aggregator: Any, ledger: Any, names: dict | None = None) -> None:
        """aggregator: one handle, or one per shard (index = shard). names: their actor
        names ({"aggregators": [...], "ledger": ...}), kept so a restart finds them again."""
        self.aggregator, self.ledger = aggregator, ledger
        if names and self.store is not None:
            self.store.put("meta", "peers", names)

    def _reply(self, request_id: str):
        aggs = self.aggregator if isinstance(self.aggregator, (list, tuple)) else [self.aggregator]
        return Signed(aggs[self.obf.get(request_id, {}).get("reply_to", 0)], self.gate, "aggregator")

    def pubkey(self) -> bytes:
        return self.key.public

    @guarded("selector")
    async def draw_obfuscated(self, request_id: str, model_id: str, n: int, role: str, label: str,
                              request_raw: bytes, prompt: str, det_class: str | None = None,
                              allow_fewer: bool = False, dispatch: bool = True,
                              require_attested: bool = False, within: tuple[str, ...] | None = None,
                              reply_to: int = 0) -> dict:
        """Draw n fresh nodes, hand each a sealed ticket, return only pseudonyms.

        dispatch=False holds the tickets until `dispatch_tickets` (after escrow).
        require_attested draws only attested nodes and commits each one's evidence
        digest in its mapping entry; the record says only "attested", not by whom.
        reply_to: the aggregator shard the members push to."""
        self._check_owner(request_id, reply_to)
        state = self.obf.setdefault(request_id, {"members": {}, "served": set(), "held": [], "reply_to": reply_to})
        done = state.setdefault("draws", {}).get(label)
        if done is not None:  # a retried call: the same pseudonyms, not a second draw
            return done
        rec = await self._draw_retrying(request_id, model_id, n, label, tuple(sorted(state["served"])), det_class,
                              allow_fewer, require_attested, within=within, owner=reply_to)
        kems = await self.registry.kem_keys.remote(rec["selected"])
        out = {"det_class": rec["det_class"], "pseudonyms": [], "keys": [], "mapping": {}}
        bindings = {}
        for nid in rec["selected"]:
            ticket = obfuscation.Ticket(request_id, role, os.urandom(32))
            salt = os.urandom(32)
            pub = ticket.key.public
            pid = obfuscation.pseudonym_id(pub)
            att = rec["attestations"][nid] if require_attested else None
            state["members"][pid] = (nid, salt, pub, role, att, label.startswith("replace"))
            state["served"].add(nid)
            sealed = obfuscation.make_ticket(ticket, kems[nid], self.key)
            state["held"].append((pid, nid, sealed, request_raw, prompt))
            out["pseudonyms"].append(pid)
            out["keys"].append(pub)
            out["mapping"][pid] = obfuscation.mapping_entry(pub, nid, salt, att["digest"] if att else "")
            bindings[pid] = Binding(self.frame if self.misbind else nid, salt, pub, att["digest"] if att else "")
        if bindings:  # the ledger pays by these bindings, checked against the mapping: durable first
            await Signed(self.ledger, self.gate, "ledger").bind_members.remote(request_id, bindings)
        state["draws"][label] = out
        self._save_obf(request_id)
        if dispatch:
            await self._dispatch_tickets(request_id)
        return out

    async def _handles(self, node_ids: list[str]) -> dict:
        """Executor handles, cached (a node's handle never changes while it is registered)."""
        missing = [n for n in node_ids if n not in self._handle_cache]
        if missing:
            self._handle_cache.update(await self.registry.handles.remote(missing))
        return {n: self._handle_cache[n] for n in node_ids}

    @guarded("selector")
    async def dispatch_tickets(self, request_id: str) -> None:
        await self._dispatch_tickets(request_id)

    async def _dispatch_tickets(self, request_id: str) -> None:
        state = self.obf.get(request_id)
        if state is None:
            raise UnknownRequest(f"no obfuscated draw for {request_id}")
        held, state["held"] = state["held"], []
        handles = await self._handles([h[1] for h in held])
        for pid, nid, sealed, request_raw, prompt in held:
            ref = Signed(handles[nid], self.gate, "executor", nid).execute_ticket.remote(sealed, request_raw, prompt, self.key.public,
                                                     state.get("reply_to", 0))
            spawn(self._tasks, self._watch(request_id, pid, ref))
        self._save_obf(request_id)

    async def _watch(self, request_id: str, pid: str, ref) -> None:
        try:
            await ref
        except asyncio.CancelledError:
            return
        except Exception:  # the node failed: tell the aggregator, still by pseudonym only
            await self._reply(request_id).obf_failure.remote(request_id, pid)

    @guarded("selector")
    async def request_reveals(self, request_id: str, pseudonyms: list[str]) -> None:
        members = self._members(request_id)
        handles = await self._handles([members[p][0] for p in pseudonyms])
        for pid in pseudonyms:
            ref = Signed(handles[members[pid][0]], self.gate, "executor", members[pid][0]).reveal_ticket.remote(
                request_id, pid, self.obf[request_id].get("reply_to", 0))
            spawn(self._tasks, self._watch(request_id, pid, ref))

    def _members(self, request_id: str) -> dict:
        if request_id not in self.obf:
            raise UnknownRequest(f"no obfuscated draw for {request_id}")
        return self.obf[request_id]["members"]

    @guarded("selector")
    def unblind(self, request_id: str, pseudonyms: list[str]) -> dict[str, tuple]:
        """(node id, salt, attestation digest, evidence) of each pseudonym the aggregator
        must slash (digest and evidence empty for members drawn without attestation)."""
        members = self._members(request_id)
        out = {}
        for p in pseudonyms:
            nid, salt, _, _, att, _ = members[p]
            named = self.frame if self.frame and not self.misbind else nid
            out[p] = (named, salt, att["digest"] if att else "", att["evidence"] if att else b"")
        return out

    def mapping_record(self, request_id: str) -> dict:
        """What receipts carry: pseudonyms, roles, whether each was attested
        ("simulated" | "hardware" | ""), the mapping commitment; signed."""
        members = self._members(request_id)
        body = {
            "members": {pid: {"key": pub, "role": role, "attested": _kind(att), "replacement": repl}
                        for pid, (_, _, pub, role, att, repl) in members.items()},
            "mapping": {pid: obfuscation.mapping_entry(pub, nid, salt, att["digest"] if att else "")
                        for pid, (nid, salt, pub, _, att, _) in members.items()},
        }
        return {**body, "selector": self.key.public,
                "sig": self.key.sign(obfuscation.MAPPING_DOMAIN + pack([request_id, body]))}

    def _forget(self, request_id: str) -> None:
        super()._forget(request_id)
        self.obf.pop(request_id, None)


def _same_draw(r: dict, model_id, n, exclude, det_class, require_attested) -> bool:
    return (r["asked"] == n and r["require_attested"] == require_attested
            and (det_class is None or r["det_class"] == det_class) and set(exclude) <= set(r["exclude"]))


def _kind(attestation: dict | None) -> str:
    if not attestation:
        return ""
    return "simulated" if attestation.get("simulated") else "hardware"
