"""A compromised node: holding a Ray handle grants nothing (issue 17).

One node of a tiny network is run by an attacker (an executor of our own that keeps
every call that reaches it, with its signed envelope). A Ray task holding every
control-plane handle (ledger, registry, selector, aggregator shard, epoch keeper, and
another node's executor) then tries every state-changing method of the rights table
(protocols.authority.RIGHTS):

  * with no signature;
  * signed with its own node key, as itself;
  * signed with its own node key, claiming another node's identity;
  * with envelopes taken from real traffic: the aggregator's signed calls that reached
    the attacker's node, and an operator's call it saw go by, replayed as they are;
  * and Ray's `__ray_call__` back door on every actor.

Every attempt must be refused with a typed error, and balances, the ledger's chain
head, node records, models, rounds, the roster and every node's keys stay as they were.
"""

from __future__ import annotations

import os
import uuid

import pytest
import ray

from actors.executor import NodeExecutor
from protocols import authority as au
from protocols.errors import VerinferError
from tests.conftest import check_books, request_id_drawing, track

EVIL, VICTIM = "evil-01", "tiny-01"
EVIL_SEED = bytes(range(32))


class RecordingExecutor(NodeExecutor):
    """A node whose operator keeps every signed call that reaches it."""

    async def execute(self, *args, auth=None, **kwargs):
        self.__dict__.setdefault("traffic", []).append(("execute", args, kwargs, auth))
        return await NodeExecutor.execute(self, *args, auth=auth, **kwargs)

    async def reveal_many(self, *args, auth=None, **kwargs):
        self.__dict__.setdefault("traffic", []).append(("reveal_many", args, kwargs, auth))
        return await NodeExecutor.reveal_many(self, *args, auth=auth, **kwargs)

    def seen(self) -> list:
        return list(self.__dict__.get("traffic", []))


@pytest.fixture(scope="module")
def attacked(ray_cluster, tmp_path_factory):
    from cluster import config as cfgmod
    from cluster import control
    from cluster.network import actor_name, deploy, engine_spec, teardown

    cfg = cfgmod.load("tiny.toml")
    cfg.network.name = f"evil-{uuid.uuid4().hex[:6]}"
    cfg.malicious = {}
    cfg.models[0].options = {}  # (weights in the clear: the extra node needs no key release)
    cfg.nodes[0].count = 4
    cfg.nodes[0].cpus = 0.05
    net = track(deploy(cfg, ledger_path=str(tmp_path_factory.mktemp("evil") / "ledger.db"), debug_calls=False))
    agg_names = [actor_name(cfg, f"aggregator/{k}") for k in range(cfg.network.aggregator_shards)]
    spec = dict(control.spec(cfg.network.name, net.operator, "node", EVIL, None, None, False, net.roster),
                target=EVIL)
    handle = ray.remote(RecordingExecutor).options(name=actor_name(cfg, f"node/{EVIL}"), max_concurrency=64,
                                                   num_cpus=0.05).remote(
        EVIL, engine_spec(cfg.models[0], 1), "honest", agg_names, key_seed=EVIL_SEED, control=spec)
    info = ray.get(handle.ready.remote())
    econ = cfg.economics
    ray.get(net.ledger.deposit.remote(f"collateral/{EVIL}", econ.collateral, f"stake|{EVIL}"))
    ray.get(net.registry.admit.remote(EVIL, info["pubkey"], cfg.models[0].id, info["fingerprint"], econ.collateral,
                                      handle, kem_pub=info["kem_pub"], handle_name=actor_name(cfg, f"node/{EVIL}")))
    net.executors[EVIL] = control.signed(handle, net.operator, "executor", EVIL)
    yield net, handle
    teardown(net)


def _state(net) -> dict:
    nodes = ray.get(net.registry.list_nodes.remote())
    return {
        "balances": ray.get(net.ledger.balances.remote()),
        "head": ray.get(net.ledger.head.remote()),
        "nodes": {n["node_id"]: (n["stake"], n["live"], n["pubkey"], n["attested"]) for n in nodes},
        "models": ray.get(net.registry.list_models.remote()),
        "rounds": net.aggregator.totals(),
        "keys": {nid: ray.get(e.public_keys.remote()) for nid, e in net.executors.items()},
        "behaviour": {nid: ray.get(e.stats.remote())["behaviour"] for nid, e in net.executors.items()},
        "control": [ray.get(a.control_key.remote()) for a in
                    (net.ledger, net.registry, net.selector, net.epochs, *net.aggregator.handles)],
        "epochs": ray.get(net.epochs.status.remote())["running"],
    }


def _samples(request_raw: bytes) -> dict:
    """Arguments for every guarded method: plausible, aimed at other nodes where they name one."""
    from protocols.ledger import Settlement

    rid = messages_rid(request_raw)
    switches = {(kind, "switch_key"): ([], {}) for kind in ("ledger", "registry", "selector", "aggregator", "epochs")}
    return switches | {
        ("ledger", "submit"): ([[]], {}),
        ("ledger", "deposit"): (["collateral/" + EVIL, 10 ** 6, "mint"], {}),
        ("ledger", "withdraw"): (["collateral/" + VICTIM, 100000, "steal"], {}),
        ("ledger", "escrow"): (["r-evil", "someone", 1], {}),
        ("ledger", "escrow_many"): ([[("r-evil", "someone", 1)]], {}),
        ("ledger", "settle"): ([Settlement(rid, "x", 0)], {}),
        ("ledger", "settle_many"): ([[Settlement(rid, "x", 0)]], {}),
        ("ledger", "settle_members"): ([Settlement(rid, "x", 0), {}], {}),
        ("ledger", "bind_members"): ([rid, {}], {}),
        ("ledger", "rotate_key"): ([], {}),
        ("registry", "register_model"): (["evil-model", "0" * 64, "tiny"], {}),
        ("registry", "set_chat_template"): (["tiny", "{{ evil }}"], {}),
        ("registry", "admit"): (["evil-02", os.urandom(32), "tiny", {}, 10 ** 9], {}),
        ("registry", "remove"): ([VICTIM], {}),
        ("registry", "revoke"): ([(), (VICTIM,)], {}),
        ("registry", "set_stakes"): ([{VICTIM: 0, EVIL: 10 ** 9}], {}),
        ("registry", "set_live"): ([VICTIM, False], {}),
        ("registry", "subscribe"): ([None, "evil"], {}),
        ("registry", "challenge"): ([VICTIM], {}),
        ("registry", "attest"): ([VICTIM, b"evidence"], {}),
        ("registry", "renew"): ([VICTIM, os.urandom(32), os.urandom(32), b"evidence"], {}),
        ("registry", "release_weights_key"): ([VICTIM], {}),
        ("registry", "liveness_challenge"): ([VICTIM], {}),
        ("registry", "answer_liveness"): ([VICTIM, b"s" * 64], {}),
        ("registry", "rotate_key"): ([], {}),
        ("registry", "approve"): (["evil-02", os.urandom(32), "tiny", 10 ** 9], {}),
        ("registry", "join"): ([EVIL, os.urandom(32), {}], {}),
        ("selector", "draw"): (["r-evil", "tiny", 1], {}),
        ("selector", "draw_many"): ([[{"request_id": "r-evil", "model_id": "tiny", "n": 1}]], {}),
        ("selector", "draw_obfuscated"): (["r-evil", "tiny", 1, "quorum", "quorum", request_raw, "p"], {}),
        ("selector", "dispatch_tickets"): ([rid], {}),
        ("selector", "request_reveals"): ([rid, []], {}),
        ("selector", "reveal_coin"): ([rid], {}),
        ("selector", "unblind"): ([rid, []], {}),
        ("selector", "forget"): ([rid], {}),
        ("selector", "on_registry"): ([10 ** 9, [], {}], {}),
        ("selector", "on_registry_delta"): ([{"base": 0, "version": 10 ** 9, "views": [], "removed": [VICTIM],
                                              "keys": {}, "attestations": {}}], {}),
        ("selector", "bind"): ([None, None], {}),
        ("selector", "set_behaviour"): ([VICTIM, True], {}),
        ("selector", "vrf_secret"): ([], {}),
        ("selector", "rotate_key"): ([], {}),
        ("aggregator", "register_client"): ([os.urandom(32)], {}),
        ("aggregator", "obf_failure"): ([rid, "p"], {}),
        ("aggregator", "take_out"): ([VICTIM], {}),
        ("aggregator", "revive"): ([VICTIM], {}),
        ("aggregator", "rotate_key"): ([], {}),
        ("epochs", "start"): ([], {}),
        ("epochs", "stop"): ([], {}),
        ("epochs", "renew"): ([[VICTIM]], {}),
        ("epochs", "rotate_keys"): ([], {}),
        ("epochs", "rotate_key"): ([], {}),
        ("executor", "execute"): ([request_raw, "p", "quorum"], {}),
        ("executor", "reveal"): ([rid], {}),
        ("executor", "reveal_many"): ([[rid]], {}),
        ("executor", "execute_ticket"): ([b"t", request_raw, "p", os.urandom(32)], {}),
        ("executor", "reveal_ticket"): ([rid, "p"], {}),
        ("executor", "prepare_rotation"): ([os.urandom(32)], {}),
        ("executor", "commit_rotation"): ([], {}),
        ("executor", "abort_rotation"): ([], {}),
        ("executor", "unlock"): ([None], {}),
        ("executor", "set_behaviour"): (["silent"], {}),
        ("executor", "set_delay"): ([100.0], {}),
    }


def messages_rid(raw: bytes) -> str:
    from protocols import messages

    return messages.open_envelope(raw, "request").request_id


@ray.remote(num_cpus=0)
def attack(handles: dict, network: str, samples: dict, replays: list) -> list:
    """The compromised node's own process: every guarded method of every handle it holds."""
    import os
    import time

    from actors.authority import _class_of, _signature, signature_args
    from protocols import authority as au
    from protocols.crypto import SigningKey

    key = SigningKey(EVIL_SEED)
    out = []

    def signed(kind, name, method, args, kwargs, holder):
        target = name.split("/", 1)[1] if kind == "executor" else None
        bound = signature_args(_signature(_class_of(kind), method), tuple(args), kwargs)
        return au.Signer(key, au.NODE, holder, network).call(au.addressee(kind, target), method, bound,
                                                             time.time(), os.urandom(16))

    def attempt(kind, method, variant, handle, args, kwargs, auth):
        try:
            ray.get(getattr(handle, method).remote(*args, auth=auth, **kwargs), timeout=60)
            out.append((kind, method, variant, "ACCEPTED"))
        except Exception as exc:
            cause = getattr(exc, "cause", exc)
            out.append((kind, method, variant, type(cause).__name__, isinstance(cause, VerinferError)))

    for (kind, method), (args, kwargs) in samples.items():
        for name, handle in handles.items():
            if name.split("/")[0] != kind:
                continue
            attempt(kind, method, "unsigned", handle, args, kwargs, None)
            attempt(kind, method, "own-key", handle, args, kwargs, signed(kind, name, method, args, kwargs, EVIL))
            attempt(kind, method, "other-identity", handle, args, kwargs,
                    signed(kind, name, method, args, kwargs, VICTIM))
            for i, raw in enumerate(replays):
                attempt(kind, method, f"replay-{i}", handle, args, kwargs, raw)
    for name, handle in handles.items():  # Ray's back door
        try:
            ray.get(handle.__ray_call__.remote(lambda self: setattr(self, "pwned", True)), timeout=60)
            out.append((name, "__ray_call__", "debug", "ACCEPTED"))
        except Exception as exc:
            cause = getattr(exc, "cause", exc)
            out.append((name, "__ray_call__", "debug", type(cause).__name__, isinstance(cause, VerinferError)))
    return out


@ray.remote(num_cpus=0)
def replay_as_seen(handles: dict, calls: list) -> list:
    """The aggregator's signed calls that reached the attacker's node, sent again exactly as
    they were to the other node's executor (and the operator's call, to its own actor)."""
    out = []
    for name, method, args, kwargs, auth in calls:
        try:
            ray.get(getattr(handles[name], method).remote(*args, auth=auth, **kwargs), timeout=60)
            out.append((name, method, "ACCEPTED"))
        except Exception as exc:
            cause = getattr(exc, "cause", exc)
            out.append((name, method, type(cause).__name__, isinstance(cause, VerinferError)))
    return out


def test_a_compromised_node_is_refused_everything_and_changes_nothing(attacked):
    from actors.authority import bare

    net, evil = attacked
    client = net.client()
    for _ in range(2):  # real traffic: the attacker's node serves a few requests
        res = client.generate("hello there", n=3, max_tokens=4,
                              request_id=request_id_drawing(net, {EVIL}, 3)).result(timeout=120)
        assert res.status == "final"
    seen = ray.get(evil.seen.remote())
    assert seen and all(auth for *_, auth in seen)
    request_raw = next(args[0] for m, args, _, _ in seen if m == "execute")
    # an operator's call the attacker saw go by (a stake it would like back after a slash)
    stakes = ray.get(net.ledger.balances.remote("collateral/"))
    op_args = {"stakes": {VICTIM: stakes[f"collateral/{VICTIM}"]}}
    op_auth = net.operator.sign("registry", "set_stakes", op_args)
    ray.get(bare(net.registry).set_stakes.remote(op_args["stakes"], auth=op_auth))

    before = _state(net)
    handles = {"ledger": bare(net.ledger), "registry": bare(net.registry), "selector": bare(net.selector),
               "epochs": bare(net.epochs), "aggregator/0": bare(net.aggregator.handles[0]),
               f"executor/{VICTIM}": bare(net.executors[VICTIM])}
    captured = [auth for *_, auth in seen] + [op_auth]
    got = ray.get(attack.remote(handles, net.config.network.name, _samples(request_raw), captured))
    accepted = [g for g in got if g[3] == "ACCEPTED"]
    assert not accepted, accepted
    untyped = [g for g in got if not g[4]]
    assert not untyped, untyped
    # (UnknownNode: its own `join`, a right every node holds for itself, refused: it was never approved)
    assert {g[3] for g in got if g[1] != "__ray_call__"} <= {"Unauthorized", "ReplayedMessage", "StaleMessage",
                                                              "MalformedMessage", "BadSignature", "UnknownNode"}
    tried = {(g[0], g[1]) for g in got}
    assert {k for k in au.RIGHTS if k[0] != "endpoint"} <= tried  # every guarded actor method was tried
    # (the node endpoint is HTTP: tests/cluster/test_node_agent.py tries it the same ways)
    # replays exactly as seen: the aggregator's calls to the attacker, sent to another node;
    # the operator's stake reset, sent again after the fact
    as_seen = [(f"executor/{VICTIM}", m, a, k, auth) for m, a, k, auth in seen]
    as_seen.append(("registry", "set_stakes", (op_args["stakes"],), {}, op_auth))
    again = ray.get(replay_as_seen.remote(handles, as_seen))
    assert all(r[2] != "ACCEPTED" and r[3] for r in again), again
    assert again[-1][2] == "ReplayedMessage"
    assert all(r[2] == "Unauthorized" for r in again[:-1])  # addressed to the attacker's node, not this one
    assert _state(net) == before
    check_books(net)
