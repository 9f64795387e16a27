"""Guarantees tried from outside on the shared tiny network: deadlines that punish only
the late, a way back for a node taken out, members that never reveal, degraded rounds,
timeouts in every mode, and a lying selector caught before anyone is slashed."""

from __future__ import annotations

import time

import pytest
import ray

from protocols import messages
from protocols.errors import SelectorMisbehaved
from tests.conftest import request_id_drawing


@pytest.fixture(autouse=True)
def _conserved(conserved):
    yield


def collateral(net) -> dict[str, int]:
    return ray.get(net.ledger.balances.remote("collateral/"))


def live(net, node_id) -> bool:
    return ray.get(net.registry.describe.remote(node_id))["live"]


def wait_for(cond, what: str, limit_s: float = 60.0) -> None:
    """Wait for an event (bounded); the limit only guards against a hang."""
    end = time.time() + limit_s
    while not cond():
        assert time.time() < end, f"never happened: {what}"
        time.sleep(0.05)


def decision_of(res) -> dict:
    return messages.open_envelope(res.receipt, "receipt").body["decision"]


def test_a_client_cannot_shorten_the_deadline_to_fine_honest_nodes(tiny_net, tiny_client):
    before = collateral(tiny_net)
    handles = [tiny_client.generate(f"hurry {i}", n=3, max_tokens=8, timeout_s=0.001) for i in range(3)]
    assert all(h._sub["deadline_s"] >= tiny_net.config.limits.timeout_s for h in handles)
    results = [h.result(timeout=120) for h in handles]
    assert [r.status for r in results] == ["final"] * 3 and not any(r.summary.slashed for r in results)
    assert collateral(tiny_net) == before
    assert all(live(tiny_net, nid) for nid in tiny_net.executors)
    longer = tiny_client.generate("take your time", n=1, max_tokens=4, timeout_s=600.0)
    assert longer._sub["deadline_s"] == 600.0  # longer is the client's right
    assert longer.result().status == "final"


def test_when_every_member_is_late_nobody_is_slashed_or_taken_out(tiny_net, tiny_client, behave):
    for nid in tiny_net.executors:
        behave(nid, "silent")
    before = collateral(tiny_net)
    mine = f"client/{tiny_client.client_id}"
    funds = tiny_client.ledger_balances(mine)[mine]
    res = tiny_client.generate("is anyone awake?", n=3, max_tokens=4).result(timeout=120)
    assert res.status == "unresolved" and res.summary.slashed == () and res.summary.paid == ()
    assert len(decision_of(res)["excused"]) == 3
    assert collateral(tiny_net) == before
    assert all(live(tiny_net, nid) for nid in tiny_net.executors)
    assert tiny_client.ledger_balances(mine)[mine] == funds  # refunded in full


def test_a_node_taken_out_for_lateness_returns_after_a_fresh_liveness_challenge(tiny_net, tiny_client, behave):
    late = "tiny-06"
    behave(late, "silent")
    res = tiny_client.generate("stall", n=3, max_tokens=4,
                               request_id=request_id_drawing(tiny_net, {late}, 3)).result(timeout=120)
    assert (late, "timeout") in res.summary.slashed and not live(tiny_net, late)
    # while it stays stalled, the challenges it is sent go unanswered and it stays out
    challenged = lambda: ray.get(tiny_net.registry.__ray_call__.remote(lambda r: late in r._liveness))
    wait_for(challenged, "a liveness challenge")
    ray.get(tiny_net.registry.__ray_call__.remote(lambda r: r._liveness.pop(late, None)))
    wait_for(challenged, "a second liveness challenge")
    assert not live(tiny_net, late)
    ray.get(tiny_net.executors[late].set_behaviour.remote("honest"))  # the stall ends
    wait_for(lambda: live(tiny_net, late), "the node coming back")
    again = tiny_client.generate("welcome back", n=3, max_tokens=4,
                                 request_id=request_id_drawing(tiny_net, {late}, 3)).result(timeout=120)
    assert again.status == "final" and late in again.summary.paid


def test_a_forged_liveness_answer_changes_nothing(tiny_net, behave):
    from protocols import liveness
    from protocols.crypto import SigningKey

    late = "tiny-05"
    behave(late, "silent")
    ray.get(tiny_net.registry.set_live.remote(late, False))
    nonce = ray.get(tiny_net.registry.liveness_challenge.remote(late))
    forged = liveness.answer(SigningKey(b"x" * 32), late, nonce)
    assert ray.get(tiny_net.registry.answer_liveness.remote(late, forged)) is False
    assert not live(tiny_net, late)


def test_a_member_that_commits_and_never_reveals_is_slashed_and_replaced(tiny_net, tiny_client, behave):
    """Withholding a reveal costs what a cheat costs: a cheater that sees it would lose
    cannot keep its reveal back to pay only the timeout fraction."""
    quiet = "tiny-03"
    behave(quiet, "no-reveal")
    before = collateral(tiny_net)[f"collateral/{quiet}"]
    res = tiny_client.generate("commit only", n=3, max_tokens=6,
                               request_id=request_id_drawing(tiny_net, {quiet}, 3)).result(timeout=120)
    assert res.status == "final" and (quiet, "withheld") in res.summary.slashed
    econ = tiny_net.config.economics
    lost = before - collateral(tiny_net).get(f"collateral/{quiet}", 0)
    assert lost == int(before * econ.cheat_slash_fraction) > int(before * econ.timeout_slash_fraction)
    assert len(res.summary.paid) == 3 and quiet not in res.summary.paid
    body = messages.open_envelope(res.receipt, "receipt").body
    senders = lambda raws: {messages.open_envelope(r).body["node_id"] for r in raws}
    assert quiet in senders(body["results"]) and quiet not in senders(body["reveals"])


def test_a_round_without_replacements_finishes_degraded(tiny_net, tiny_client, behave):
    behave("tiny-01", "silent")
    res = tiny_client.generate("everyone at once", n=8, max_tokens=4).result(timeout=120)
    assert res.status == "final" and decision_of(res)["degraded"] is True
    assert len(res.summary.paid) == 7 and res.summary.slashed == (("tiny-01", "timeout"),)


def test_a_lone_cross_validation_executor_that_stalls_is_excused_and_the_client_refunded(
        tiny_net, tiny_client, behave):
    behave("tiny-04", "silent")
    before = collateral(tiny_net)
    res = tiny_client.generate("cv stall", mode="cross-validation", n=2, p=0.0, max_tokens=4,
                               request_id=request_id_drawing(tiny_net, {"tiny-04"}, 1)).result(timeout=120)
    assert res.status == "unresolved" and res.branch == "" and res.summary.slashed == ()  # no coin was flipped
    assert decision_of(res)["excused"] == ["tiny-04"] and collateral(tiny_net) == before


def test_cross_validation_verifier_that_times_out_is_replaced(tiny_net, tiny_client, behave):
    from cluster.demo import operator_vrf_key
    from protocols import selection

    key, pool = operator_vrf_key(tiny_net), sorted(tiny_net.executors)
    late = "tiny-04"
    for _ in range(5000):  # the operator previews both draws: executor, then verifiers
        rid = __import__("uuid").uuid4().hex
        ex = selection.draw(pool, 1, selection.draw_randomness(key, rid, "quorum")[0])
        ver = selection.draw([x for x in pool if x not in ex], 2, selection.draw_randomness(key, rid, "verify")[0])
        if late in ver:
            break
    behave(late, "silent")
    res = tiny_client.generate("cv verifier stall", mode="cross-validation", n=2, p=1.0, max_tokens=4,
                               request_id=rid).result(timeout=120)
    assert res.status == "final" and res.branch == "checked"
    assert res.summary.slashed == ((late, "timeout"),) and len(res.summary.paid) == 3  # 1 + N reached


def test_obfuscated_member_that_times_out_is_replaced_and_only_it_unblinded(tiny_net, tiny_client, behave):
    behave("tiny-02", "silent")
    res = tiny_client.generate("obf stall", mode="obfuscated", n=2, max_tokens=4,
                               request_id=request_id_drawing(tiny_net, {"tiny-02"}, 3)).result(timeout=120)
    assert res.status == "final" and len(res.summary.paid) == 3
    (pid, why), = res.summary.slashed
    assert why == "timeout" and decision_of(res)["unblinded"][pid][0] == "tiny-02"


def test_a_lying_selector_cannot_frame_an_honest_node(tiny_net, tiny_client, behave):
    cheater = "tiny-07"
    behave(cheater, "random")
    before = collateral(tiny_net)
    mine = f"client/{tiny_client.client_id}"
    funds = tiny_client.ledger_balances(mine)[mine]
    ray.get(tiny_net.selector.set_behaviour.remote("tiny-00"))  # names an honest node for the cheater
    try:
        h = tiny_client.generate("frame someone", mode="obfuscated", n=2, max_tokens=4,
                                 request_id=request_id_drawing(tiny_net, {cheater}, 3))
        with pytest.raises(SelectorMisbehaved, match="does not open"):
            h.result(timeout=120)
    finally:
        ray.get(tiny_net.selector.set_behaviour.remote(None))
    assert collateral(tiny_net) == before  # neither the framed node nor anyone else lost a unit
    assert tiny_client.ledger_balances(mine)[mine] == funds


def test_a_lying_selector_cannot_redirect_payments_to_another_node(tiny_net, tiny_client):
    """The selector binds pseudonyms to accounts at the ledger, but moves no money: a binding
    that does not open the aggregator's mapping commitment is refused by the ledger."""
    thief = "tiny-00"
    rewards = lambda: tiny_client.ledger_balances("rewards/")
    before, mine = rewards(), f"client/{tiny_client.client_id}"
    funds = tiny_client.ledger_balances(mine)[mine]
    ray.get(tiny_net.selector.set_behaviour.remote(thief, True))  # every pseudonym bound to the thief
    try:
        h = tiny_client.generate("pay me instead", mode="obfuscated", n=2, max_tokens=4)
        with pytest.raises(SelectorMisbehaved, match="does not open"):
            h.result(timeout=120)
    finally:
        ray.get(tiny_net.selector.set_behaviour.remote(None))
    assert rewards() == before  # nobody was paid, the thief least of all
    assert tiny_client.ledger_balances(mine)[mine] == funds  # the escrow came back whole


def test_obfuscated_draws_stay_secret_until_the_embargo_then_verify(tiny_net, tiny_client):
    from protocols import selection
    from protocols.errors import InvalidParams

    res = tiny_client.generate("who drew me?", mode="obfuscated", n=2, max_tokens=4).result(timeout=120)
    rid = res.request_id
    body = messages.open_envelope(res.receipt, "receipt").body
    assert body["selection"]["draws"] == [] and body["selection"]["vrf_key"] == b""  # nothing to recompute from
    with pytest.raises(InvalidParams, match="secret"):
        ray.get(tiny_net.selector.record.remote(rid))
    with pytest.raises(InvalidParams, match="embargo"):
        ray.get(tiny_net.selector.disclose.remote(rid))
    later = time.time() + tiny_net.config.network.draw_embargo_s + 1
    audit = ray.get(tiny_net.selector.disclose.remote(rid, later))  # an auditor, after the embargo
    (d,) = audit["draws"]
    selection.verify_seed(audit["vrf_key"], rid, d["label"], d["seed"], d["proof"])
    assert selection.verify_draw(d["eligible"], 3, d["seed"], d["selected"])
    assert audit["vrf_key"] == tiny_client.vrf_key
