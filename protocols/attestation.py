"""Remote attestation: evidence envelope, certificates, policy and the verifier.

Why over 400 lines: the evidence envelope, certificate chains, the simulated
root, the NVIDIA adapter's format and the policy verifier are still one module;
issue 12 (item 5) splits it into a package with one module per evidence format.

Owns what "this node runs approved code on a genuine TEE, and these are its
keys" means. Evidence is canonical msgpack

    {format, report: {report_data, signing_pub, kem_pub, nonce,
                      measurements: {code_hash, model_hash, engine},
                      tcb_version, device_id, issued_at},
     chain, sig, [nvidia]}

where report_data = H(domain || signing_pub || kem_pub || nonce) binds the node's
Ed25519 signing key, its X25519 HPKE key and the verifier's fresh nonce.

`verify` dispatches on `format`:
  * "verinfer-sim-v1": chain [device cert, platform cert] under an Ed25519 root
    (SimulatedRoot, a test root of trust); sig is the device key's signature
    over the report. Accepted only if the policy says allow_simulated, and every
    result says simulated.
  * "nvidia-gpu-cc-v1": NVIDIA NRAS attestation tokens (ES384 JWTs) whose
    eat_nonce is report_data, in an extra `nvidia: {mode, eat}` section; sig is
    the node signing key's own signature over report + that section. See
    `_verify_nvidia` for what is and is not checked offline.

The order of checks is the security argument, so both formats live here side
by side (which is why the file is longer than usual). Pure: `now` and the
caller-owned `seen_nonces` set come in; no clock, no I/O, no randomness.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from Crypto.Hash import SHA256, SHA384
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC
from Crypto.Signature import DSS

from .canonical import pack, sha256, unpack
from .crypto import SigningKey
from .crypto import verify as verify_signature
from .errors import BadSignature, ConfigError, MalformedMessage, VerinferError

SIM_FORMAT = "verinfer-sim-v1"
NVIDIA_FORMAT = "nvidia-gpu-cc-v1"
FORMATS = (SIM_FORMAT, NVIDIA_FORMAT)
CERT_KINDS = ("root", "platform", "device")
MEASUREMENT_FIELDS = ("code_hash", "model_hash", "engine")
MAX_EVIDENCE_BYTES = 1 << 20

_D_REPORT_DATA = b"verinfer/attest/report-data/v1\x00"
_D_REPORT = b"verinfer/attest/report/v1\x00"
_D_CERT = b"verinfer/attest/cert/v1\x00"
_D_SIM = b"verinfer/attest/sim-root/v1"

REASONS = (
    "ok", "malformed", "unsupported-format", "unverifiable-evidence", "bad-signature",
    "bad-chain", "foreign-root", "cert-expired", "cert-not-yet-valid", "revoked-cert",
    "wrong-nonce", "report-data-mismatch", "simulated-not-allowed", "stale-evidence",
    "replayed-evidence", "measurement-mismatch", "revoked-tcb", "tcb-too-old", "revoked-device",
)
# Failures that do not show the evidence is the node's own fresh answer to our nonce:
# anyone could have sent it, so it says nothing about the node's state. The others
# (measurements, TCB, revocations, certificates) are authentic statements of a bad state.
UNAUTHENTIC_REASONS = frozenset({
    "malformed", "unsupported-format", "unverifiable-evidence", "bad-signature", "bad-chain", "foreign-root",
    "wrong-nonce", "report-data-mismatch", "replayed-evidence", "stale-evidence",
})


# --- errors ---------------------------------------------------------------------
class AttestationError(VerinferError):
    """Evidence was rejected; `reason` is the machine code, `result` the full verdict."""

    def __init__(self, message: str, result: "AttestationResult | None" = None):
        super().__init__(message)
        self.result = result
        self.reason = result.reason if result is not None else "attestation-failed"


class MalformedEvidence(AttestationError):
    """Not a well-formed envelope, or a format this verifier does not speak."""


class EvidenceSignatureInvalid(AttestationError):
    """The report (or an NRAS token) is not signed by the key it must be signed by."""


class CertificateRejected(AttestationError):
    """The chain is broken, foreign, out of its validity period or revoked."""


class BindingMismatch(AttestationError):
    """Evidence is bound to another nonce or to other node keys."""


class SimulatedNotAllowed(AttestationError):
    """Simulated evidence under a policy that demands real hardware."""


class StaleEvidence(AttestationError):
    """Evidence is too old, from the future, or its nonce was seen before."""


class MeasurementMismatch(AttestationError):
    """Code hash, model hash, engine or device firmware is not what the policy pins."""


class TcbRejected(AttestationError):
    """The TCB version is revoked or below the policy minimum."""


class DeviceRevoked(AttestationError):
    """The device is on the policy's revocation list."""


class ProviderUnavailable(AttestationError):
    """A real attestation provider cannot run here (SDK or hardware missing)."""


class InvalidPolicy(ConfigError):
    """An attestation Policy field is invalid; the message names the field."""


_ERROR_FOR_REASON = {
    "malformed": MalformedEvidence, "unsupported-format": MalformedEvidence,
    "unverifiable-evidence": EvidenceSignatureInvalid, "bad-signature": EvidenceSignatureInvalid,
    "bad-chain": CertificateRejected, "foreign-root": CertificateRejected,
    "cert-expired": CertificateRejected, "cert-not-yet-valid": CertificateRejected,
    "revoked-cert": CertificateRejected, "wrong-nonce": BindingMismatch,
    "report-data-mismatch": BindingMismatch, "simulated-not-allowed": SimulatedNotAllowed,
    "stale-evidence": StaleEvidence, "replayed-evidence": StaleEvidence,
    "measurement-mismatch": MeasurementMismatch, "revoked-tcb": TcbRejected,
    "tcb-too-old": TcbRejected, "revoked-device": DeviceRevoked,
}


class _Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# --- binding ----------------------------------------------------------------------
def _key32(value: Any, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise MalformedMessage(f"{what} must be 32 bytes")
    return bytes(value)


def _nonce(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or not 16 <= len(value) <= 64:
        raise MalformedMessage("an attestation nonce is 16..64 bytes")
    return bytes(value)


def report_data(signing_pub: bytes, kem_pub: bytes, nonce: bytes) -> bytes:
    """H(domain || signing_pub || kem_pub || nonce): the 32 bytes a TEE report carries."""
    return sha256(_D_REPORT_DATA, _key32(signing_pub, "signing_pub"),
                  _key32(kem_pub, "kem_pub"), _nonce(nonce))


@dataclass(frozen=True)
class ExpectedBinding:
    """What the verifier expects the evidence to bind: the node's keys and its own nonce."""

    signing_pub: bytes
    kem_pub: bytes
    nonce: bytes

    def __post_init__(self):
        report_data(self.signing_pub, self.kem_pub, self.nonce)  # validates the shapes

    def report_data(self) -> bytes:
        return report_data(self.signing_pub, self.kem_pub, self.nonce)


# --- certificates -------------------------------------------------------------------
@dataclass(frozen=True)
class Cert:
    """An Ed25519 certificate: `issuer` (by subject name) vouches for `pubkey` of `subject`."""

    serial: int
    subject: str
    kind: str
    pubkey: bytes
    issuer: str
    not_before: float
    not_after: float
    sig: bytes = b""

    def body(self) -> dict:
        return {"serial": self.serial, "subject": self.subject, "kind": self.kind,
                "pubkey": self.pubkey, "issuer": self.issuer,
                "not_before": float(self.not_before), "not_after": float(self.not_after)}

    def signed_bytes(self) -> bytes:
        return _D_CERT + pack(self.body())

    def to_wire(self) -> dict:
        return {**self.body(), "sig": self.sig}

    @classmethod
    def from_wire(cls, obj: Any) -> "Cert":
        if not isinstance(obj, dict):
            raise MalformedMessage("a certificate is a map")
        try:
            c = cls(obj["serial"], obj["subject"], obj["kind"], obj["pubkey"], obj["issuer"],
                    obj["not_before"], obj["not_after"], obj["sig"])
        except KeyError as exc:
            raise MalformedMessage(f"certificate misses {exc}") from None
        ok = (_is_int(c.serial) and c.serial >= 0 and isinstance(c.subject, str) and c.subject
              and c.kind in CERT_KINDS and isinstance(c.pubkey, bytes) and len(c.pubkey) == 32
              and isinstance(c.issuer, str) and _is_num(c.not_before) and _is_num(c.not_after)
              and isinstance(c.sig, bytes))
        if not ok:
            raise MalformedMessage("certificate field has the wrong type")
        return c


def issue_cert(subject_key_pub: bytes, subject: str, kind: str, issuer: SigningKey,
               issuer_subject: str, not_before: float, not_after: float, serial: int) -> Cert:
    """A certificate for `subject_key_pub`, signed by `issuer`."""
    if kind not in CERT_KINDS:
        raise ValueError(f"kind must be one of {CERT_KINDS}")
    if not (_is_num(not_before) and _is_num(not_after)) or not_after <= not_before:
        raise ValueError("a certificate needs not_before < not_after")
    if not _is_int(serial) or serial < 0:
        raise ValueError("serial is a non-negative int")
    if not subject or not issuer_subject:
        raise ValueError("subject and issuer_subject are non-empty")
    c = Cert(serial, subject, kind, _key32(subject_key_pub, "pubkey"), issuer_subject,
             float(not_before), float(not_after))
    return replace(c, sig=issuer.sign(c.signed_bytes()))


def verify_cert(cert: Cert, issuer_pub: bytes) -> None:
    """Raise BadSignature unless `issuer_pub` signed `cert` (MalformedMessage if it is no key)."""
    verify_signature(issuer_pub, cert.signed_bytes(), cert.sig)


# --- policy and result -----------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """What a verifier accepts. Mirrors an `[attestation]` config table one-to-one."""

    allowed_code_hashes: tuple[str, ...] = ()
    """Hex SHA-256 code hashes (actors.attestation.code_hash()) a node may run; empty = any."""
    model_hash: str | None = None
    """The model's content hash the node must have loaded; None = any."""
    allowed_engines: tuple[str, ...] = ()
    """Engine names a node may run (e.g. "tiny", "vllm"); empty = any."""
    min_tcb_version: int = 0
    """Lowest acceptable TCB version (NVIDIA: driver major*1000 + minor, 570.86 -> 570086)."""
    max_age_s: float = 300.0
    """Freshness window: evidence issued more than this many seconds before `now` is stale."""
    max_clock_skew_s: float = 5.0
    """Evidence issued up to this far in the future (clock skew) is still accepted."""
    revoked_tcb_versions: tuple[int, ...] = ()
    """TCB versions known to be broken, rejected whatever min_tcb_version says."""
    revoked_devices: tuple[str, ...] = ()
    """Device ids (simulated device id, NVIDIA GPU ueid) that are rejected."""
    revoked_serials: tuple[int, ...] = ()
    """Certificate serials (platform or device cert) that are rejected."""
    allow_simulated: bool = False
    """Accept "verinfer-sim-v1" evidence. Only for tests and demos: it proves nothing."""

    def __post_init__(self):
        def tup(name, ok, what):
            v = getattr(self, name)
            if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)) or not all(ok(x) for x in v):
                raise InvalidPolicy(f"attestation policy: {name} must be a list of {what}")
            object.__setattr__(self, name, tuple(v))

        tup("allowed_code_hashes", lambda x: isinstance(x, str) and x, "non-empty strings")
        tup("allowed_engines", lambda x: isinstance(x, str) and x, "non-empty strings")
        tup("revoked_devices", lambda x: isinstance(x, str) and x, "non-empty strings")
        tup("revoked_tcb_versions", lambda x: _is_int(x) and x >= 0, "non-negative ints")
        tup("revoked_serials", lambda x: _is_int(x) and x >= 0, "non-negative ints")
        if self.model_hash is not None and not (isinstance(self.model_hash, str) and self.model_hash):
            raise InvalidPolicy("attestation policy: model_hash must be a non-empty string or None")
        if not _is_int(self.min_tcb_version) or self.min_tcb_version < 0:
            raise InvalidPolicy("attestation policy: min_tcb_version must be an int >= 0")
        for name in ("max_age_s", "max_clock_skew_s"):
            v = getattr(self, name)
            if not _is_num(v) or v < 0 or (name == "max_age_s" and v == 0):
                raise InvalidPolicy(f"attestation policy: {name} must be a number > 0")
        if not isinstance(self.allow_simulated, bool):
            raise InvalidPolicy("attestation policy: allow_simulated must be a bool")


@dataclass(frozen=True)
class AttestationResult:
    """The verdict on one piece of evidence.

    Fields past `detail` are filled as far as parsing got; they are what the
    evidence claims and are only to be relied on when `ok`.
    """

    ok: bool
    reason: str  # one of REASONS
    detail: str
    simulated: bool = False
    format: str = ""
    measurements: dict | None = None
    tcb_version: int | None = None
    device_id: str | None = None
    digest: str = ""  # hex SHA-256 of the evidence bytes: what receipts carry
    nonce: bytes = b""
    signing_pub: bytes = b""
    kem_pub: bytes = b""
    issued_at: float | None = None

    def raise_for_failure(self) -> "AttestationResult":
        """Return self if ok, else raise the AttestationError subclass for `reason`."""
        if self.ok:
            return self
        raise _ERROR_FOR_REASON.get(self.reason, AttestationError)(f"{self.reason}: {self.detail}", self)


# --- envelope -------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _measurements(m: Any) -> dict:
    if not isinstance(m, Mapping) or set(m) != set(MEASUREMENT_FIELDS) \
            or not all(isinstance(m[k], str) for k in MEASUREMENT_FIELDS):
        raise MalformedMessage(f"measurements are exactly {MEASUREMENT_FIELDS}, all strings")
    return {k: m[k] for k in MEASUREMENT_FIELDS}


def make_report(signing_pub: bytes, kem_pub: bytes, nonce: bytes, measurements: Mapping,
                tcb_version: int, device_id: str, issued_at: float) -> dict:
    """The report body every format signs (report_data computed here, never passed in)."""
    if not _is_int(tcb_version) or tcb_version < 0 or not (isinstance(device_id, str) and device_id):
        raise MalformedMessage("tcb_version is an int >= 0 and device_id a non-empty str")
    if not _is_num(issued_at):
        raise MalformedMessage("issued_at is a finite unix time")
    return {"report_data": report_data(signing_pub, kem_pub, nonce), "signing_pub": bytes(signing_pub),
            "kem_pub": bytes(kem_pub), "nonce": bytes(nonce), "measurements": _measurements(measurements),
            "tcb_version": tcb_version, "device_id": device_id, "issued_at": float(issued_at)}


def _report_bytes(report: dict) -> bytes:
    return _D_REPORT + pack(report)


def _parse_envelope(evidence: Any) -> dict:
    if not isinstance(evidence, (bytes, bytearray)):
        raise _Reject("malformed", "evidence must be bytes")
    try:
        env = unpack(evidence, max_len=MAX_EVIDENCE_BYTES)
    except MalformedMessage as exc:
        raise _Reject("malformed", str(exc)) from None
    if not isinstance(env, dict) or not {"format", "report", "chain", "sig"} <= set(env):
        raise _Reject("malformed", "envelope needs format, report, chain, sig")
    if env["format"] not in FORMATS:
        raise _Reject("unsupported-format", f"unknown evidence format {env['format']!r}")
    return env


def _parse_report(env: dict) -> None:
    r = env["report"]
    if not isinstance(r, dict) or not isinstance(env["chain"], list) or not isinstance(env["sig"], bytes):
        raise _Reject("malformed", "report is a map, chain a list, sig bytes")
    try:
        expect = make_report(r["signing_pub"], r["kem_pub"], r["nonce"], r["measurements"],
                             r["tcb_version"], r["device_id"], r["issued_at"])
    except (KeyError, TypeError, ValueError, MalformedMessage) as exc:
        raise _Reject("malformed", f"report: {exc}") from None
    if not isinstance(r.get("report_data"), bytes) or len(r["report_data"]) != 32:
        raise _Reject("malformed", "report_data must be 32 bytes")
    env["_recomputed_report_data"] = expect["report_data"]


def standing_policy(allow_simulated: bool = True, model_hash: str | None = None) -> Policy:
    """For evidence checked after admission (by clients and receipt verifiers): chain,
    signatures, binding and model, at the time of use. How fresh it must be is the
    registry's business: nodes re-attest every epoch."""
    return Policy(model_hash=model_hash, allow_simulated=allow_simulated, max_age_s=1e12, max_clock_skew_s=300.0)


def evidence_report(evidence: bytes) -> dict:
    """The (unverified) report inside evidence: signing_pub, kem_pub, nonce, measurements, ...
    Raises MalformedEvidence. Use `verify` before trusting any of it."""
    try:
        env = _parse_envelope(evidence)
        _parse_report(env)
    except _Reject as rej:
        raise MalformedEvidence(f"{rej.reason}: {rej.detail}") from None
    return dict(env["report"])


# --- the verifier ---------------------------------------------------------------------
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
        if env["format"] == SIM_FORMAT:
            devices, tcb, issued_at = _verify_sim_signatures(env, trust_anchors, now, policy)
        else:
            devices, tcb, issued_at = _verify_nvidia(env, trust_anchors, now, policy)
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


def _verify_sim_signatures(env: dict, anchors: Sequence[bytes], now: float,
                           policy: Policy) -> tuple[tuple[str, ...], int, float]:
    """Chain [device, platform] up to an Ed25519 anchor, validity, revocation, report sig."""
    r = env["report"]
    if len(env["chain"]) != 2:
        raise _Reject("bad-chain", "chain must be [device cert, platform cert]")
    try:
        device, platform = (Cert.from_wire(c) for c in env["chain"])
    except MalformedMessage as exc:
        raise _Reject("malformed", str(exc)) from None
    if device.kind != "device" or platform.kind != "platform" or device.issuer != platform.subject:
        raise _Reject("bad-chain", "chain must be a device cert issued by a platform cert")
    if device.subject != r["device_id"]:
        raise _Reject("bad-chain", "device cert is for another device_id")
    if not _signed(platform.pubkey, device.signed_bytes(), device.sig):
        raise _Reject("bad-chain", "device cert is not signed by the platform key")
    if not any(_signed(a, platform.signed_bytes(), platform.sig) for a in anchors):
        raise _Reject("foreign-root", "platform cert is not signed by any trust anchor")
    for c in (device, platform):
        if now > c.not_after:
            raise _Reject("cert-expired", f"{c.kind} cert {c.serial} expired")
        if now < c.not_before:
            raise _Reject("cert-not-yet-valid", f"{c.kind} cert {c.serial} is not valid yet")
        if c.serial in policy.revoked_serials:
            raise _Reject("revoked-cert", f"{c.kind} cert serial {c.serial} is revoked")
    if not _signed(device.pubkey, _report_bytes(r), env["sig"]):
        raise _Reject("bad-signature", "report is not signed by the device key")
    return (r["device_id"],), r["tcb_version"], float(r["issued_at"])


def _signed(public: Any, message: bytes, sig: bytes) -> bool:
    """Ed25519 check that treats a key that is not a curve point as a failed signature."""
    if not isinstance(public, (bytes, bytearray)) or len(public) != 32:
        return False
    try:
        verify_signature(bytes(public), message, sig)
        return True
    except (BadSignature, MalformedMessage):
        return False


# --- the simulated root of trust --------------------------------------------------------
class SimulatedRoot:
    """A test root of trust: root -> platform CA -> per-device keys, all from one seed.

    Anyone holding the seed can mint evidence, so what it signs proves nothing
    about hardware; it exists so the real verifier path runs in tests and demos.
    """

    ROOT_SUBJECT = "verinfer-sim-root"
    PLATFORM_SUBJECT = "verinfer-sim-platform"

    def __init__(self, seed: bytes):
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
            raise ValueError("a SimulatedRoot seed is 32 bytes")
        self._seed = bytes(seed)
        self.root_key = SigningKey(self._derive(b"root"))
        self.platform_key = SigningKey(self._derive(b"platform"))

    def _derive(self, label: bytes) -> bytes:
        return HKDF(self._seed, 32, salt=_D_SIM, hashmod=SHA256, context=label)

    @property
    def trust_anchor(self) -> bytes:
        return self.root_key.public

    def device_key(self, device_id: str) -> SigningKey:
        return SigningKey(self._derive(b"device\x00" + device_id.encode()))

    @staticmethod
    def device_serial(device_id: str) -> int:
        return int.from_bytes(sha256(b"sim-serial\x00", device_id.encode())[:7], "big")

    def platform_cert(self, not_before: float, not_after: float, serial: int = 1) -> Cert:
        return issue_cert(self.platform_key.public, self.PLATFORM_SUBJECT, "platform", self.root_key,
                          self.ROOT_SUBJECT, not_before, not_after, serial)

    def device_cert(self, device_id: str, not_before: float, not_after: float,
                    serial: int | None = None) -> Cert:
        serial = self.device_serial(device_id) if serial is None else serial
        return issue_cert(self.device_key(device_id).public, device_id, "device", self.platform_key,
                          self.PLATFORM_SUBJECT, not_before, not_after, serial)

    def evidence(self, device_id: str, signing_pub: bytes, kem_pub: bytes, nonce: bytes,
                 measurements: Mapping, tcb_version: int, now: float, *, validity_s: float = 86400.0,
                 device_cert: Cert | None = None, platform_cert: Cert | None = None) -> bytes:
        """Evidence issued at `now`; certs valid [now - 60, now + validity_s] unless given."""
        report = make_report(signing_pub, kem_pub, nonce, measurements, tcb_version, device_id, now)
        device_cert = device_cert or self.device_cert(device_id, now - 60.0, now + validity_s)
        platform_cert = platform_cert or self.platform_cert(now - 60.0, now + validity_s)
        sig = self.device_key(device_id).sign(_report_bytes(report))
        return pack({"format": SIM_FORMAT, "report": report,
                     "chain": [device_cert.to_wire(), platform_cert.to_wire()], "sig": sig})


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
