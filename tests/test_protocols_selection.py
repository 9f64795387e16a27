"""Quorum draws: uniform, distinct, recomputable, eligibility respected."""

from collections import Counter

import pytest

from protocols import selection
from protocols.errors import NotEnoughNodes
from protocols.selection import NodeView


def nodes(k=10, cls="c1", stake=100):
    return [NodeView(f"n{i:02d}", "m", cls, stake) for i in range(k)]


def test_draw_is_recomputable_and_distinct():
    seed = selection.draw_seed(b"beacon", "req-1")
    a = selection.draw([n.node_id for n in nodes()], 5, seed)
    assert a == selection.draw([n.node_id for n in reversed(nodes())], 5, seed)
    assert len(set(a)) == 5
    assert selection.verify_draw([n.node_id for n in nodes()], 5, seed, a)
    assert not selection.verify_draw([n.node_id for n in nodes()], 5, seed, list(reversed(a)))


def test_draw_depends_on_request_and_beacon():
    ids = [n.node_id for n in nodes(20)]
    draws = {tuple(selection.draw(ids, 3, selection.draw_seed(b, r))) for b in (b"x", b"y") for r in ("a", "b")}
    assert len(draws) == 4


def test_draw_is_uniform():
    ids = [n.node_id for n in nodes(6)]
    counts = Counter()
    trials = 6000
    for i in range(trials):
        counts.update(selection.draw(ids, 2, selection.draw_seed(b"b", f"r{i}")))
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
    picks = {selection.choose_class(ns, "m", 3, 0, selection.draw_seed(b"b", f"r{i}")) for i in range(50)}
    assert picks == {"big"}


def test_replacement_draw_excludes_earlier_picks():
    ns = nodes(6)
    first = selection.draw(selection.eligible(ns, "m", 0, "c1"), 3, selection.draw_seed(b"b", "r"))
    pool = selection.eligible(ns, "m", 0, "c1", exclude=first)
    repl = selection.draw(pool, 1, selection.draw_seed(b"b", "r", "replace:quorum:3"))
    assert repl[0] not in first
