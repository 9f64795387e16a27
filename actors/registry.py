"""ModelRegistry: which models exist and which nodes may serve them.

Holds model records (id, weights content hash, engine, limits) and node records
(keys, determinism class, stake, liveness, executor handle). Admission checks
that a node's determinism fingerprint names the registered model hash, so a
node loaded with other weights is refused before it is ever selected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from protocols.determinism import class_id
from protocols.errors import DuplicateNode, ModelHashMismatch, UnknownModel, UnknownNode
from protocols.selection import NodeView


@dataclass
class ModelRecord:
    model_id: str
    model_hash: str
    engine: str
    max_prompt_tokens: int = 1024


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
    kem_pub: bytes = b""  # HPKE public key: tickets and sealed prompts are sealed to it

    def view(self) -> NodeView:
        return NodeView(self.node_id, self.model_id, self.det_class, self.stake, self.live, self.attested)


class ModelRegistry:
    def __init__(self) -> None:
        self.models: dict[str, ModelRecord] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.version = 0  # bumps on every change; subscribers get each new view pushed
        self._subscribers: list = []

    def subscribe(self, actor: Any) -> None:
        """`actor.on_registry(version, views, keys)` is called after every change."""
        self._subscribers.append(actor)
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        if self._subscribers:  # synchronous: once a change returns, every draw sees it
            import ray

            snapshot = self.views(None)
            ray.get([sub.on_registry.remote(*snapshot) for sub in self._subscribers])

    # --- models
    def register_model(self, model_id: str, model_hash: str, engine: str, max_prompt_tokens: int = 1024) -> dict:
        if not model_id or len(model_hash) != 64:
            raise ValueError("a model needs an id and a hex SHA-256 content hash")
        old = self.models.get(model_id)
        if old is not None and old.model_hash != model_hash:
            raise ModelHashMismatch(f"model {model_id!r} is registered with another hash")
        self.models[model_id] = ModelRecord(model_id, model_hash, engine, max_prompt_tokens)
        self._changed()
        return asdict(self.models[model_id])

    def model(self, model_id: str) -> dict:
        if model_id not in self.models:
            raise UnknownModel(f"model {model_id!r} is not registered")
        return asdict(self.models[model_id])

    def list_models(self) -> list[dict]:
        return [asdict(m) for m in self.models.values()]

    # --- nodes
    def admit(self, node_id: str, pubkey: bytes, model_id: str, fingerprint: dict, stake: int,
              handle: Any = None, attested: bool = False, kem_pub: bytes = b"") -> dict:
        if node_id in self.nodes:
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
                         True, attested, handle, bytes(kem_pub))
        self.nodes[node_id] = rec
        self._changed()
        return self.describe(node_id)

    def remove(self, node_id: str) -> None:
        self._node(node_id)
        del self.nodes[node_id]
        self._changed()

    def _node(self, node_id: str) -> NodeRecord:
        rec = self.nodes.get(node_id)
        if rec is None:
            raise UnknownNode(f"node {node_id!r} is not registered")
        return rec

    def describe(self, node_id: str) -> dict:
        rec = self._node(node_id)
        d = asdict(rec)
        d.pop("handle")
        return d

    def list_nodes(self) -> list[dict]:
        return [self.describe(n) for n in sorted(self.nodes)]

    def handles(self, node_ids: list[str] | None = None) -> dict[str, Any]:
        ids = node_ids if node_ids is not None else list(self.nodes)
        return {nid: self._node(nid).handle for nid in ids}

    def kem_keys(self, node_ids: list[str]) -> dict[str, bytes]:
        return {nid: self._node(nid).kem_pub for nid in node_ids}

    def views(self, model_id: str | None = None) -> tuple[int, list[NodeView], dict[str, bytes]]:
        """(version, selection views, node id -> public key) for the selector."""
        recs = [r for r in self.nodes.values() if model_id is None or r.model_id == model_id]
        return self.version, [r.view() for r in recs], {r.node_id: r.pubkey for r in recs}

    def set_stakes(self, stakes: dict[str, int]) -> None:
        for nid, stake in stakes.items():
            if nid in self.nodes:
                self.nodes[nid].stake = int(stake)
        self._changed()

    def set_live(self, node_id: str, live: bool) -> None:
        self._node(node_id).live = bool(live)
        self._changed()
