"""protocols.authority: the rights table, signed calls, rosters and rotations, tried the way
a compromised node, a replaying eavesdropper or a confused holder would."""

from __future__ import annotations

import os

import pytest

from protocols import authority as au
from protocols import messages
from protocols.crypto import SigningKey
from protocols.errors import BadSignature, MalformedMessage, ReplayedMessage, UnknownType

NET = "net-a"
T0 = 1_000_000.0


def key(i: int) -> SigningKey:
    return SigningKey(bytes([i]) * 32)


OP, AGG, SEL, REG, GW, NODE, OTHER_NODE = key(1), key(2), key(3), key(4), key(5), key(6), key(7)


def roster() -> au.Roster:
    r = au.Roster(NET, (OP.public,))
    entries = [("aggregator", "aggregator/0", AGG.public), ("selector", "selector", SEL.public),
               ("registry", "registry", REG.public), ("gateway", "gateway", GW.public)]
    assert r.install(au.roster_statement(OP, NET, 1, entries, T0), T0)
    return r


def signer(k: SigningKey, role: str, holder: str, network: str = NET) -> au.Signer:
    return au.Signer(k, role, holder, network)


OPERATOR = signer(OP, "operator", "operator")
AGGREGATOR = signer(AGG, "aggregator", "aggregator/0")
GATEWAY = signer(GW, "gateway", "gateway")
NODES = {NODE.public: "n-01", OTHER_NODE.public: "n-02"}


def call(s: au.Signer, actor: str, method: str, args: dict, now: float = T0, nonce: bytes | None = None) -> bytes:
    return s.call(actor, method, args, now, nonce or os.urandom(16))


def check(raw, actor, method, args, r=None, guard=None, now=T0, challenge=None):
    return au.check_call(raw, actor, method, args, r or roster(), guard or au.CallGuard(), now, NODES.get, challenge)


STAKES = {"stakes": {"n-02": 0}}


def test_the_holder_of_the_right_is_accepted_and_named():
    c = check(call(AGGREGATOR, "registry", "set_stakes", STAKES), "registry", "set_stakes", STAKES)
    assert (c.role, c.holder) == ("aggregator", "aggregator/0")
    c = check(call(OPERATOR, "ledger", "withdraw", {"account": "collateral/n-01", "amount": 5, "key": "k"}),
              "ledger", "withdraw", {"account": "collateral/n-01", "amount": 5, "key": "k"})
    assert c.role == "operator"


@pytest.mark.parametrize("raw", [None, b"", "text", 7])
def test_a_call_without_a_signed_envelope_is_refused(raw):
    with pytest.raises((au.Unauthorized, MalformedMessage)):
        check(raw, "registry", "set_stakes", STAKES)


def test_a_node_cannot_use_rights_it_does_not_hold():
    node = signer(NODE, "node", "n-01")
    for actor, method, args in [("ledger", "withdraw", {"account": "collateral/n-02", "amount": 1, "key": "k"}),
                                ("registry", "remove", {"node_id": "n-02"}),
                                ("registry", "set_stakes", STAKES),
                                ("selector", "unblind", {"request_id": "r", "pseudonyms": []})]:
        with pytest.raises(au.Unauthorized, match="may not call"):
            check(call(node, actor, method, args), actor, method, args)


def test_a_node_acts_only_for_itself():
    node = signer(NODE, "node", "n-01")
    assert check(call(node, "registry", "attest", {"node_id": "n-01"}), "registry", "attest",
                 {"node_id": "n-01"}).holder == "n-01"
    with pytest.raises(au.Unauthorized, match="for itself"):  # another node's identity
        check(call(node, "registry", "attest", {"node_id": "n-02"}), "registry", "attest", {"node_id": "n-02"})
    liar = signer(NODE, "node", "n-02")  # its own key, claiming to be the other node
    with pytest.raises(au.Unauthorized, match="holder"):
        check(call(liar, "registry", "attest", {"node_id": "n-02"}), "registry", "attest", {"node_id": "n-02"})


def test_challenge_rights_need_a_fresh_challenge_of_the_callee():
    node = signer(NODE, "node", "n-01")
    args = {"node_id": "n-01"}
    issued = {b"c" * 16}
    ok = lambda nid, nonce: nid == "n-01" and nonce in issued  # noqa: E731
    assert check(call(node, "registry", "release_weights_key", args, nonce=b"c" * 16), "registry",
                 "release_weights_key", args, challenge=ok).holder == "n-01"
    with pytest.raises(au.Unauthorized, match="challenge"):
        check(call(node, "registry", "release_weights_key", args), "registry", "release_weights_key", args,
              challenge=ok)


def test_scopes_keep_the_gateway_and_the_aggregator_to_client_accounts():
    good = {"account": "client/abc", "amount": 10, "key": "faucet|abc"}
    bad = {"account": "collateral/n-01", "amount": 10, "key": "x"}
    for s in (GATEWAY, AGGREGATOR):
        check(call(s, "ledger", "deposit", good), "ledger", "deposit", good)
        with pytest.raises(au.Unauthorized, match="client account"):
            check(call(s, "ledger", "deposit", bad), "ledger", "deposit", bad)
    check(call(OPERATOR, "ledger", "deposit", bad), "ledger", "deposit", bad)


def test_a_call_binds_network_actor_method_and_arguments():
    raw = call(AGGREGATOR, "registry", "set_stakes", STAKES)
    with pytest.raises(au.Unauthorized, match="arguments"):
        check(raw, "registry", "set_stakes", {"stakes": {"n-02": 10**9}})
    with pytest.raises(au.Unauthorized, match="signed for"):
        check(raw, "registry", "set_live", {"node_id": "n-02", "live": False})
    other = signer(AGG, "aggregator", "aggregator/0", network="net-b")
    with pytest.raises(au.Unauthorized, match="signed for"):
        check(call(other, "registry", "set_stakes", STAKES), "registry", "set_stakes", STAKES)


def test_a_replayed_call_is_refused_and_the_first_stands():
    guard = au.CallGuard()
    raw = call(AGGREGATOR, "registry", "set_stakes", STAKES)
    check(raw, "registry", "set_stakes", STAKES, guard=guard)
    with pytest.raises(ReplayedMessage):
        check(raw, "registry", "set_stakes", STAKES, guard=guard, now=T0 + 1)


def test_replayable_calls_repeat_their_effect_instead():
    guard = au.CallGuard()
    args = {"items": [["r1", "c1", 5]]}
    raw = call(AGGREGATOR, "ledger", "escrow_many", args)
    for _ in range(2):  # Ray's retry after an actor restart sends the same envelope again
        check(raw, "ledger", "escrow_many", args, guard=guard)


@pytest.mark.parametrize("delta", [au.WINDOW_S + 1, -(au.WINDOW_S + 1)])
def test_stale_or_future_calls_are_refused(delta):
    raw = call(AGGREGATOR, "registry", "set_stakes", STAKES, now=T0 - delta)
    with pytest.raises(au.StaleMessage):
        check(raw, "registry", "set_stakes", STAKES)


def test_a_refused_call_spends_no_nonce():
    guard = au.CallGuard()
    nonce = b"n" * 16
    with pytest.raises(au.StaleMessage):
        check(call(AGGREGATOR, "registry", "set_stakes", STAKES, now=T0 - 999, nonce=nonce), "registry",
              "set_stakes", STAKES, guard=guard)
    assert not guard.spent


def test_forged_and_tampered_envelopes_are_typed_errors():
    raw = call(AGGREGATOR, "registry", "set_stakes", STAKES)
    env = messages.open_envelope(raw, "call")
    forged = messages.seal("call", env.body, key(9)).raw  # same body, a stranger's key
    with pytest.raises(au.Unauthorized, match="not a key"):
        check(forged, "registry", "set_stakes", STAKES)
    sig = env.sig
    tampered = raw.replace(sig, bytes([sig[0] ^ 1]) + sig[1:])
    with pytest.raises(BadSignature):
        check(tampered, "registry", "set_stakes", STAKES)
    receipt_like = messages.seal("reveal", {"request_id": "r", "node_id": "n", "role": "quorum", "commitment": b"c",
                                            "salt": b"s", "nonce": b"n"}, AGG).raw
    with pytest.raises(UnknownType):
        check(receipt_like, "registry", "set_stakes", STAKES)


def test_only_the_operator_issues_rosters_and_only_newer_ones():
    r = roster()
    with pytest.raises(au.Unauthorized, match="operator"):
        r.install(au.roster_statement(AGG, NET, 5, [("operator", "operator", AGG.public)], T0), T0)
    assert not r.install(au.roster_statement(OP, NET, 1, [], T0), T0)  # an old roster replayed
    assert r.role_of(AGG.public, T0) == ("aggregator", "aggregator/0")
    with pytest.raises(au.Unauthorized, match="another network"):
        r.install(au.roster_statement(OP, "net-b", 9, [], T0), T0)
    assert r.install(au.roster_statement(OP, NET, 2, [("selector", "selector", SEL.public)], T0), T0)
    assert r.role_of(AGG.public, T0) is None and r.role_of(OP.public, T0) == ("operator", "operator")


def test_rotation_moves_a_holder_to_its_next_key_with_a_grace_period():
    r = roster()
    nxt = key(20)
    raw = AGGREGATOR.rotation(nxt.public, T0)
    assert r.rotate(raw, T0) and not r.rotate(raw, T0)  # applied once
    assert r.role_of(nxt.public, T0) == ("aggregator", "aggregator/0")
    assert r.role_of(AGG.public, T0 + au.GRACE_S - 1) is not None  # calls in flight still count
    assert r.role_of(AGG.public, T0 + au.GRACE_S + 1) is None
    with pytest.raises(au.Unauthorized):  # the old key can sign no further rotation
        r.rotate(AGGREGATOR.rotation(key(21).public, T0 + 1), T0 + 1)
    with pytest.raises(au.Unauthorized):  # nobody rotates another holder's key
        r.rotate(signer(SEL, "aggregator", "aggregator/0").rotation(key(22).public, T0), T0)
    r.prune(T0 + au.GRACE_S + 1)
    assert AGG.public not in r.keys
    again = au.Roster.of(r.to_wire())
    assert again.role_of(nxt.public, T0) == ("aggregator", "aggregator/0") and again.version == r.version


def test_every_guarded_method_names_known_roles_and_scopes():
    for (actor, method), right in au.RIGHTS.items():
        assert actor in au.ACTORS and right.roles and right.roles <= set(au.ROSTER_ROLES) | {"node"}
        assert all(rule in au.SCOPES for rule in right.scope.values())


def test_arguments_bind_by_value_not_by_type():
    from dataclasses import dataclass

    @dataclass
    class P:
        a: int
        b: tuple

    assert au.args_digest({"x": P(1, (2, 3))}) == au.args_digest({"x": P(1, [2, 3])})
    assert au.args_digest({"x": P(1, (2, 3))}) != au.args_digest({"x": P(1, (2, 4))})
    assert au.args_digest({"x": 1.0}) != au.args_digest({"x": 1})
    with pytest.raises(TypeError):
        pickled = __import__("pickle").dumps(OPERATOR)  # a signer never travels  # noqa: F841
