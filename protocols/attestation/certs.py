"""Ed25519 certificate chains: a `Cert` names a subject, its kind and its key,
signed by its issuer. The simulated format carries [device cert, platform cert]
under a root key (see `simulated`). Pure: validity periods are checked by the
verifier against the caller's `now`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..canonical import pack
from ..crypto import SigningKey
from ..crypto import verify as verify_signature
from ..errors import MalformedMessage
from .evidence import _is_int, _is_num, _key32

CERT_KINDS = ("root", "platform", "device")

_D_CERT = b"verinfer/attest/cert/v1\x00"


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
