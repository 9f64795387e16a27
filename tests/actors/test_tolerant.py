"""Tolerant verification by one prefill (engines.decoding.verify_tolerant) on the tiny
engine: honest outputs across precision, threads and batch rows pass at the model's
calibrated tolerance (cluster/configs/tiny.toml); cheats do not."""

from __future__ import annotations

import itertools

import pytest
import torch

from actors.engines.tiny import TinyEngine
from cluster import config as cfgmod
from protocols import fingerprint as fp
from protocols.params import SamplingParams

PROMPTS = ["the cat and the river", "why seven", "node proof light", "a quick blue story about the model"]
CONFIGS = [(d, t, r) for d in ("float32", "bfloat16") for t in (1, 2) for r in (1, 8)]


@pytest.fixture(scope="module")
def tol() -> fp.Tolerance:
    model = next(m for m in cfgmod.load("tiny.toml").models if m.id == "tiny")
    return model.tolerant()


@pytest.fixture(scope="module")
def engines() -> dict:
    out = {}
    for d, t, r in CONFIGS:
        e = TinyEngine(threads=t, batch_rows=r, dtype=d)
        e.load()
        out[(d, t, r)] = e
    return out


@pytest.fixture(scope="module")
def honest(engines):
    return engines[("float32", 1, 8)]


def params_for(i: int) -> SamplingParams:
    if i % 2 == 0:
        return SamplingParams(max_tokens=40)
    return SamplingParams(max_tokens=40, temperature=0.8, top_k=20).with_seed_for(f"req-{i}")


def test_the_model_config_carries_a_calibrated_tolerance(tol):
    assert tol is not None and 0 < tol.token_margin < 0.1 and tol.thresholds.min_overlap > 0.9


def test_honest_outputs_pass_across_precision_threads_and_batch_rows(engines, tol):
    for i, prompt in enumerate(PROMPTS):
        p = params_for(i)
        outs = {c: e.generate(prompt, p) for c, e in engines.items()}
        for a, b in itertools.permutations(CONFIGS, 2):
            v = engines[b].verify_tolerant(prompt, p, outs[a].token_ids, outs[a].fingerprint, tol)
            assert v.accepted, (prompt, a, b, v.to_wire())


def test_a_benign_divergence_is_accepted_both_ways(engines, tol):
    """bfloat16 and float32 nodes do not always make the same tokens; each accepts the other's."""
    f32, b16 = engines[("float32", 1, 8)], engines[("bfloat16", 1, 8)]
    for i in range(40):
        prompt, p = f"divergence probe {i}", params_for(i)
        x, y = f32.generate(prompt, p), b16.generate(prompt, p)
        if x.token_ids != y.token_ids:
            assert f32.verify_tolerant(prompt, p, y.token_ids, y.fingerprint, tol).accepted
            assert b16.verify_tolerant(prompt, p, x.token_ids, x.fingerprint, tol).accepted
            return
    pytest.fail("no prompt made float32 and bfloat16 diverge; the test needs one")


def _cheater(variant: str) -> TinyEngine:
    e = TinyEngine()
    e.load(variant)
    return e


@pytest.mark.parametrize("variant", ["substitute", "requantize"])  # a smaller model; 4-bit weights
def test_another_model_is_rejected(honest, tol, variant):
    cheat = _cheater(variant)
    for i, prompt in enumerate(PROMPTS):
        p = params_for(i)
        g = cheat.generate(prompt, p)
        v = honest.verify_tolerant(prompt, p, g.token_ids, g.fingerprint, tol)
        assert not v.accepted, (variant, prompt, v.to_wire())


def _honest_blob(engine, prompt: str, tokens: list[int]) -> bytes:
    """The fingerprint the honest model gives any tokens (the best a cheater can send)."""
    ids = engine.prompt_token_ids(prompt)
    with torch.inference_mode():
        _, hidden = engine._model(torch.tensor(ids + tokens), with_hidden=True)
    hidden = hidden[len(ids) - 1:]
    return fp.encode([hidden[j].float().tolist() for j in fp.positions(len(tokens))])


def test_random_tokens_an_altered_prompt_or_altered_params_are_rejected(honest, tol):
    import random

    r = random.Random(0)
    for i, prompt in enumerate(PROMPTS):
        p = params_for(i)
        g = honest.generate(prompt, p)
        rnd = [r.randrange(256) for _ in g.token_ids]
        assert not honest.verify_tolerant(prompt, p, rnd, _honest_blob(honest, prompt, rnd), tol).accepted
        other = honest.generate(prompt + " and more", p)  # the output of another prompt
        assert not honest.verify_tolerant(prompt, p, other.token_ids, other.fingerprint, tol).accepted
        alt = SamplingParams(max_tokens=40, temperature=1.0).with_seed_for(f"other-{i}") if p.greedy \
            else SamplingParams(max_tokens=40)
        other = honest.generate(prompt, alt)  # the right model and prompt, other sampling parameters
        assert not honest.verify_tolerant(prompt, p, other.token_ids, other.fingerprint, tol).accepted


def test_a_truncated_output_is_rejected(honest, tol):
    for i, prompt in enumerate(PROMPTS):
        p = params_for(i)
        g = honest.generate(prompt, p)
        assert len(g.token_ids) >= 8
        cut = g.token_ids[:len(g.token_ids) // 2]
        v = honest.verify_tolerant(prompt, p, cut, _honest_blob(honest, prompt, cut), tol)
        assert not v.accepted and v.tokens.mismatch_at == len(cut)  # the rule does not stop there


def test_a_forged_or_missing_fingerprint_is_rejected(honest, tol):
    prompt, p = PROMPTS[0], params_for(0)
    g = honest.generate(prompt, p)
    assert honest.verify_tolerant(prompt, p, g.token_ids, g.fingerprint, tol).accepted
    other = honest.generate(PROMPTS[1], p).fingerprint  # a real fingerprint, of another output
    for blob in (b"", b"\x00" * len(g.fingerprint), other, g.fingerprint[:-2], g.fingerprint + b"\x00\x00"):
        v = honest.verify_tolerant(prompt, p, g.token_ids, blob, tol)
        assert not v.accepted and v.tokens.accepted  # the tokens were fine: the fingerprint is not


def test_a_claim_longer_than_the_request_is_rejected_without_a_pass(honest, tol):
    p = SamplingParams(max_tokens=4)
    v = honest.verify_tolerant("x", p, [65] * 5, b"", tol)
    assert not v.accepted and v.tokens.mismatch_at == 4


def test_fingerprints_are_the_same_batched_or_alone(honest):
    """The fingerprint is part of what a node commits to: batching must not move it either."""
    from actors.engines import batching

    loop = batching.Batcher()
    loop.engine = honest
    p = SamplingParams(max_tokens=40)
    futs = [loop.generate(f"{pr} {j}", p) for j in range(3) for pr in PROMPTS]
    for (j, pr), fut in zip([(j, pr) for j in range(3) for pr in PROMPTS], futs):
        assert fut.result(timeout=60).fingerprint == honest.generate(f"{pr} {j}", p).fingerprint
