"""protocols.settlement: outcome -> settlement -> effects, and pseudonym resolution. No Ray."""

from __future__ import annotations

import pytest

from protocols import obfuscation, settlement
from protocols.decision import Outcome
from protocols.ledger import Settlement, Slash, collateral_account
from protocols.obfuscation import UnblindingRejected

OUT = Outcome("resolved", b"c" * 32, "a", ("a", "b"), (("c", "cheat"), ("d", "timeout"), ("e", "withheld")),
              ("a", "b"), ("r",), True, False)


def test_outcome_becomes_the_settlement_it_decided():
    s = settlement.settlement_of(OUT, "r1", "client", 500)
    assert s == Settlement("r1", "client", 500, ("a", "b"),
                           (Slash("c", "cheat"), Slash("d", "timeout"), Slash("e", "withheld")), ("a", "b"), ("r",))
    assert settlement.refund("r1", "client", 500) == Settlement("r1", "client", 500)


def test_effects_name_new_stakes_of_slashed_nodes_and_take_out_the_late_ones():
    bal = {collateral_account(n): v for n, v in (("c", 10), ("d", 20), ("e", 30), ("a", 99))}
    eff = settlement.effects(OUT, bal)
    assert eff.stakes == {"c": 10, "d": 20, "e": 30}  # never a node that was not slashed
    assert eff.take_out == ("d", "e")  # lateness (timeout, withheld), not cheating
    pseud = Outcome("final", b"c" * 32, "p-1", ("p-1",), (("p-2", "timeout"),), ("p-1",), (), False, False)
    eff = settlement.effects(pseud, {collateral_account("node-7"): 5}, {"p-2": "node-7"})
    assert eff.stakes == {"node-7": 5} and eff.take_out == ("node-7",)


def _bindings():
    keys = {f"k{i}".encode() * 8: (f"node-{i}", bytes([i]) * 32) for i in range(1, 4)}
    bindings = {obfuscation.pseudonym_id(k): settlement.Binding(n, salt, k) for k, (n, salt) in keys.items()}
    commitment = {pid: obfuscation.mapping_entry(b.key, b.node_id, b.salt) for pid, b in bindings.items()}
    return bindings, commitment


def test_pseudonymous_settlement_resolves_through_bindings_that_open_the_commitment():
    bindings, commitment = _bindings()
    p1, p2, p3 = sorted(bindings, key=lambda p: bindings[p].node_id)
    s = Settlement("r1", "client", 300, (p1, p2), (Slash(p3, "cheat"),), (p1, p2), ())
    got = settlement.resolve(s, bindings, commitment)
    assert got == Settlement("r1", "client", 300, ("node-1", "node-2"), (Slash("node-3", "cheat"),),
                             ("node-1", "node-2"), ())


def test_a_selector_that_bound_a_pseudonym_to_another_node_is_refused():
    bindings, commitment = _bindings()
    p1, p2, p3 = sorted(bindings, key=lambda p: bindings[p].node_id)
    s = Settlement("r1", "client", 300, (p1,), (), (), ())
    lying = dict(bindings)
    lying[p1] = settlement.Binding("node-9", bindings[p1].salt, bindings[p1].key)  # pay someone else
    with pytest.raises(UnblindingRejected):
        settlement.resolve(s, lying, commitment)
    with pytest.raises(UnblindingRejected):  # a commitment without the pseudonym
        settlement.resolve(s, bindings, {p2: commitment[p2]})
    with pytest.raises(Exception, match="no binding"):
        settlement.resolve(s, {p2: bindings[p2]}, commitment)
