"""ModelRegistry: which models exist and which nodes may serve them.

Holds model records (id, weights content hash, engine, limits) and node records
(keys, determinism class, stake, liveness, executor handle). Admission checks
that a node's determinism fingerprint names the registered model hash, so a
node loaded with other weights is refused before it is ever selected.

Durable (actors.store): every model, node record (keys, stake, liveness,
attestation), open challenge, spent attestation nonce, revocation and the
view version is written before the call that changed it returns, and reloaded
when Ray restarts the actor; executor and subscriber handles are kept by actor
name and looked up again. Weights keys are in a sealed table.

A restarted executor has lost its keys: it asks to `rejoin`, and stays out of
every draw until the registry has challenged the handle registered for it
(never the caller) and the answer proves the fresh keys: attestation evidence
binding them where the network attests, a signed liveness answer otherwise.

Why over 400 lines: node records, their attestation, liveness and rejoin all
change the same records, which must be persisted and pushed to subscribers in
the same step; the verification rules themselves live in protocols/.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from actors.authority import Controlled, Gatekeeper, Signed, guarded
from actors.peers import find as _actor, me as _self_handle
from actors.store import open_store
from protocols.determinism import class_id, group_id
from protocols.errors import DuplicateNode, ModelHashMismatch, NodeError, UnknownModel, UnknownNode
from protocols.selection import NodeView


@dataclass
class ModelRecord:
    model_id: str
    model_hash: str
    engine: str
    max_prompt_tokens: int = 1024
    timeout_s: float | None = None  # member deadline rule (None: the network's limits)
    timeout_per_token_s: float | None = None
    chat_template: str | None = None  # jinja template chats are rendered with (None: no template)
    tolerance: dict | None = None  # calibrated tolerant check (protocols.fingerprint.Tolerance): nodes form a group

    def group(self) -> str:
        """The model's tolerance group ("" = exact-match classes only)."""
        if self.tolerance is None:
            return ""
        from protocols.fingerprint import Tolerance

        return group_id(self.model_hash, Tolerance.of(self.tolerance).to_wire())


@dataclass
class NodeRecord:
    node_id: str
    pubkey: bytes
    model_id: str
    det_class: str
    fingerprint: dict[str, Any]
    stake: int
    live: bool = True
    attested: bool = False
    handle: Any = field(default=None, repr=False)
    handle_name: str = ""  # the executor's actor name: its handle is found again after a restart
    kem_pub: bytes = b""  # HPKE public key: tickets and sealed prompts are sealed to it
    attestation: dict = field(default_factory=dict)  # last verified evidence: digest, simulated, tcb, ...
    attested_until: float = 0.0
    epoch: int = 0  # attestations accepted so far (each renewal is a new key generation)
    group: str = ""  # tolerance group (across hardware, dtype, threads): "" when the model has none

    def view(self) -> NodeView:
        return NodeView(self.node_id, self.model_id, self.det_class, self.stake, self.live, self.attested,
                        self.attested_until, self.group)


MAX_OPEN_CHALLENGES = 8


class ModelRegistry(Controlled):
    """Every state-changing method takes a signed call (actors.authority): the operator
    registers models and admits, removes and revokes nodes; aggregator shards move stake
    and liveness; a node renews and unlocks only for itself, with its registered key,
    answering a challenge of this registry. Pushes to subscribers are signed as the registry."""

    def __init__(self, policy: Any = None, trust_anchors: tuple = (), epoch_s: float = 3600.0,
                 min_stake: int = 0, store: dict | None = None, control: dict | None = None) -> None:
        self.gate = Gatekeeper("registry", control)
        self.min_stake = int(min_stake)
        self._liveness: dict[str, bytes] = {}  # node -> open liveness challenge
        self.models: dict[str, ModelRecord] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.policy = policy  # protocols.attestation.Policy, or None: no TEE class in this network
        self.trust_anchors = tuple(trust_anchors)
        self.epoch_s = float(epoch_s)  # attestation must be renewed (with fresh keys) every epoch
        self._nonces: dict[str, list[bytes]] = {}  # node -> open challenges
        self._weight_keys: dict[str, bytes] = {}  # model id -> AES key of its weights at rest (never listed)
        self._seen_nonces: set[bytes] = set()
        self.version = 0  # bumps on every change; subscribers get each new view pushed
        self._subscribers: list = []
        self._subscriber_names: list[str] = []
        self.rejoining: set[str] = set()
        self.rejoin_results: dict[str, dict] = {}  # node -> how its last rejoin ended
        self._approved: dict[str, dict] = {}  # external node -> {pubkey, model_id, stake} the operator approved
        self.store = open_store(store, sealed=("weights_keys",))
        if self.store is not None:
            self._load()

    # --- durable state
    def _load(self) -> None:
        import dataclasses

        st = self.store
        self.models = {k: ModelRecord(**v) for k, v in st.items("models")}
        self._weight_keys = {k: bytes(v) for k, v in st.items("weights_keys")}
        for k, v in st.items("nodes"):
            v["fingerprint"] = dict(v["fingerprint"])
            self.nodes[k] = NodeRecord(**v)
            self.nodes[k].handle = _actor(v["handle_name"])
        self._nonces = {k: [bytes(x) for x in v] for k, v in st.items("challenges")}
        self._liveness = {k: bytes(v) for k, v in st.items("liveness")}
        self._seen_nonces = {bytes.fromhex(k) for k, _ in st.items("seen_nonces")}
        self._approved = {k: dict(v, pubkey=bytes(v["pubkey"])) for k, v in st.items("approved")}
        meta = dict(st.items("meta"))
        if self.policy is not None and "revoked" in meta:
            self.policy = dataclasses.replace(self.policy, revoked_tcb_versions=tuple(meta["revoked"][0]),
                                              revoked_devices=tuple(meta["revoked"][1]))
        # views pushed after a restart must read as newer than any a subscriber holds
        self.version = int(meta.get("version", 0)) + 1
        self._subscriber_names = list(meta.get("subscribers", []))
        self._subscribers = [h for h in (_actor(n) for n in self._subscriber_names) if h is not None]
        self._save(meta=True)
        for sub in self._subscribers:  # whatever they hold may be older than what was saved
            self._pushes(sub).on_registry.remote(*self.views(None))

    def _save(self, node_ids=(), models=(), meta: bool = False, extra: list = ()) -> None:
        if self.store is None:
            return
        rows = [("nodes", n, _record_row(self.nodes[n])) for n in node_ids if n in self.nodes]
        rows += [("models", m, asdict(self.models[m])) for m in models]
        rows += [("weights_keys", m, self._weight_keys[m]) for m in models if m in self._weight_keys]
        rows += [("challenges", n, self._nonces.get(n, [])) for n in node_ids]
        rows += [("liveness", n, self._liveness[n]) for n in node_ids if n in self._liveness]
        rows += list(extra)
        rows.append(("meta", "version", self.version))
        if meta:
            rows.append(("meta", "subscribers", self._subscriber_names))
            if self.policy is not None:
                rows.append(("meta", "revoked", [list(self.policy.revoked_tcb_versions),
                                                 list(self.policy.revoked_devices)]))
        gone = [("nodes", n) for n in node_ids if n not in self.nodes]
        gone += [("liveness", n) for n in node_ids if n not in self._liveness]
        self.store.put_many(rows, gone)

    @guarded("registry")
    async def subscribe(self, actor: Any, name: str = "") -> None:
        """`actor.on_registry(version, views, keys, attestations)` gets the full view now, and
        `actor.on_registry_delta(delta)` every change after (see `_changed`). `name`: the
        subscriber's actor name, so it is found again after a restart."""
        if name and name in self._subscriber_names:  # a retried call, or a repaired subscriber
            self._subscribers[self._subscriber_names.index(name)] = actor
        else:
            self._subscribers.append(actor)
            self._subscriber_names.append(name)
        self.version += 1
        self._save(meta=True)
        await self._pushes(actor).on_registry.remote(*self.views(None))

    async def _changed(self, node_ids=()) -> None:
        """Push what changed — the new view of each changed node, or its removal — to every
        subscriber. The registry never blocks on it (other calls run meanwhile); the call
        that made the change returns once subscribers applied it, so a draw after it sees it."""
        base, self.version = self.version, self.version + 1
        self._save(node_ids)
        if not self._subscribers:
            return
        delta = self._delta(base, node_ids)
        await asyncio.gather(*[self._pushes(sub).on_registry_delta.remote(delta) for sub in self._subscribers])

    def _delta(self, base: int, node_ids) -> dict:
        recs = [self.nodes[n] for n in node_ids if n in self.nodes]
        return {"base": base, "version": self.version, "views": [r.view() for r in recs],
                "removed": [n for n in node_ids if n not in self.nodes],
                "keys": {r.node_id: r.pubkey for r in recs},
                "attestations": {r.node_id: self._attestation_view(r) for r in recs if r.attested}}

    @staticmethod
    def _attestation_view(r: "NodeRecord") -> dict:
        return {"digest": r.attestation["digest"], "simulated": r.attestation["simulated"],
                "evidence": r.attestation["evidence"]}

    # --- who is asking (actors.authority): nodes sign with their registered key
    def _node_of(self, key: bytes) -> str | None:
        got = next((n.node_id for n in self.nodes.values() if n.pubkey == bytes(key)), None)
        if got is None:  # an approved external node, before it joins
            got = next((nid for nid, a in self._approved.items() if a["pubkey"] == bytes(key)
                        and nid not in self.nodes), None)
        return got

    def _challenge(self, node_id: str, nonce: bytes) -> bool:
        return bytes(nonce) in (self._nonces.get(node_id) or [])

    def namespace(self) -> str:
        """Public: the Ray namespace the network's actors live in (stand-ins for outside nodes join it)."""
        import ray

        return ray.get_runtime_context().namespace

    def trust_roots(self) -> list[bytes]:
        """The attestation trust anchors this registry verifies evidence under (public)."""
        return list(self.trust_anchors)

    def _pushes(self, sub: Any) -> Signed:
        return Signed(sub, self.gate, "selector")

    # --- models
    @guarded("registry")
    async def register_model(self, model_id: str, model_hash: str, engine: str, max_prompt_tokens: int = 1024,
                       weights_key: bytes | None = None, timeout_s: float | None = None,
                       timeout_per_token_s: float | None = None, tolerance: dict | None = None) -> dict:
        """`tolerance`: the model's calibrated tolerant check; its nodes then also form a
        tolerance group (protocols.determinism.group_id) that plaintext rounds draw from."""
        if not model_id or len(model_hash) != 64:
            raise ValueError("a model needs an id and a hex SHA-256 content hash")
        if tolerance is not None:
            from protocols.fingerprint import Tolerance

            tolerance = Tolerance.of(tolerance).to_wire()  # (a malformed one is refused here)
        old = self.models.get(model_id)
        if old is not None and old.model_hash != model_hash:
            raise ModelHashMismatch(f"model {model_id!r} is registered with another hash")
        if old is not None and old.tolerance != tolerance and any(n.model_id == model_id for n in self.nodes.values()):
            raise ModelHashMismatch(f"model {model_id!r} has nodes admitted under another tolerance")
        self.models[model_id] = ModelRecord(model_id, model_hash, engine, max_prompt_tokens, timeout_s,
                                            timeout_per_token_s, tolerance=tolerance)
        if weights_key is not None:
            self._weight_keys[model_id] = bytes(weights_key)
        self._save(models=[model_id])
        await self._changed()
        return asdict(self.models[model_id])

    @guarded("registry")
    def set_chat_template(self, model_id: str, template: str) -> None:
        if model_id not in self.models:
            raise UnknownModel(f"model {model_id!r} is not registered")
        if not isinstance(template, str) or len(template) > 65536:
            raise ValueError("a chat template is a string of at most 64 KiB")
        self.models[model_id].chat_template = template
        self._save(models=[model_id])

    def model(self, model_id: str) -> dict:
        if model_id not in self.models:
            raise UnknownModel(f"model {model_id!r} is not registered")
        return asdict(self.models[model_id])

    def list_models(self) -> list[dict]:
        return [asdict(m) for m in self.models.values()]

    # --- nodes
    @guarded("registry")
    async def admit(self, node_id: str, pubkey: bytes, model_id: str, fingerprint: dict, stake: int,
              handle: Any = None, attested: bool = False, kem_pub: bytes = b"", handle_name: str = "") -> dict:
        return await self._admit(node_id, pubkey, model_id, fingerprint, stake, handle, attested, kem_pub,
                                 handle_name)

    # --- nodes that run outside the cluster (cluster/agent.py): the operator approves a key,
    # the node joins under it (through the node endpoint, with its RemoteNode stand-in)
    @guarded("registry")
    async def approve(self, node_id: str, pubkey: bytes, model_id: str, stake: int) -> dict:
        """The operator lets an external node join under `pubkey` with `stake` (deposited in
        the ledger as its collateral first). Nothing is drawn until it joins."""
        if node_id in self.nodes:
            raise DuplicateNode(f"node {node_id!r} is already registered")
        if model_id not in self.models:
            raise UnknownModel(f"model {model_id!r} is not registered")
        if not isinstance(pubkey, bytes) or len(pubkey) != 32:
            raise NodeError("an external node is approved under a 32-byte Ed25519 key")
        self._approved[node_id] = {"pubkey": bytes(pubkey), "model_id": model_id, "stake": int(stake)}
        self._save(extra=[("approved", node_id, self._approved[node_id])])
        return {"node_id": node_id, "approved": True}

    @guarded("registry")
    async def join(self, node_id: str, kem_pub: bytes, fingerprint: dict, handle: Any = None,
                   handle_name: str = "") -> dict:
        """An approved external node joins (its call is signed with the approved key):
        admitted like an in-cluster executor, by its model hash and stake; attested next,
        like them, by challenge and evidence."""
        appr = self._approved.get(node_id)
        if appr is None:
            raise UnknownNode(f"{node_id!r} is not an approved external node")
        if not isinstance(fingerprint, dict) or not isinstance(kem_pub, bytes) or len(kem_pub) != 32:
            raise NodeError("a join names the node's engine fingerprint and its 32-byte HPKE key")
        got = await self._admit(node_id, appr["pubkey"], appr["model_id"], fingerprint, appr["stake"], handle,
                                False, kem_pub, handle_name)
        return got

    async def _admit(self, node_id: str, pubkey: bytes, model_id: str, fingerprint: dict, stake: int,
                     handle: Any = None, attested: bool = False, kem_pub: bytes = b"", handle_name: str = "") -> dict:
        old = self.nodes.get(node_id)
        if old is not None:  # the same admission again (a retry across a restart) is not a second node
            if old.pubkey == bytes(pubkey) and old.model_id == model_id and old.fingerprint == dict(fingerprint):
                return self.describe(node_id)
            raise DuplicateNode(f"node {node_id!r} is already registered")
        model = self.models.get(model_id)
        if model is None:
            raise UnknownModel(f"model {model_id!r} is not registered")
        if fingerprint.get("model_hash") != model.model_hash:
            raise ModelHashMismatch(
                f"node {node_id!r} runs weights {str(fingerprint.get('model_hash'))[:16]}…, "
                f"model {model_id!r} is {model.model_hash[:16]}…"
            )
        if any(n.pubkey == pubkey for n in self.nodes.values()):
            raise DuplicateNode("another node already uses this public key")
        rec = NodeRecord(node_id, bytes(pubkey), model_id, class_id(fingerprint), dict(fingerprint), int(stake),
                         True, attested, handle, handle_name, bytes(kem_pub), group=model.group())
        self.nodes[node_id] = rec
        await self._changed([node_id])
        return self.describe(node_id)

    @guarded("registry")
    async def remove(self, node_id: str) -> None:
        self._node(node_id)
        del self.nodes[node_id]
        await self._changed([node_id])

    def _node(self, node_id: str) -> NodeRecord:
        rec = self.nodes.get(node_id)
        if rec is None:
            raise UnknownNode(f"node {node_id!r} is not registered")
        return rec

    def node_keys(self, node_id: str) -> list[bytes]:
        """Public: the keys a node may sign its endpoint calls with: its registered key, and for
        an external node also the key the operator approved (its lasting identity: after a
        restart it proves fresh keys by rejoining, as an in-cluster executor does)."""
        rec, appr = self.nodes.get(node_id), self._approved.get(node_id)
        return [k for k in ((rec.pubkey if rec else None), (appr["pubkey"] if appr else None)) if k]

    def describe(self, node_id: str) -> dict:
        rec = self._node(node_id)
        d = asdict(rec)
        d.pop("handle")
        d["rejoining"] = node_id in self.rejoining
        d["last_rejoin"] = self.rejoin_results.get(node_id)
        d["attestation"] = {k: v for k, v in rec.attestation.items() if k != "evidence"}
        return d

    def list_nodes(self) -> list[dict]:
        return [self.describe(n) for n in sorted(self.nodes)]

    def handles(self, node_ids: list[str] | None = None) -> dict[str, Any]:
        ids = node_ids if node_ids is not None else list(self.nodes)
        return {nid: self._node(nid).handle for nid in ids}

    # --- attestation: challenge, verify, admit to the TEE class, revoke
    @guarded("registry")
    def challenge(self, node_id: str) -> bytes:
        """A fresh nonce for the node's next attestation, renewal or weights-key call."""
        return self._issue_challenge(node_id)

    def _issue_challenge(self, node_id: str) -> bytes:
        """A fresh nonce the node's evidence must bind (with its current keys). Several
        may be open at once (the epoch keeper and an operator), each usable once."""
        self._node(node_id)
        nonce = os.urandom(32)
        open_ = self._nonces.setdefault(node_id, [])
        open_.append(nonce)
        del open_[:-MAX_OPEN_CHALLENGES]
        self._save([node_id])
        return nonce

    @guarded("registry")
    async def attest(self, node_id: str, evidence: bytes) -> dict:
        """Verify evidence against the nonce we issued, the node's keys and the policy.
        Valid -> the node may serve TEE requests until the epoch ends."""
        rec = self._node(node_id)
        return await self._admit_evidence(rec, evidence, rec.pubkey, rec.kem_pub)

    @guarded("registry")
    async def renew(self, node_id: str, pubkey: bytes, kem_pub: bytes, evidence: bytes) -> dict:
        """A new epoch: evidence for the node's next keys. Valid -> the keys switch and
        the attestation is extended in one step, so the node never leaves the TEE
        class; authentic evidence of a bad state (measurements, TCB, revoked) -> it
        leaves the class at once and keeps its old keys."""
        rec = self._node(node_id)
        if any(n.pubkey == pubkey for n in self.nodes.values()):
            raise DuplicateNode("another node already uses this public key")
        return await self._admit_evidence(rec, evidence, bytes(pubkey), bytes(kem_pub))

    async def _admit_evidence(self, rec: NodeRecord, evidence: bytes, pubkey: bytes, kem_pub: bytes) -> dict:
        from protocols import attestation

        if self.policy is None:
            raise NodeError("this network has no attestation policy")
        open_ = self._nonces.get(rec.node_id) or []
        if not open_:
            raise NodeError(f"no open challenge for {rec.node_id}")
        try:
            claimed = attestation.evidence_report(evidence)["nonce"]
        except attestation.AttestationError:
            claimed = None
        nonce = claimed if claimed in open_ else open_[-1]  # not one of ours: verify says wrong-nonce
        open_.remove(nonce)
        now = time.time()
        res = attestation.verify(evidence, attestation.ExpectedBinding(pubkey, kem_pub, nonce),
                                 self._policy_for(rec), self.trust_anchors, now, self._seen_nonces)
        if not res.ok and res.reason in attestation.UNAUTHENTIC_REASONS:  # anyone could send it: no change
            return {"ok": False, "reason": res.reason, "detail": res.detail, "digest": res.digest,
                    "simulated": res.simulated, "tcb_version": res.tcb_version, "device_id": res.device_id,
                    "at": now, "changed": False}
        self._save([rec.node_id], extra=[("seen_nonces", bytes(nonce).hex(), 1)])
        if res.ok:
            rec.pubkey, rec.kem_pub = pubkey, kem_pub
            rec.epoch += 1
        rec.attested = res.ok
        rec.attested_until = now + self.epoch_s if res.ok else 0.0
        rec.attestation = {"ok": res.ok, "reason": res.reason, "detail": res.detail, "digest": res.digest,
                           "simulated": res.simulated, "tcb_version": res.tcb_version,
                           "device_id": res.device_id, "at": now, "evidence": bytes(evidence) if res.ok else b""}
        await self._changed([rec.node_id])
        return {k: v for k, v in rec.attestation.items() if k != "evidence"}

    def due_for_renewal(self, within_s: float) -> list[str]:
        """Live nodes whose attestation ends within `within_s` (or that hold none)."""
        horizon = time.time() + float(within_s)
        return sorted(r.node_id for r in self.nodes.values() if r.live and r.attested_until <= horizon)

    def _policy_for(self, rec: NodeRecord):
        import dataclasses

        model = self.models[rec.model_id]  # measurements must name this node's registered model
        return dataclasses.replace(self.policy, model_hash=model.model_hash,
                                   allowed_engines=self.policy.allowed_engines or (model.engine,))

    @guarded("registry")
    async def revoke(self, tcb_versions: tuple = (), devices: tuple = ()) -> list[str]:
        """Revoke TCB versions / devices: affected nodes leave the TEE class at once."""
        import dataclasses

        self.policy = dataclasses.replace(
            self.policy, revoked_tcb_versions=tuple(self.policy.revoked_tcb_versions) + tuple(tcb_versions),
            revoked_devices=tuple(self.policy.revoked_devices) + tuple(devices))
        hit = []
        for rec in self.nodes.values():
            a = rec.attestation
            if rec.attested and (a.get("tcb_version") in self.policy.revoked_tcb_versions
                                 or a.get("device_id") in self.policy.revoked_devices):
                rec.attested, rec.attested_until = False, 0.0
                hit.append(rec.node_id)
        self._save(meta=True)
        await self._changed(hit)
        return hit

    @guarded("registry")
    def release_weights_key(self, node_id: str) -> bytes:
        """The model's weights key, sealed to the node's attested HPKE key; refused
        to any node without valid attestation right now."""
        from protocols import sealing

        rec = self._node(node_id)
        if rec.model_id not in self._weight_keys:
            raise NodeError(f"model {rec.model_id!r} has no encrypted weights")
        if not (rec.attested and rec.attested_until >= time.time()):
            raise NodeError(f"{node_id} has no valid attestation: weights key refused")
        return sealing.seal(rec.kem_pub, self._weight_keys[rec.model_id],
                            sealing.weights_key_info(rec.model_id, node_id))

    def attested_nodes(self, model_id: str) -> list[dict]:
        """Nodes a client may seal a TEE prompt to: key, evidence (the client re-verifies it)."""
        now = time.time()
        return [{"node_id": r.node_id, "kem_pub": r.kem_pub, "evidence": r.attestation["evidence"]}
                for r in self.nodes.values() if r.model_id == model_id and r.attested and r.attested_until >= now]

    def kem_keys(self, node_ids: list[str]) -> dict[str, bytes]:
        return {nid: self._node(nid).kem_pub for nid in node_ids}

    def views(self, model_id: str | None = None) -> tuple[int, list[NodeView], dict[str, bytes], dict]:
        """(version, selection views, node id -> public key, node id -> attestation) for the selector."""
        recs = [r for r in self.nodes.values() if model_id is None or r.model_id == model_id]
        att = {r.node_id: self._attestation_view(r) for r in recs if r.attested}
        return self.version, [r.view() for r in recs], {r.node_id: r.pubkey for r in recs}, att

    @guarded("registry")
    async def set_stakes(self, stakes: dict[str, int]) -> None:
        for nid, stake in stakes.items():
            if nid in self.nodes:
                self.nodes[nid].stake = int(stake)
        await self._changed([n for n in stakes if n in self.nodes])

    @guarded("registry")
    async def set_live(self, node_id: str, live: bool) -> None:
        self._node(node_id).live = bool(live)
        await self._changed([node_id])

    # --- liveness: a node taken out for lateness returns by answering a fresh challenge
    @guarded("registry")
    def liveness_challenge(self, node_id: str) -> bytes:
        self._node(node_id)
        self._liveness[node_id] = os.urandom(32)
        self._save([node_id])
        return self._liveness[node_id]

    @guarded("registry")
    async def answer_liveness(self, node_id: str, signature: bytes) -> bool:
        """True once the node is live again. A wrong or replayed answer changes nothing."""
        from protocols import liveness
        from protocols.errors import MessageError

        rec = self._node(node_id)
        nonce = self._liveness.get(node_id)
        if nonce is None:
            raise NodeError(f"no open liveness challenge for {node_id}")
        try:
            liveness.check(rec.pubkey, node_id, nonce, signature)
        except MessageError:
            return False
        del self._liveness[node_id]  # each challenge opens once
        self._save([node_id])
        if node_id in self.rejoining:  # fresh keys are proven by `rejoin`, not here
            return False
        if rec.live or not liveness.may_return(rec.stake, self.min_stake):
            return rec.live
        rec.live = True
        await self._changed([node_id])
        return True

    # --- a restarted executor: fresh keys, proven before it is drawn again
    async def rejoin(self, node_id: str) -> dict:
        """A restarted executor lost its keys. Take it out of every draw, ask the handle
        registered for it (not the caller) for its new keys, and let it back only once
        they are proven: attestation evidence binding them (attested networks; the
        model's weights key is released again), else a liveness answer under them.
        A call that fails (the node is still starting, or died again) is tried again a
        few times; a proof that fails is final until the next request to rejoin."""
        rec = self._node(node_id)
        if node_id in self.rejoining:
            return {"node_id": node_id, "rejoined": False, "reason": "already rejoining"}
        self.rejoining.add(node_id)
        try:
            for attempt in range(6):
                try:
                    got = await self._rejoin(rec)
                    break
                except Exception as exc:
                    got = {"node_id": node_id, "rejoined": False, "reason": f"{type(exc).__name__}: {exc}"[:300]}
                    await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt))
        finally:
            self.rejoining.discard(node_id)
        self.rejoin_results[node_id] = got
        return got

    async def _rejoin(self, rec: NodeRecord) -> dict:
        from protocols import liveness
        from protocols.errors import MessageError

        node_id = rec.node_id
        if rec.handle is None:
            rec.handle = _actor(rec.handle_name)
        keys = await rec.handle.public_keys.remote()
        if bytes(keys["pubkey"]) == rec.pubkey and bytes(keys["kem_pub"]) == rec.kem_pub:
            return {"node_id": node_id, "rejoined": rec.live, "reason": "its keys are the ones on record"}
        rec.live, rec.attested, rec.attested_until = False, False, 0.0  # out of every draw until proven
        await self._changed([node_id])
        info = await rec.handle.ready.remote()
        pub, kem_pub = bytes(info["pubkey"]), bytes(info["kem_pub"])
        if info["node_id"] != node_id or dict(info["fingerprint"]).get("model_hash") != \
                self.models[rec.model_id].model_hash:
            raise ModelHashMismatch(f"{node_id} came back with other weights")
        if any(n.pubkey == pub for n in self.nodes.values() if n.node_id != node_id):
            raise DuplicateNode("another node already uses this public key")
        if self.policy is not None:
            res = await self._admit_evidence(rec, await rec.handle.attest.remote(self._issue_challenge(node_id)),
                                             pub, kem_pub)
            if not res["ok"]:
                return {"node_id": node_id, "rejoined": False, "reason": res["reason"]}
            if rec.model_id in self._weight_keys:
                await Signed(rec.handle, self.gate, "executor", node_id).unlock.remote(_self_handle())
        else:
            nonce = os.urandom(32)
            try:
                liveness.check(pub, node_id, nonce, await rec.handle.answer_liveness.remote(nonce))
            except MessageError:
                return {"node_id": node_id, "rejoined": False, "reason": "the liveness answer is not "
                                                                           "signed by the new key"}
            rec.pubkey, rec.kem_pub = pub, kem_pub
            rec.epoch += 1
        rec.live = liveness.may_return(rec.stake, self.min_stake)
        await self._changed([node_id])
        return {"node_id": node_id, "rejoined": rec.live, "epoch": rec.epoch}


def _record_row(rec: NodeRecord) -> dict:
    d = asdict(rec)
    d.pop("handle")
    return d
