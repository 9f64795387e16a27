"""The network's deadline rule, excused stages and liveness answers (pure, no Ray)."""

from __future__ import annotations

import pytest

from protocols import liveness
from protocols.crypto import SigningKey
from protocols.deadlines import DeadlineRule
from protocols.errors import InvalidParams, MessageError
from protocols.sampling import Round


def test_a_client_may_lengthen_a_deadline_never_shorten_it():
    rule = DeadlineRule(base_s=5.0, per_token_s=0.1)
    assert rule.needed(100) == pytest.approx(15.0)
    assert rule.member_deadline(100, 0.001) == pytest.approx(15.0)  # raised to what an honest node needs
    assert rule.member_deadline(100, 60.0) == 60.0
    assert rule.member_deadline(100) == pytest.approx(15.0)
    for bad in (0, -1, 3601, "soon", float("nan")):
        with pytest.raises(InvalidParams):
            rule.member_deadline(10, bad)
    with pytest.raises(InvalidParams):
        DeadlineRule(base_s=0)
    assert DeadlineRule(base_s=10, per_token_s=100).needed(10**6) == 3600.0  # capped


def _round(n=3):
    r = Round("r", n, 10.0, 10.0, n + 2)
    keys = [SigningKey(bytes([i]) * 32).public for i in range(n)]
    r.start([f"n{i}" for i in range(n)], keys, 0.0)
    return r, keys


def test_a_whole_stage_late_together_is_excused_not_slashed():
    r, _ = _round()
    (fin,) = r.on_tick(11.0)
    o = fin.outcome
    assert o.status == "unresolved" and o.slashes == () and o.excused == ("n0", "n1", "n2")


def test_one_late_member_among_answering_ones_is_slashed_and_replaced():
    from protocols.commitments import commit_hash

    r, keys = _round()
    for i in (0, 1):
        r.on_result(f"n{i}", keys[i], commit_hash(keys[i], b"c" * 32, b"s" * 16), 1.0)
    (act,) = r.on_tick(11.0)
    assert type(act).__name__ == "DrawReplacements" and r.slashes == [("n2", "timeout")]


def test_replacements_fewer_than_asked_do_not_stall_the_round():
    r, keys = _round()
    r.on_failure("n2", 1.0)  # crashed: slashed, one replacement asked
    r.on_failure("n1", 1.0)
    acts = r.on_replacements(["n9"], [SigningKey(b"9" * 32).public], "quorum", 2.0, asked=2)
    assert r.degraded and r._target["quorum"] == 2 and acts  # goes on with n0 and n9


def test_liveness_answers_bind_node_and_nonce():
    key = SigningKey(b"k" * 32)
    sig = liveness.answer(key, "n1", b"nonce-1")
    liveness.check(key.public, "n1", b"nonce-1", sig)
    for pub, nid, nonce in [(SigningKey(b"o" * 32).public, "n1", b"nonce-1"), (key.public, "n2", b"nonce-1"),
                            (key.public, "n1", b"nonce-2")]:
        with pytest.raises(MessageError):
            liveness.check(pub, nid, nonce, sig)
    assert liveness.may_return(100, 50) and not liveness.may_return(49, 50)
