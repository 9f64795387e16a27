"""Attestation errors and the reason codes every verdict carries.

`REASONS` are the machine codes of `AttestationResult.reason`; each failing one
maps to the `AttestationError` subclass that `raise_for_failure` raises.
`_Reject` is internal: the checks raise it and `verify` turns it into a result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError, VerinferError

if TYPE_CHECKING:
    from .evidence import AttestationResult


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
    """A failed check inside the verifier: `reason` (one of REASONS) and a detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail
