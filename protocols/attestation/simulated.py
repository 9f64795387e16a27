"""The "verinfer-sim-v1" evidence format: a simulated root of trust.

Chain [device cert, platform cert] under an Ed25519 root (SimulatedRoot, a test
root of trust); sig is the device key's signature over the report. The verifier
accepts it only if the policy says allow_simulated, and every result says
simulated: anyone holding the seed can mint such evidence.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from ..canonical import pack, sha256
from ..crypto import SigningKey
from ..errors import MalformedMessage
from .certs import Cert, issue_cert
from .errors import _Reject
from .evidence import SIM_FORMAT, Policy, _report_bytes, _signed, make_report

_D_SIM = b"verinfer/attest/sim-root/v1"


# --- the verifier's check ---------------------------------------------------------------
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
