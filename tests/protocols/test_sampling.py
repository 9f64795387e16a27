"""The Sampling Consensus round as a pure state machine (no Ray, no clock)."""

import pytest

from protocols import commitments
from protocols.crypto import SigningKey
from protocols.errors import MessageError, UnknownSender
from protocols.sampling import (Dispatch, DrawReferees, DrawReplacements, Finalize, FirstOutput, RequestReveals,
                                Round)

KEYS = {f"n{i}": SigningKey(bytes([i + 1]) * 32) for i in range(12)}
GOOD = commitments.output_commitment("r", "h" * 64, b"p" * 32, {}, [1, 2, 3])
BAD = commitments.output_commitment("r", "h" * 64, b"p" * 32, {}, [9, 9, 9])


def commit(nid, c, salt=b"s" * 32):
    return commitments.commit_hash(KEYS[nid].public, c, salt)


def new_round(ids, n=None, referee_n=3):
    r = Round("r", n or len(ids), timeout_s=10, reveal_timeout_s=5, referee_n=referee_n)
    acts = r.start(ids, [KEYS[i].public for i in ids], now=0.0)
    assert acts == [Dispatch(tuple(ids), "quorum")]
    return r


def commit_all(r, outputs, now=1.0):
    acts = []
    for nid, c in outputs.items():
        acts += r.on_result(nid, KEYS[nid].public, commit(nid, c), now)
    return acts


def reveal_all(r, outputs, now=2.0):
    acts = []
    for nid, c in outputs.items():
        acts += r.on_reveal(nid, KEYS[nid].public, c, b"s" * 32, now)
    return acts


def test_all_agree_is_final_and_first_output_comes_first():
    out = {"n0": GOOD, "n1": GOOD, "n2": GOOD}
    r = new_round(list(out))
    acts = commit_all(r, out)
    assert acts[0] == FirstOutput("n0")
    assert acts[-1] == RequestReveals(("n0", "n1", "n2"), "quorum")
    fin = reveal_all(r, out)
    assert len(fin) == 1 and isinstance(fin[0], Finalize)
    o = fin[0].outcome
    assert o.status == "final" and o.commitment == GOOD and set(o.paid) == set(out) and not o.slashes


def test_no_reveal_requested_before_every_commit():
    r = new_round(["n0", "n1", "n2"])
    acts = r.on_result("n0", KEYS["n0"].public, commit("n0", GOOD), 1.0)
    assert acts == [FirstOutput("n0")]
    with pytest.raises(MessageError):  # reveal not asked for yet
        r.on_reveal("n0", KEYS["n0"].public, GOOD, b"s" * 32, 1.5)
    assert r.public_view()["reveals"] == {}


def test_disagreement_opens_dispute_and_referees_slash_only_the_cheater():
    out = {"n0": GOOD, "n1": BAD, "n2": GOOD}
    r = new_round(list(out))
    commit_all(r, out)
    acts = reveal_all(r, out)
    assert acts == [DrawReferees(4, ("n0", "n1", "n2"))]  # fresh and larger than the quorum
    refs = ["n3", "n4", "n5", "n6"]
    acts = r.on_referees(refs, [KEYS[i].public for i in refs], 3.0)
    assert acts == [Dispatch(tuple(refs), "referee")]
    commit_all(r, {i: GOOD for i in refs}, 4.0)
    fin = reveal_all(r, {i: GOOD for i in refs}, 5.0)
    o = fin[0].outcome
    assert o.status == "resolved" and o.commitment == GOOD
    assert o.slashes == (("n1", "cheat"),)
    assert set(o.paid) == {"n0", "n2"} and set(o.beneficiaries) == {"n0", "n2"}
    assert set(o.referees) == set(refs) and o.output_node in refs


def test_copied_commit_is_an_invalid_reveal_and_slashed():
    r = new_round(["n0", "n1"], referee_n=3)
    r.on_result("n0", KEYS["n0"].public, commit("n0", GOOD), 1.0)
    r.on_result("n1", KEYS["n1"].public, commit("n0", GOOD), 1.0)  # n1 copies n0's commit hash
    r.on_reveal("n0", KEYS["n0"].public, GOOD, b"s" * 32, 2.0)
    acts = r.on_reveal("n1", KEYS["n1"].public, GOOD, b"s" * 32, 2.0)  # and n0's opening
    assert isinstance(acts[0], DrawReferees)
    refs = ["n3", "n4", "n5"]
    r.on_referees(refs, [KEYS[i].public for i in refs], 3.0)
    commit_all(r, {i: GOOD for i in refs}, 4.0)
    o = reveal_all(r, {i: GOOD for i in refs}, 5.0)[0].outcome
    assert o.slashes == (("n1", "invalid-reveal"),) and o.paid == ("n0",)


def test_timeout_slashes_and_replacement_reaches_n():
    r = new_round(["n0", "n1", "n2"])
    r.on_result("n0", KEYS["n0"].public, commit("n0", GOOD), 1.0)
    r.on_result("n1", KEYS["n1"].public, commit("n1", GOOD), 1.0)
    assert r.next_deadline() == 10.0
    assert r.on_tick(9.9) == []
    acts = r.on_tick(10.0)
    assert acts == [DrawReplacements(1, "quorum", ("n0", "n1", "n2"))]
    acts = r.on_replacements(["n3"], [KEYS["n3"].public], "quorum", 10.5)
    assert acts == [Dispatch(("n3",), "quorum")]
    acts = r.on_result("n3", KEYS["n3"].public, commit("n3", GOOD), 11.0)
    assert acts == [RequestReveals(("n0", "n1", "n3"), "quorum")]
    o = reveal_all(r, {"n0": GOOD, "n1": GOOD, "n3": GOOD}, 12.0)[0].outcome
    assert o.status == "final" and set(o.paid) == {"n0", "n1", "n3"}
    assert o.slashes == (("n2", "timeout"),)
    with pytest.raises(MessageError):  # the late node's answer is not accepted any more
        r.on_result("n2", KEYS["n2"].public, commit("n2", GOOD), 13.0)


def test_no_replacement_degrades_but_finishes():
    r = new_round(["n0", "n1"])
    r.on_result("n0", KEYS["n0"].public, commit("n0", GOOD), 1.0)
    r.on_tick(10.0)
    acts = r.on_replacements([], [], "quorum", 10.0)
    assert acts == [RequestReveals(("n0",), "quorum")]
    o = r.on_reveal("n0", KEYS["n0"].public, GOOD, b"s" * 32, 11.0)[0].outcome
    assert o.status == "final" and o.degraded and o.slashes == (("n1", "timeout"),)


def test_unknown_member_and_wrong_key_rejected():
    r = new_round(["n0", "n1"])
    with pytest.raises(UnknownSender):
        r.on_result("n9", KEYS["n9"].public, commit("n9", GOOD), 1.0)
    with pytest.raises(UnknownSender):
        r.on_result("n0", KEYS["n1"].public, commit("n0", GOOD), 1.0)
    assert all(m.state == "running" for m in r.members.values())


def test_referee_split_without_majority_is_unresolved_and_slashes_nobody():
    out = {"n0": GOOD, "n1": BAD}
    r = new_round(list(out), referee_n=2)
    commit_all(r, out)
    reveal_all(r, out)
    refs = ["n3", "n4", "n5"]
    r.on_referees(refs, [KEYS[i].public for i in refs], 3.0)
    votes = {"n3": GOOD, "n4": BAD, "n5": commitments.output_commitment("x", "h", b"", {}, [])}
    commit_all(r, votes, 4.0)
    o = reveal_all(r, votes, 5.0)[0].outcome
    assert o.status == "unresolved" and o.slashes == () and o.paid == ()
