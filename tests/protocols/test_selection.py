"""Quorum draws: uniform, distinct, recomputable, eligibility respected."""

from collections import Counter

import pytest

from protocols import selection, vrf
from protocols.canonical import sha256
from protocols.errors import NotEnoughNodes
from protocols.selection import NodeView

KEYS = {b"x": vrf.VrfKey(), b"y": vrf.VrfKey()}


def seed(key: bytes, rid: str, label: str = "quorum") -> bytes:
    """A draw seed as the selector makes it (VRF over request id and label)."""
    if key not in KEYS:
        KEYS[key] = vrf.VrfKey()
    return selection.draw_randomness(KEYS[key], rid, label)[0]


def nodes(k=10, cls="c1", stake=100):
    return [NodeView(f"n{i:02d}", "m", cls, stake) for i in range(k)]


def test_draw_is_recomputable_and_distinct():
    s = seed(b"x", "req-1")
    a = selection.draw([n.node_id for n in nodes()], 5, s)
    assert a == selection.draw([n.node_id for n in reversed(nodes())], 5, s)
    assert len(set(a)) == 5
    assert selection.verify_draw([n.node_id for n in nodes()], 5, s, a)
    assert not selection.verify_draw([n.node_id for n in nodes()], 5, s, list(reversed(a)))


def test_draw_depends_on_request_and_selector_key():
    ids = [n.node_id for n in nodes(20)]
    draws = {tuple(selection.draw(ids, 3, seed(b, r))) for b in (b"x", b"y") for r in ("a", "b")}
    assert len(draws) == 4


def test_seed_checks_against_the_vrf_proof_only():
    s, proof = selection.draw_randomness(KEYS[b"x"], "req-1", "quorum")
    selection.verify_seed(KEYS[b"x"].public, "req-1", "quorum", s, proof)
    for pub, rid, label, sd, pr in [(KEYS[b"y"].public, "req-1", "quorum", s, proof),  # another key
                                    (KEYS[b"x"].public, "req-2", "quorum", s, proof),  # another request
                                    (KEYS[b"x"].public, "req-1", "referee", s, proof),  # another draw
                                    (KEYS[b"x"].public, "req-1", "quorum", sha256(s), proof),  # another seed
                                    (KEYS[b"x"].public, "req-1", "quorum", s, proof[:-1] + b"\0")]:
        with pytest.raises(vrf.VrfInvalid):
            selection.verify_seed(pub, rid, label, sd, pr)


def test_draw_is_uniform():
    ids = [n.node_id for n in nodes(6)]
    counts = Counter()
    trials = 6000
    for i in range(trials):
        counts.update(selection.draw(ids, 2, sha256(b"uniform", str(i).encode())))
    expected = trials * 2 / 6
    for nid in ids:  # binomial sd ~ 36; 5 sd band
        assert abs(counts[nid] - expected) < 180, counts


def test_eligibility_filters():
    ns = nodes(4) + [NodeView("poor", "m", "c1", 1), NodeView("dead", "m", "c1", 100, live=False),
                     NodeView("other-model", "x", "c1", 100), NodeView("other-class", "m", "c2", 100)]
    el = selection.eligible(ns, "m", min_stake=50, det_class="c1", exclude=["n00"])
    assert el == ["n01", "n02", "n03"]
    assert selection.eligible(ns, "m", 50, "c1", require_attested=True) == []


def test_not_enough_nodes():
    with pytest.raises(NotEnoughNodes):
        selection.draw(["a", "b"], 3, b"s" * 32)
    with pytest.raises(NotEnoughNodes):
        selection.choose_class(nodes(2), "m", 3, 0, b"s" * 32)


def test_class_choice_only_among_classes_that_fit():
    ns = nodes(5, "big") + [NodeView(f"s{i}", "m", "small", 100) for i in range(2)]
    picks = {selection.choose_class(ns, "m", 3, 0, sha256(b"class", str(i).encode())) for i in range(50)}
    assert picks == {"big"}


def test_replacement_draw_excludes_earlier_picks():
    ns = nodes(6)
    first = selection.draw(selection.eligible(ns, "m", 0, "c1"), 3, seed(b"x", "r"))
    pool = selection.eligible(ns, "m", 0, "c1", exclude=first)
    repl = selection.draw(pool, 1, seed(b"x", "r", "replace:quorum:3"))
    assert repl[0] not in first
