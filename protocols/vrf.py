"""RSA-FDH-VRF (RFC 9381, section 4; suite RSA-FDH-VRF-SHA256): the selector's
verifiable random function.

A VRF output beta = VRF(secret key, alpha) is unique for each (key, alpha) —
the key holder cannot choose among several valid outputs, unlike hashing an
Ed25519 signature, which the signer can re-randomise — and it is unpredictable
to anyone without the secret key. The proof pi lets anyone holding the public
key check beta offline. verinfer draws every quorum, replacement, referee and
verifier set, and flips the cross-validation coin, from beta over
(request id, draw label): the client fixes its request before anyone but the
selector can compute the draw, and the selector cannot steer it.

Pure: no I/O; RSA keys are pycryptodome objects or DER bytes.
"""

from __future__ import annotations

import hashlib

from Crypto.Hash import SHA256
from Crypto.Math.Numbers import Integer
from Crypto.PublicKey import RSA
from Crypto.Signature.pss import MGF1

from .canonical import pack
from .errors import MessageError

SUITE = b"\x01"  # RSA-FDH-VRF-SHA256
MGF_DOMAIN = b"\x01"
HASH_DOMAIN = b"\x02"
DRAW_ALPHA = "verinfer/draw/v1"
MIN_BITS = 2048


class VrfInvalid(MessageError):
    """A VRF proof does not verify under the public key for this input."""


def _i2osp(x: int, n: int) -> bytes:
    return x.to_bytes(n, "big")


def _mgf_input(n: int, k: int, alpha: bytes) -> bytes:
    return SUITE + MGF_DOMAIN + _i2osp(k, 4) + _i2osp(n, k) + alpha


def _em(n: int, k: int, alpha: bytes) -> int:
    return int.from_bytes(MGF1(_mgf_input(n, k, alpha), k - 1, SHA256), "big")


def _powmod(b: int, e: int, m: int) -> int:
    """b^e mod m with pycryptodome's native integers (several times CPython's pow)."""
    r = Integer(b)
    r.inplace_pow(Integer(e), Integer(m))
    return int(r)


def proof_to_hash(pi: bytes) -> bytes:
    return hashlib.sha256(SUITE + HASH_DOMAIN + pi).digest()


class VrfKey:
    """The selector's secret VRF key (RSA, at least 2048 bits)."""

    def __init__(self, key: "RSA.RsaKey | bytes | None" = None, bits: int = MIN_BITS):
        if key is None:
            key = RSA.generate(bits)
        elif isinstance(key, (bytes, bytearray)):
            key = RSA.import_key(bytes(key))
        if not key.has_private() or key.size_in_bits() < MIN_BITS:
            raise ValueError(f"a VRF key is a private RSA key of at least {MIN_BITS} bits")
        self._key = key
        self._k = (key.size_in_bits() + 7) // 8
        p, q, d = int(key.p), int(key.q), int(key.d)
        self._crt = (p, q, d % (p - 1), d % (q - 1), pow(q, -1, p))
        self.public = key.public_key().export_key(format="DER")

    def __getstate__(self) -> dict:  # pickles as DER (pycryptodome's RSA objects do not pickle)
        return {"der": self.export()}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["der"])

    def export(self) -> bytes:
        """DER of the private key (for the selector's durable state, sealed at rest)."""
        return self._key.export_key(format="DER")

    def prove(self, alpha: bytes) -> bytes:
        n = int(self._key.n)
        m = _em(n, self._k, alpha)
        p, q, dp, dq, qinv = self._crt
        s1, s2 = _powmod(m, dp, p), _powmod(m, dq, q)  # RSASP1 by the Chinese remainder theorem
        s = s2 + q * ((qinv * (s1 - s2)) % p)
        return _i2osp(s, self._k)

    def output(self, alpha: bytes) -> tuple[bytes, bytes]:
        """(beta, pi) for alpha."""
        pi = self.prove(alpha)
        return proof_to_hash(pi), pi


def verify(public: bytes, alpha: bytes, pi: bytes) -> bytes:
    """beta if pi is the proof for alpha under `public`; raise VrfInvalid otherwise."""
    try:
        key = RSA.import_key(bytes(public))
    except (ValueError, IndexError, TypeError):
        raise VrfInvalid("VRF public key is not an RSA key") from None
    if key.has_private() or key.size_in_bits() < MIN_BITS:
        raise VrfInvalid(f"VRF public key must be a public RSA key of at least {MIN_BITS} bits")
    n, e = int(key.n), int(key.e)
    k = (key.size_in_bits() + 7) // 8
    if not isinstance(pi, bytes) or len(pi) != k:
        raise VrfInvalid("VRF proof has the wrong length")
    s = int.from_bytes(pi, "big")
    if not 0 <= s < n:
        raise VrfInvalid("VRF proof is out of range")
    if _powmod(s, e, n) != _em(n, k, alpha):
        raise VrfInvalid("VRF proof does not verify")
    return proof_to_hash(pi)


def draw_alpha(request_id: str, label: str) -> bytes:
    """The VRF input of one draw of one request (quorum, replace:…, referee, verify, coin)."""
    return pack([DRAW_ALPHA, request_id, label])
