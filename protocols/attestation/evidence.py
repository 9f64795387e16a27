"""The evidence envelope and report every format shares, the policy and the verdict.

Format-neutral: the report body and its report_data binding, parsing of the
envelope and report, `Policy`, `AttestationResult`, and the field checks the
format modules reuse. The per-format signature checks are in `simulated` and
`nvidia`; `verifier.verify` runs them in order. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..canonical import pack, sha256, unpack
from ..crypto import verify as verify_signature
from ..errors import BadSignature, MalformedMessage
from .errors import _ERROR_FOR_REASON, AttestationError, InvalidPolicy, MalformedEvidence, _Reject

SIM_FORMAT = "verinfer-sim-v1"
NVIDIA_FORMAT = "nvidia-gpu-cc-v1"
FORMATS = (SIM_FORMAT, NVIDIA_FORMAT)
MEASUREMENT_FIELDS = ("code_hash", "model_hash", "engine")
MAX_EVIDENCE_BYTES = 1 << 20

_D_REPORT_DATA = b"verinfer/attest/report-data/v1\x00"
_D_REPORT = b"verinfer/attest/report/v1\x00"


# --- field checks -----------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _key32(value: Any, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise MalformedMessage(f"{what} must be 32 bytes")
    return bytes(value)


def _nonce(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or not 16 <= len(value) <= 64:
        raise MalformedMessage("an attestation nonce is 16..64 bytes")
    return bytes(value)


# --- binding ----------------------------------------------------------------------
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


def _signed(public: Any, message: bytes, sig: bytes) -> bool:
    """Ed25519 check that treats a key that is not a curve point as a failed signature."""
    if not isinstance(public, (bytes, bytearray)) or len(public) != 32:
        return False
    try:
        verify_signature(bytes(public), message, sig)
        return True
    except (BadSignature, MalformedMessage):
        return False
