"""actors.attestation: providers end to end through protocols.attestation.verify. No Ray."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types

import pytest

from actors import attestation as prov
from protocols import attestation as att
from protocols.crypto import SigningKey

from tests.protocols.test_attestation import KEM_PUB, MEAS, NODE_KEY, NOW, NRAS_ANCHOR, mint_nras_eat


def test_code_hash_is_stable_and_tracks_content(tmp_path):
    for pkg in prov.MEASURED_PACKAGES:
        (tmp_path / pkg / "__pycache__").mkdir(parents=True)
        (tmp_path / pkg / "__init__.py").write_text("x = 1\n")
        (tmp_path / pkg / "__pycache__" / "junk.py").write_text("ignored")
    h = prov.code_hash(tmp_path)
    assert h == prov.code_hash(tmp_path) and len(h) == 64
    (tmp_path / "cluster" / "__pycache__" / "junk.py").write_text("still ignored")
    assert prov.code_hash(tmp_path) == h
    (tmp_path / "actors" / "new.py").write_text("")
    assert prov.code_hash(tmp_path) != h
    installed = prov.code_hash()
    assert len(installed) == 64 and int(installed, 16) >= 0


def test_simulated_provider_end_to_end_with_code_hash():
    ch = prov.code_hash()
    meas = {"code_hash": ch, "model_hash": "ab" * 32, "engine": "tiny"}
    p = prov.SimulatedProvider(b"\x05" * 32, "node-3", meas, tcb_version=2, clock=lambda: NOW)
    assert isinstance(p, prov.Provider) and p.name == att.SIM_FORMAT and p.simulated
    node, kem, nonce = SigningKey(b"\x03" * 32), b"\x04" * 32, b"\x09" * 32
    ev = p.evidence(node.public, kem, nonce)
    policy = att.Policy(allowed_code_hashes=(ch,), model_hash="ab" * 32, allowed_engines=("tiny",),
                        min_tcb_version=2, allow_simulated=True)
    seen: set = set()
    res = att.verify(ev, att.ExpectedBinding(node.public, kem, nonce), policy, [p.trust_anchor], NOW + 1, seen)
    assert res.ok and res.simulated and res.device_id == "node-3" and res.measurements["code_hash"] == ch
    assert att.verify(ev, att.ExpectedBinding(node.public, kem, nonce), policy, [p.trust_anchor], NOW + 1,
                      seen).reason == "replayed-evidence"
    strict = att.Policy(allowed_code_hashes=(ch,))
    assert att.verify(ev, att.ExpectedBinding(node.public, kem, nonce), strict, [p.trust_anchor],
                      NOW + 1).reason == "simulated-not-allowed"


def test_nvidia_provider_imports_without_sdk_and_fails_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "nv_attestation_sdk", None)  # import raises ImportError
    spec = importlib.util.spec_from_file_location("_attestation_without_sdk", prov.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # a fresh import of the module, with no SDK to be found
    p = mod.NvidiaGpuProvider(NODE_KEY, MEAS)
    assert isinstance(p, mod.Provider) and p.name == att.NVIDIA_FORMAT and not p.simulated
    with pytest.raises(att.ProviderUnavailable, match="nv-attestation-sdk"):
        p.evidence(NODE_KEY.public, KEM_PUB, b"\x07" * 32)


def _fake_sdk(ok=True) -> types.ModuleType:
    """Stands in for nv_attestation_sdk: class-level singleton state, NRAS-shaped tokens."""

    class Attestation:
        _nonce, _verifiers, _token = "", [], ""

        def __new__(cls, name=None):
            return cls

        @classmethod
        def reset(cls):
            cls._nonce, cls._verifiers, cls._token = "", [], ""

        @classmethod
        def set_name(cls, name):
            cls._name = name

        @classmethod
        def set_nonce(cls, nonce):
            cls._nonce = nonce

        @classmethod
        def add_verifier(cls, dev, env, url, evidence):
            cls._verifiers.append((dev, env, url))

        @classmethod
        def set_claims_version(cls, version):
            cls._claims_version = version

        @classmethod
        def get_evidence(cls, options=None):
            assert options == {"ppcie_mode": False} and cls._claims_version == "3.0"
            return [{"evidence": "spdm", "certificate": "chain"}]

        @classmethod
        def attest(cls, evidence_list):
            assert cls._verifiers == [("GPU", "REMOTE", "")] and evidence_list
            nras = mint_nras_eat(bytes.fromhex(cls._nonce), NOW)
            cls._token = json.dumps([["JWT", "sdk.hs256.jwt"], {"REMOTE_GPU_CLAIMS": nras}])
            return ok

        @classmethod
        def get_token(cls):
            return cls._token

    attestation = types.ModuleType("nv_attestation_sdk.attestation")
    attestation.Attestation = Attestation
    attestation.Devices = types.SimpleNamespace(GPU="GPU")
    attestation.Environment = types.SimpleNamespace(LOCAL="LOCAL", REMOTE="REMOTE")
    pkg = types.ModuleType("nv_attestation_sdk")
    pkg.attestation = attestation
    return pkg


@pytest.mark.parametrize("ok", [True, False])
def test_nvidia_provider_maps_sdk_tokens_into_verifiable_evidence(monkeypatch, ok):
    monkeypatch.setitem(sys.modules, "nv_attestation_sdk", _fake_sdk(ok))
    p = prov.NvidiaGpuProvider(NODE_KEY, MEAS, clock=lambda: NOW)
    nonce = b"\x07" * 32
    if not ok:
        with pytest.raises(att.ProviderUnavailable):
            p.evidence(NODE_KEY.public, KEM_PUB, nonce)
        return
    ev = p.evidence(NODE_KEY.public, KEM_PUB, nonce)
    res = att.verify(ev, att.ExpectedBinding(NODE_KEY.public, KEM_PUB, nonce), att.Policy(),
                     [NRAS_ANCHOR], NOW)
    assert res.ok and not res.simulated and res.format == att.NVIDIA_FORMAT, res
    with pytest.raises(ValueError):
        p.evidence(SigningKey(b"\x02" * 32).public, KEM_PUB, nonce)


def _real_sdk_and_gpu() -> bool:
    try:
        importlib.import_module("nv_attestation_sdk")
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _real_sdk_and_gpu(), reason="needs nv-attestation-sdk and a CC-mode NVIDIA GPU")
def test_nvidia_provider_on_real_hardware():  # pragma: no cover - no GPU here
    import time

    p = prov.NvidiaGpuProvider(NODE_KEY, MEAS)
    nonce = b"\x0b" * 32
    ev = p.evidence(NODE_KEY.public, KEM_PUB, nonce)
    res = att.verify(ev, att.ExpectedBinding(NODE_KEY.public, KEM_PUB, nonce), att.Policy(),
                     prov.fetch_nras_anchors(), time.time())
    assert res.ok, res


def test_nvidia_evidence_for_rotated_keys_binds_the_next_key(monkeypatch):
    """An epoch renewal on a GPU node: the provider must sign for the *next* key."""
    import functools

    from actors.executor import NodeExecutor

    monkeypatch.setitem(sys.modules, "nv_attestation_sdk", _fake_sdk(True))
    monkeypatch.setattr(prov, "NvidiaGpuProvider", functools.partial(prov.NvidiaGpuProvider, clock=lambda: NOW))
    from tests.authority import AnyRole, local_call

    auth = AnyRole()  # the epoch keeper's signed calls
    ex = NodeExecutor("gpu-00", {"engine": "tiny"}, attestation={"provider": "nvidia"},
                      control=auth.spec(target="gpu-00"))
    ex.engine = types.SimpleNamespace(model_hash=lambda: MEAS["model_hash"], name=MEAS["engine"])
    nonce = b"\x08" * 32
    nxt = local_call(auth, ex, "executor", "prepare_rotation", nonce, target="gpu-00")
    assert nxt["pubkey"] != ex.key.public
    res = att.verify(nxt["evidence"], att.ExpectedBinding(nxt["pubkey"], nxt["kem_pub"], nonce), att.Policy(),
                     [NRAS_ANCHOR], NOW)
    assert res.ok and not res.simulated, res
    local_call(auth, ex, "executor", "commit_rotation", target="gpu-00")
    assert ex.key.public == nxt["pubkey"]
