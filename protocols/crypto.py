"""Ed25519 identities (pycryptodome). Pure: key material comes in as bytes.

Randomness is the caller's: `SigningKey.from_seed(os.urandom(32))` in an actor,
a fixed seed in a test.
"""

from __future__ import annotations

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from .errors import BadSignature, MalformedMessage


class SigningKey:
    """An Ed25519 private key; `public` is the 32-byte raw public key."""

    __slots__ = ("_key", "public", "_signer", "seed")

    def __init__(self, seed: bytes):
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self.seed = bytes(seed)
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
            key = eddsa.import_public_key(bytes(public))
        except (ValueError, TypeError) as exc:
            raise MalformedMessage(f"not an Ed25519 public key: {exc}") from None
        v = eddsa.new(key, "rfc8032")
        if len(_verifier_cache) > 4096:
            _verifier_cache.clear()
        _verifier_cache[bytes(public)] = v
    return v


def verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Raise BadSignature unless `signature` is `public`'s signature of `message`."""
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
        raise BadSignature("an Ed25519 signature is 64 bytes")
    try:
        _verifier(public).verify(message, bytes(signature))
    except ValueError:
        raise BadSignature("signature does not verify") from None
