"""protocols.attestation: simulated evidence, every rejection reason, NRAS token checks. No Ray."""

from __future__ import annotations

import base64
import json

import pytest
from Crypto.Hash import SHA384
from Crypto.PublicKey import ECC
from Crypto.Signature import DSS

from protocols import attestation as att
from protocols.canonical import pack, sha256, unpack
from protocols.crypto import SigningKey
from protocols.errors import ConfigError, VerinferError

NOW = 1_700_000_000.0
SEED = bytes(range(32))
ROOT = att.SimulatedRoot(SEED)
NODE_KEY = SigningKey(b"\x01" * 32)
KEM_PUB = sha256(b"kem")  # any 32 bytes: only its binding matters here
NONCE = b"\x07" * 32
MEAS = {"code_hash": "c0de" * 16, "model_hash": "m0de" * 16, "engine": "tiny"}
BINDING = att.ExpectedBinding(NODE_KEY.public, KEM_PUB, NONCE)
OPEN = att.Policy(allow_simulated=True)


def sim(device_id="gpu-0", nonce=NONCE, signing_pub=None, tcb=5, now=NOW, root=ROOT, **kw) -> bytes:
    return root.evidence(device_id, signing_pub or NODE_KEY.public, KEM_PUB, nonce, MEAS, tcb, now, **kw)


def check(evidence, policy=OPEN, expected=BINDING, anchors=(ROOT.trust_anchor,), now=NOW, seen=None):
    return att.verify(evidence, expected, policy, anchors, now, seen)


def resign(evidence: bytes, mutate) -> bytes:
    """Change the report and re-sign it with the genuine device key (an insider's forgery)."""
    env = unpack(evidence)
    mutate(env["report"])
    env["sig"] = ROOT.device_key(env["report"]["device_id"]).sign(att._report_bytes(env["report"]))
    return pack(env)


def test_valid_simulated_evidence_needs_allow_simulated():
    ev = sim()
    ok = check(ev)
    assert ok.ok and ok.reason == "ok" and ok.simulated and "simulated" in ok.detail
    assert (ok.device_id, ok.tcb_version, ok.measurements) == ("gpu-0", 5, MEAS)
    assert ok.signing_pub == NODE_KEY.public and ok.kem_pub == KEM_PUB and ok.nonce == NONCE
    assert ok.raise_for_failure() is ok
    strict = check(ev, policy=att.Policy())
    assert not strict.ok and strict.reason == "simulated-not-allowed" and strict.simulated
    assert "simulated" in strict.detail
    with pytest.raises(att.SimulatedNotAllowed) as exc:
        strict.raise_for_failure()
    assert exc.value.reason == "simulated-not-allowed" and isinstance(exc.value, VerinferError)
    # raw 32-byte report_data is accepted as the expected side too
    assert check(ev, expected=BINDING.report_data()).ok


def test_digest_is_stable_hex_sha256_of_the_evidence():
    ev = sim()
    a, b = check(ev), check(ev, policy=att.Policy())
    assert a.digest == b.digest == sha256(ev).hex()
    assert sim() == ev  # evidence is a pure function of its inputs
    assert check(sim(nonce=b"\x08" * 32), expected=att.ExpectedBinding(NODE_KEY.public, KEM_PUB, b"\x08" * 32)).digest != a.digest


def _expired_cert():
    return sim(device_cert=ROOT.device_cert("gpu-0", NOW - 100, NOW - 1))


NEGATIVE = {
    "tampered-body": (lambda: _tamper_body(), {}, "bad-signature"),
    "wrong-nonce": (lambda: sim(nonce=b"\x09" * 32), {}, "wrong-nonce"),
    "key-not-bound": (lambda: sim(signing_pub=SigningKey(b"\x02" * 32).public), {}, "report-data-mismatch"),
    "code-hash": (sim, {"policy": att.Policy(allow_simulated=True, allowed_code_hashes=("ab" * 32,))},
                  "measurement-mismatch"),
    "model-hash": (sim, {"policy": att.Policy(allow_simulated=True, model_hash="other")}, "measurement-mismatch"),
    "engine": (sim, {"policy": att.Policy(allow_simulated=True, allowed_engines=("vllm",))}, "measurement-mismatch"),
    "expired-cert": (_expired_cert, {}, "cert-expired"),
    "cert-not-yet-valid": (lambda: sim(device_cert=ROOT.device_cert("gpu-0", NOW + 10, NOW + 100)), {},
                           "cert-not-yet-valid"),
    "foreign-root": (lambda: sim(root=att.SimulatedRoot(b"\xff" * 32)), {}, "foreign-root"),
    "revoked-cert": (sim, {"policy": att.Policy(allow_simulated=True,
                                                revoked_serials=(att.SimulatedRoot.device_serial("gpu-0"),))},
                     "revoked-cert"),
    "revoked-tcb": (sim, {"policy": att.Policy(allow_simulated=True, revoked_tcb_versions=(5,))}, "revoked-tcb"),
    "tcb-too-old": (sim, {"policy": att.Policy(allow_simulated=True, min_tcb_version=6)}, "tcb-too-old"),
    "revoked-device": (sim, {"policy": att.Policy(allow_simulated=True, revoked_devices=("gpu-0",))},
                       "revoked-device"),
    "stale": (lambda: sim(now=NOW - 301), {}, "stale-evidence"),
    "from-the-future": (lambda: sim(now=NOW + 60), {"now": NOW}, "stale-evidence"),
    "replayed-nonce": (sim, {"seen": {NONCE}}, "replayed-evidence"),
    "simulated-strict": (sim, {"policy": att.Policy()}, "simulated-not-allowed"),
    "malformed": (lambda: b"\x92\x01", {}, "malformed"),
    "unknown-format": (lambda: _with(format="sgx-v9"), {}, "unsupported-format"),
    "bad-chain": (lambda: _with(chain=list(reversed(unpack(sim())["chain"]))), {}, "bad-chain"),
}
# Kinds of failure; the three measurement fields share one kind, as do stale/from-the-future.
KINDS = {"measurement": {"code-hash", "model-hash", "engine"}, "stale": {"stale", "from-the-future"}}


def _tamper_body():
    env = unpack(sim())
    env["report"]["tcb_version"] = 99
    return pack(env)


def _with(**fields):
    env = unpack(sim())
    env.update(fields)
    return pack(env)


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_each_negative_case_fails_with_its_own_reason(case):
    make, kw, reason = NEGATIVE[case]
    res = check(make(), **kw)
    assert not res.ok and res.reason == reason, (case, res)
    assert res.reason in att.REASONS and res.simulated == (case not in ("malformed", "unknown-format"))
    with pytest.raises(att.AttestationError):
        res.raise_for_failure()


def test_reasons_are_distinct_across_kinds_of_failure():
    grouped = {c for cs in KINDS.values() for c in cs}
    kinds = len(NEGATIVE) - len(grouped) + len(KINDS)
    reasons = {check(make(), **kw).reason for make, kw, _ in NEGATIVE.values()}
    assert len(reasons) == kinds
    details = {c: check(NEGATIVE[c][0](), **NEGATIVE[c][1]).detail for c in KINDS["measurement"]}
    for case, field in (("code-hash", "code_hash"), ("model-hash", "model_hash"), ("engine", "engine")):
        assert field in details[case]


def test_replay_bookkeeping_adds_accepted_nonces_only():
    seen: set = set()
    assert check(sim(), seen=seen).ok and seen == {NONCE}
    assert check(sim(), seen=seen).reason == "replayed-evidence"
    other = b"\x0a" * 32
    bad = check(sim(nonce=other), seen=seen, policy=att.Policy())
    assert not bad.ok and other not in seen


def test_forged_report_data_is_caught_even_when_signed():
    ev = resign(sim(), lambda r: r.update(report_data=b"\x00" * 32))
    assert check(ev).reason == "report-data-mismatch"


@pytest.mark.parametrize("which", [0, 1])
def test_no_ok_when_a_chain_certificate_is_forged(which):
    """Swap a cert's pubkey for an attacker key: its signature no longer verifies."""
    attacker = SigningKey(b"\x66" * 32)
    env = unpack(sim())
    env["chain"][which]["pubkey"] = attacker.public
    if which == 0:  # the device key is now the attacker's: sign the report with it
        env["sig"] = attacker.sign(att._report_bytes(env["report"]))
    res = check(pack(env))
    assert not res.ok and res.reason in ("bad-chain", "foreign-root")
    # and a device cert self-issued by the attacker's own "platform" fails too
    fake_platform = att.issue_cert(attacker.public, ROOT.PLATFORM_SUBJECT, "platform", attacker,
                                   ROOT.ROOT_SUBJECT, NOW - 60, NOW + 60, 1)
    assert check(sim(platform_cert=fake_platform)).reason in ("bad-chain", "foreign-root")
    assert not check(pack(env), anchors=()).ok


def test_device_cert_for_another_device_is_rejected():
    other = ROOT.device_cert("gpu-1", NOW - 60, NOW + 60)
    assert check(sim(device_cert=other)).reason == "bad-chain"


def test_cert_issue_and_verify_roundtrip():
    c = ROOT.platform_cert(NOW, NOW + 1)
    att.verify_cert(c, ROOT.trust_anchor)
    assert att.Cert.from_wire(unpack(pack(c.to_wire()))) == c
    with pytest.raises(VerinferError):
        att.verify_cert(c, NODE_KEY.public)
    with pytest.raises(ValueError):
        att.issue_cert(NODE_KEY.public, "x", "leaf", NODE_KEY, "y", 0, 1, 1)
    with pytest.raises(ValueError):
        att.issue_cert(NODE_KEY.public, "x", "device", NODE_KEY, "y", 2, 1, 1)


@pytest.mark.parametrize("kwargs", [
    {"allowed_code_hashes": "abc"}, {"allowed_engines": ("",)}, {"model_hash": ""},
    {"min_tcb_version": -1}, {"min_tcb_version": True}, {"max_age_s": 0}, {"max_clock_skew_s": -1},
    {"revoked_tcb_versions": ("1",)}, {"revoked_devices": (1,)}, {"revoked_serials": (-1,)},
    {"allow_simulated": "yes"},
])
def test_policy_validation(kwargs):
    with pytest.raises(att.InvalidPolicy) as exc:
        att.Policy(**kwargs)
    assert isinstance(exc.value, ConfigError) and next(iter(kwargs)) in str(exc.value)


def test_policy_normalises_lists_to_tuples():
    p = att.Policy(allowed_engines=["tiny"], revoked_serials=[3])
    assert p.allowed_engines == ("tiny",) and p.revoked_serials == (3,)


def test_report_data_binds_every_input():
    base = att.report_data(NODE_KEY.public, KEM_PUB, NONCE)
    assert len(base) == 32
    assert base != att.report_data(KEM_PUB, NODE_KEY.public, NONCE)
    assert base != att.report_data(NODE_KEY.public, KEM_PUB, NONCE + b"\x00")
    with pytest.raises(VerinferError):
        att.report_data(NODE_KEY.public, KEM_PUB, b"short")


# --- NVIDIA NRAS tokens (synthetic: a test P-384 key stands in for NRAS) ---------------------
NRAS_KEY = ECC.construct(curve="P-384", d=int.from_bytes(sha256(b"nras-test-key"), "big"))
NRAS_ANCHOR = NRAS_KEY.public_key().export_key(format="DER")
GOOD_GPU_CLAIMS = {
    "x-nvidia-gpu-attestation-report-parsed": True,
    "x-nvidia-gpu-attestation-report-signature-verified": True,
    "x-nvidia-gpu-attestation-report-nonce-match": True,
    "x-nvidia-gpu-attestation-report-cert-chain": {"x-nvidia-cert-status": "valid",
                                                   "x-nvidia-cert-ocsp-status": "good"},
    "x-nvidia-gpu-arch-check": True,
    "x-nvidia-gpu-driver-rim-signature-verified": True,
    "x-nvidia-gpu-vbios-rim-signature-verified": True,
    "measres": "success", "dbgstat": "disabled",
    "x-nvidia-gpu-driver-version": "570.86", "ueid": "4818583115702365474934",
}


def mint_jwt(claims: dict, key=NRAS_KEY, alg="ES384") -> str:
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    signing_input = f"{enc(json.dumps({'alg': alg, 'kid': 'k'}).encode())}.{enc(json.dumps(claims).encode())}"
    sig = DSS.new(key, "deterministic-rfc6979", encoding="binary").sign(SHA384.new(signing_input.encode()))
    return f"{signing_input}.{enc(sig)}"


def mint_nras_eat(rd: bytes, now: float, gpu: dict | None = None, overall_ok=True, key=NRAS_KEY) -> list:
    common = {"eat_nonce": rd.hex(), "iat": int(now), "nbf": int(now), "exp": int(now) + 3600}
    overall = {**common, "x-nvidia-overall-att-result": overall_ok, "iss": "https://nras.example"}
    return [["JWT", mint_jwt(overall, key)], {"GPU-0": mint_jwt({**common, **GOOD_GPU_CLAIMS, **(gpu or {})}, key)}]


def nv(gpu=None, overall_ok=True, key=NRAS_KEY, now=NOW, nonce=NONCE) -> bytes:
    rd = att.report_data(NODE_KEY.public, KEM_PUB, nonce)
    return att.nvidia_evidence(NODE_KEY, KEM_PUB, nonce, MEAS, mint_nras_eat(rd, now, gpu, overall_ok, key), now)


def nv_check(ev, policy=att.Policy(), anchors=(NRAS_ANCHOR,), now=NOW):
    return att.verify(ev, BINDING, policy, anchors, now)


def test_nvidia_tokens_verify_offline_under_pinned_nras_key():
    res = nv_check(nv())
    assert res.ok and not res.simulated and res.format == att.NVIDIA_FORMAT, res
    assert res.tcb_version == 570086 and res.device_id == GOOD_GPU_CLAIMS["ueid"]
    assert nv_check(nv(), policy=att.Policy(min_tcb_version=570087)).reason == "tcb-too-old"
    assert nv_check(nv(), policy=att.Policy(revoked_devices=(GOOD_GPU_CLAIMS["ueid"],))).reason == "revoked-device"
    assert nv_check(nv(), policy=att.Policy(model_hash="x")).reason == "measurement-mismatch"


@pytest.mark.parametrize("ev_kw, check_kw, reason", [
    ({}, {"anchors": (ROOT.trust_anchor,)}, "foreign-root"),  # an Ed25519 sim root is no NRAS key
    ({"key": ECC.construct(curve="P-384", d=12345)}, {}, "bad-signature"),
    ({"overall_ok": False}, {}, "measurement-mismatch"),
    ({"gpu": {"measres": "fail"}}, {}, "measurement-mismatch"),
    ({"gpu": {"dbgstat": "enabled"}}, {}, "measurement-mismatch"),
    ({"gpu": {"x-nvidia-gpu-attestation-report-cert-chain": {"x-nvidia-cert-status": "valid",
                                                              "x-nvidia-cert-ocsp-status": "revoked"}}},
     {}, "revoked-cert"),
    ({"gpu": {"x-nvidia-gpu-attestation-report-signature-verified": False}}, {}, "bad-signature"),
    ({"gpu": {"eat_nonce": "00" * 32}}, {}, "report-data-mismatch"),
    ({"now": NOW - 301}, {}, "stale-evidence"),
    ({"nonce": b"\x09" * 32}, {}, "wrong-nonce"),
])
def test_nvidia_rejections(ev_kw, check_kw, reason):
    res = nv_check(nv(**ev_kw), **check_kw)
    assert not res.ok and res.reason == reason and not res.simulated, res


def nv_resign(env: dict) -> bytes:
    """The node re-signs an edited envelope: only the NRAS checks stand in the way."""
    env["sig"] = NODE_KEY.sign(att._nvidia_signed_bytes(env["report"], env["nvidia"]))
    return pack(env)


def test_nvidia_tampering_and_local_tokens_are_rejected():
    env = unpack(nv())
    env["report"]["measurements"] = {**MEAS, "engine": "vllm"}  # the node's signature breaks
    assert nv_check(pack(env)).reason == "bad-signature"
    env = unpack(nv())
    env["nvidia"]["eat"][1]["GPU-7"] = env["nvidia"]["eat"][1].pop("GPU-0")  # relabelling breaks it too
    assert nv_check(pack(env)).reason == "bad-signature"
    assert nv_check(nv_resign(env)).ok
    env = unpack(nv())
    env["nvidia"]["mode"] = "local"
    assert nv_check(nv_resign(env)).reason == "unverifiable-evidence"
    env = unpack(nv())
    head, body, sig = env["nvidia"]["eat"][1]["GPU-0"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["measres"] = "success"
    claims["ueid"] = "someone-else"
    env["nvidia"]["eat"][1]["GPU-0"] = ".".join([head, base64.urlsafe_b64encode(json.dumps(claims).encode())
                                                 .rstrip(b"=").decode(), sig])
    assert nv_check(nv_resign(env)).reason == "bad-signature"
    hs = [["JWT", mint_jwt({}, alg="HS256")], {"GPU-0": mint_jwt(GOOD_GPU_CLAIMS)}]
    env = unpack(nv())
    env["nvidia"]["eat"] = hs
    assert nv_check(nv_resign(env)).reason == "bad-signature"
    env = unpack(nv())
    env["nvidia"]["eat"][1]["GPU-1"] = mint_jwt({**GOOD_GPU_CLAIMS, "eat_nonce": "00" * 32,
                                                 "iat": int(NOW), "exp": int(NOW) + 60})
    assert nv_check(nv_resign(env)).reason == "report-data-mismatch"  # a token from another session


def test_no_single_byte_corruption_verifies_or_raises():
    ev = sim()
    for i in range(len(ev)):
        bad = bytearray(ev)
        bad[i] ^= 0x01 if i % 2 else 0x80
        res = check(bytes(bad))
        assert not res.ok and res.reason in att.REASONS, (i, res)


def test_malformed_simulated_report_still_says_simulated():
    env = unpack(sim())
    del env["report"]["issued_at"]
    res = check(pack(env))
    assert res.reason == "malformed" and res.simulated and "simulated" in res.detail


def test_no_single_byte_corruption_of_nvidia_evidence_verifies_or_raises():
    ev = nv()
    for i in range(0, len(ev), 5):
        bad = bytearray(ev)
        bad[i] ^= 0x01
        res = nv_check(bytes(bad))
        assert not res.ok and res.reason in att.REASONS, (i, res)


def test_caller_mistakes_raise_instead_of_passing():
    with pytest.raises(TypeError):
        check(sim(), now=float("nan"))
    with pytest.raises(TypeError):
        check(sim(), anchors=ROOT.trust_anchor)
    with pytest.raises(TypeError):
        check(sim(), policy={"allow_simulated": True})
    with pytest.raises(TypeError):
        check(sim(), expected=b"short")
