"""Deploy, find and remove a verinfer network on a Ray cluster.

`deploy(cfg)` registers the models by content hash, starts the control plane
(registry, selector, ledger, aggregator: num_cpus=0), starts one NodeExecutor
per configured node (placement from cluster.placement), funds each node's
collateral in the ledger and admits it. Actor names are "<name>/<role>" in the
config's namespace, so `connect` finds a network that `verinfer up` left running.
The operator's key (cluster.control) signs the roster every actor checks calls
against, and every call deploy makes.

Why over 400 lines: `deploy` is one ordered bring-up (stores, keys and roster,
control plane, models, executors, stake, admission, attestation, weights keys)
that fresh deploys and repairs share step by step; `connect`, `status` and
`teardown` find the same actors by the same names.
"""

from __future__ import annotations

import hashlib
import os
import time
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
from actors.authority import bare
from protocols.errors import ConfigError, VerinferError

from . import control, placement
from .config import NetworkConfig, ModelSection
from .shards import Aggregators

ROLES = ("ledger", "registry", "selector")  # plus aggregator/<k> for each shard


@dataclass
class Network:
    config: NetworkConfig
    registry: Any
    selector: Any
    ledger: Any
    aggregator: Any  # cluster.shards.Aggregators: every shard, used like one handle
    executors: dict[str, Any] = field(default_factory=dict)
    epochs: Any = None  # EpochKeeper, when the network attests its nodes
    placement_groups: list = field(default_factory=list)
    model_hashes: dict[str, str] = field(default_factory=dict)
    # the operator's signer: the handles above sign their guarded calls with it (None: a
    # network reached without the operator's key file, whose handles can only read)
    operator: Any = None
    gateway_seed: bytes | None = None  # the gateway's signing key (cluster.control.gateway_key)
    roster: bytes = b""  # the operator-signed roster of control-plane keys (protocols.authority)
    secret_path: str = ""  # the network's secret (the operator's key file lies beside it)

    def client(self, **kw):
        from .client import Client

        return Client(self, **kw)


def actor_name(cfg: NetworkConfig, role: str) -> str:
    return f"{cfg.network.name}/{role}"


def model_hash(model: ModelSection) -> str:
    """Content hash of a model's weights, computed where the deployer runs."""
    return engines.engine(model.engine).model_hash(model.id, dict(model.options))


def engine_spec(model: ModelSection, threads: int, sealed: dict | None = None, dtype: str = "") -> dict:
    spec = {"engine": model.engine, **{k: v for k, v in model.options.items() if k != "encrypted_weights"}}
    if engines.engine(model.engine).threads:
        spec["threads"] = threads
        if dtype:  # (another precision of the same weights: another class, the same tolerance group)
            spec["dtype"] = dtype
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


RESTARTABLE = {"max_restarts": -1, "max_task_retries": -1}  # control plane: at-least-once calls, idempotent
EXECUTOR_RESTARTS = {"max_restarts": -1, "max_task_retries": 0}  # a call a node died in counts as no answer


def state_paths(cfg: NetworkConfig, ledger_path: str) -> dict[str, str]:
    """Each control-plane actor's store, and the secret that seals them (a 0600 file
    outside the state directory: the store files alone disclose nothing)."""
    base = os.path.dirname(os.path.abspath(ledger_path))
    state = os.path.join(base, "state", cfg.network.name)
    paths = {"registry": os.path.join(state, "registry.sqlite"), "selector": os.path.join(state, "selector.sqlite"),
             "secret": os.path.join(base, "secrets", f"{cfg.network.name}.key")}
    for k in range(cfg.network.aggregator_shards):
        paths[f"aggregator/{k}"] = os.path.join(state, f"aggregator-{k}.sqlite")
    return paths


def _secret(path: str) -> bytes:
    return control.secret_file(path)


def _find(cfg: NetworkConfig, role: str, namespace: str | None):
    try:
        return ray.get_actor(actor_name(cfg, role), namespace=namespace) if namespace else \
            ray.get_actor(actor_name(cfg, role))
    except ValueError:
        return None


def _policy(cfg: NetworkConfig, secret: bytes):
    att = cfg.attestation
    if not att.enabled:
        return None, (), {}
    from actors.attestation import code_hash
    from protocols.attestation import Policy, SimulatedRoot

    policy = Policy(allowed_code_hashes=(code_hash(),), min_tcb_version=att.min_tcb_version,
                    max_age_s=att.max_age_s, allow_simulated=att.allow_simulated)
    if att.provider == "simulated":
        # (no seed configured: one derived from the network's secret, so a repair recreates the same root)
        seed = bytes.fromhex(att.root_seed) if att.root_seed else \
            hashlib.sha256(b"verinfer/simulated-root|" + secret).digest()
        return policy, (SimulatedRoot(seed).trust_anchor,), {"provider": "simulated", "root_seed": seed,
                                                           "tcb_version": att.tcb_version}
    from actors.attestation import fetch_nras_anchors

    return policy, tuple(fetch_nras_anchors()), {"provider": "nvidia"}


def deploy(cfg: NetworkConfig, detached: bool = False, log: Callable[[str], None] = lambda s: None,
           ledger_path: str | None = None, ready_timeout_s: float = 900.0, repair: bool = False,
           debug_calls: bool | None = None) -> Network:
    """Start the whole network from `cfg` on the connected Ray cluster.

    repair=True (`verinfer up` on a network that is partly there): keep every actor
    that still answers, recreate the missing ones from the durable state (ledger,
    registry, selector, journals), and bring missing executors back in with fresh keys.
    A fresh deploy starts the registry and selector empty; aggregator journals are
    always reopened, so rounds a previous network left open are refunded.

    Keys (cluster.control): the operator's key signs a roster of every control-plane
    actor's key, which each actor and executor is given; the returned Network's handles
    sign their guarded calls as the operator. debug_calls: allow Ray's `__ray_call__` on
    the network's actors (default: VERINFER_DEBUG_CALLS=1; tests only)."""
    if not ray.is_initialized():
        raise VerinferError("connect to a Ray cluster first (ray.init)")
    ns = {"namespace": cfg.network.namespace} if detached else {}
    life = {"lifetime": "detached"} if detached else {}
    find_ns = cfg.network.namespace if detached else None

    def opts(role: str, **extra) -> dict:
        return {"name": actor_name(cfg, role), **ns, **life, **placement.CONTROL_PLANE, **RESTARTABLE, **extra}

    def existing(role: str):
        return _find(cfg, role, find_ns) if repair else None

    hashes = {m.id: model_hash(m) for m in cfg.models}
    path = ledger_path or cfg.ledger_file()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    paths = state_paths(cfg, path)
    secret = _secret(paths["secret"])
    name = cfg.network.name
    operator = control.operator_key(paths["secret"], name)
    state_dir = os.path.dirname(paths["registry"])
    dbg = control.debug_calls_default() if debug_calls is None else bool(debug_calls)
    holders = ["ledger", "registry", "selector", "epochs"] + [f"aggregator/{k}" for k in
                                                              range(cfg.network.aggregator_shards)]
    if not repair:  # a new network: no node records, draws or rotated keys of an earlier one
        for f in [paths["registry"], paths["selector"]] + [control.store_path(state_dir, h) for h in holders]:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(f + suffix):
                    os.remove(f + suffix)

    def store(role: str) -> dict:
        return {"path": paths[role], "secret": secret}

    def ctl(role: str, holder: str) -> dict:
        return control.spec(name, operator, role, holder, secret, state_dir, dbg)

    att = cfg.attestation
    log(("reconnecting to" if repair else "starting") + f" the control plane: ledger, registry, selector, "
        f"{cfg.network.aggregator_shards} aggregator shard(s)" + (", attestation epochs" if att.enabled else "") + "…")
    policy, anchors, att_spec = _policy(cfg, secret)
    ledger = existing("ledger") or ray.remote(SlashingLedger).options(**opts("ledger")).remote(
        path, cfg.economics, control=ctl("ledger", "ledger"))
    registry = existing("registry") or ray.remote(ModelRegistry).options(**opts("registry")).remote(
        policy, anchors, att.epoch_s, cfg.economics.min_stake, store("registry"), control=ctl("registry", "registry"))
    selector = existing("selector") or ray.remote(ObfuscatingSelector).options(**opts("selector")).remote(
        registry, cfg.economics.min_stake, embargo_s=cfg.network.draw_embargo_s, store=store("selector"),
        control=ctl("selector", "selector"))
    agg_seed = hashlib.sha256(b"verinfer/aggregator-key|" + secret).digest()  # every shard signs as the network
    aggs = []
    for k in range(cfg.network.aggregator_shards):
        role = f"aggregator/{k}"
        aggs.append(existing(role) or ray.remote(Aggregator).options(**opts(role, max_concurrency=10000)).remote(
            registry, selector, ledger, cfg.economics, cfg.limits, key_seed=agg_seed, store=store(role), shard=k,
            control=ctl("aggregator", role)))
    agg_names = [actor_name(cfg, f"aggregator/{k}") for k in range(cfg.network.aggregator_shards)]
    epochs = existing("epochs")
    if att.enabled and epochs is None:  # (created now so its key is in the roster; started below)
        epochs = ray.remote(EpochKeeper).options(**opts("epochs")).remote(
            registry, att.epoch_s, att.renew_fraction, control=ctl("epochs", "epochs"),
            peers={"ledger": actor_name(cfg, "ledger"), "selector": actor_name(cfg, "selector"),
                   "aggregators": agg_names})
        start_epochs = True
    else:
        start_epochs = False
    plane = [ledger, registry, selector, *aggs] + ([epochs] if epochs is not None else [])
    roster = control.roster(operator, name, ray.get([a.control_key.remote() for a in plane]),
                            control.gateway_key(secret).public)
    ray.get([a.install_roster.remote(roster) for a in plane])
    ledger, registry, selector = (control.signed(ledger, operator, "ledger"),
                                  control.signed(registry, operator, "registry"),
                                  control.signed(selector, operator, "selector"))
    epochs = control.signed(epochs, operator, "epochs")
    aggs = [control.signed(a, operator, "aggregator") for a in aggs]
    ray.get([selector.bind.remote(aggs, ledger, {"aggregators": agg_names, "ledger": actor_name(cfg, "ledger")}),
             registry.subscribe.remote(selector, actor_name(cfg, "selector"))])
    known = {m["model_id"]: m for m in ray.get(registry.list_models.remote())}
    sealed_paths, keys = {}, {}
    for m in cfg.models:
        if m.options.get("encrypted_weights"):
            if not att.enabled:
                raise ConfigError(f"models[{m.id}]: encrypted weights need an [attestation] provider")
            sealed_paths[m.id] = os.path.join(os.path.dirname(os.path.abspath(path)), "weights",
                                              f"{cfg.network.name}-{m.id}.enc")
            if not (m.id in known and known[m.id]["model_hash"] == hashes[m.id] and os.path.exists(sealed_paths[m.id])):
                log(f"sealing the weights of {m.id} at rest (AES-256-GCM)"
                    + (": a first run on this machine dequantizes the GGUF first (~30 s)…" if m.engine == "smollm2"
                       else "…"))
                t_seal = time.time()
                keys[m.id] = encrypt_weights(m, sealed_paths[m.id])
                if time.time() - t_seal >= 1.0:
                    log(f"sealed the weights of {m.id} in {time.time() - t_seal:.1f}s")
    ray.get([registry.register_model.remote(m.id, hashes[m.id], m.engine, weights_key=keys.get(m.id),
                                                   timeout_s=m.timeout_s, timeout_per_token_s=m.timeout_per_token_s,
                                                   tolerance=m.group_tolerance())
             for m in cfg.models if not (m.id in known and known[m.id]["model_hash"] == hashes[m.id])])
    log(f"registered {len(cfg.models)} model(s): " + ", ".join(f"{k}={v[:12]}…" for k, v in hashes.items()))

    group_of = {nid: g for g in cfg.nodes for nid in g.node_ids()}
    executors = {nid: h for nid in group_of if (h := existing(f"node/{nid}")) is not None}
    ray.get([h.install_roster.remote(roster) for h in executors.values()])
    wanted = [g for g in cfg.nodes]
    placements, pgs = placement.plan(wanted, ray.available_resources().get("CPU", 0.0)) if \
        len(executors) < len(group_of) else ([], [])
    placements = [p for p in placements if p.node_id not in executors]
    if pgs:
        try:
            ray.get([pg.ready() for pg in pgs], timeout=60)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError("GPU node groups need one GPU per executor; the cluster cannot place them") from None
    new = {}
    for p in placements:
        g = group_of[p.node_id]
        new[p.node_id] = ray.remote(NodeExecutor).options(
            name=actor_name(cfg, f"node/{p.node_id}"), max_concurrency=64, **ns, **life, **EXECUTOR_RESTARTS,
            **p.options,
        ).remote(p.node_id, engine_spec(cfg.model(g.model), g.threads, sealed_paths, g.dtype),
                 cfg.malicious.get(p.node_id, "honest"), agg_names, cfg.network.namespace if detached else None,
                 attestation=att_spec, registry_name=actor_name(cfg, "registry"),
                 control=dict(control.spec(name, operator, "node", p.node_id, None, None, dbg, roster),
                              target=p.node_id))
    executors.update(new)
    executors = {nid: control.signed(h, operator, "executor", nid) for nid, h in executors.items()}
    if new:
        slow = sorted({cfg.model(group_of[n].model).engine for n in new} & {"smollm2", "vllm"})
        log(f"starting {len(new)} node executor(s); each loads its engine"
            + (f" ({', '.join(slow)}: a first start on a machine converts or loads the model, which takes a while)"
               if slow else "") + "…")
    refs = {e.ready.remote(): nid for nid, e in new.items()}
    done, pending = _wait_ready(list(refs), ready_timeout_s, log)
    if refs and not pending:
        log(f"{len(done)} node executor(s) ready")
    if pending:
        for h in list(new.values()) + ([] if repair else aggs + [selector, registry, ledger]):
            ray.kill(bare(h), no_restart=True)
        raise VerinferError(f"executors not ready after {ready_timeout_s:.0f}s: "
                            + ", ".join(sorted(refs[r] for r in pending)))
    infos = ray.get(list(refs))
    registered = {n["node_id"] for n in ray.get(registry.list_nodes.remote())}
    rejoin = [i["node_id"] for i in infos if i["node_id"] in registered]  # a node record, but a new process
    infos = [i for i in infos if i["node_id"] not in registered]

    from collections import Counter

    for m in cfg.models:  # the chat template clients render chats with: what most of its nodes report
        got = Counter(i.get("chat_template") for i in infos if group_of[i["node_id"]].model == m.id)
        if got and got.most_common(1)[0][0]:
            ray.get(registry.set_chat_template.remote(m.id, got.most_common(1)[0][0]))
    econ = cfg.economics
    if infos:
        log(f"depositing the collateral of {len(infos)} node(s) and admitting them to the registry…")
    ray.get([ledger.deposit.remote(f"collateral/{i['node_id']}", econ.collateral, f"stake|{i['node_id']}")
             for i in infos])
    stakes = ray.get(ledger.balances.remote("collateral/"))
    ray.get([registry.admit.remote(i["node_id"], i["pubkey"], group_of[i["node_id"]].model, i["fingerprint"],
                                   stakes.get(f"collateral/{i['node_id']}", 0), executors[i["node_id"]],
                                   kem_pub=i["kem_pub"], handle_name=actor_name(cfg, f"node/{i['node_id']}"))
             for i in infos])
    if rejoin:
        back = ray.get([registry.rejoin.remote(n) for n in rejoin])
        log(f"{sum(1 for b in back if b.get('rejoined'))}/{len(rejoin)} recreated node(s) rejoined with fresh keys")
    if att.enabled and infos:
        log(f"attesting {len(infos)} node(s): fresh nonce, evidence, verification…")
        attest_all(registry, executors, [i["node_id"] for i in infos])
        n_ok = sum(1 for n in ray.get(registry.list_nodes.remote()) if n["attested"])
        log(f"attested {n_ok}/{len(infos) + len(rejoin)} node(s) ({att.provider}"
            + (", SIMULATED root of trust: not a real TEE)" if att.provider == "simulated" else ")"))
    if start_epochs:
        ray.get(epochs.start.remote())
        log(f"attestation epochs of {att.epoch_s:g}s: keys rotate and nodes re-attest at "
            f"{att.renew_fraction:.0%} of each epoch")
    locked = [i["node_id"] for i in infos if group_of[i["node_id"]].model in sealed_paths]
    if locked:  # weights keys go only to attested executors; the others stay out of service
        log(f"releasing the weights key to {len(locked)} attested node(s); each decrypts and loads the weights…")
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
    if infos:
        log(f"admitted {len(infos)} node(s) in {len(classes)} determinism class(es): {', '.join(classes)}")
    ray.get([a.health.remote() for a in aggs])  # every shard has finished recovering its journal
    return Network(cfg, registry, selector, ledger, Aggregators(aggs, agg_names), executors, epochs, pgs, hashes,
                   operator, control.gateway_key(secret).seed, roster, paths["secret"])


def _wait_ready(refs: list, timeout_s: float, log: Callable[[str], None]) -> tuple[list, list]:
    """ray.wait for every executor's ready(), logging how many are up every ~10 s (progress only)."""
    done: list = []
    pending, t0, said = list(refs), time.time(), time.time()
    while pending and time.time() - t0 < timeout_s:
        got, pending = ray.wait(pending, num_returns=len(pending), timeout=min(10.0, timeout_s - (time.time() - t0)))
        done += got
        if pending and time.time() - said >= 9.5:
            log(f"{len(done)}/{len(refs)} node executor(s) ready after {time.time() - t0:.0f}s…")
            said = time.time()
    return done, pending


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
                            f"(namespace {ns!r}); run `verinfer up` first (it repairs a network that is "
                            f"partly there)") from None
    names = [actor_name(cfg, f"aggregator/{k}") for k in range(cfg.network.aggregator_shards)]
    aggs = [h for h in (_find(cfg, f"aggregator/{k}", ns) for k in range(len(names))) if h is not None]
    if len(aggs) != len(names):
        raise VerinferError(f"network {cfg.network.name!r} is missing aggregator shards; run `verinfer up` "
                            "to repair it")
    executors = {nid: h for g in cfg.nodes for nid in g.node_ids()
                 if (h := _find(cfg, f"node/{nid}", ns)) is not None}
    epochs = _find(cfg, "epochs", ns)  # a network without attestation has no epochs
    models = ray.get(handles["registry"].list_models.remote())
    op = operator_of(cfg)
    sign = control.signed
    return Network(cfg, sign(handles["registry"], op, "registry"), sign(handles["selector"], op, "selector"),
                   sign(handles["ledger"], op, "ledger"), Aggregators([sign(a, op, "aggregator") for a in aggs], names),
                   {n: sign(h, op, "executor", n) for n, h in executors.items()}, sign(epochs, op, "epochs"), [],
                   {m["model_id"]: m["model_hash"] for m in models}, op, gateway_seed_of(cfg),
                   ray.get(handles["registry"].roster.remote()), state_paths(cfg, cfg.ledger_file())["secret"])


def gateway_seed_of(cfg: NetworkConfig, ledger_path: str | None = None) -> bytes | None:
    """The gateway's key seed, where the network's secret is on this machine."""
    secret_path = state_paths(cfg, ledger_path or cfg.ledger_file())["secret"]
    if not os.path.exists(secret_path):
        return None
    return control.gateway_key(_secret(secret_path)).seed


def operator_of(cfg: NetworkConfig, ledger_path: str | None = None):
    """The operator's signer, where its key file is on this machine (else None: read-only)."""
    secret_path = state_paths(cfg, ledger_path or cfg.ledger_file())["secret"]
    if not os.path.exists(control.operator_path(secret_path)):
        return None
    return control.operator_key(secret_path, cfg.network.name)


def all_roles(cfg: NetworkConfig) -> list[str]:
    return (list(ROLES) + [f"aggregator/{k}" for k in range(cfg.network.aggregator_shards)] + ["epochs"]
            + [f"node/{nid}" for g in cfg.nodes for nid in g.node_ids()])


def status(cfg: NetworkConfig, namespace: str | None, timeout_s: float = 10.0) -> dict:
    """Every actor's health, the nodes (live / dead / attested), open rounds and escrow held."""
    actors = {}
    found = {role: _find(cfg, role, namespace) for role in all_roles(cfg)}
    pings = {}
    for role, h in found.items():
        if h is None:
            actors[role] = "missing"
            continue
        method = "health" if role.startswith("aggregator/") else "__ray_ready__"
        pings[role] = getattr(h, method).remote()
    shards = {}
    for role, ref in pings.items():
        try:
            got = ray.get(ref, timeout=timeout_s)
            actors[role] = "ok"
            if role.startswith("aggregator/"):
                shards[role] = got
        except ray.exceptions.GetTimeoutError:
            actors[role] = "unresponsive"
        except Exception as exc:
            actors[role] = f"dead ({type(exc).__name__})"
    nodes, escrow = [], None
    if actors.get("registry") == "ok":
        nodes = ray.get(found["registry"].list_nodes.remote(), timeout=timeout_s)
    if actors.get("ledger") == "ok":
        escrow = sum(ray.get(found["ledger"].balances.remote("escrow/"), timeout=timeout_s).values())
    if actors.get("epochs") == "missing" and not cfg.attestation.enabled:
        actors.pop("epochs")
    return {"network": cfg.network.name, "actors": actors,
            "nodes": {"total": len(nodes), "live": sum(1 for n in nodes if n["live"]),
                      "dead": sum(1 for n in nodes if not n["live"]),
                      "attested": sum(1 for n in nodes if n["attested"]),
                      "rejoining": sum(1 for n in nodes if n.get("rejoining"))},
            "open_rounds": sum(s["open"] for s in shards.values()),
            "escrow_held": escrow, "shards": shards,
            "healthy": all(v == "ok" for v in actors.values())}


def teardown(net: Network | None = None, cfg: NetworkConfig | None = None, namespace: str | None = None) -> list[str]:
    """Remove a network's actors: those `net` holds, and (given cfg) any other actor of it still
    registered by name, even after crashes. Returns the roles removed."""
    handles = []
    if net is not None:
        aggs = list(net.aggregator.handles) if isinstance(net.aggregator, Aggregators) else [net.aggregator]
        handles = [bare(h) for h in list(net.executors.values()) + [net.epochs] + aggs
                   + [net.selector, net.registry, net.ledger]]
        try:  # nodes that joined from outside: their stand-ins (actors.remote_node)
            handles += [h for n, h in ray.get(bare(net.registry).handles.remote(), timeout=10).items()
                        if n not in net.executors]
        except Exception:
            pass
    removed = []
    if cfg is not None:
        for role in all_roles(cfg):
            h = _find(cfg, role, namespace)
            if h is not None:
                handles.append(h)
                removed.append(role)
    for h in handles:
        if h is None:
            continue
        try:
            ray.kill(h, no_restart=True)
        except Exception:
            pass
    if net is not None:
        from ray.util.placement_group import remove_placement_group

        for pg in net.placement_groups:
            remove_placement_group(pg)
    return removed
