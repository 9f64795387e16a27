"""A node's engine loop batches requests without changing a token (engines.batching)."""

from __future__ import annotations

import random
import threading

import pytest

from actors.engines import batching
from actors.engines.tiny import TinyEngine
from protocols.determinism import class_id
from protocols.errors import PromptTooLarge
from protocols.params import SamplingParams


@pytest.fixture(scope="module")
def engine():
    e = TinyEngine()
    e.load()
    return e


def _requests(k: int, seed: int = 3):
    rng = random.Random(seed)
    out = []
    for _ in range(k):
        prompt = "".join(chr(rng.randrange(97, 123)) for _ in range(rng.randrange(1, 40)))
        sampled = rng.random() < 0.5
        out.append((prompt, SamplingParams(max_tokens=rng.randrange(1, 30), temperature=1.1 if sampled else 0.0,
                                           top_k=rng.choice((0, 16)) if sampled else 0, seed=rng.randrange(1 << 30))))
    return out


def _loop(engine):
    loop = batching.Batcher()
    loop.engine = engine
    return loop


def test_batched_tokens_equal_alone_greedy_and_sampled(engine):
    reqs = _requests(40)
    alone = [engine.generate(p, q).token_ids for p, q in reqs]
    loop = _loop(engine)
    got = [f.result(timeout=60).token_ids for f in [loop.generate(p, q) for p, q in reqs]]
    assert got == alone
    assert loop.stats()["peak_rows"] == engine.rows  # they really shared decode steps


def test_requests_join_and_leave_mid_batch(engine):
    """Arrivals while others are decoding land in other slots beside other neighbours."""
    reqs = _requests(24, seed=11)
    alone = [engine.generate(p, q).token_ids for p, q in reqs]
    loop = _loop(engine)
    futs = []
    for i in range(0, len(reqs), 5):
        futs += [loop.generate(p, q) for p, q in reqs[i:i + 5]]
        threading.Event().wait(0.003)
    assert [f.result(timeout=60).token_ids for f in futs] == alone


def test_a_bad_request_fails_alone(engine):
    loop = _loop(engine)
    good = [loop.generate("hello", SamplingParams(max_tokens=12)) for _ in range(3)]
    bad = loop.generate("x" * 600, SamplingParams(max_tokens=4))  # over max_prompt_tokens
    with pytest.raises(PromptTooLarge):
        bad.result(timeout=30)
    want = engine.generate("hello", SamplingParams(max_tokens=12)).token_ids
    assert all(f.result(timeout=30).token_ids == want for f in good)


def test_streaming_callback_sees_every_token(engine):
    seen = []
    loop = _loop(engine)
    g = loop.generate("stream me", SamplingParams(max_tokens=10), lambda toks: seen.append(list(toks))).result(30)
    assert seen and seen[-1] == g.token_ids and [len(s) for s in seen] == list(range(1, len(g.token_ids) + 1))


def test_other_engine_work_runs_on_the_loop_between_steps(engine):
    loop = _loop(engine)
    futs = [loop.generate("abc", SamplingParams(max_tokens=20)) for _ in range(4)]
    names = loop.call(lambda: threading.current_thread().name).result(timeout=30)
    assert names == loop._thread.name
    assert all(f.result(timeout=30).token_ids for f in futs)


def test_batching_policy_is_part_of_the_determinism_class():
    a, b = TinyEngine(batch_rows=8), TinyEngine(batch_rows=4)
    assert a.fingerprint()["batching"] == "fixed-rows-8"
    assert class_id(a.fingerprint()) != class_id(b.fingerprint())
    with pytest.raises(ValueError):
        TinyEngine(batch_rows=0)


def test_a_requests_logits_do_not_depend_on_its_neighbours(engine):
    """The guarantee under the tokens: the same bits alone, in any slot, beside anyone.
    (A neighbour that could move a request's logits could flip a near-tie token and
    send an honest node to the referees.)"""
    import torch

    params = SamplingParams(max_tokens=4)
    target = batching.start(engine, "the request under test", params)
    logits, hidden = engine.decode([target], [65])
    alone, alone_h = logits[0].clone(), hidden[0].clone()
    for slot in range(engine.rows):
        others = [batching.start(engine, f"neighbour {j} " * (j + 1), params) for j in range(engine.rows - 1)]
        seqs = others[:slot] + [batching.start(engine, "the request under test", params)] + others[slot:]
        toks = [66 + j for j in range(slot)] + [65] + [66 + j for j in range(slot, engine.rows - 1)]
        logits, hidden = engine.decode(seqs, toks)
        assert torch.equal(logits[slot], alone), f"slot {slot} changed the logits"
        assert torch.equal(hidden[slot], alone_h), f"slot {slot} changed the hidden state"  # (fingerprints)


def test_a_request_that_fails_mid_decode_does_not_end_its_neighbours(engine):
    """A client cannot sink the other requests sharing a node's batch (their nodes would
    then miss deadlines and be slashed): only the failing request fails."""
    def broken_stream(tokens):
        if len(tokens) == 3:
            raise ConnectionError("the stream of this request broke")

    params = SamplingParams(max_tokens=12)
    want = engine.generate("neighbour", params).token_ids
    loop = _loop(engine)
    good = [loop.generate("neighbour", params) for _ in range(4)]
    bad = loop.generate("the one that breaks", params, broken_stream)
    with pytest.raises(ConnectionError):
        bad.result(timeout=30)
    assert [f.result(timeout=30).token_ids for f in good] == [want] * 4
