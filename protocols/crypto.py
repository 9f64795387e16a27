"""Ed25519 identities. Pure: key material comes in as bytes.

Randomness is the caller's: `SigningKey.from_seed(os.urandom(32))` in an actor,
a fixed seed in a test.

Backend: pycryptodome's RFC 8032 EdDSA. When the `cryptography` package
(OpenSSL; installed with ray[default]) is importable it does the curve math
instead: verification is ~4x faster, which matters because every message is
verified on the aggregator's hot path. Both implement RFC 8032 Ed25519;
tests run the same vectors through both (tests/protocols/test_messages.py).
"""

from __future__ import annotations

from Crypto.Signature import eddsa

from .errors import BadSignature, MalformedMessage

try:  # optional fast path (OpenSSL)
    from cryptography.exceptions import InvalidSignature as _OsslInvalid
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey as _OsslPriv
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey as _OsslPub
except ImportError:  # pragma: no cover - pycryptodome alone is complete
    _OsslPriv = _OsslPub = None
BACKEND = "openssl" if _OsslPub is not None else "pycryptodome"


class SigningKey:
    """An Ed25519 private key; `public` is the 32-byte raw public key."""

    __slots__ = ("_key", "public", "_signer", "seed")

    def __init__(self, seed: bytes):
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self.seed = bytes(seed)
        if _OsslPriv is not None:
            self._key = _OsslPriv.from_private_bytes(self.seed)
            self.public = self._key.public_key().public_bytes_raw()
            self._signer = self._key
        else:
            self._key = eddsa.import_private_key(self.seed)
            self.public = self._key.public_key().export_key(format="raw")
            self._signer = eddsa.new(self._key, "rfc8032")

    @classmethod
    def from_seed(cls, seed: bytes) -> "SigningKey":
        return cls(seed)

    def sign(self, message: bytes) -> bytes:
        return self._signer.sign(message)

    def __reduce__(self):  # picklable across Ray
        return (SigningKey, (self.seed,))

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.hex()[:16]}…)"


_verifier_cache: dict[bytes, object] = {}


def _verifier(public: bytes):
    v = _verifier_cache.get(public)
    if v is None:
        if not isinstance(public, (bytes, bytearray)) or len(public) != 32:
            raise MalformedMessage("an Ed25519 public key is 32 bytes")
        try:
            if _OsslPub is not None:
                v = _OsslPub.from_public_bytes(bytes(public))
            else:
                v = eddsa.new(eddsa.import_public_key(bytes(public)), "rfc8032")
        except (ValueError, TypeError) as exc:
            raise MalformedMessage(f"not an Ed25519 public key: {exc}") from None
        if len(_verifier_cache) > 4096:
            _verifier_cache.clear()
        _verifier_cache[bytes(public)] = v
    return v


def verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Raise BadSignature unless `signature` is `public`'s signature of `message`."""
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
        raise BadSignature("an Ed25519 signature is 64 bytes")
    v = _verifier(public)
    try:
        if _OsslPub is not None:
            v.verify(bytes(signature), message)
        else:
            v.verify(message, bytes(signature))
    except (ValueError, _BadSig):
        raise BadSignature("signature does not verify") from None


_BadSig = _OsslInvalid if _OsslPub is not None else ValueError


def verify_pycryptodome(public: bytes, message: bytes, signature: bytes) -> None:
    """The reference path, kept for cross-checking the fast backend."""
    try:
        eddsa.new(eddsa.import_public_key(bytes(public)), "rfc8032").verify(message, bytes(signature))
    except ValueError:
        raise BadSignature("signature does not verify") from None
