"""Remote attestation: evidence envelope, certificates, policy and the verifier.

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
    `nvidia._verify_nvidia` for what is and is not checked offline.

The order of checks is the security argument, and `verifier.verify` holds it
in one place for both formats: envelope and report parsing, the format's chain
and signatures, the binding to the nonce and the node's keys, simulated or
not, freshness, replay, then the policy (measurements, TCB, revocations). Pure:
`now` and the caller-owned `seen_nonces` set come in; no clock, no I/O, no
randomness.

Modules (each imports, at run time, only those above it):
  * errors: AttestationError and its subclasses, InvalidPolicy, REASONS and
    UNAUTHENTIC_REASONS.
  * evidence: the envelope and report (report_data, ExpectedBinding,
    make_report, evidence_report), Policy, standing_policy, AttestationResult.
  * certs: Cert, issue_cert, verify_cert (Ed25519 certificate chains).
  * simulated: the "verinfer-sim-v1" format and SimulatedRoot.
  * nvidia: the "nvidia-gpu-cc-v1" format, nvidia_evidence and the NRAS token checks.
  * verifier: `verify`, which dispatches on the format and runs every check.
"""

from .certs import CERT_KINDS, Cert, issue_cert, verify_cert
from .errors import (
    REASONS,
    UNAUTHENTIC_REASONS,
    AttestationError,
    BindingMismatch,
    CertificateRejected,
    DeviceRevoked,
    EvidenceSignatureInvalid,
    InvalidPolicy,
    MalformedEvidence,
    MeasurementMismatch,
    ProviderUnavailable,
    SimulatedNotAllowed,
    StaleEvidence,
    TcbRejected,
)
from .evidence import (
    FORMATS,
    MAX_EVIDENCE_BYTES,
    MEASUREMENT_FIELDS,
    NVIDIA_FORMAT,
    SIM_FORMAT,
    AttestationResult,
    ExpectedBinding,
    Policy,
    _report_bytes,
    evidence_report,
    make_report,
    report_data,
    standing_policy,
)
from .nvidia import _nvidia_signed_bytes, nvidia_evidence
from .simulated import SimulatedRoot
from .verifier import verify

__all__ = [
    "CERT_KINDS", "FORMATS", "MAX_EVIDENCE_BYTES", "MEASUREMENT_FIELDS", "NVIDIA_FORMAT",
    "REASONS", "SIM_FORMAT", "UNAUTHENTIC_REASONS",
    "AttestationError", "BindingMismatch", "CertificateRejected", "DeviceRevoked",
    "EvidenceSignatureInvalid", "InvalidPolicy", "MalformedEvidence", "MeasurementMismatch",
    "ProviderUnavailable", "SimulatedNotAllowed", "StaleEvidence", "TcbRejected",
    "AttestationResult", "Cert", "ExpectedBinding", "Policy", "SimulatedRoot",
    "evidence_report", "issue_cert", "make_report", "nvidia_evidence", "report_data",
    "standing_policy", "verify", "verify_cert",
    # not public: the signed-bytes helpers tests use to re-sign tampered evidence
    "_nvidia_signed_bytes", "_report_bytes",
]
