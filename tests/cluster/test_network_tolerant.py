"""Tolerance groups end to end: a tiny-engine network of float32 and bfloat16 nodes.

The two precisions are two determinism classes but one tolerance group (the model
has a calibrated tolerant check in tiny.toml), so plaintext rounds draw across
both. The prompts below make the two precisions pick different greedy tokens
(near-ties flipped by bfloat16 rounding), so a mixed quorum disagrees and its
referees' tolerant checks decide: nobody honest may be slashed, while a node that
runs another model, requantized weights, random tokens or a truncated output
still is.
"""

from __future__ import annotations

import uuid

import pytest
import ray

from protocols import determinism, messages, receipts
from protocols.errors import ReceiptInvalid
from tests.conftest import check_books, request_id_drawing, track

FP32 = [f"fp-{i:02d}" for i in range(4)]
BF16 = [f"bf-{i:02d}" for i in range(4)]
DIVERGE = ["why cat node", "quick quick", "blue node cat blue river blue blue"]  # fp32 and bf16 differ


@pytest.fixture(scope="module")
def mixed(ray_cluster, tmp_path_factory):
    from cluster import config as cfgmod
    from cluster.network import deploy, teardown

    cfg = cfgmod.load("tiny.toml")
    cfg.network.name = f"mixed-{uuid.uuid4().hex[:6]}"
    cfg.malicious = {}
    base = cfg.nodes[0]
    cfg.nodes = [cfgmod.NodeGroup(model=base.model, count=4, prefix="fp", cpus=0.05),
                 cfgmod.NodeGroup(model=base.model, count=4, prefix="bf", dtype="bfloat16", cpus=0.05)]
    cfg.limits.timeout_s = 8.0
    cfg.limits.reveal_timeout_s = 8.0
    net = track(deploy(cfg, ledger_path=str(tmp_path_factory.mktemp("mixed") / "ledger.db")))
    yield net
    teardown(net)


@pytest.fixture(scope="module")
def client(mixed):
    return mixed.client()


@pytest.fixture
def behave(mixed):
    changed = []

    def set_(node_id, behaviour):
        ray.get(mixed.executors[node_id].set_behaviour.remote(behaviour))
        changed.append(node_id)

    yield set_
    ray.get([mixed.executors[n].set_behaviour.remote("honest") for n in changed])
    econ = mixed.config.economics
    for n in changed:
        bal = collateral(mixed, n)
        if bal < econ.collateral:
            ray.get(mixed.ledger.deposit.remote(f"collateral/{n}", econ.collateral - bal, f"restake|{n}|{bal}|{uuid.uuid4().hex}"))
    stakes = ray.get(mixed.ledger.balances.remote("collateral/"))
    ray.get(mixed.registry.set_stakes.remote({k.split("/", 1)[1]: v for k, v in stakes.items()}))
    ray.get([mixed.registry.set_live.remote(n, True) for n in changed])


def collateral(net, node_id):
    return ray.get(net.ledger.balances.remote(f"collateral/{node_id}")).get(f"collateral/{node_id}", 0)


def _body(receipt: bytes) -> dict:
    return messages.open_envelope(receipt, "receipt").body


def test_precisions_are_two_classes_but_one_tolerance_group(mixed):
    nodes = ray.get(mixed.registry.list_nodes.remote())
    classes = {n["node_id"]: n["det_class"] for n in nodes}
    assert len({classes[n] for n in FP32}) == 1 and len({classes[n] for n in BF16}) == 1
    assert classes[FP32[0]] != classes[BF16[0]]  # bit-exact matching would never put them together
    groups = {n["group"] for n in nodes}
    assert len(groups) == 1 and determinism.is_group(groups.pop())


def test_mixed_quorum_finalizes_and_a_benign_divergence_slashes_nobody(mixed, client):
    stakes = {nid: collateral(mixed, nid) for nid in mixed.executors}
    seen = {"final": 0, "benign": 0}
    for prompt in DIVERGE:
        rid = request_id_drawing(mixed, {FP32[0], BF16[0]}, 3)  # a quorum of both precisions
        res = client.generate(prompt, n=3, max_tokens=16, request_id=rid).result(timeout=120)
        s = res.summary
        assert not s.slashed, (prompt, s)
        assert res.status in ("final", "resolved") and s.output_checked
        quorum = [n for n, role in s.members.items() if role == "quorum"]
        assert sorted(s.paid) == sorted(quorum)  # every honest member is paid, whichever precision
        assert s.tolerance is not None and s.tolerance == mixed.config.model("tiny").group_tolerance()
        draws = _body(res.receipt)["selection"]["draws"]
        assert all(determinism.is_group(d["det_class"]) for d in draws)
        if res.status == "resolved":  # the quorum disagreed: the referees' tolerant checks decided
            seen["benign"] += 1
            assert all(len(s.accepted_by[n]) * 2 > sum(r == "referee" for r in s.members.values())
                       for n in quorum)
        else:
            seen["final"] += 1
    assert seen["benign"] >= 1  # these prompts do diverge across precisions
    res = client.generate("The quick brown fox", n=3, max_tokens=8,
                          request_id=request_id_drawing(mixed, {FP32[1], BF16[1]}, 3)).result(timeout=120)
    assert res.status == "final" and not res.summary.slashed  # same tokens: final without referees
    assert {nid: collateral(mixed, nid) for nid in mixed.executors} == stakes
    check_books(mixed)


@pytest.mark.parametrize("behaviour", ["substitute", "requantize", "random", "truncate", "alter-prompt", "alter-params"])
def test_cheats_in_a_mixed_quorum_are_slashed(mixed, client, behave, behaviour):
    cheater = BF16[2]
    behave(cheater, behaviour)
    stakes = {nid: collateral(mixed, nid) for nid in mixed.executors}
    rid = request_id_drawing(mixed, {cheater, FP32[2]}, 3)
    res = client.generate(DIVERGE[0], n=3, max_tokens=16, request_id=rid).result(timeout=120)
    assert res.status == "resolved", res.summary
    assert res.summary.slashed == ((cheater, "cheat"),)
    assert cheater not in res.summary.paid and not res.summary.accepted_by.get(cheater)
    after = {nid: collateral(mixed, nid) for nid in mixed.executors}
    assert after[cheater] < stakes[cheater]
    assert all(after[n] == stakes[n] for n in mixed.executors if n != cheater)


def test_receipt_reverifies_the_verdicts_and_refuses_another_tolerance(mixed, client):
    rid = request_id_drawing(mixed, {FP32[3], BF16[3]}, 3)
    res = client.generate(DIVERGE[1], n=3, max_tokens=16, request_id=rid).result(timeout=120)
    assert res.status == "resolved"
    s = receipts.verify_receipt(res.receipt, [client.aggregator_key], res.token_ids)
    assert s.accepted_by == res.summary.accepted_by
    body = _body(res.receipt)
    refs = [e for e in map(messages.open_envelope, body["results"]) if e.body["role"] == "referee"]
    assert refs and all(e.body["verdicts"] for e in refs)  # each referee signed its measured margins
    v = refs[0].body["verdicts"][0]
    assert {"token_margin", "overlap", "mean_err", "max_err"} <= set(v)
    from protocols.crypto import SigningKey

    key = SigningKey(b"\x07" * 32)  # a re-signed receipt (a trusted key is not what is tested here)
    for tol in ({"token_margin": 0.0, "fingerprint": {"min_overlap": 1.0, "max_mean_err": 0.0, "max_err": 0.0}},
                None):
        dec = dict(body["decision"], tolerance=tol)
        forged = messages.seal("receipt", dict(body, decision=dec), key).raw
        with pytest.raises(ReceiptInvalid):  # another tolerance is another group; none is no group
            receipts.verify_receipt(forged, [key.public])
    ok = messages.seal("receipt", body, key).raw
    assert receipts.verify_receipt(ok, [key.public]).status == "resolved"


def test_sealed_requests_stay_in_one_exact_class(mixed, client):
    # the aggregator cannot read a sealed claim, so its referees could not check one: such a
    # request is drawn within one bit-identical class, and judged exactly
    res = client.generate("seal me", n=3, max_tokens=8, require_tee=True).result(timeout=120)
    draws = _body(res.receipt)["selection"]["draws"]
    assert res.summary.tolerance is None and not any(determinism.is_group(d["det_class"]) for d in draws)
    assert not res.summary.slashed


def _steer_crossval(net, executor: str, verifier: str, verifiers: int) -> str:
    """A request id whose cross-validation draw runs on `executor` and is checked by a set
    of `verifiers` that includes `verifier` (an operator's preview, as in request_id_drawing)."""
    from cluster.demo import operator_vrf_key
    from protocols import selection

    key = operator_vrf_key(net)
    pool = sorted(x["node_id"] for x in ray.get(net.registry.list_nodes.remote()) if x["live"])
    for _ in range(20000):
        rid = uuid.uuid4().hex
        if selection.draw(pool, 1, selection.draw_randomness(key, rid, "quorum")[0]) != [executor]:
            continue
        rest = [n for n in pool if n != executor]
        if verifier in selection.draw(rest, verifiers, selection.draw_randomness(key, rid, "verify")[0]):
            return rid
    raise RuntimeError("no request id draws that cross-validation")


def test_cross_validation_across_precisions_slashes_nobody(mixed, client):
    # a float32 node's output checked by verifiers that include a bfloat16 node: the
    # verifier's exact prefill check rejects the near-tie, it regenerates, the quorum
    # disagrees, and the referees' tolerant checks call the divergence benign
    stakes = {nid: collateral(mixed, nid) for nid in mixed.executors}
    statuses = []
    for prompt in DIVERGE[:2]:
        rid = _steer_crossval(mixed, FP32[0], BF16[0], 2)
        res = client.generate(prompt, mode="cross-validation", n=2, p=1.0, max_tokens=16,
                              request_id=rid).result(timeout=120)
        s = res.summary
        assert s.branch == "checked" and not s.slashed, (prompt, s)
        assert BF16[0] in s.members and s.members[FP32[0]] == "quorum"
        assert sorted(s.paid) == sorted(n for n, r in s.members.items() if r == "quorum")
        assert s.tolerance is not None
        statuses.append(res.status)
    assert "resolved" in statuses  # at least one check diverged and went to the referees
    assert {nid: collateral(mixed, nid) for nid in mixed.executors} == stakes


def test_verify_cli_reports_the_tolerance_and_the_verdicts(mixed, client, tmp_path, capsys):
    from cluster import cli

    rid = request_id_drawing(mixed, {FP32[0], BF16[1]}, 3)
    res = client.generate(DIVERGE[2], n=3, max_tokens=16, request_id=rid).result(timeout=120)
    path = tmp_path / "r.bin"
    path.write_bytes(res.receipt)
    assert cli.main(["verify", str(path), "--aggregator-key", client.aggregator_key.hex()]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VALID") and "tolerance group: token margin <=" in out
