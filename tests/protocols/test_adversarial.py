"""The adversarial suite: malformed, truncated, oversized, re-typed, forged and replayed
inputs at every entry point (tests/adversary.py has the table and the oracle). Each input
gets a typed error and changes no state; nothing built to be refused is accepted. No Ray.

Property-based: hypothesis drives the seeded mutators of valid messages (st.randoms) and
adds its own byte edits and generated values. A few thousand cases per entry point in
all; `python -m benchmarks.fuzz` runs 100,000. The tests at the end pin the bugs the
fuzzer found, one input each.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import adversary as A

# cases per entry point (the costly ones open HPKE seals, check P-384 tokens or re-run a round's rules)
EXAMPLES = {name: 1500 for name in (
    "request.admit", "request.node", "result", "reveal", "refusal", "chunk", "envelope.random", "unblinding",
    "attestation.sim", "gateway.body", "ledger")}
EXAMPLES.update({"request.replay": 600, "ticket": 1000, "attestation.nvidia": 1000, "sealed_prompt": 1000,
                 "weights_key": 1000, "receipt": 1000})

SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return A.build(str(tmp_path_factory.mktemp("adversary")))


# --- hypothesis' own inputs, beside the mutators ---------------------------------------------------
def byte_edits(original: bytes) -> st.SearchStrategy[bytes]:
    n = len(original)

    def xor(edits):
        b = bytearray(original)
        for i, m in edits:
            b[i] ^= m
        return bytes(b)

    def insert(at_data):
        at, data = at_data
        return original[:at] + data + original[at:]

    return st.one_of(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=1, max_size=4,
                 unique_by=lambda e: e[0]).map(xor),
        st.integers(0, n - 1).map(lambda k: original[:k]),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=32)).map(insert),
        st.binary(max_size=300).filter(lambda b: b != original),
    )


MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), inner,
                                                                 max_size=4),
    max_leaves=10)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)


def shaped_envelopes() -> st.SearchStrategy[A.Case]:
    from protocols import messages

    fields_ = sorted({f for s in messages.SCHEMAS.values() for f in s})
    env = st.fixed_dictionaries({
        "v": st.sampled_from([1, 1, 0, 2, True, 1.0]), "type": st.sampled_from(sorted(messages.SCHEMAS) + ["x"]),
        "body": st.dictionaries(st.sampled_from(fields_), MSGPACK_VALUES, max_size=18),
        "sender": st.binary(min_size=32, max_size=32), "sig": st.binary(min_size=64, max_size=64)})
    return env.map(lambda e: A.Case("hyp:shaped", A.encode(e)))


def gateway_bodies() -> st.SearchStrategy[A.Case]:
    vi = st.fixed_dictionaries({}, optional={k: JSON_VALUES | st.sampled_from(["tee", "sampling", 1, 0.5])
                                             for k in ("mode", "n", "p", "require_tee", "top_k", "request")})
    text = st.text(max_size=30)
    msg = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "bot"]) | JSON_VALUES},
                                optional={"content": text | JSON_VALUES})
    body = st.fixed_dictionaries({}, optional={
        "model": st.just("m") | JSON_VALUES, "messages": st.lists(msg, max_size=3) | JSON_VALUES,
        "prompt": text | JSON_VALUES, "max_tokens": st.integers(-5, 5000) | JSON_VALUES,
        "temperature": st.floats() | JSON_VALUES, "stream": st.booleans() | JSON_VALUES, "verinfer": vi | JSON_VALUES,
        "n": JSON_VALUES, "stop": JSON_VALUES, "seed": JSON_VALUES, "stream_options": JSON_VALUES})
    as_case = lambda kind: lambda b: A.Case("hyp:body", (kind, json.dumps(b).encode()), must_reject=False)  # noqa: E731
    return st.one_of(body.map(as_case("chat")), body.map(as_case("completion")),
                     JSON_VALUES.map(as_case("chat")))


NOT_INT_AMOUNT = st.one_of(st.integers(max_value=0), st.integers(min_value=2**63), st.floats(), st.text(max_size=5),
                           st.none(), st.booleans(), st.binary(max_size=4))
NODE_LISTS = st.one_of(st.lists(st.text(max_size=4) | st.integers() | st.none(), min_size=1, max_size=4),
                       st.text(), st.integers(), st.none(),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def ledger_calls() -> st.SearchStrategy[A.Case]:
    def bad_account(a):
        from protocols.ledger import InvalidPosting, check_account

        try:
            check_account(a)
            return a == "external"
        except InvalidPosting:
            return True

    accounts = (st.text(max_size=12) | st.sampled_from(["client/", "escrow/", "external", "x/y"])
                | st.integers() | st.none() | st.binary(max_size=6)).filter(bad_account)
    deposits = st.one_of(
        st.tuples(st.just("deposit"), st.just("client/c1"), NOT_INT_AMOUNT, st.just("k-h")),
        st.tuples(st.just("deposit"), accounts, st.just(5), st.just("k-h")),
        st.tuples(st.just("withdraw"), st.sampled_from(["client/c1", "escrow/r-open", "treasury"]),
                  st.integers(10**6, 2**63 - 1), st.just("k-h")))
    unfunded = st.fixed_dictionaries({  # r-none has no escrow: paying anyone is refused, and so is a malformed list
        "request_id": st.just("r-none"), "client_id": st.just("c1") | st.text(max_size=3),
        "escrowed": st.integers(0, 2**62) | NOT_INT_AMOUNT, "paid_nodes": NODE_LISTS,
        "beneficiaries": st.just(()) | NODE_LISTS, "referees": st.just(()) | NODE_LISTS})
    return st.one_of(deposits.map(lambda c: A.Case("hyp:" + c[0], c)),
                     unfunded.map(lambda f: A.Case("hyp:settle", ("settle", f))))


def unblindings(world) -> st.SearchStrategy[A.Case]:
    u = world["unblinding"].make.__self__
    p = u.p1
    anything = st.text(max_size=8) | st.binary(max_size=40) | st.integers() | st.none()
    answers = st.tuples(st.text(max_size=8) | anything, st.binary(max_size=40) | anything,
                        st.text(max_size=70) | anything)
    return answers.filter(lambda a: a != u.answers[p]).map(lambda a: A.Case("hyp:answer", (u.commitment, p, *a)))


def native(world, name: str) -> st.SearchStrategy[A.Case]:
    ep = world[name]
    values = MSGPACK_VALUES.map(lambda v: A.Case("hyp:value", A.encode(v)))
    extra = {"envelope.random": lambda: shaped_envelopes() | values, "gateway.body": gateway_bodies,
             "ledger": ledger_calls, "unblinding": lambda: unblindings(world)}
    parts = [byte_edits(ep.original).map(ep.wrap)] if ep.original is not None else []
    if name in extra:
        parts.append(extra[name]())
    return st.one_of(*parts) if parts else st.nothing()


# --- the suite ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_entry_point_refuses_adversarial_inputs(world, name):
    ep = world[name]
    mutants = st.randoms(use_true_random=False).map(ep.make)
    cases = st.one_of(mutants, mutants, mutants, native(world, name))
    seen: dict[str, int] = {}

    @settings(max_examples=EXAMPLES[name], **SETTINGS)
    @given(cases)
    def check(case):
        verdict, why = A.run_case(ep, case)
        assert verdict not in A.FINDINGS, f"{name}: a {case.kind} case was {verdict}: {case.data!r:.400}"
        seen[verdict] = seen.get(verdict, 0) + 1
        ep.check()

    check()
    ep.audit()
    assert seen.get(A.REJECTED, 0) > EXAMPLES[name] // 2, seen  # the suite exercises refusals, not no-ops


def test_every_entry_point_is_in_the_suite(world):
    assert set(world) == set(EXAMPLES)


# --- what the fuzzer found (each of these crashed, or was accepted, before its fix) -------------------------
def _signed(body_over: dict) -> dict:
    return {**A.request_body("r-reg"), **body_over}


def test_a_body_packable_only_by_msgpack_is_malformed_not_a_crash():
    """A genuine signer's body with a bytes map key, or nested 1000 deep: msgpack decodes it,
    `pack` cannot re-encode it to check the signature (TypeError / RecursionError before)."""
    from protocols import messages
    from protocols.errors import MalformedMessage

    body = _signed({})
    for bad in ({**body, b"k": 1}, {**body, "params": {**body["params"], "x": A.Deep(1000)}}):
        raw = A.encode({"v": 1, "type": "request", "body": bad, "sender": A.CLIENT.public, "sig": b"\0" * 64})
        with pytest.raises(MalformedMessage):
            messages.open_envelope(raw)


def test_evidence_with_a_bytes_key_is_malformed():
    from protocols.canonical import unpack

    env = unpack(world_evidence())
    env["report"][b"x"] = 1
    res = A.att.verify(A.encode(env), A.BINDING, A.PINNED, (A.ROOT.trust_anchor,), A.NOW)
    assert not res.ok and res.reason == "malformed"


def world_evidence() -> bytes:
    return A.ROOT.evidence("gpu-0", A.NODE_KEY.public, A.KEM_PUB, A.NONCE, A.MEAS, 5, A.NOW)


@pytest.mark.parametrize("over, error", [
    ({"prompt_len": -1}, "prompt_len"),  # accepted before (a sealed request's length is never checked against text)
    ({"client_kem": b"\x01" * 5}, "client_kem"),  # accepted before: every node ran, then failed to seal the output
    ({"client_kem": bytes(32)}, "client_kem"),  # (a low-order point: HPKE refuses it too)
])
def test_requests_no_node_could_serve_are_refused_at_parse(over, error):
    from protocols import admission, messages
    from protocols.errors import InvalidParams

    raw = messages.seal("request", _signed(over), A.CLIENT).raw
    with pytest.raises(InvalidParams, match=error):
        admission.Request.parse(raw)


@pytest.mark.parametrize("field_, value", [("paid_nodes", 5), ("paid_nodes", None), ("paid_nodes", "abc"),
                                           ("beneficiaries", {"n1": 1}), ("referees", 1.5), ("slashes", 5),
                                           ("slashes", "n1")])
def test_settlement_node_lists_must_be_lists(field_, value):
    """5 / None / 1.5 raised TypeError; "abc" paid nodes a, b and c; a dict paid its keys."""
    from protocols.ledger import InvalidPosting, Settlement

    with pytest.raises(InvalidPosting):
        Settlement("r", "c", 0, **{field_: value})


@pytest.mark.parametrize("args", [(5, b"s", b"k" * 32, ""), ("n1", "salt", b"k" * 32, ""), ("n1", b"s", b"", ""),
                                  ("n1", b"s", b"k" * 32, None), ("", b"s", b"k" * 32, "")])
def test_a_binding_the_ledger_would_store_as_junk_is_refused(args):
    from protocols.ledger import InvalidPosting
    from protocols.settlement import Binding

    with pytest.raises(InvalidPosting):
        Binding(*args)


@pytest.mark.parametrize("commitment, pseudonym", [([], b"p" * 32), (None, b"p" * 32), ({}, "p-00"), ({}, None)])
def test_unblinding_against_a_malformed_mapping_is_rejected(commitment, pseudonym):
    from protocols import obfuscation

    with pytest.raises(obfuscation.UnblindingRejected):
        obfuscation.check_unblinding(commitment, pseudonym, "n1", b"s" * 32)


def test_a_receipt_of_the_wrong_shape_is_invalid_whoever_signed_it(world):
    """The aggregator's own key over draws that are not maps, or miss their label (KeyError and
    TypeError before): a verifier fails closed. (`unblinded: None` was accepted: any falsy value passed.)"""
    from protocols.canonical import unpack
    from protocols.errors import ReceiptInvalid

    rec = world["receipt"].make.__self__
    for edit in (lambda b: b["selection"]["draws"].append([]), lambda b: b["selection"]["draws"][0].pop("label"),
                 lambda b: b["selection"]["draws"][0]["eligible"].append(1.5),
                 lambda b: b["decision"].update(coin={"p": "x"}), lambda b: b["decision"].update(unblinded=None)):
        obj = unpack(rec.raws["final"])
        edit(obj["body"])
        with pytest.raises(ReceiptInvalid):
            A.receipts.verify_receipt(A._resign(obj, rec.agg), [rec.agg.public], trusted_selectors=rec.trusted)


@pytest.mark.parametrize("raw", [b"[" * 100000, b'{"prompt": "\\ud800"}', b'{"model": "\\udfff", "prompt": "x"}',
                                 b'{"prompt": "x", "verinfer": {"mode": []}}',
                                 b'{"prompt": "x", "verinfer": {"mode": {}}}'])
def test_gateway_bodies_that_crashed_are_4xx(raw):
    """Deep JSON raised RecursionError (not ValueError); a lone surrogate reached the prompt hash
    (UnicodeEncodeError); an unhashable verinfer.mode raised TypeError."""
    from cluster import openai_api as oa

    with pytest.raises(oa.APIError) as exc:
        oa.parse(oa.COMPLETION, oa.read_body(raw), "m")
    assert 400 <= exc.value.status < 500


def test_oversized_bodies_are_413():
    from cluster import openai_api as oa

    with pytest.raises(oa.APIError) as exc:
        oa.read_body(b" " * (oa.MAX_BODY_BYTES + 1))
    assert exc.value.status == 413


def test_nan_and_infinite_json_numbers_are_refused():
    from cluster import openai_api as oa

    for v in (math.nan, math.inf):
        with pytest.raises(oa.APIError):
            oa.parse(oa.COMPLETION, oa.read_body(json.dumps({"prompt": "x", "temperature": v}).encode()), "m")
