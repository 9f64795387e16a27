"""The actors' own entry points under adversarial input (property-based, hypothesis).

The pure rules are fuzzed in tests/protocols/test_adversarial.py; here the same
mutants go through Ray to the live actors of the session network — the
aggregator's submit, an executor's execute, the ledger's calls, the registry's
attestation — and every one must come back as a typed error while the state a
client relies on stays as it was: balances, the ledger's head, the shards'
counters, the registry's node records, the replay guard (the original request
stays spent; a fresh one still runs).
"""

from __future__ import annotations

import random

import pytest
import ray
from hypothesis import HealthCheck, given, settings, strategies as st

from protocols import messages
from protocols.errors import VerinferError
from tests import adversary

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def _state(net):
    nodes = ray.get(net.registry.list_nodes.remote())
    totals = net.aggregator.totals()
    return (ray.get(net.ledger.balances.remote()), ray.get(net.ledger.head.remote()),
            {k: totals.get(k) for k in ("submitted", "recovered")},
            [(n["node_id"], n["pubkey"], n["live"], n["attested"], n["stake"], n["epoch"]) for n in nodes])


def _as(net, role: str, holder: str):
    from actors.authority import Signed, bare
    from tests.authority import as_holder

    return Signed(bare(net.ledger), as_holder(net, role, holder), "ledger")


def _typed(exc: BaseException) -> bool:
    return isinstance(exc, VerinferError) or isinstance(getattr(exc, "cause", None), VerinferError)


@pytest.fixture(scope="module")
def spent(tiny_net, tiny_client):
    """A request the network already served: every mutant of it must be refused."""
    raw, rid = tiny_client.build_request("hello", n=3, max_tokens=4)
    assert tiny_client.submit_raw(raw, "hello").result(timeout=60).status == "final"
    return raw, rid


def _mutant(r: random.Random, raw: bytes) -> bytes:
    while True:
        data, label, _ = adversary.envelope_mutant(r, raw, adversary.OTHER)
        if not label.endswith("+genuine"):  # the forger's key never makes a valid request of ours
            return data, label


@SETTINGS
@given(r=st.randoms(use_true_random=False))
def test_submit_refuses_every_mutant_of_a_served_request_and_changes_nothing(tiny_net, tiny_client, spent, r):
    raw, _ = spent
    before = _state(tiny_net)
    mutant, label = _mutant(r, raw)
    shard = tiny_net.aggregator.handles[r.randrange(len(tiny_net.aggregator))]
    prompt = r.choice(["hello", "", b"\x00", None, 5])
    try:
        got = ray.get(shard.submit.remote(mutant, prompt), timeout=60)
    except Exception as exc:
        assert _typed(exc), repr(exc)
    else:
        raise AssertionError(f"accepted {label} (prompt {prompt!r}): {got}")
    after = _state(tiny_net)
    assert after == before, [(i, {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
                              if isinstance(a, dict) else (a, b)) for i, (a, b) in enumerate(zip(before, after))
                             if a != b]


@SETTINGS
@given(r=st.randoms(use_true_random=False))
def test_an_executor_refuses_mutated_requests_with_a_typed_error(tiny_net, spent, r):
    """A node runs only what its client signed: a mutant either says exactly what the
    original says (a re-encoding, which a node that never saw it may serve) or is refused."""
    raw, _ = spent
    node = tiny_net.executors[sorted(tiny_net.executors)[r.randrange(len(tiny_net.executors))]]
    before = ray.get(node.stats.remote())
    mutant, label = _mutant(r, raw)
    try:
        ray.get(node.execute.remote(mutant, "hello", "quorum"), timeout=60)
    except Exception as exc:
        assert _typed(exc), repr(exc)
        assert ray.get(node.stats.remote()) == before  # nothing ran
    else:
        assert adversary.same_envelope(messages.open_envelope(raw), mutant), f"ran {label}"


@SETTINGS
@given(r=st.randoms(use_true_random=False))
def test_ledger_calls_with_malformed_arguments_move_no_money(tiny_net, r):
    before = (ray.get(tiny_net.ledger.balances.remote()), ray.get(tiny_net.ledger.head.remote()))
    junk = lambda: adversary.rand_value(r)  # noqa: E731
    # each call signed by the holder of its right: the arguments, not the signature, are what is tried
    op, agg, sel = tiny_net.ledger, _as(tiny_net, "aggregator", "aggregator/0"), _as(tiny_net, "selector", "selector")
    call = r.choice([
        lambda: op.deposit.remote(junk(), junk(), junk()),
        lambda: op.withdraw.remote("client/nobody", r.choice([-1, 0, 10 ** 30, 1.5, "1"]), "w"),
        lambda: agg.escrow.remote(junk(), junk(), junk()),
        lambda: agg.settle.remote(junk()),
        lambda: op.submit.remote([junk()]),
        lambda: sel.bind_members.remote(junk(), junk()),
        lambda: agg.settle_members.remote(junk(), junk()),
    ])
    try:
        ray.get(call(), timeout=60)
    except Exception as exc:
        assert _typed(exc), repr(exc)
    assert (ray.get(tiny_net.ledger.balances.remote()), ray.get(tiny_net.ledger.head.remote())) == before


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(r=st.randoms(use_true_random=False))
def test_garbled_attestation_evidence_changes_no_node_record(tiny_net, r):
    nid = sorted(tiny_net.executors)[0]
    before = _state(tiny_net)[3]
    nonce = ray.get(tiny_net.registry.challenge.remote(nid))
    good = ray.get(tiny_net.executors[nid].attest.remote(nonce))
    bad, _ = adversary.mutate_bytes(r, good)
    if bad == good:
        return
    try:
        res = ray.get(tiny_net.registry.attest.remote(nid, bad), timeout=60)
        assert not res["ok"]
    except Exception as exc:
        assert _typed(exc), repr(exc)
    after = _state(tiny_net)[3]
    # forged evidence never changes keys or stake; authentic-but-bad evidence could only take
    # the node out of the TEE class, and a bit flip is never authentic
    assert after == before
