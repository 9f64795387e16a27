"""Verification by prefill catches every known misbehaviour, on both CPU engines."""

from __future__ import annotations

import random

import pytest

from protocols.params import SamplingParams

PROMPTS = ["What is the capital of France?", "Write one sentence about the sea."]
PARAMS = [SamplingParams(max_tokens=12), SamplingParams(max_tokens=12, temperature=0.8, top_k=40, seed=1234)]


def engines(kind):
    if kind == "tiny":
        from actors.engines.tiny import TinyEngine as E
    else:
        from actors.engines.smollm2 import SmolLM2Engine as E
    out = {}
    for variant in ("honest", "requantize", "substitute"):
        e = E()
        e.load(variant)
        out[variant] = e
    return out


@pytest.fixture(scope="module", params=["tiny", pytest.param("smollm2", marks=pytest.mark.smollm2)])
def variants(request):
    return engines(request.param)


@pytest.mark.parametrize("params", PARAMS, ids=["greedy", "seeded"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_honest_output_is_accepted_and_every_cheat_rejected(variants, prompt, params):
    honest = variants["honest"]
    truth = honest.generate(prompt, params).token_ids
    assert honest.verify_prefill(prompt, params, truth).accepted
    vocab = 256
    cheats = {
        "substitute": variants["substitute"].generate(prompt, params).token_ids,
        "requantize": variants["requantize"].generate(prompt, params).token_ids,
        "random": [random.Random(7).randrange(vocab) for _ in range(params.max_tokens)],
        "copy": [],  # a copier that found nothing to copy commits an empty output
        "truncated": truth[:-1],
    }
    for name, claim in cheats.items():
        if claim == truth:
            pytest.fail(f"{name} produced the honest output; pick another prompt")
        v = honest.verify_prefill(prompt, params, claim)
        assert not v.accepted, name
