"""TEE security levels with (simulated) attestation: admission, selection, revocation, receipts."""

from __future__ import annotations

import uuid

import pytest
import ray

from protocols.authority import Unauthorized

from cluster.network import teardown
from protocols import messages, receipts
from protocols.attestation import AttestationError
from protocols.errors import NotEnoughNodes
from tests.conftest import deploy_tiny, request_id_drawing, set_tcb, trust_roots


@pytest.fixture(autouse=True)
def _conserved(conserved):
    yield


def test_every_node_is_admitted_with_simulated_attestation(tiny_net):
    nodes = ray.get(tiny_net.registry.list_nodes.remote())
    assert all(n["attested"] for n in nodes)
    assert all(n["attestation"]["simulated"] and n["attestation"]["reason"] == "ok" for n in nodes)


def test_tee_mode_runs_on_one_attested_node_and_the_receipt_carries_its_evidence(tiny_net, tiny_client):
    res = tiny_client.generate("confidential", mode="tee", n=1, max_tokens=8).result()
    assert res.status == "final" and len(res.summary.paid) == 1
    s = receipts.verify_receipt(res.receipt, [tiny_client.aggregator_key], res.token_ids,
                                trusted_roots=trust_roots(tiny_net))
    assert s.attested == {res.summary.paid[0]: "simulated"}
    with pytest.raises(receipts.ReceiptInvalid):  # a foreign root does not vouch for it
        receipts.verify_receipt(res.receipt, [tiny_client.aggregator_key], trusted_roots=[b"\x01" * 32])
    # without roots nothing is claimed; a strict policy refuses simulated evidence
    assert set(receipts.verify_receipt(res.receipt).attested.values()) == {"unverified"}
    from protocols.attestation import Policy

    with pytest.raises(receipts.ReceiptInvalid, match="simulated-not-allowed"):
        receipts.verify_receipt(res.receipt, trusted_roots=trust_roots(tiny_net),
                                attestation_policy=Policy(allow_simulated=False, max_age_s=1e12))


def test_require_tee_quorum_has_only_attested_members(tiny_net, tiny_client):
    res = tiny_client.generate("quorum of enclaves", n=3, max_tokens=6, require_tee=True).result()
    s = receipts.verify_receipt(res.receipt, [tiny_client.aggregator_key], res.token_ids,
                                trusted_roots=trust_roots(tiny_net))
    assert res.status == "final" and set(s.attested) == set(res.summary.paid)


def test_disputes_are_settled_by_attested_referees(tiny_net, tiny_client, behave):
    behave("tiny-06", "random")
    rid = request_id_drawing(tiny_net, {"tiny-06"}, 3)
    res = tiny_client.generate("referee in an enclave", n=3, max_tokens=6, request_id=rid).result()
    assert res.status == "resolved" and [s[0] for s in res.summary.slashed] == ["tiny-06"]
    draws = messages.open_envelope(res.receipt, "receipt").body["selection"]["draws"]
    ref = [d for d in draws if d["label"] == "referee"][0]
    assert ref["require_attested"] and set(ref["attestations"]) == set(ref["selected"])
    s = receipts.verify_receipt(res.receipt, [tiny_client.aggregator_key], res.token_ids,
                                trusted_roots=trust_roots(tiny_net))
    assert set(ref["selected"]) <= set(s.attested)


def test_key_rotation_each_epoch_keeps_the_node_attested(tiny_net, tiny_client):
    node = "tiny-01"
    before = ray.get(tiny_net.registry.describe.remote(node))
    [res] = ray.get(tiny_net.epochs.renew.remote([node]))
    after = ray.get(tiny_net.registry.describe.remote(node))
    assert res["ok"] and after["attested"] and after["pubkey"] != before["pubkey"]
    assert after["kem_pub"] != before["kem_pub"]
    rid = request_id_drawing(tiny_net, {node}, 3)
    out = tiny_client.generate("new keys", n=3, max_tokens=4, require_tee=True, request_id=rid).result()
    assert out.status == "final" and node in out.summary.paid


# --- a small network of its own: revocations are permanent --------------------------------
@pytest.fixture(scope="module")
def small(ray_cluster, tmp_path_factory):
    net = deploy_tiny(tmp_path_factory, "t-tee", 3)
    ray.get(net.epochs.stop.remote())  # these tests set attestation states by hand
    yield net
    teardown(net)


def attest(net, node_id: str, evidence: bytes | None = None) -> dict:
    nonce = ray.get(net.registry.challenge.remote(node_id))
    if evidence is None:
        evidence = ray.get(net.executors[node_id].attest.remote(nonce))
    return ray.get(net.registry.attest.remote(node_id, evidence))


def is_attested(net, node_id: str) -> bool:
    return ray.get(net.registry.describe.remote(node_id))["attested"]


def test_evidence_that_is_not_the_nodes_own_answer_changes_nothing(small):
    nonce = ray.get(small.registry.challenge.remote("tiny-02"))
    evidence = bytearray(ray.get(small.executors["tiny-02"].attest.remote(nonce)))
    evidence[-5] ^= 0xFF  # tampered in transit, or forged by anyone who can call the registry
    res = ray.get(small.registry.attest.remote("tiny-02", bytes(evidence)))
    assert not res["ok"] and res["reason"] == "bad-signature" and is_attested(small, "tiny-02")
    assert attest(small, "tiny-02", b"not evidence")["reason"] == "malformed" and is_attested(small, "tiny-02")
    old = ray.get(small.executors["tiny-02"].attest.remote(nonce))  # answers a nonce already used
    assert attest(small, "tiny-02", old)["reason"] == "wrong-nonce" and is_attested(small, "tiny-02")
    a, b = (ray.get(small.registry.challenge.remote("tiny-02")) for _ in range(2))  # two open challenges
    for n in (b, a):  # each answered once, in any order
        ev = ray.get(small.executors["tiny-02"].attest.remote(n))
        assert ray.get(small.registry.attest.remote("tiny-02", ev))["ok"]


def test_node_with_a_bad_state_is_never_selected_for_tee(small):
    client = small.client()
    set_tcb(small, "tiny-02", 0)  # authentic evidence, below the policy's minimum TCB
    try:
        res = attest(small, "tiny-02")
        assert res["reason"] == "tcb-too-old" and not is_attested(small, "tiny-02")
        members = set()
        for _ in range(12):
            members |= set(client.generate("x", mode="tee", n=1, max_tokens=2).result().summary.paid)
        assert "tiny-02" not in members and members
        with pytest.raises(NotEnoughNodes):
            client.generate("x", n=3, max_tokens=2, require_tee=True)
    finally:
        set_tcb(small, "tiny-02", 3)
    assert attest(small, "tiny-02")["ok"]  # fresh evidence restores it


def test_weights_key_is_refused_to_a_node_without_valid_attestation(small):
    set_tcb(small, "tiny-01", 0)
    try:
        assert not attest(small, "tiny-01")["ok"]
        with pytest.raises(Exception, match="no valid attestation"):  # so the executor cannot load the model
            ray.get(small.executors["tiny-01"].unlock.remote(small.registry))
    finally:
        set_tcb(small, "tiny-01", 3)
    assert attest(small, "tiny-01")["ok"]
    ray.get(small.executors["tiny-01"].unlock.remote(small.registry))  # the node's own signed call: released
    with pytest.raises(Unauthorized):  # nobody else may ask for it, not even the operator
        ray.get(small.registry.release_weights_key.remote("tiny-01"))


def test_revocation_removes_nodes_from_selection_at_once(small):
    client = small.client()
    hit = ray.get(small.registry.revoke.remote((), ("tiny-00",)))
    assert hit == ["tiny-00"]
    for _ in range(8):
        assert "tiny-00" not in client.generate("y", mode="tee", n=1, max_tokens=2).result().summary.paid
    assert attest(small, "tiny-00")["reason"] == "revoked-device"
    hit = ray.get(small.registry.revoke.remote((3,), ()))  # every node reports TCB 3
    assert sorted(hit) == ["tiny-01", "tiny-02"]
    with pytest.raises(AttestationError):  # the client finds no attested node to seal the prompt to
        client.generate("z", mode="tee", n=1, max_tokens=2)
    assert client.generate("z", n=1, max_tokens=2).result().status == "final"  # non-TEE service goes on


def test_prompt_and_output_plaintext_never_reach_selector_aggregator_or_ledger(tiny_net, tiny_client, tmp_path):
    import pickle

    secret = f"my secret prompt {uuid.uuid4().hex}"
    h = tiny_client.generate(secret, n=3, max_tokens=8, require_tee=True)
    res = h.result()
    assert res.status == "final" and res.summary.output_checked  # the client opened and checked it
    text = res.text.encode()
    agg = ray.get(tiny_net.aggregator.debug_state.remote(h.request_id))
    sel = ray.get(tiny_net.selector.__ray_call__.remote(lambda s: pickle.dumps(
        {k: v for k, v in vars(s).items() if k not in ("registry", "aggregator", "ledger", "key", "_tasks", "store", "gate")})))
    led = ray.get(tiny_net.ledger.entries_for.remote(h.request_id))
    for blob in (agg, sel, pickle.dumps(led), res.receipt):
        assert secret.encode() not in blob
        assert len(text) < 4 or text not in blob
    # a guess cannot be tested against the signed prompt hash: it is salted with a secret
    # that travels only inside the sealed prompt, not just with the public nonce
    from protocols import commitments

    rb = messages.open_envelope(messages.open_envelope(res.receipt, "receipt").body["request"], "request").body
    assert commitments.prompt_hash(secret, rb["nonce"]) != rb["prompt_hash"]


def test_sealed_prompt_opens_only_for_attested_recipients(tiny_net, tiny_client):
    from protocols import sealing
    from protocols.sealing import KemKey

    blob = tiny_client.seal_for_attested("for enclaves only", "rid-x", tiny_net.config.default_model)
    recipients = set(messages.unpack(blob)["keys"])
    attested = {n["node_id"] for n in ray.get(tiny_net.registry.list_nodes.remote()) if n["attested"]}
    assert recipients == attested
    with pytest.raises(sealing.SealError):  # an outsider's key opens nothing
        sealing.open_prompt(blob, "rid-x", "tiny-00", KemKey(b"\x09" * 32))


# --- weights at rest ------------------------------------------------------------------------
def test_weights_are_encrypted_on_disk_and_decrypt_only_with_the_released_key(tiny_net, tmp_path):
    import os

    from actors.engines.tiny import TinyConfig, TinyEngine, weights_path
    from protocols.errors import ModelLocked
    from protocols.sealing import SealError

    spec = ray.get(tiny_net.executors["tiny-00"].__ray_call__.remote(lambda ex: ex.engine_spec))
    enc = open(spec["encrypted_path"], "rb").read()
    plain = weights_path(TinyConfig()).read_bytes()
    assert all(plain[i:i + 64] not in enc for i in range(0, len(plain) - 64, 4096))  # no plaintext at rest
    locked = TinyEngine(encrypted_path=spec["encrypted_path"], expected_hash=spec["expected_hash"])
    with pytest.raises(ModelLocked):  # no key, no model
        locked.load()
    with pytest.raises(SealError):
        locked.load(weights_key=os.urandom(32))
    # the serving node holds the key only in memory, obtained by proving its attestation
    assert ray.get(tiny_net.executors["tiny-00"].__ray_call__.remote(lambda ex: ex._weights_key is not None))


# --- a client's bad sealed prompt is the client's fault, never the nodes' --------------------
@pytest.mark.parametrize("mode", ["sampling", "obfuscated"])
def test_a_sealed_prompt_that_does_not_open_ends_the_round_and_slashes_nobody(tiny_net, tiny_client, mode):
    before = ray.get(tiny_net.ledger.balances.remote("collateral/"))
    mine = f"client/{tiny_client.client_id}"
    funds = tiny_client.ledger_balances(mine)[mine]
    raw, rid = tiny_client.build_request("the prompt I signed", mode=mode, n=2, max_tokens=4, require_tee=True)
    blob = tiny_client.seal_for_attested("a prompt I did not sign", rid, tiny_net.config.default_model)
    res = tiny_client.submit_raw(raw, blob).result()
    assert res.status == "unresolved" and not res.summary.slashed and not res.summary.paid
    detail = messages.open_envelope(res.receipt, "receipt").body["decision"]["detail"]
    assert "refused the client's sealed prompt" in detail
    assert ray.get(tiny_net.ledger.balances.remote("collateral/")) == before  # no honest node pays for it
    assert tiny_client.ledger_balances(mine)[mine] == funds  # the client got its escrow back in full


def test_a_client_that_trusts_another_root_seals_to_nobody_and_says_so(tiny_net):
    from protocols.attestation import AttestationError

    stranger = tiny_net.client(trust_roots=[b"\x01" * 32])
    with pytest.raises(AttestationError, match="trust roots"):
        stranger.generate("only for enclaves I trust", n=2, max_tokens=2, require_tee=True)
    assert stranger.generate("plain", n=1, max_tokens=2).result().status == "final"  # non-TEE unaffected


def test_only_the_nodes_a_prompt_is_sealed_to_are_drawn(tiny_net, tiny_client):
    model = tiny_net.config.default_model
    everyone = tiny_client.attested_recipients(model)
    chosen = dict(sorted(everyone.items())[:3])
    raw, rid = tiny_client.build_request("for three enclaves", n=3, max_tokens=4, require_tee=True)
    res = tiny_client.submit_raw(raw, tiny_client.seal_for_attested("for three enclaves", rid, model, chosen)).result()
    assert res.status == "final" and set(res.summary.paid) == set(chosen)
    raw, rid = tiny_client.build_request("for nobody", n=1, max_tokens=4, require_tee=True)
    with pytest.raises(NotEnoughNodes):  # refused up front: nothing escrowed, nobody contacted
        tiny_client.submit_raw(raw, tiny_client.seal_for_attested("for nobody", rid, model, {}))


def test_a_garbled_sealed_output_does_not_cost_the_client_the_agreed_answer(tiny_net, tiny_client):
    h = tiny_client.generate("seal me twice", n=3, max_tokens=6, require_tee=True)
    good = h.result()
    fin = ray.get(tiny_net.aggregator.final.remote(h.request_id))
    assert len(fin["alternates"]) == 2  # every other paid member's sealed output
    fin["output"] = {"sealed": b"\x00" * 64}  # the output node's ciphertext arrives garbled
    h._result = None
    again = h._complete(fin)
    assert again.token_ids == good.token_ids and again.status == "final"
    fin["alternates"] = {}
    h._result = None
    with pytest.raises(receipts.ReceiptInvalid, match="no sealed output"):
        h._complete(fin)
