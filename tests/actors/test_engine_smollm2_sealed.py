"""SmolLM2 weights at rest: the sealed package, and loading it only with the released key.

The package is made once per module from the shared converted cache ($VERINFER_CACHE
or ~/.cache/verinfer), exactly as `deploy` does for `encrypted_weights = true`.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gguf")

from actors.engines import make_engine  # noqa: E402
from actors.engines import sealed_package as sp  # noqa: E402
from actors.engines.smollm2 import SmolLM2Engine, smollm2_model_hash  # noqa: E402
from cluster.config import ModelSection  # noqa: E402
from cluster.network import encrypt_weights, engine_spec  # noqa: E402
from protocols import sealing  # noqa: E402
from protocols.errors import ModelHashMismatch, ModelLocked  # noqa: E402
from protocols.params import SamplingParams  # noqa: E402

from tests.actors.test_engine_smollm2 import GREEDY8, PARIS_IDS, PROMPT, STORY, _cache_dir  # noqa: E402
from tests.actors.test_engine_smollm2 import engine as plain  # noqa: E402,F401  (the plaintext-loaded engine fixture)

pytestmark = pytest.mark.smollm2

MODEL_ID = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """(engine spec, key): the model owner's sealed package, as deploy writes it."""
    opts = {"encrypted_weights": True, **({"cache_dir": _cache_dir()} if _cache_dir() else {})}
    model = ModelSection(id=MODEL_ID, engine="smollm2", options=opts)
    path = str(tmp_path_factory.mktemp("weights") / f"net-{MODEL_ID}.enc")
    key = encrypt_weights(model, path)
    return engine_spec(model, 1, {MODEL_ID: path}), key


@pytest.fixture(scope="module")
def sealed(package):
    spec, key = package
    eng = make_engine(spec)
    eng.load(weights_key=key)
    yield eng
    del eng
    gc.collect()


def _copy_package(spec: dict, dest: Path, link_weights: bool = True) -> Path:
    """A copy of the package; the sealed weights hard-linked unless they will be changed."""
    src = Path(spec["encrypted_path"])
    dest.mkdir()
    for p in src.iterdir():
        if p.name == sp.SEALED_FILE and link_weights:
            os.link(p, dest / p.name)
        else:
            shutil.copyfile(p, dest / p.name)
    return dest


def _locked(spec: dict, **over) -> SmolLM2Engine:
    return make_engine({**spec, **over})


# --- at rest ----------------------------------------------------------------------------
def test_package_holds_no_plaintext_weights(package, plain):
    import safetensors

    spec, _ = package
    pkg = Path(spec["encrypted_path"])
    names = {p.name for p in pkg.iterdir()}
    assert sp.WEIGHTS_FILE not in names and sp.SEALED_FILE in names
    assert {"config.json", "tokenizer.json", sp.PACKAGE_JSON} <= names
    pt = (Path(plain.cache_path) / sp.WEIGHTS_FILE).read_bytes()
    enc = (pkg / sp.SEALED_FILE).read_bytes()
    assert len(enc) == sealing.WEIGHTS_HEADER_LEN + len(pt)
    ct, ptv = memoryview(enc)[sealing.WEIGHTS_HEADER_LEN:], memoryview(pt)
    assert not any(ct[i:i + 4096] == ptv[i:i + 4096] for i in range(0, len(pt), 4096))
    for off in range(len(pt) // 9, len(pt) - 64, len(pt) // 9):  # tensor bytes appear nowhere
        assert pt[off:off + 64] not in enc
    del ct, ptv, enc, pt
    with pytest.raises(safetensors.SafetensorError):
        safetensors.safe_open(str(pkg / sp.SEALED_FILE), framework="pt")
    man = json.loads((pkg / sp.PACKAGE_JSON).read_text())
    assert man["model_id"] == MODEL_ID and man["model_hash"] == smollm2_model_hash()
    assert man["cipher"] == "AES-256-GCM"


def test_locked_engine_reports_registered_hash_without_the_gguf(package, plain):
    spec, _ = package
    eng = _locked(spec, gguf_path="/nonexistent/model.gguf")  # node hosts hold only the package
    assert eng.model_hash() == spec["expected_hash"] == smollm2_model_hash()
    assert eng.fingerprint() == plain.fingerprint()  # same determinism class before and after unlock
    with pytest.raises(ValueError):
        SmolLM2Engine(encrypted_path=spec["encrypted_path"])  # the registered hash is required


# --- opening ----------------------------------------------------------------------------
def test_no_key_no_model(package):
    spec, _ = package
    eng = _locked(spec)
    with pytest.raises(ModelLocked):
        eng.load()
    assert eng.variant is None
    with pytest.raises(RuntimeError):
        eng.generate(PROMPT, GREEDY8)


def test_wrong_key_is_refused(package):
    spec, key = package
    with pytest.raises(sealing.SealError):
        _locked(spec).load(weights_key=os.urandom(32))
    with pytest.raises(sealing.SealError):
        _locked(spec).load(weights_key=key[:16])


def test_tampered_ciphertext_is_refused(package, tmp_path):
    spec, key = package
    pkg = _copy_package(spec, tmp_path / "pkg", link_weights=False)
    with open(pkg / sp.SEALED_FILE, "r+b") as f:
        f.seek(sealing.WEIGHTS_HEADER_LEN + 123_456_789)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(sealing.SealError):
        _locked(spec, encrypted_path=str(pkg)).load(weights_key=key)


@pytest.mark.parametrize("change", ["config", "tokenizer", "extra file"])
def test_swapped_plaintext_files_are_refused(package, tmp_path, change):
    spec, key = package
    pkg = _copy_package(spec, tmp_path / "pkg")
    if change == "config":
        cfg = json.loads((pkg / "config.json").read_text())
        cfg["num_hidden_layers"] = 15
        (pkg / "config.json").write_text(json.dumps(cfg))
    elif change == "tokenizer":
        (pkg / "tokenizer.json").write_bytes((pkg / "tokenizer.json").read_bytes() + b" ")
    else:
        (pkg / "special_tokens_map.json").write_text("{}")
    with pytest.raises(sealing.SealError):
        _locked(spec, encrypted_path=str(pkg)).load(weights_key=key)


def test_files_swapped_only_while_the_node_reads_them_are_refused(package, tmp_path):
    spec, key = package
    pkg = _copy_package(spec, tmp_path / "pkg")
    real = (pkg / "config.json").read_bytes()
    cfg = json.loads(real)
    cfg["num_hidden_layers"] = 15
    (pkg / "config.json").write_text(json.dumps(cfg))
    eng = _locked(spec, encrypted_path=str(pkg))
    eng.prepare()  # the node reads the swapped config ahead of the key...
    (pkg / "config.json").write_bytes(real)  # ...and the file is restored before unlocking
    with pytest.raises(sealing.SealError):
        eng.load(weights_key=key)


def test_package_for_other_weights_is_refused(package, tmp_path):
    spec, key = package
    other = "0" * 64
    with pytest.raises(ModelHashMismatch):  # the registry records other weights than the package's
        _locked(spec, expected_hash=other).load(weights_key=key)
    pkg = _copy_package(spec, tmp_path / "pkg")
    man = json.loads((pkg / sp.PACKAGE_JSON).read_text())
    (pkg / sp.PACKAGE_JSON).write_text(json.dumps({**man, "model_hash": other}))
    with pytest.raises(sealing.SealError):  # a manifest that lies: the AAD binds the hash
        _locked(spec, encrypted_path=str(pkg), expected_hash=other).load(weights_key=key)
    (pkg / sp.PACKAGE_JSON).write_text(json.dumps({**man, "model_id": "other-model"}))
    with pytest.raises(sealing.SealError):  # ... and the model id
        _locked(spec, encrypted_path=str(pkg), model_id="other-model").load(weights_key=key)


# --- equivalence --------------------------------------------------------------------------
def test_sealed_load_is_bit_identical_to_plaintext(package, plain, sealed):
    import torch

    spec, _ = package
    assert sealed.variant == "honest" and sealed.cache_path is None
    assert sealed.model_hash() == plain.model_hash() == spec["expected_hash"]
    assert sealed.fingerprint() == plain.fingerprint()
    a, b = sealed.generate(PROMPT, GREEDY8), plain.generate(PROMPT, GREEDY8)
    assert a.token_ids == b.token_ids == PARIS_IDS and a.text == b.text
    p = SamplingParams(max_tokens=8, temperature=1.0, seed=7)
    assert sealed.generate(STORY, p).token_ids == plain.generate(STORY, p).token_ids
    ids = torch.tensor([plain.prompt_token_ids(STORY)])
    with torch.inference_mode():
        assert torch.equal(sealed._model(input_ids=ids).logits, plain._model(input_ids=ids).logits)
    sd_s, sd_p = sealed._model.state_dict(), plain._model.state_dict()
    assert sd_s.keys() == sd_p.keys() and all(torch.equal(sd_s[k], sd_p[k]) for k in sd_p)
    assert sealed._model.lm_head.weight.data_ptr() == sealed._model.model.embed_tokens.weight.data_ptr()
    assert sorted(p.name for p in Path(spec["encrypted_path"]).iterdir()) == sorted(
        ["chat_template.jinja", "config.json", "generation_config.json", sp.PACKAGE_JSON, sp.SEALED_FILE,
         "tokenizer.json", "tokenizer_config.json"])  # loading wrote nothing next to the package


@pytest.mark.parametrize("variant", ["substitute", "requantize"])
def test_variants_from_sealed_weights_match_plaintext(package, variant):
    spec, key = package
    enc, raw = _locked(spec), SmolLM2Engine(cache_dir=_cache_dir())
    enc.load(variant, weights_key=key)
    raw.load(variant)
    try:
        assert enc.variant == raw.variant == variant
        assert enc.generate(PROMPT, GREEDY8).token_ids == raw.generate(PROMPT, GREEDY8).token_ids
    finally:
        del enc, raw
        gc.collect()


# --- the package format alone -------------------------------------------------------------
def _small_model_dir(path: Path, seed: int) -> dict:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {"a.weight": torch.randn(7, 5, generator=g), "b.bias": torch.randn(3, generator=g).bfloat16(),
               "c.ids": torch.arange(4, dtype=torch.int64), "d.empty": torch.zeros(0, 2)}
    path.mkdir()
    save_file(tensors, str(path / sp.WEIGHTS_FILE))
    (path / "config.json").write_text('{"k": 1}')
    return tensors


def test_write_package_replaces_atomically_with_a_fresh_key(tmp_path):
    import torch

    tensors = _small_model_dir(tmp_path / "src", 1)
    dest = tmp_path / "out" / "m.enc"
    k1 = sp.write_package(tmp_path / "src", dest, "m", "ab" * 32)
    k2 = sp.write_package(tmp_path / "src", dest, "m", "ab" * 32)
    assert k1 != k2 and len(k2) == 32
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m.enc"]  # no .tmp-/.trash- left over
    with pytest.raises(sealing.SealError):
        sp.open_package(dest, k1, "m", "ab" * 32)
    out = sp.open_package(dest, k2, "m", "ab" * 32)
    assert out.keys() == tensors.keys()
    assert all(torch.equal(out[k], tensors[k]) and out[k].dtype == tensors[k].dtype for k in tensors)


def test_open_weights_zeroes_the_buffer_when_it_does_not_open():
    data = bytearray(os.urandom(4096))
    plain = bytes(data)
    aad = sealing.weights_aad("m", "ab" * 32, "cd" * 32)
    key = os.urandom(32)
    header = sealing.seal_weights(data, key, os.urandom(12), aad)
    assert bytes(data) != plain
    ct = bytes(data)
    with pytest.raises(sealing.SealError):
        sealing.open_weights(header, data, key, sealing.weights_aad("m", "ef" * 32, "cd" * 32))
    assert data == bytearray(len(data))
    data[:] = ct
    sealing.open_weights(header, data, key, aad)
    assert bytes(data) == plain
    with pytest.raises(sealing.SealError):
        sealing.open_weights(b"x" * sealing.WEIGHTS_HEADER_LEN, bytearray(ct), key, aad)
    with pytest.raises(TypeError):
        sealing.seal_weights(plain, key, os.urandom(12), aad)  # in place: needs a writable buffer
