"""Cross-validation coin and round (pure) and the prefill judge's near-tie rule."""

import os

import pytest
import torch

from actors.engines import decoding
from protocols import commitments, crossval, messages
from protocols.crypto import SigningKey
from protocols.errors import InvalidParams, MessageError
from protocols.params import SamplingParams
from protocols.sampling import (CROSS_VALIDATION, Dispatch, DrawVerifiers, Finalize, FirstOutput, FlipCoin,
                                RequestReveals, Round)

KEYS = {f"n{i}": SigningKey(bytes([i + 1]) * 32) for i in range(8)}
C = commitments.output_commitment("r", "h" * 64, b"p" * 32, {}, [1, 2])


def test_coin_is_committed_before_and_checkable_after():
    seed = os.urandom(32)
    commit = crossval.coin_commit(seed)
    exec_commit = os.urandom(32)
    checked = crossval.flip(seed, "r", exec_commit, 0.5)
    assert crossval.verify_coin(commit, seed, "r", exec_commit, 0.5, checked)
    assert not crossval.verify_coin(commit, seed, "r", exec_commit, 0.5, not checked)
    assert not crossval.verify_coin(commit, os.urandom(32), "r", exec_commit, 0.5, checked)


def test_coin_depends_on_the_executor_commitment_so_nobody_can_precompute_it():
    seed = os.urandom(32)
    values = {crossval.coin_value(seed, "r", os.urandom(32)) for _ in range(50)}
    assert len(values) == 50
    frac = sum(crossval.flip(seed, "r", os.urandom(32), 0.25) for _ in range(4000)) / 4000
    assert 0.21 < frac < 0.29
    assert crossval.flip(seed, "r", b"x", 0.0) is False and crossval.flip(seed, "r", b"x", 1.0) is True
    with pytest.raises(InvalidParams):
        crossval.check_probability(1.5)


def cv_round(n_verifiers=2):
    r = Round("r", 1, 10, 5, n_verifiers + 1, mode=CROSS_VALIDATION, verifiers=n_verifiers)
    r.start(["n0"], [KEYS["n0"].public], 0.0)
    return r


def test_reveal_waits_for_the_coin_and_unchecked_is_final_alone():
    r = cv_round()
    commit = commitments.commit_hash(KEYS["n0"].public, C, b"s" * 32)
    acts = r.on_result("n0", KEYS["n0"].public, commit, 1.0)
    assert acts == [FirstOutput("n0"), FlipCoin("n0", commit)]  # no reveal before the coin
    with pytest.raises(MessageError):
        r.on_reveal("n0", KEYS["n0"].public, C, b"s" * 32, 1.1)
    assert r.on_coin(False, 1.2) == [RequestReveals(("n0",), "quorum")]
    o = r.on_reveal("n0", KEYS["n0"].public, C, b"s" * 32, 1.3)[0].outcome
    assert o.status == "final" and o.branch == "unchecked" and o.paid == ("n0",)


def test_checked_draws_verifiers_who_check_the_executor():
    r = cv_round(2)
    r.on_result("n0", KEYS["n0"].public, commitments.commit_hash(KEYS["n0"].public, C, b"s" * 32), 1.0)
    assert r.on_coin(True, 1.1) == [DrawVerifiers(2, ("n0",))]
    acts = r.on_replacements(["n1", "n2"], [KEYS["n1"].public, KEYS["n2"].public], "quorum", 1.2)
    assert acts == [Dispatch(("n1", "n2"), "quorum", verify_of="n0")]
    for nid in ("n1", "n2"):
        acts = r.on_result(nid, KEYS[nid].public, commitments.commit_hash(KEYS[nid].public, C, b"s" * 32), 2.0)
    assert acts == [RequestReveals(("n0", "n1", "n2"), "quorum")]
    for nid in ("n0", "n1", "n2"):
        acts = r.on_reveal(nid, KEYS[nid].public, C, b"s" * 32, 3.0)
    o = acts[0].outcome
    assert isinstance(acts[0], Finalize) and o.branch == "checked" and set(o.paid) == {"n0", "n1", "n2"}


# --- the prefill judge -------------------------------------------------------------
GREEDY = SamplingParams(max_tokens=3)


def rows(*best, ties=None, vocab=6):
    """Logit rows whose argmax is `best[i]`; `ties` = {row: (token, gap)} puts a rival near the top."""
    out = torch.zeros(len(best), vocab)
    for i, b in enumerate(best):
        out[i, b] = 5.0
    for i, (tok, gap) in (ties or {}).items():
        out[i, tok] = 5.0 - gap
    return out


def test_judge_accepts_exact_claims_and_rejects_wrong_ones():
    stop = [5]
    assert decoding.judge(rows(1, 2, 5), [1, 2], GREEDY, stop).accepted
    v = decoding.judge(rows(1, 2, 5), [1, 3], GREEDY, stop)
    assert not v.accepted and not v.uncertain and v.mismatch_at == 1
    v = decoding.judge(rows(1, 2, 4), [1, 2], GREEDY, stop)  # the rule would not have stopped there
    assert not v.accepted and v.mismatch_at == 2
    assert not decoding.judge(rows(1, 2, 5), [1, 5], GREEDY, stop).accepted  # stop tokens are never output


def test_judge_near_tie_is_uncertain_not_a_verdict():
    # Prefill's argmax is 2 but claimed 3 is within 1e-6 of it: decode numerics may have picked 3.
    v = decoding.judge(rows(1, 2, 5, ties={1: (3, 1e-6)}), [1, 3], GREEDY, [5])
    assert not v.accepted and v.uncertain and v.mismatch_at is None
    # a real gap stays a rejection
    v = decoding.judge(rows(1, 2, 5, ties={1: (3, 0.5)}), [1, 3], GREEDY, [5])
    assert not v.accepted and not v.uncertain


def test_uncertain_prefill_falls_back_to_regeneration_on_a_real_engine(monkeypatch):
    """A verifier handed a claim that prefill is unsure about must regenerate and commit
    to its own decode, not to the claim. Drives NodeExecutor.execute in-process (no Ray)."""
    import asyncio

    from actors.engines.tiny import TinyEngine
    from actors.executor import NodeExecutor

    eng = TinyEngine()
    eng.load()
    prompt, rid = "near tie", "uncertain-rid"
    params = SamplingParams(max_tokens=8).with_seed_for(rid)
    plain = eng.generate(prompt, params).token_ids
    assert plain, "the tiny model must produce tokens for this prompt"
    claimed = [(t + 1) % 256 for t in plain]  # a claim that differs from what decode gives
    assert claimed != plain

    client = SigningKey(b"\x42" * 32)
    nonce = b"\x01" * 16
    body = {"request_id": rid, "client_id": messages.client_id_of(client.public), "model_id": "tiny",
            "model_hash": eng.model_hash(), "prompt_hash": commitments.prompt_hash(prompt, nonce),
            "prompt_len": len(prompt), "params": params.to_wire(), "mode": CROSS_VALIDATION, "n": 1,
            "timeout_s": 10.0, "nonce": nonce, "created_at": 0.0}
    request_raw = messages.seal("request", body, client).raw

    from tests.authority import AnyRole, local_call

    auth = AnyRole()  # the aggregator's signed calls
    ex = NodeExecutor("v1", {"engine": "tiny"}, key_seed=b"\x07" * 32, control=auth.spec(target="v1"))
    ex.engine = eng

    judged = []

    def uncertain(rows, claim, *a, **k):
        judged.append(list(claim))
        return decoding.Verdict(False, True, None)

    monkeypatch.setattr(decoding, "judge", uncertain)
    res = asyncio.run(local_call(auth, ex, "executor", "execute", request_raw, prompt, "quorum", claimed=claimed,
                                 target="v1"))
    assert judged == [claimed]  # prefill verification really ran on the claim
    assert res["method"] == "prefill-uncertain+generate"
    assert res["output"]["token_ids"] == plain  # regenerated: the node's own decode, not the claim
    reveal = messages.open_envelope(asyncio.run(local_call(auth, ex, "executor", "reveal", rid, target="v1")),
                                    "reveal").body
    assert reveal["commitment"] == commitments.output_commitment(
        rid, eng.model_hash(), body["prompt_hash"], params.to_wire(), plain)
    assert reveal["commitment"] != commitments.output_commitment(
        rid, eng.model_hash(), body["prompt_hash"], params.to_wire(), claimed)
