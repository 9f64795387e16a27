"""Cross Validation Sampling Consensus end to end (tiny engine, shared network)."""

from __future__ import annotations

import pytest
import ray

from protocols import receipts
from tests.conftest import request_id_drawing


@pytest.fixture(autouse=True)
def _conserved(conserved):
    yield


def client_balance(net, client):
    return ray.get(net.ledger.balances.remote(f"client/{client.client_id}"))[f"client/{client.client_id}"]


def test_unchecked_branch_is_final_with_one_node_and_charges_one_run(tiny_net, tiny_client):
    before = client_balance(tiny_net, tiny_client)
    h = tiny_client.generate("one node only", mode="cross-validation", n=2, p=0.0, max_tokens=10)
    assert h.first_output() is not None
    res = h.result()
    assert res.status == "final" and res.branch == "unchecked" and len(res.summary.paid) == 1
    assert res.summary.mode == "cross-validation" and res.summary.branch == "unchecked"
    assert client_balance(tiny_net, tiny_client) == before - tiny_net.config.economics.price


def test_checked_branch_verifies_by_prefill(tiny_net, tiny_client):
    before = client_balance(tiny_net, tiny_client)
    res = tiny_client.generate("check me", mode="cross-validation", n=3, p=1.0, max_tokens=12).result()
    assert res.status == "final" and res.branch == "checked" and len(res.summary.paid) == 4
    verifiers = [nid for nid in res.summary.paid if res.methods[nid] != "generate"]
    assert len(verifiers) == 3 and all(res.methods[v] == "prefill" for v in verifiers)
    assert client_balance(tiny_net, tiny_client) == before - 4 * tiny_net.config.economics.price
    receipts.verify_receipt(res.receipt, [tiny_client.aggregator_key], res.token_ids)


def test_receipt_states_the_branch_and_its_coin_verifies(tiny_net, tiny_client):
    res = tiny_client.generate("coin", mode="cross-validation", n=1, p=0.5, max_tokens=6).result()
    s = receipts.verify_receipt(res.receipt, [tiny_client.aggregator_key], res.token_ids)
    assert s.branch in ("checked", "unchecked") and s.branch == res.branch


@pytest.mark.parametrize("behaviour", ["substitute", "requantize", "random", "copy"])
def test_cheating_executor_is_caught_by_prefill_verifiers(tiny_net, tiny_client, behave, behaviour):
    cheater = "tiny-03"
    want = tiny_client.generate("verify this output", n=1, max_tokens=14,
                                request_id=request_id_drawing(tiny_net, {"tiny-00"}, 1)).result()
    behave(cheater, behaviour)
    rid = request_id_drawing(tiny_net, {cheater}, 1)
    res = tiny_client.generate("verify this output", mode="cross-validation", n=2, p=1.0, max_tokens=14,
                               request_id=rid).result()
    assert res.status == "resolved" and res.branch == "checked"
    assert [s[0] for s in res.summary.slashed] == [cheater]
    assert res.token_ids == want.token_ids
    verifiers = [nid for nid, m in res.methods.items() if nid != cheater and res.summary.members[nid] == "quorum"]
    assert verifiers and all(res.methods[v] == "prefill-reject+generate" for v in verifiers)


def test_measured_compute_multiplier_matches_one_plus_pn(tiny_net, tiny_client):
    p, n, k = 0.3, 2, 60
    price = tiny_net.config.economics.price
    before = client_balance(tiny_net, tiny_client)
    handles = [tiny_client.generate(f"multiplier {i}", mode="cross-validation", n=n, p=p, max_tokens=4)
               for i in range(k)]
    results = [h.result() for h in handles]
    runs = sum(len(r.summary.members) for r in results)
    checked = sum(r.branch == "checked" for r in results)
    assert runs == k + n * checked  # 1 run, plus N verifications when drawn
    assert before - client_balance(tiny_net, tiny_client) == runs * price  # charged for what was executed
    # binomial(k, p): 4 standard deviations around 1 + pN
    sd = (p * (1 - p) / k) ** 0.5 * n
    assert abs(runs / k - (1 + p * n)) < 4 * sd
