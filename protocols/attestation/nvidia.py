"""The "nvidia-gpu-cc-v1" evidence format: NVIDIA GPU confidential computing.

NVIDIA NRAS attestation tokens (ES384 JWTs) whose eat_nonce is report_data, in
an extra `nvidia: {mode, eat}` section of the envelope; sig is the node signing
key's own signature over report + that section. See `_verify_nvidia` for what
is and is not checked offline. Pure: token expiry is checked against the
caller's `now`.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Mapping, Sequence

from Crypto.Hash import SHA384
from Crypto.PublicKey import ECC
from Crypto.Signature import DSS

from ..canonical import pack
from ..crypto import SigningKey
from .errors import MalformedEvidence, _Reject
from .evidence import NVIDIA_FORMAT, Policy, _is_num, _report_bytes, _signed, make_report


# --- NVIDIA GPU confidential computing (NRAS tokens) --------------------------------------
# Per-GPU claims of an NRAS detached token that must hold, and the reason if not.
_NV_GPU_CLAIMS = (
    ("x-nvidia-gpu-attestation-report-parsed", True, "malformed"),
    ("x-nvidia-gpu-attestation-report-signature-verified", True, "bad-signature"),
    ("x-nvidia-gpu-attestation-report-nonce-match", True, "report-data-mismatch"),
    ("x-nvidia-gpu-arch-check", True, "measurement-mismatch"),
    ("x-nvidia-gpu-driver-rim-signature-verified", True, "measurement-mismatch"),
    ("x-nvidia-gpu-vbios-rim-signature-verified", True, "measurement-mismatch"),
    ("measres", "success", "measurement-mismatch"),
)


def _b64url(s: Any) -> bytes:
    if not isinstance(s, str):
        raise _Reject("malformed", "JWT part is not a string")
    try:
        return base64.b64decode(s.replace("-", "+").replace("_", "/") + "=" * (-len(s) % 4),
                                validate=True)
    except (ValueError, TypeError):
        raise _Reject("malformed", "JWT part is not base64url") from None


def _jwt_payload(token: str) -> dict:
    """Claims of a JWT WITHOUT checking its signature."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        raise _Reject("malformed", "a JWT has three parts")
    claims = _json(_b64url(parts[1]))
    if not isinstance(claims, dict):
        raise _Reject("malformed", "JWT payload is not an object")
    return claims


def _jwt_es384(token: Any, keys: Sequence[Any]) -> dict:
    """Claims of an ES384 JWT signed by one of `keys`; the signature is checked first."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3 or not token.isascii():
        raise _Reject("malformed", "a JWT is three ASCII parts")
    h = SHA384.new(f"{parts[0]}.{parts[1]}".encode("ascii"))
    sig = _b64url(parts[2])
    for key in keys:
        try:
            DSS.new(key, "fips-186-3", encoding="binary").verify(h, sig)
            break
        except ValueError:
            continue
    else:
        raise _Reject("bad-signature", "NRAS token is not signed by any pinned NRAS key")
    header = _json(_b64url(parts[0]))
    if not isinstance(header, dict) or header.get("alg") != "ES384":
        raise _Reject("bad-signature", "NRAS token must be ES384-signed")
    return _jwt_payload(token)


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise _Reject("malformed", "JWT part is not JSON") from None


def _p384_keys(anchors: Sequence[Any]) -> list:
    keys = []
    for a in anchors:
        if isinstance(a, (bytes, bytearray)) and len(a) != 32:
            try:
                k = ECC.import_key(bytes(a))
            except (ValueError, TypeError, IndexError):
                continue
            if k.curve in ("NIST P-384", "p384", "P-384", "secp384r1"):
                keys.append(k.public_key())
    return keys


def _nras_split(eat: Any) -> tuple[str, dict]:
    """NRAS response [["JWT", overall], {"GPU-0": detached, ...}] -> (overall, detached)."""
    ok = (isinstance(eat, list) and len(eat) == 2 and isinstance(eat[0], list) and len(eat[0]) == 2
          and eat[0][0] == "JWT" and isinstance(eat[0][1], str) and isinstance(eat[1], dict)
          and eat[1] and all(isinstance(k, str) and isinstance(v, str) for k, v in eat[1].items()))
    if not ok:
        raise _Reject("malformed", 'NRAS token must be [["JWT", overall], {gpu: detached, ...}]')
    return eat[0][1], eat[1]


def _nvidia_tcb(driver_version: str) -> int:
    """Driver "570.86" -> 570086; the TCB number policies compare."""
    try:
        parts = [int(p) for p in str(driver_version).split(".")]
        return parts[0] * 1000 + (parts[1] if len(parts) > 1 else 0)
    except (ValueError, IndexError):
        raise _Reject("malformed", f"driver version {driver_version!r} is not numeric") from None


def _nvidia_identity(detached_claims: Sequence[dict]) -> tuple[tuple[str, ...], int]:
    ueids = tuple(sorted(str(c.get("ueid", "")) for c in detached_claims))
    if not all(ueids):
        raise _Reject("malformed", "every GPU token needs a ueid")
    tcb = min(_nvidia_tcb(c.get("x-nvidia-gpu-driver-version", "")) for c in detached_claims)
    return ueids, tcb


def nvidia_evidence(signing_key: SigningKey, kem_pub: bytes, nonce: bytes, measurements: Mapping,
                    nras_eat: list, now: float) -> bytes:
    """Wrap an NRAS response (attested with eat_nonce = report_data) in the envelope.

    device_id and tcb_version are read from the (unverified) claims so the report
    agrees with what the verifier will derive from the signed tokens.
    """
    try:
        _, detached = _nras_split(nras_eat)
        ueids, tcb = _nvidia_identity([_jwt_payload(t) for t in detached.values()])
    except _Reject as rej:
        raise MalformedEvidence(f"NRAS response: {rej.detail}") from None
    report = make_report(signing_key.public, kem_pub, nonce, measurements, tcb, "+".join(ueids), now)
    nv = {"mode": "remote", "eat": nras_eat}
    return pack({"format": NVIDIA_FORMAT, "report": report, "chain": [],
                 "sig": signing_key.sign(_nvidia_signed_bytes(report, nv)), "nvidia": nv})


def _nvidia_signed_bytes(report: dict, nv: Any) -> bytes:
    # The node signs the NRAS section too, so no relay can re-label it (evidence digests stay unique).
    return _report_bytes(report) + pack(nv)


def _verify_nvidia(env: dict, anchors: Sequence[bytes], now: float,
                   policy: Policy) -> tuple[tuple[str, ...], int, float]:
    """Offline checks of an NRAS-attested GPU.

    Checked: the node's own signature over report + NRAS section (possession);
    the ES384 signature of the overall and every per-GPU NRAS token under a
    pinned NRAS key from `trust_anchors`; eat_nonce == report_data in every
    token; exp/iat; NRAS' verdicts (overall result, GPU report signature and
    cert chain and OCSP, nonce match, arch, driver/VBIOS RIM signatures,
    measres == success, dbgstat == disabled when present); ueid and driver
    version (TCB) revocation. Not checked here: the SPDM report and the GPU
    cert chain themselves (NRAS did that; we trust NRAS' key), the "submods"
    digests, and the measurements code_hash/model_hash/engine, which GPU CC
    does not measure: they are the node's own signed claim (a CPU TEE quote,
    TDX/SNP, would be needed to measure them).
    """
    r = env["report"]
    if env["chain"]:
        raise _Reject("malformed", "NVIDIA evidence carries no verinfer chain")
    nv = env.get("nvidia")
    if not isinstance(nv, dict):
        raise _Reject("malformed", "NVIDIA evidence needs an 'nvidia' section")
    if not _signed(r["signing_pub"], _nvidia_signed_bytes(r, nv), env["sig"]):
        raise _Reject("bad-signature", "report is not signed by the node's signing key")
    if nv.get("mode") != "remote":
        raise _Reject("unverifiable-evidence",
                      "only NRAS (remote) tokens are verifiable by a third party; local-verifier "
                      "tokens are HS256 under a public key")
    overall_tok, detached_tok = _nras_split(nv.get("eat"))
    keys = _p384_keys(anchors)
    if not keys:
        raise _Reject("foreign-root", "no NRAS (P-384) key among the trust anchors")
    overall = _jwt_es384(overall_tok, keys)
    detached = {name: _jwt_es384(tok, keys) for name, tok in sorted(detached_tok.items())}
    rd_hex = r["report_data"].hex()
    for name, c in [("overall", overall), *detached.items()]:
        if str(c.get("eat_nonce", "")).lower() != rd_hex:
            raise _Reject("report-data-mismatch", f"{name} token's eat_nonce is not report_data")
        if not _is_num(c.get("exp")) or now > c["exp"]:
            raise _Reject("stale-evidence", f"{name} token expired")
    if overall.get("x-nvidia-overall-att-result") is not True:
        raise _Reject("measurement-mismatch", "NRAS overall attestation result is not true")
    for name, c in detached.items():
        for claim, want, reason in _NV_GPU_CLAIMS:
            if c.get(claim) != want:
                raise _Reject(reason, f"{name}: {claim} is {c.get(claim)!r}, need {want!r}")
        _nvidia_cert_chain(name, c)
        if "dbgstat" in c and c["dbgstat"] != "disabled":
            raise _Reject("measurement-mismatch", f"{name}: GPU debug mode is {c['dbgstat']!r}")
    ueids, tcb = _nvidia_identity(list(detached.values()))
    if r["device_id"] != "+".join(ueids) or r["tcb_version"] != tcb:
        raise _Reject("malformed", "report device_id/tcb_version disagree with the NRAS claims")
    if not _is_num(overall.get("iat")):
        raise _Reject("malformed", "overall NRAS token has no iat")
    return ueids + ("+".join(ueids),), tcb, float(overall["iat"])


def _nvidia_cert_chain(name: str, c: dict) -> None:
    chain = c.get("x-nvidia-gpu-attestation-report-cert-chain")
    if isinstance(chain, dict):  # claims v3
        if chain.get("x-nvidia-cert-ocsp-status") == "revoked":
            raise _Reject("revoked-cert", f"{name}: GPU attestation cert is revoked (OCSP)")
        if chain.get("x-nvidia-cert-status") != "valid" or chain.get("x-nvidia-cert-ocsp-status") != "good":
            raise _Reject("bad-chain", f"{name}: GPU attestation cert chain is not valid/good")
    elif c.get("x-nvidia-gpu-attestation-report-cert-chain-validated") is not True:
        raise _Reject("bad-chain", f"{name}: GPU attestation cert chain not validated")
