"""The verifier: `verify` runs the checks of every evidence format in one order.

The order is the security argument: parse the envelope and the report, check
the format's signatures (which show the evidence is genuine), then the binding
to the verifier's nonce and the node's keys, then simulated-or-not, freshness
and replay, then the policy (measurements, TCB, revocations). Pure: `now` and
the caller-owned `seen_nonces` set come in; no clock, no I/O, no randomness.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..canonical import sha256
from .errors import _Reject
from .evidence import (
    NVIDIA_FORMAT,
    SIM_FORMAT,
    AttestationResult,
    ExpectedBinding,
    Policy,
    _is_num,
    _parse_envelope,
    _parse_report,
)
from .nvidia import _verify_nvidia
from .simulated import _verify_sim_signatures

# The format's own checks: chain and signatures -> (device ids, TCB version, issued_at).
# _parse_envelope admits only FORMATS, and each has its entry here.
_FORMAT_CHECKS = {SIM_FORMAT: _verify_sim_signatures, NVIDIA_FORMAT: _verify_nvidia}


def verify(evidence: bytes, expected_report_data: "bytes | ExpectedBinding", policy: Policy,
           trust_anchors: Sequence[bytes], now: float,
           seen_nonces: set | None = None) -> AttestationResult:
    """Verify `evidence` against the expected binding, the policy and the trust anchors.

    trust_anchors: 32-byte Ed25519 root keys (simulated chains) and/or DER/PEM
    P-384 public keys of NVIDIA's attestation service (NRAS tokens).
    seen_nonces: the caller's set of nonces already accepted; a nonce in it is a
    replay, and on success the evidence's nonce is added to it.
    Never raises on bad evidence: the result says why (see REASONS).
    """
    if not isinstance(policy, Policy):
        raise TypeError("policy must be an attestation Policy")
    if not _is_num(now):  # a NaN `now` would pass every time comparison
        raise TypeError("now must be a finite unix time")
    if isinstance(trust_anchors, (bytes, bytearray, str)):
        raise TypeError("trust_anchors is a sequence of keys, not one key")
    if isinstance(expected_report_data, ExpectedBinding):
        expected = expected_report_data
    elif isinstance(expected_report_data, (bytes, bytearray)) and len(expected_report_data) == 32:
        expected = bytes(expected_report_data)
    else:
        raise TypeError("expected_report_data is an ExpectedBinding or 32 bytes")
    digest = sha256(bytes(evidence)).hex() if isinstance(evidence, (bytes, bytearray)) else ""
    facts: dict[str, Any] = {"digest": digest}
    try:
        env = _parse_envelope(evidence)
        facts.update(simulated=env["format"] == SIM_FORMAT, format=env["format"])
        _parse_report(env)
        r = env["report"]
        facts.update(measurements=dict(r["measurements"]), nonce=r["nonce"],
                     signing_pub=r["signing_pub"], kem_pub=r["kem_pub"])
        devices, tcb, issued_at = _FORMAT_CHECKS[env["format"]](env, trust_anchors, now, policy)
        facts.update(device_id=r["device_id"], tcb_version=tcb, issued_at=issued_at)
        _check_binding(r, env["_recomputed_report_data"], expected)
        if facts["simulated"] and not policy.allow_simulated:
            raise _Reject("simulated-not-allowed", "policy does not allow simulated evidence")
        if issued_at > now + policy.max_clock_skew_s:
            raise _Reject("stale-evidence", f"issued {issued_at - now:.1f}s in the future")
        if now - issued_at > policy.max_age_s:
            raise _Reject("stale-evidence", f"issued {now - issued_at:.1f}s ago, max {policy.max_age_s}s")
        if seen_nonces is not None and r["nonce"] in seen_nonces:
            raise _Reject("replayed-evidence", "nonce was already used by accepted evidence")
        _check_policy(r["measurements"], tcb, devices, policy)
    except _Reject as rej:
        return _result(False, rej.reason, rej.detail, facts)
    if seen_nonces is not None:
        seen_nonces.add(r["nonce"])
    return _result(True, "ok", "evidence verified", facts)


def _result(ok: bool, reason: str, detail: str, facts: dict) -> AttestationResult:
    if facts.get("simulated"):
        detail = f"simulated evidence: {detail}"
    return AttestationResult(ok, reason, detail, **facts)


def _check_binding(r: dict, recomputed: bytes, expected: "bytes | ExpectedBinding") -> None:
    if r["report_data"] != recomputed:
        raise _Reject("report-data-mismatch", "report_data is not H(signing_pub, kem_pub, nonce)")
    if isinstance(expected, ExpectedBinding):
        if r["nonce"] != expected.nonce:
            raise _Reject("wrong-nonce", "evidence is bound to another nonce")
        if (r["signing_pub"], r["kem_pub"]) != (expected.signing_pub, expected.kem_pub):
            raise _Reject("report-data-mismatch", "report_data does not bind the node's keys")
    elif r["report_data"] != expected:
        raise _Reject("report-data-mismatch", "report_data differs from the expected value")


def _check_policy(m: dict, tcb: int, devices: Sequence[str], policy: Policy) -> None:
    if policy.allowed_code_hashes and m["code_hash"] not in policy.allowed_code_hashes:
        raise _Reject("measurement-mismatch", f"code_hash {m['code_hash'][:16]}… is not allowed")
    if policy.model_hash is not None and m["model_hash"] != policy.model_hash:
        raise _Reject("measurement-mismatch", f"model_hash {m['model_hash'][:16]}… is not the pinned model")
    if policy.allowed_engines and m["engine"] not in policy.allowed_engines:
        raise _Reject("measurement-mismatch", f"engine {m['engine']!r} is not allowed")
    if tcb in policy.revoked_tcb_versions:
        raise _Reject("revoked-tcb", f"TCB version {tcb} is revoked")
    if tcb < policy.min_tcb_version:
        raise _Reject("tcb-too-old", f"TCB version {tcb} < minimum {policy.min_tcb_version}")
    for d in devices:
        if d in policy.revoked_devices:
            raise _Reject("revoked-device", f"device {d!r} is revoked")
