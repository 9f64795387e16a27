"""Deploy, find and remove a verinfer network on a Ray cluster.

`deploy(cfg)` registers the models by content hash, starts the control plane
(registry, selector, ledger, aggregator: num_cpus=0), starts one NodeExecutor
per configured node (placement from cluster.placement), funds each node's
collateral in the ledger and admits it. Actor names are "<name>/<role>" in the
config's namespace, so `connect` finds a network that `verinfer up` left running.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import ray

from actors import engines
from actors.aggregator import Aggregator
from actors.epochs import EpochKeeper
from actors.executor import NodeExecutor
from actors.ledger import SlashingLedger
from actors.registry import ModelRegistry
from actors.selector import ObfuscatingSelector
from protocols.errors import ConfigError, VerinferError

from . import placement
from .config import NetworkConfig, ModelSection

ROLES = ("ledger", "registry", "selector", "aggregator")


@dataclass
class Network:
    config: NetworkConfig
    registry: Any
    selector: Any
    ledger: Any
    aggregator: Any
    executors: dict[str, Any] = field(default_factory=dict)
    epochs: Any = None  # EpochKeeper, when the network attests its nodes
    placement_groups: list = field(default_factory=list)
    model_hashes: dict[str, str] = field(default_factory=dict)

    def client(self, **kw):
        from .client import Client

        return Client(self, **kw)


def actor_name(cfg: NetworkConfig, role: str) -> str:
    return f"{cfg.network.name}/{role}"


def model_hash(model: ModelSection) -> str:
    """Content hash of a model's weights, computed where the deployer runs."""
    return engines.engine(model.engine).model_hash(model.id, dict(model.options))


def engine_spec(model: ModelSection, threads: int, sealed: dict | None = None) -> dict:
    spec = {"engine": model.engine, **{k: v for k, v in model.options.items() if k != "encrypted_weights"}}
    if engines.engine(model.engine).threads:
        spec["threads"] = threads
    if sealed and model.id in sealed:  # weights at rest: the node gets only the ciphertext
        spec.update(encrypted_path=sealed[model.id], expected_hash=model_hash(model), model_id=model.id)
    return spec


def encrypt_weights(model: ModelSection, path: str) -> bytes:
    """Seal the model's weights (AES-256-GCM, fresh key) at `path`; return the key
    (how, per engine: actors.engines.ENGINES)."""
    seal = engines.engine(model.engine).seal_weights
    if seal is None:
        supported = sorted(n for n, e in engines.ENGINES.items() if e.seal_weights)
        raise ConfigError(f"models[{model.id}]: encrypted_weights is supported for the {' and '.join(supported)} "
                          "engines")
    return seal(model.id, dict(model.options), path, model_hash(model))


def deploy(cfg: NetworkConfig, detached: bool = False, log: Callable[[str], None] = lambda s: None,
           ledger_path: str | None = None, ready_timeout_s: float = 900.0) -> Network:
    """Start the whole network from `cfg` on the connected Ray cluster."""
    if not ray.is_initialized():
        raise VerinferError("connect to a Ray cluster first (ray.init)")
    ns = {"namespace": cfg.network.namespace} if detached else {}
    life = {"lifetime": "detached"} if detached else {}

    def opts(role: str, **extra) -> dict:
        return {"name": actor_name(cfg, role), **ns, **life, **placement.CONTROL_PLANE, **extra}

    hashes = {m.id: model_hash(m) for m in cfg.models}
    path = ledger_path or cfg.ledger_file()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    att = cfg.attestation
    policy, anchors, att_spec, epochs = None, (), {}, None
    if att.enabled:
        from actors.attestation import code_hash
        from protocols.attestation import Policy, SimulatedRoot

        policy = Policy(allowed_code_hashes=(code_hash(),), min_tcb_version=att.min_tcb_version,
                        max_age_s=att.max_age_s, allow_simulated=att.allow_simulated)
        if att.provider == "simulated":
            seed = bytes.fromhex(att.root_seed) if att.root_seed else os.urandom(32)
            anchors = (SimulatedRoot(seed).trust_anchor,)
            att_spec = {"provider": "simulated", "root_seed": seed, "tcb_version": att.tcb_version}
        else:
            from actors.attestation import fetch_nras_anchors

            anchors = tuple(fetch_nras_anchors())
            att_spec = {"provider": "nvidia"}
    ledger = ray.remote(SlashingLedger).options(**opts("ledger", max_restarts=-1, max_task_retries=-1)).remote(path, cfg.economics)
    registry = ray.remote(ModelRegistry).options(**opts("registry")).remote(policy, anchors, att.epoch_s,
                                                                     cfg.economics.min_stake)
    selector = ray.remote(ObfuscatingSelector).options(**opts("selector")).remote(
        registry, cfg.economics.min_stake, embargo_s=cfg.network.draw_embargo_s)
    aggregator = ray.remote(Aggregator).options(**opts("aggregator", max_concurrency=10000)).remote(
        registry, selector, ledger, cfg.economics, cfg.limits)
    ray.get([selector.bind.remote(aggregator, ledger), registry.subscribe.remote(selector)])
    sealed_paths, keys = {}, {}
    for m in cfg.models:
        if m.options.get("encrypted_weights"):
            if not att.enabled:
                raise ConfigError(f"models[{m.id}]: encrypted weights need an [attestation] provider")
            sealed_paths[m.id] = os.path.join(os.path.dirname(os.path.abspath(path)), "weights",
                                              f"{cfg.network.name}-{m.id}.enc")
            keys[m.id] = encrypt_weights(m, sealed_paths[m.id])
    ray.get([registry.register_model.remote(m.id, hashes[m.id], m.engine, weights_key=keys.get(m.id),
                                                   timeout_s=m.timeout_s, timeout_per_token_s=m.timeout_per_token_s)
             for m in cfg.models])
    log(f"registered {len(cfg.models)} model(s): " + ", ".join(f"{k}={v[:12]}…" for k, v in hashes.items()))

    placements, pgs = placement.plan(cfg.nodes, ray.available_resources().get("CPU", 0.0))
    if pgs:
        try:
            ray.get([pg.ready() for pg in pgs], timeout=60)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError("GPU node groups need one GPU per executor; the cluster cannot place them") from None
    group_of = {nid: g for g in cfg.nodes for nid in g.node_ids()}
    executors = {}
    for p in placements:
        g = group_of[p.node_id]
        executors[p.node_id] = ray.remote(NodeExecutor).options(
            name=actor_name(cfg, f"node/{p.node_id}"), max_concurrency=64, **ns, **life, **p.options,
        ).remote(p.node_id, engine_spec(cfg.model(g.model), g.threads, sealed_paths),
                 cfg.malicious.get(p.node_id, "honest"),
                 actor_name(cfg, "aggregator"), cfg.network.namespace if detached else None,
                 attestation=att_spec)
    log(f"starting {len(executors)} node executor(s)…")
    refs = {e.ready.remote(): nid for nid, e in executors.items()}
    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=ready_timeout_s)
    if pending:
        for h in list(executors.values()) + [aggregator, selector, registry, ledger]:
            ray.kill(h)
        raise VerinferError(f"executors not ready after {ready_timeout_s:.0f}s: "
                            + ", ".join(sorted(refs[r] for r in pending)))
    infos = ray.get(list(refs))

    from collections import Counter

    for m in cfg.models:  # the chat template clients render chats with: what most of its nodes report
        got = Counter(i.get("chat_template") for i in infos if group_of[i["node_id"]].model == m.id)
        if got and got.most_common(1)[0][0]:
            ray.get(registry.set_chat_template.remote(m.id, got.most_common(1)[0][0]))
    econ = cfg.economics
    ray.get([ledger.deposit.remote(f"collateral/{i['node_id']}", econ.collateral, f"stake|{i['node_id']}")
             for i in infos])
    stakes = ray.get(ledger.balances.remote("collateral/"))
    ray.get([registry.admit.remote(i["node_id"], i["pubkey"], group_of[i["node_id"]].model, i["fingerprint"],
                                   stakes.get(f"collateral/{i['node_id']}", 0), executors[i["node_id"]],
                                   kem_pub=i["kem_pub"])
             for i in infos])
    if att.enabled:
        attest_all(registry, executors, [i["node_id"] for i in infos])
        n_ok = sum(1 for n in ray.get(registry.list_nodes.remote()) if n["attested"])
        log(f"attested {n_ok}/{len(infos)} node(s) ({att.provider}"
            + (", SIMULATED root of trust: not a real TEE)" if att.provider == "simulated" else ")"))
        epochs = ray.remote(EpochKeeper).options(**opts("epochs")).remote(registry, att.epoch_s, att.renew_fraction)
        ray.get(epochs.start.remote())
        log(f"attestation epochs of {att.epoch_s:g}s: keys rotate and nodes re-attest at "
            f"{att.renew_fraction:.0%} of each epoch")
    locked = [i["node_id"] for i in infos if group_of[i["node_id"]].model in sealed_paths]
    if locked:  # weights keys go only to attested executors; the others stay out of service
        refs = [executors[n].unlock.remote(registry) for n in locked]
        failed: dict[str, str] = {}
        for nid, ref in zip(locked, refs):
            for attempt in range(2):  # once more after a failure: a slow start is not a refusal
                try:
                    ray.get(ref)
                    failed.pop(nid, None)
                    break
                except Exception as exc:
                    failed[nid] = f"{type(exc).__name__}: {str(exc).splitlines()[-1][:200] if str(exc) else ''}"
                    if attempt == 0:
                        ref = executors[nid].unlock.remote(registry)
        for nid in failed:
            ray.get(registry.set_live.remote(nid, False))
        log(f"released encrypted weights to {len(locked) - len(failed)}/{len(locked)} attested node(s)"
            + (f"; refused: {', '.join(failed)}" if failed else ""))
        if failed and len(failed) == len(locked):
            raise VerinferError("no node could load the encrypted weights: "
                                + "; ".join(f"{n}: {why}" for n, why in sorted(failed.items())))
    classes = sorted({i["det_class"] for i in infos})
    log(f"admitted {len(infos)} node(s) in {len(classes)} determinism class(es): {', '.join(classes)}")
    return Network(cfg, registry, selector, ledger, aggregator, executors, epochs, pgs, hashes)


def attest_all(registry, executors: dict, node_ids: list[str]) -> list[dict]:
    """Attest nodes under their current keys: challenge, evidence, verify."""
    nonces = ray.get([registry.challenge.remote(n) for n in node_ids])
    evidence = ray.get([executors[n].attest.remote(nonce) for n, nonce in zip(node_ids, nonces)])
    return ray.get([registry.attest.remote(n, e) for n, e in zip(node_ids, evidence)])


def connect(cfg: NetworkConfig) -> Network:
    """Find a network deployed with `detached=True` (by `verinfer up`)."""
    ns = cfg.network.namespace
    try:
        handles = {r: ray.get_actor(actor_name(cfg, r), namespace=ns) for r in ROLES}
    except ValueError:
        raise VerinferError(f"no verinfer network {cfg.network.name!r} on this Ray cluster "
                            f"(namespace {ns!r}); run `verinfer up` first") from None
    executors = {}
    for g in cfg.nodes:
        for nid in g.node_ids():
            try:
                executors[nid] = ray.get_actor(actor_name(cfg, f"node/{nid}"), namespace=ns)
            except ValueError:
                pass
    try:
        epochs = ray.get_actor(actor_name(cfg, "epochs"), namespace=ns)
    except ValueError:  # a network without attestation has no epochs
        epochs = None
    models = ray.get(handles["registry"].list_models.remote())
    return Network(cfg, handles["registry"], handles["selector"], handles["ledger"], handles["aggregator"],
                   executors, epochs, [], {m["model_id"]: m["model_hash"] for m in models})


def teardown(net: Network) -> None:
    for h in list(net.executors.values()) + [net.epochs, net.aggregator, net.selector, net.registry, net.ledger]:
        if h is None:
            continue
        try:
            ray.kill(h, no_restart=True)
        except Exception:
            pass
    from ray.util.placement_group import remove_placement_group

    for pg in net.placement_groups:
        remove_placement_group(pg)
