"""Sampling Consensus end to end on the shared local Ray cluster, tiny engine.

One 8-node network serves every test here. Which nodes a request lands on
follows from the selector's VRF output, which only the selector's key can
compute in advance; tests act as the network's operator and preview draws with
that key (`request_id_drawing`) to aim a request at the node they want to
misbehave. No client can.
"""

from __future__ import annotations

import pytest
import ray

from protocols import messages, receipts
from protocols.errors import (BadSignature, InvalidParams, MalformedMessage, ModelHashMismatch, PromptTooLarge,
                              ReceiptInvalid, ReplayedMessage, UnknownModel, UnknownType, UnknownVersion)
from tests.conftest import request_id_drawing


@pytest.fixture
def net(tiny_net):
    return tiny_net


@pytest.fixture
def client(tiny_client):
    return tiny_client


@pytest.fixture(autouse=True)
def _conserved(conserved):
    yield


def collateral(net, node_id):
    return ray.get(net.ledger.balances.remote(f"collateral/{node_id}")).get(f"collateral/{node_id}", 0)


def rewards(net, node_id):
    return ray.get(net.ledger.balances.remote(f"rewards/{node_id}")).get(f"rewards/{node_id}", 0)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_honest_quorum_is_final_and_paid(net, client, n):
    before = {nid: rewards(net, nid) for nid in net.executors}
    h = client.generate("The quick brown fox", n=n, max_tokens=12)
    first = h.first_output()
    res = h.result()
    assert res.status == "final"
    assert res.token_ids == first.token_ids and len(res.token_ids) > 0
    assert len(res.summary.paid) == n and not res.summary.slashed
    assert res.summary.output_checked  # the answer matches the accepted commitment
    econ = net.config.economics
    gained = {nid: rewards(net, nid) - before[nid] for nid in net.executors}
    assert sorted(nid for nid, g in gained.items() if g) == sorted(res.summary.paid)
    assert all(gained[nid] == econ.node_reward for nid in res.summary.paid)


def test_first_output_reaches_client_before_finality(net, client, behave):
    behave("tiny-03", "no-reveal")  # the round cannot end before this member's reveal deadline
    h = client.generate("first output race", n=3, max_tokens=8,
                        request_id=request_id_drawing(net, {"tiny-03"}, 3))
    first = h.first_output()
    assert not ray.get(net.aggregator.status.remote(h.request_id))["done"]  # provisional: not final yet
    res = h.result(timeout=120)
    timings = ray.get(net.aggregator.final.remote(h.request_id))["timings"]
    assert timings["first_output"] < timings["decided"]  # the aggregator's own clock, one ordering
    assert res.status == "final" and first.token_ids == res.token_ids


def test_receipt_verifies_offline_and_rejects_tampering(net, client):
    h = client.generate("receipt please", n=3, max_tokens=8)
    res = h.result()
    s = receipts.verify_receipt(res.receipt, [client.aggregator_key], res.token_ids)
    assert s.status == "final" and s.request_id == h.request_id
    with pytest.raises(ReceiptInvalid):
        receipts.verify_receipt(res.receipt, [client.aggregator_key], res.token_ids[:-1] + [res.token_ids[-1] ^ 1])
    tampered = bytearray(res.receipt)
    tampered[len(tampered) // 2] ^= 0x01
    with pytest.raises(ReceiptInvalid):
        receipts.verify_receipt(bytes(tampered), [client.aggregator_key])


@pytest.mark.parametrize("behaviour", ["substitute", "requantize", "random", "copy"])
def test_cheater_is_slashed_exactly_and_client_gets_correct_output(net, client, behave, behaviour):
    cheater = "tiny-02"
    behave(cheater, behaviour)
    honest_ref = client.generate("Reference prompt for cheating", n=1, max_tokens=16,
                                 request_id=request_id_drawing(net, {"tiny-00"}, 1))
    want = honest_ref.result()
    stakes = {nid: collateral(net, nid) for nid in net.executors}
    rid = request_id_drawing(net, {cheater}, 3)
    h = client.generate("Reference prompt for cheating", n=3, max_tokens=16, request_id=rid)
    res = h.result()
    assert res.status == "resolved", res.summary
    assert res.summary.slashed == ((cheater, "invalid-reveal" if behaviour == "copy" else "cheat"),)
    assert res.text == want.text and res.token_ids == want.token_ids
    if behaviour == "copy":  # it really copied: its commit is another member's, which it cannot open
        body = messages.open_envelope(res.receipt, "receipt").body
        commits = {e.body["node_id"]: e.body["commit_hash"] for e in map(messages.open_envelope, body["results"])}
        assert commits[cheater] in {c for nid, c in commits.items() if nid != cheater}
    after = {nid: collateral(net, nid) for nid in net.executors}
    assert after[cheater] < stakes[cheater]
    assert all(after[nid] == stakes[nid] for nid in net.executors if nid != cheater)  # honest never slashed
    assert sorted(res.summary.paid) == sorted(set(res.summary.members) - {cheater} - {
        nid for nid, role in res.summary.members.items() if role == "referee"})


def test_silent_node_times_out_is_slashed_and_replaced(net, client, behave):
    silent = "tiny-05"
    behave(silent, "silent")
    before = collateral(net, silent)
    rid = request_id_drawing(net, {silent}, 3)
    h = client.generate("anyone there?", n=3, max_tokens=8, request_id=rid, timeout_s=2.0)
    res = h.result(timeout=60)
    assert res.status == "final"
    assert (silent, "timeout") in res.summary.slashed
    assert len(res.summary.paid) == 3 and silent not in res.summary.paid  # still reached N
    econ = net.config.economics
    assert collateral(net, silent) == before - int(before * econ.timeout_slash_fraction)
    assert not ray.get(net.registry.describe.remote(silent))["live"]


def test_same_settlement_applied_twice_pays_once(net, client):
    h = client.generate("retry me", n=3, max_tokens=8)
    res = h.result()
    entries = ray.get(net.ledger.entries_for.remote(h.request_id))
    balances = ray.get(net.ledger.balances.remote())
    from protocols.ledger import Settlement

    paid = tuple(res.summary.paid)
    again = Settlement(h.request_id, client.client_id, net.config.economics.price * 3, paid, beneficiaries=paid)
    from actors.authority import Signed, bare
    from tests.authority import as_holder

    ledger = Signed(bare(net.ledger), as_holder(net, "aggregator", "aggregator/0"), "ledger")  # the shard's key
    r2 = ray.get(ledger.settle.remote(again))  # what a retried call re-sends
    assert r2.applied == 0
    from protocols.ledger import SettlementConflict

    with pytest.raises(SettlementConflict):  # and a different outcome for a settled request is refused
        ray.get(ledger.settle.remote(Settlement(h.request_id, client.client_id, 1, paid[:1])))
    assert ray.get(net.ledger.entries_for.remote(h.request_id)) == entries
    assert ray.get(net.ledger.balances.remote()) == balances


# --- bad input: typed error, nothing changes -------------------------------------------
def _state(net):
    return [ray.get(net.ledger.balances.remote()), net.aggregator.totals()]


def test_bad_requests_rejected_with_typed_errors_and_no_state_change(net, client):
    before = _state(net)
    raw, rid = client.build_request("hello", n=3, max_tokens=4)
    cases = []
    # forged: body changed after signing
    obj = messages.unpack(raw)
    obj["body"]["n"] = 1
    cases.append((BadSignature, messages.pack(obj), "hello"))
    # malformed bytes, unknown version, unknown type
    cases.append((MalformedMessage, b"\x93garbage", "hello"))
    obj = messages.unpack(raw)
    obj["v"] = 99
    cases.append((UnknownVersion, messages.pack(obj), "hello"))
    obj = messages.unpack(raw)
    obj["type"] = "bogus"
    cases.append((UnknownType, messages.pack(obj), "hello"))
    # prompt swapped for another one than signed
    cases.append((Exception, raw, "goodbye"))
    for exc, data, prompt in cases:
        with pytest.raises(exc):
            ray.get(net.aggregator.submit.remote(data, prompt))
    with pytest.raises(PromptTooLarge):
        client.generate("x" * (net.config.limits.max_prompt_chars + 1))
    with pytest.raises(InvalidParams):
        client.generate("hi", n=net.config.limits.max_n + 1)
    with pytest.raises(InvalidParams):
        client.generate("hi", max_tokens=net.config.limits.max_tokens + 1)
    with pytest.raises(UnknownModel):
        client.generate("hi", model="no-such-model")
    bad_hash = dict(client._hashes, tiny="0" * 64)
    client._hashes, good = bad_hash, client._hashes
    try:
        with pytest.raises(ModelHashMismatch):
            client.generate("hi")
    finally:
        client._hashes = good
    assert _state(net) == before
    # the untouched original still works, exactly once
    h = client.submit_raw(raw, "hello")
    assert h.result().status == "final"
    with pytest.raises(ReplayedMessage):
        ray.get(net.aggregator.submit.remote(raw, "hello"))


def test_forged_node_messages_do_not_change_a_round(net, client, behave):
    """Anyone can push messages to the aggregator (obfuscated members must): a forged
    result or reveal for a member, or a replay of a real one, is refused and counts
    against nobody."""
    import os

    from protocols.crypto import SigningKey
    from protocols.errors import MessageError

    behave("tiny-03", "no-reveal")  # keeps the round open while we forge
    h = client.generate("forgery", mode="obfuscated", n=2, max_tokens=8,
                        request_id=request_id_drawing(net, {"tiny-03"}, 3))
    h.first_output()
    members = ray.get(net.aggregator.status.remote(h.request_id))["members"]
    victim = sorted(members)[0]
    stranger = SigningKey(os.urandom(32))
    forged_result = messages.seal("result", {"request_id": h.request_id, "node_id": victim, "role": "quorum",
                                             "commit_hash": b"x" * 32, "output_digest": b"y" * 32,
                                             "engine_seconds": 0.1, "nonce": os.urandom(16)}, stranger).raw
    forged_reveal = messages.seal("reveal", {"request_id": h.request_id, "node_id": victim, "role": "quorum",
                                             "commitment": b"c" * 32, "salt": b"s" * 16,
                                             "nonce": os.urandom(16)}, stranger).raw
    with pytest.raises(MessageError):
        ray.get(net.aggregator.obf_result.remote({"envelope": forged_result, "output": {"token_ids": [1],
                                                                                          "text": "x"}}))
    with pytest.raises(MessageError):
        ray.get(net.aggregator.obf_reveal.remote(forged_reveal))
    res = h.result(timeout=120)
    assert res.status == "final" and len(res.summary.paid) == 3
    (late, why), = res.summary.slashed  # only the member that really never revealed
    body = messages.open_envelope(res.receipt, "receipt").body
    assert why == "withheld" and body["decision"]["unblinded"][late][0] == "tiny-03"
    assert victim == late or victim in res.summary.paid  # the forgeries counted against nobody
    body = messages.open_envelope(res.receipt, "receipt").body
    with pytest.raises(MessageError):  # a replayed genuine reveal of a finished round
        ray.get(net.aggregator.obf_reveal.remote(body["reveals"][0]))
    plain = client.generate("sampling rounds take no pushes", n=3, max_tokens=4)
    pres = plain.result()
    pbody = messages.open_envelope(pres.receipt, "receipt").body
    with pytest.raises(MessageError):
        ray.get(net.aggregator.obf_result.remote({"envelope": pbody["results"][0], "output": {}}))
    assert ray.get(net.aggregator.final.remote(plain.request_id))["status"] == "final"


def test_async_client_gets_a_verified_answer_without_blocking(tiny_net):
    import asyncio

    from cluster.client import AsyncClient

    async def go():
        client = await AsyncClient.create(tiny_net)
        handles = [await client.generate(f"async {i}", n=3, max_tokens=4) for i in range(3)]
        firsts = await asyncio.gather(*(h.first_output(timeout=60) for h in handles))
        results = await asyncio.gather(*(h.result(timeout=120) for h in handles))
        return client, firsts, results

    client, firsts, results = asyncio.run(go())
    for first, res in zip(firsts, results):
        assert res.status == "final" and res.summary.n == 3 and res.summary.output_checked
        assert first is not None and first.token_ids == res.token_ids
    mine = f"client/{client.client_id}"
    assert ray.get(tiny_net.ledger.balances.remote(mine))[mine] < tiny_net.config.limits.client_credit  # it paid


def _batched(net) -> dict:
    """The shards' batch-call counters, summed: {destination: (calls, batches)}."""
    out: dict = {}
    for st in ray.get(net.aggregator.each("stats")):
        for dest, s in st["batched"].items():
            c, b = out.get(dest, (0, 0))
            out[dest] = (c + s["calls"], b + s["batches"])
    return out


def test_a_wave_of_requests_goes_out_in_batch_calls_and_each_keeps_its_own_receipt(net, client):
    before = _batched(net)
    prompts = [f"wave {i}" for i in range(24)]
    results = client.results(client.generate_many(prompts, n=3, max_tokens=4))
    after = _batched(net)
    assert all(r.status == "final" and len(r.summary.paid) == 3 and not r.summary.slashed for r in results)
    for dest in ("draw", "escrow", "settle", "reveal"):  # fewer calls than requests: they were batched
        calls, batches = after[dest][0] - before[dest][0], after[dest][1] - before[dest][1]
        assert calls >= 24 and batches < calls, (dest, calls, batches)
    # each receipt still stands alone: verified offline, for its own request and tokens only
    solo = client.generate(prompts[5], n=3, max_tokens=4).result()
    assert solo.token_ids == results[5].token_ids
    for i, r in enumerate(results):
        s = receipts.verify_receipt(r.receipt, [client.aggregator_key], r.token_ids)
        assert s.request_id == r.request_id and len(s.paid) == 3
        with pytest.raises(ReceiptInvalid):  # never valid for another answer of the same wave
            receipts.verify_receipt(r.receipt, [client.aggregator_key], results[(i + 1) % 24].token_ids + [1])


def test_a_bad_request_in_a_batch_fails_alone(net, client):
    from protocols.errors import UnknownRequest

    good = [client.build_request(f"batch mate {i}", n=3, max_tokens=3) for i in range(4)]
    raw, rid = client.build_request("forged", n=3, max_tokens=3)
    body = messages.open_envelope(raw, "request").body
    forged = messages.seal("request", dict(body, model_hash="00" * 32), client.key).raw  # wrong model hash
    items = [(raw_, f"batch mate {i}") for i, (raw_, _) in enumerate(good)]
    with pytest.raises(ModelHashMismatch):  # its caller gets its own typed error ...
        client.aggregator.submit_many(items[:2] + [(forged, "forged")] + items[2:])
    finals = client.aggregator.final_many([r for _, r in good], timeout=60)
    assert all(f["status"] == "final" for f in finals)  # ... and its batch mates are served
    missing = client.aggregator.final_many([rid], timeout=10)[0]
    assert isinstance(missing, UnknownRequest)  # it never became a round: nothing was escrowed for it


def test_each_reveal_carries_the_fingerprint_its_commit_sealed(net, client):
    from protocols import commitments
    from protocols import fingerprint as fp

    res = client.generate("a fingerprinted answer", n=3, max_tokens=8).result()
    assert res.status == "final"
    body = messages.open_envelope(res.receipt, "receipt").body
    results = {e.body["node_id"]: e for e in (messages.open_envelope(r, "result") for r in body["results"])}
    for raw in body["reveals"]:
        rv = messages.open_envelope(raw, "reveal")
        nid, blob = rv.body["node_id"], rv.body["fingerprint"]
        assert len(blob) == fp.size(len(res.token_ids), fp.k_for(64))  # the tiny engine's states, one chunk
        commit, key = results[nid].body["commit_hash"], results[nid].sender
        assert commitments.opens(commit, key, rv.body["commitment"], rv.body["salt"], blob)
        assert not commitments.opens(commit, key, rv.body["commitment"], rv.body["salt"], b"")  # it cannot be dropped
    fps = {messages.open_envelope(raw, "reveal").body["fingerprint"] for raw in body["reveals"]}
    assert len(fps) == 1  # one determinism class: the same states bit for bit
