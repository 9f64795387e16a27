"""Node Obfuscation end to end: N+1 nodes, blinded identities, unblinding only to slash."""

from __future__ import annotations

import pytest
import ray

from protocols import messages, obfuscation, receipts, selection
from tests.conftest import request_id_drawing, trust_roots


@pytest.fixture(autouse=True)
def _conserved(conserved):
    yield


def node_secrets(net) -> dict[str, list[bytes]]:
    """Everything that identifies a node: its id, signing key and HPKE key."""
    out = {}
    for info in ray.get([e.ready.remote() for e in net.executors.values()]):
        out[info["node_id"]] = [info["node_id"].encode(), info["pubkey"], info["kem_pub"]]
    return out


def drawn(net, rid, n) -> list[str]:
    """Who the selector drew (computable only with its secret VRF key)."""
    from cluster.demo import operator_vrf_key

    nodes = ray.get(net.registry.list_nodes.remote())
    pool = sorted(x["node_id"] for x in nodes if x["live"] and x["stake"] >= net.config.economics.min_stake)
    return selection.draw(pool, n, selection.draw_randomness(operator_vrf_key(net), rid, "quorum")[0])


def contains_any(blob: bytes, needles) -> bool:
    return any(n in blob for n in needles)


def test_honest_round_is_final_and_reveals_no_identity(tiny_net, tiny_client):
    secrets = node_secrets(tiny_net)
    h = tiny_client.generate("who am I talking to?", mode="obfuscated", n=2, max_tokens=10)
    first = h.first_output()
    res = h.result()
    assert res.status == "final" and len(res.summary.paid) == 3  # N + 1 members
    assert all(p.startswith("p-") for p in res.summary.members)
    assert first.token_ids == res.token_ids
    s = receipts.verify_receipt(res.receipt, [tiny_client.aggregator_key], res.token_ids)
    assert s.mode == "obfuscated"
    all_ids = [x for v in secrets.values() for x in v]
    assert not contains_any(res.receipt, all_ids)  # no node id or key in the receipt
    state = ray.get(tiny_net.aggregator.debug_state.remote(h.request_id))
    assert not contains_any(state, all_ids)  # nor anywhere in the aggregator's state


def test_nodes_learn_nothing_about_each_other_and_only_selected_nodes_are_contacted(tiny_net, tiny_client):
    secrets = node_secrets(tiny_net)
    rid = request_id_drawing(tiny_net, set(), 3)
    selected = set(drawn(tiny_net, rid, 3))
    res = tiny_client.generate("private quorum", mode="obfuscated", n=2, max_tokens=6, request_id=rid).result()
    assert res.status == "final"
    for nid, handle in tiny_net.executors.items():
        inbox = ray.get(handle.received.remote(rid))
        if nid not in selected:
            assert inbox == []  # never contacted
            continue
        assert inbox, nid
        others = [x for other, v in secrets.items() if other != nid for x in v]
        for raw, prompt in inbox:
            assert not contains_any(raw + prompt.encode(), others)


@pytest.mark.parametrize("behaviour", ["substitute", "requantize", "random", "copy"])
def test_cheater_is_unblinded_and_slashed_and_honest_stay_hidden(tiny_net, tiny_client, behave, behaviour):
    cheater = "tiny-04"
    want = tiny_client.generate("hidden cheater", n=1, max_tokens=12,
                                request_id=request_id_drawing(tiny_net, {"tiny-00"}, 1)).result()
    behave(cheater, behaviour)
    rid = request_id_drawing(tiny_net, {cheater}, 3)
    res = tiny_client.generate("hidden cheater", mode="obfuscated", n=2, max_tokens=12, request_id=rid).result()
    assert res.status == "resolved"
    s = receipts.verify_receipt(res.receipt, [tiny_client.aggregator_key], res.token_ids)
    assert len(s.slashed) == 1
    body = messages.open_envelope(res.receipt, "receipt").body
    unblinded = body["decision"]["unblinded"]
    assert [v[0] for v in unblinded.values()] == [cheater]  # only the cheater is named
    assert res.token_ids == want.token_ids
    honest_ids = [n.encode() for n in drawn(tiny_net, rid, 3) if n != cheater]
    assert not contains_any(res.receipt, honest_ids)
    stake = ray.get(tiny_net.ledger.balances.remote(f"collateral/{cheater}"))[f"collateral/{cheater}"]
    assert stake < tiny_net.config.economics.collateral


def test_selector_cannot_unblind_to_the_wrong_node():
    from protocols.crypto import SigningKey

    pub = SigningKey(b"\x05" * 32).public
    commitment = obfuscation.mapping_commitment([(pub, "tiny-01", b"s" * 32)])
    obfuscation.check_unblinding(commitment, pub, "tiny-01", b"s" * 32)
    with pytest.raises(obfuscation.UnblindingRejected):  # framing an innocent node
        obfuscation.check_unblinding(commitment, pub, "tiny-02", b"s" * 32)
    with pytest.raises(obfuscation.UnblindingRejected):
        obfuscation.check_unblinding(commitment, pub, "tiny-01", b"t" * 32)
    with pytest.raises(obfuscation.UnblindingRejected):  # a pseudonym it never committed to
        obfuscation.check_unblinding(commitment, SigningKey(b"\x06" * 32).public, "tiny-01", b"s" * 32)


def test_pseudonyms_of_one_node_are_unlinkable_across_requests(tiny_net, tiny_client):
    node = "tiny-01"
    a = tiny_client.generate("first", mode="obfuscated", n=2, max_tokens=4,
                             request_id=request_id_drawing(tiny_net, {node}, 3)).result()
    b = tiny_client.generate("second", mode="obfuscated", n=2, max_tokens=4,
                             request_id=request_id_drawing(tiny_net, {node}, 3)).result()
    ma = messages.open_envelope(a.receipt, "receipt").body["selection"]["obfuscated"]
    mb = messages.open_envelope(b.receipt, "receipt").body["selection"]["obfuscated"]
    assert not set(ma["members"]) & set(mb["members"])
    assert not set(ma["mapping"].values()) & set(mb["mapping"].values())
    keys_a = {m["key"] for m in ma["members"].values()}
    assert not any(k in b.receipt for k in keys_a)
    assert node.encode() not in a.receipt + b.receipt


def test_finality_needs_no_extra_round_over_sampling(tiny_net, tiny_client):
    """Counted where the messages arrive — at the nodes — not by the aggregator."""
    import ray as _ray

    def calls(rid):
        return sorted(c for c in _ray.get([e.protocol_calls.remote(rid) for e in tiny_net.executors.values()]) if c)

    plain = tiny_client.generate("count my messages", n=3, max_tokens=4)
    obf = tiny_client.generate("count my messages", mode="obfuscated", n=2, max_tokens=4)
    assert plain.result().status == obf.result().status == "final"
    # the same three members, the same two phases: one run and one reveal call each, nothing more
    assert calls(plain.request_id) == calls(obf.request_id) == [2, 2, 2]


# --- obfuscation at the TEE security level (--require-tee) ----------------------------------
def test_require_tee_obfuscated_round_is_sealed_attested_and_anonymous(tiny_net, tiny_client):
    import pickle
    import uuid

    secrets = node_secrets(tiny_net)
    secret = f"obfuscated enclave prompt {uuid.uuid4().hex}"
    h = tiny_client.generate(secret, mode="obfuscated", n=2, max_tokens=8, require_tee=True)
    first = h.first_output()
    res = h.result()
    assert res.status == "final" and first.token_ids == res.token_ids  # the client opened the sealed output
    s = receipts.verify_receipt(res.receipt, [tiny_client.aggregator_key], res.token_ids,
                                trusted_roots=trust_roots(tiny_net), trusted_selectors=[tiny_client.selector_key])
    assert set(s.attested) == set(s.members) and set(s.attested.values()) == {"simulated"}
    unpinned = receipts.verify_receipt(res.receipt, [tiny_client.aggregator_key], trusted_roots=trust_roots(tiny_net))
    assert set(unpinned.attested.values()) == {"unverified"}  # the selector's word counts only when pinned
    with pytest.raises(receipts.ReceiptInvalid, match="trusted selector"):
        receipts.verify_receipt(res.receipt, trusted_selectors=[b"\x02" * 32])
    all_ids = [x for v in secrets.values() for x in v]
    agg = ray.get(tiny_net.aggregator.debug_state.remote(h.request_id))
    sel = ray.get(tiny_net.selector.__ray_call__.remote(lambda s: pickle.dumps(
        {k: v for k, v in vars(s).items() if k not in ("registry", "aggregator", "ledger", "key", "vrf", "_tasks", "store", "gate")})))
    assert not contains_any(res.receipt, all_ids)  # still no identities in the receipt
    live = pickle.loads(agg)
    table = set(messages.unpack(live.pop("prompt"))["keys"])  # the sealed prompt's recipient table
    assert set(live.pop("recipients")) == table  # (kept parsed, to draw within it)
    attested = {n["node_id"] for n in ray.get(tiny_net.registry.list_nodes.remote()) if n["attested"]}
    assert table == attested  # names every attested node alike: the client cannot know the members either
    assert not contains_any(pickle.dumps(live), all_ids)  # nothing else in the aggregator names a node
    for blob in (agg, sel, res.receipt):  # and no plaintext anywhere
        assert secret.encode() not in blob and res.text.encode() not in blob


def test_require_tee_obfuscated_cheater_is_unblinded_with_its_evidence(tiny_net, tiny_client, behave):
    cheater = "tiny-05"
    behave(cheater, "random")
    rid = request_id_drawing(tiny_net, {cheater}, 3)
    res = tiny_client.generate("enclave cheater", mode="obfuscated", n=2, max_tokens=8, request_id=rid,
                               require_tee=True).result()
    assert res.status == "resolved"
    roots = trust_roots(tiny_net)
    s = receipts.verify_receipt(res.receipt, [tiny_client.aggregator_key], res.token_ids, trusted_roots=roots,
                                trusted_selectors=[tiny_client.selector_key])
    assert len(s.slashed) == 1 and set(s.attested) == set(s.members)
    body = messages.open_envelope(res.receipt, "receipt").body
    [(node_id, _salt, digest, evidence)] = body["decision"]["unblinded"].values()
    assert node_id == cheater and digest == __import__("protocols.canonical").canonical.sha256(evidence).hex()
    with pytest.raises(receipts.ReceiptInvalid):  # the revealed evidence must chain to a trusted root
        receipts.verify_receipt(res.receipt, [tiny_client.aggregator_key], trusted_roots=[b"\x01" * 32])


def test_unblinding_must_open_the_committed_evidence_digest():
    from protocols.crypto import SigningKey

    pub = SigningKey(b"\x07" * 32).public
    commitment = obfuscation.mapping_commitment([(pub, "tiny-01", b"s" * 32, "ab" * 32)])
    obfuscation.check_unblinding(commitment, pub, "tiny-01", b"s" * 32, "ab" * 32)
    for digest in ("", "cd" * 32):  # dropping or swapping the attestation is caught
        with pytest.raises(obfuscation.UnblindingRejected):
            obfuscation.check_unblinding(commitment, pub, "tiny-01", b"s" * 32, digest)
