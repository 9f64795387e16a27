"""Disputes in a tolerance group (protocols.decision, Evidence.tolerant): a claim the
referees' tolerant check accepts is benign, paid and never slashed; a claim no majority
accepts is a cheat, as in an exact-match round."""

from __future__ import annotations

import pytest

from protocols.decision import (BENIGN_ANSWER, NO_MAJORITY, QUORUM, REFEREE, RESOLVED, REVEALED, UNRESOLVED,
                                EvidenceInvalid, Evidence, MemberFact, decide)

A, B, C, D, E = (bytes([i]) * 32 for i in range(1, 6))


def q(nid, c, accepted_by=()):
    return MemberFact(nid, QUORUM, REVEALED, c, committed=True, accepted_by=tuple(accepted_by))


def r(nid, c):
    return MemberFact(nid, REFEREE, REVEALED, c, committed=True)


def test_a_benign_divergence_slashes_nobody_and_pays_both():
    """n1 (float32) and n2 (bfloat16) flipped a near-tie; the referees side with n1 and
    accept n2's claim as one the model could have made."""
    ev = Evidence((q("n1", A, ["r1", "r2", "r3"]), q("n2", B, ["r1", "r2", "r3"]), r("r1", A), r("r2", A), r("r3", B)),
                  want=2, tolerant=True)
    out = decide(ev)
    assert out.status == RESOLVED and out.commitment == A and out.output_node == "n1"
    assert out.slashes == () and out.paid == ("n1", "n2") and out.disputed


def test_a_cheat_in_a_tolerance_group_is_still_slashed():
    ev = Evidence((q("n1", A, ["r1", "r2", "r3"]), q("n2", B, ["r3"]), r("r1", A), r("r2", A), r("r3", A)),
                  want=2, tolerant=True)
    out = decide(ev)
    assert out.commitment == A and out.paid == ("n1",) and out.slashes == (("n2", "cheat"),)


def test_the_same_tokens_as_a_benign_claim_are_benign_without_a_verdict_of_their_own():
    """Cross-validation: n1 ran, n2 accepted n1's output by prefill (no fingerprint of its
    own, so no referee could accept it alone), n3 of another precision differed; the
    referees side with n3 and call n1 benign, so n2 (the same tokens) is paid, not slashed."""
    ev = Evidence((q("n1", A, ["r1", "r2", "r3"]), q("n2", A), q("n3", B, ["r1", "r2", "r3"]),
                   r("r1", B), r("r2", B), r("r3", B)), want=3, tolerant=True)
    out = decide(ev)
    assert out.commitment == B and out.slashes == () and out.paid == ("n1", "n2", "n3")
    cheat = Evidence((q("n1", A, ["r1"]), q("n2", A), q("n3", B, ["r1", "r2", "r3"]),
                      r("r1", B), r("r2", B), r("r3", B)), want=3, tolerant=True)
    assert decide(cheat).slashes == (("n1", "cheat"), ("n2", "cheat"))  # no majority for A: both slashed


def test_the_same_evidence_without_tolerance_slashes_the_divergent_node():
    facts = (q("n1", A), q("n2", B), r("r1", A), r("r2", A), r("r3", A))
    assert decide(Evidence(facts, want=2)).slashes == (("n2", "cheat"),)


def test_referees_without_a_majority_answer_with_the_first_benign_claim():
    ev = Evidence((q("n1", A, ["r1", "r2"]), q("n2", B, ["r1", "r2", "r3"]), r("r1", C), r("r2", D), r("r3", E)),
                  want=2, tolerant=True)
    out = decide(ev)
    assert out.status == RESOLVED and out.commitment == A and out.detail == BENIGN_ANSWER
    assert out.slashes == () and out.paid == ("n1", "n2")


def test_no_majority_and_no_benign_claim_stays_unresolved():
    ev = Evidence((q("n1", A, ["r1"]), q("n2", B), r("r1", C), r("r2", D), r("r3", E)), want=2, tolerant=True)
    out = decide(ev)
    assert out.status == UNRESOLVED and out.detail == NO_MAJORITY and out.slashes == ()


def test_acceptance_needs_a_strict_majority_of_the_answering_referees():
    ev = Evidence((q("n1", A, ["r1", "r2"]), q("n2", B, ["r1", "r2"]), r("r1", A), r("r2", A), r("r3", A),
                   r("r4", A)), want=2, tolerant=True)
    assert decide(ev).slashes == (("n2", "cheat"),)  # 2 of 4 is not a majority


@pytest.mark.parametrize("facts,tolerant", [
    ((q("n1", A, ["r1"]), q("n2", B), r("r1", A)), False),  # acceptances only in tolerant rounds
    ((q("n1", A, ["n2"]), q("n2", B), r("r1", A)), True),  # accepted by a non-referee
    ((q("n1", A, ["r9"]), q("n2", B), r("r1", A)), True),  # by someone not in the round
    ((q("n1", A, ["r1", "r1"]), q("n2", B), r("r1", A)), True),  # the same referee twice
    ((q("n1", A), q("n2", B), MemberFact("r1", REFEREE, REVEALED, A, accepted_by=("r1",))), True),  # a referee "checked"
])
def test_acceptances_that_no_round_could_produce_are_refused(facts, tolerant):
    with pytest.raises(EvidenceInvalid):
        decide(Evidence(facts, want=2, tolerant=tolerant))
