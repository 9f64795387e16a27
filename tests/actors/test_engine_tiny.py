"""TinyEngine (actors/engines/tiny.py): determinism, hashes, fingerprints, variants.

Pure torch, no Ray. These are the properties a quorum relies on: honest nodes in
one determinism class produce identical tokens, the registry's model hash is the
weights file's SHA-256, and the malicious variants really do produce other tokens
(otherwise the dispute tests would prove nothing).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from actors.engines import tiny
from actors.engines.base import Engine, Generation
from actors.engines.tiny import TinyEngine, file_sha256, tiny_model_hash, weights_path
from protocols.determinism import class_id
from protocols.errors import InvalidParams, ModelHashMismatch, PromptTooLarge
from protocols.params import SamplingParams, derive_seed

PROMPT = "The quick brown fox"
GREEDY = SamplingParams(max_tokens=16)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny-cache"))


@pytest.fixture(scope="module")
def honest(cache):
    e = TinyEngine(cache_dir=cache)
    e.load()
    return e


def make(cache_dir, variant="honest", **kw):
    e = TinyEngine(cache_dir=str(cache_dir), **kw)
    e.load(variant)
    return e


# --- interface ------------------------------------------------------------------------------


def test_engine_satisfies_engine_protocol(honest):
    assert isinstance(honest, Engine)
    g = honest.generate(PROMPT, GREEDY)
    assert isinstance(g, Generation)
    assert 0 < len(g.token_ids) <= GREEDY.max_tokens
    assert all(0 <= t < 256 for t in g.token_ids)  # EOS is never part of the output
    assert g.text == TinyEngine.detokenize(g.token_ids)
    assert g.prompt_token_ids == list(PROMPT.encode())


def test_generate_before_load_is_refused(cache):
    with pytest.raises(RuntimeError, match="not loaded"):
        TinyEngine(cache_dir=cache).generate(PROMPT, GREEDY)


# --- determinism ----------------------------------------------------------------------------


def test_greedy_same_prompt_twice_gives_same_tokens(honest):
    a = honest.generate(PROMPT, GREEDY)
    b = honest.generate(PROMPT, GREEDY)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert len(set(a.token_ids)) > 1  # not a degenerate single-byte loop


def test_two_engines_built_independently_agree(honest, tmp_path):
    # a separate cache dir: the other engine builds its own weights file from the seed,
    # as a node on another machine would
    other = make(tmp_path)
    assert other.model_hash() == honest.model_hash()
    assert other.generate(PROMPT, GREEDY).token_ids == honest.generate(PROMPT, GREEDY).token_ids
    sampled = SamplingParams(max_tokens=16, temperature=1.0, seed=7)
    assert other.generate(PROMPT, sampled).token_ids == honest.generate(PROMPT, sampled).token_ids


def test_different_prompts_give_different_greedy_outputs(honest):
    assert honest.generate(PROMPT, GREEDY).token_ids != honest.generate("Hello world", GREEDY).token_ids


def test_seeded_sampling_reproducible_and_seed_dependent(honest):
    p1 = SamplingParams(max_tokens=16, temperature=1.0, seed=1)
    p2 = SamplingParams(max_tokens=16, temperature=1.0, seed=2)
    a, b = honest.generate(PROMPT, p1), honest.generate(PROMPT, p1)
    assert a.token_ids == b.token_ids
    assert honest.generate(PROMPT, p2).token_ids != a.token_ids
    assert a.token_ids != honest.generate(PROMPT, GREEDY).token_ids  # sampling is not greedy


def test_top_k_one_equals_greedy(honest):
    p = SamplingParams(max_tokens=16, temperature=1.0, top_k=1, seed=5)
    assert honest.generate(PROMPT, p).token_ids == honest.generate(PROMPT, GREEDY).token_ids


def test_request_id_seed_gives_reproducible_sampling(honest):
    p = SamplingParams(max_tokens=16, temperature=0.8).with_seed_for("req-1")
    assert p.seed == derive_seed("req-1")
    assert honest.generate(PROMPT, p).token_ids == honest.generate(PROMPT, p).token_ids


def test_derive_seed_depends_on_request_id():
    a, b = derive_seed("request-a"), derive_seed("request-b")
    assert a == derive_seed("request-a")
    assert a != b
    assert all(0 <= s < 2**63 for s in (a, b))
    SamplingParams(seed=a)  # always a valid seed
    assert SamplingParams(temperature=1.0).with_seed_for("request-b").seed == b


def test_seed_out_of_range_is_invalid():
    with pytest.raises(InvalidParams):
        SamplingParams(seed=2**63)


# --- hashes and fingerprints ------------------------------------------------------------------


def test_model_hash_is_sha256_of_safetensors_file(honest, cache):
    path = weights_path(tiny.TinyConfig(), cache)
    assert path.suffix == ".safetensors" and path.parent == Path(cache)
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    assert honest.model_hash() == want == file_sha256(path) == tiny_model_hash(cache_dir=cache)
    assert len(want) == 64


def test_model_hash_available_without_load(cache, honest):
    assert TinyEngine(cache_dir=cache).model_hash() == honest.model_hash()


def test_fingerprint_fields(honest):
    fp = honest.fingerprint()
    for k in ("engine", "device", "dtype", "threads", "model_hash"):
        assert k in fp
    assert fp["engine"] == "tiny" and fp["device"] == "cpu" and fp["dtype"] == "float32"
    assert fp["threads"] == 1 and fp["model_hash"] == honest.model_hash()
    assert class_id(fp) == class_id(dict(fp))  # stable
    assert class_id(fp).startswith("tiny-")


def test_class_id_changes_with_threads_and_model_hash(honest, cache):
    base = class_id(honest.fingerprint())
    assert class_id(TinyEngine(cache_dir=cache).fingerprint()) == base  # same class
    two_threads = TinyEngine(cache_dir=cache, threads=2).fingerprint()  # fingerprint needs no load
    assert two_threads["threads"] == 2
    assert class_id(two_threads) != base
    other_weights = TinyEngine(cache_dir=cache, seed=99)
    assert other_weights.model_hash() != honest.model_hash()
    assert class_id(other_weights.fingerprint()) != base


# --- limits -----------------------------------------------------------------------------------


def test_oversize_prompt_raises_prompt_too_large(cache):
    e = make(cache, max_prompt_tokens=32)
    e.generate("x" * 32, SamplingParams(max_tokens=2))  # at the limit: fine
    with pytest.raises(PromptTooLarge):
        e.generate("x" * 33, SamplingParams(max_tokens=2))
    with pytest.raises(PromptTooLarge):  # the limit counts byte tokens, not characters
        e.generate("é" * 17, SamplingParams(max_tokens=2))


def test_prompt_plus_max_tokens_beyond_context_raises(honest):
    with pytest.raises(PromptTooLarge):
        honest.generate("x" * 100, SamplingParams(max_tokens=tiny.TinyConfig().max_pos))


def test_default_prompt_limit(honest):
    with pytest.raises(PromptTooLarge):
        honest.generate("y" * 513, SamplingParams(max_tokens=1))


# --- malicious variants -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["requantize", "substitute"])
def test_malicious_variants_change_output_but_claim_same_hash(honest, cache, variant):
    bad = make(cache, variant)
    assert bad.variant == variant
    assert bad.model_hash() == honest.model_hash()  # it claims the registered model
    assert bad.fingerprint() == honest.fingerprint()  # and the same determinism class
    assert bad.generate(PROMPT, GREEDY).token_ids != honest.generate(PROMPT, GREEDY).token_ids


def test_unknown_variant_not_implemented(cache):
    with pytest.raises(NotImplementedError):
        make(cache, "random")


# --- weights file -----------------------------------------------------------------------------


def test_weights_file_built_once_atomically_into_cache_dir(tmp_path):
    cache_dir = tmp_path / "cache" / "nested"  # created on demand
    e = make(cache_dir)
    files = sorted(os.listdir(cache_dir))
    assert len(files) == 1 and files[0].endswith(".safetensors"), files
    assert not [f for f in files if f.endswith(".tmp")]
    path = cache_dir / files[0]
    assert e.model_hash() == file_sha256(path)
    mtime = path.stat().st_mtime_ns
    assert weights_path(tiny.TinyConfig(), cache_dir) == path  # second call reuses it
    make(cache_dir)
    assert path.stat().st_mtime_ns == mtime and os.listdir(cache_dir) == files


def test_failed_build_leaves_no_weights_file(tmp_path, monkeypatch):
    def boom(state, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(tiny, "save_file", boom)
    with pytest.raises(OSError):
        weights_path(tiny.TinyConfig(), tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))  # never a half-written weights file
    monkeypatch.undo()
    assert file_sha256(weights_path(tiny.TinyConfig(), tmp_path)) == tiny_model_hash(cache_dir=str(tmp_path))


def test_different_config_gets_different_file(tmp_path):
    a = weights_path(tiny.TinyConfig(), tmp_path)
    b = weights_path(tiny.TinyConfig(seed=4321), tmp_path)
    assert a != b and file_sha256(a) != file_sha256(b)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_expected_hash_checked_on_load(honest, cache):
    with pytest.raises(ModelHashMismatch):
        TinyEngine(cache_dir=cache, expected_hash="0" * 64).load()
    ok = TinyEngine(cache_dir=cache, expected_hash=honest.model_hash())
    ok.load()
    assert ok.generate(PROMPT, GREEDY).token_ids == honest.generate(PROMPT, GREEDY).token_ids


def test_tampered_weights_file_detected(tmp_path):
    e = make(tmp_path)
    good = e.model_hash()
    path = next(tmp_path.glob("*.safetensors"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ModelHashMismatch):
        TinyEngine(cache_dir=str(tmp_path), expected_hash=good).load()
