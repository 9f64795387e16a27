"""HPKE sealing (RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM).

Used for tickets sealed to a selected node (obfuscated mode) and, with TEEs,
for prompts sealed to attested executors and outputs sealed back to clients.
The sealed form is canonical msgpack [enc, ciphertext]; `info` binds the
context (e.g. "ticket|<request id>") so a ciphertext cannot be replayed into
another context. The ephemeral key comes from the library's CSPRNG.
"""

from __future__ import annotations

from Crypto.Protocol import HPKE
from Crypto.PublicKey import ECC

from .canonical import pack, unpack
from .errors import MalformedMessage, MessageError


class SealError(MessageError):
    """A sealed blob does not open: wrong key, wrong context or tampered."""


class KemKey:
    """An X25519 private key for HPKE; `public` is the 32-byte raw public key."""

    __slots__ = ("seed", "_key", "public")

    def __init__(self, seed: bytes):
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
            raise ValueError("an X25519 seed is 32 bytes")
        self.seed = bytes(seed)
        self._key = ECC.construct(curve="Curve25519", seed=self.seed)
        self.public = self._key.public_key().export_key(format="raw")

    def __reduce__(self):
        return (KemKey, (self.seed,))

    def open(self, sealed: bytes, info: bytes, aad: bytes = b"") -> bytes:
        obj = unpack(sealed)
        if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, bytes) for x in obj)):
            raise MalformedMessage("sealed data must be [enc, ciphertext]")
        enc, ct = obj
        try:
            ctx = HPKE.new(receiver_key=self._key, aead_id=HPKE.AEAD.AES256_GCM, enc=enc, info=info)
            return ctx.unseal(ct, aad)
        except (ValueError, TypeError) as exc:
            raise SealError(f"cannot open sealed data: {exc}") from None


def is_public_key(public: object) -> bool:
    """Whether something can be sealed to `public` (a valid X25519 public key)."""
    try:
        HPKE.import_x25519_public_key(bytes(public))  # type: ignore[arg-type]
        return True
    except (ValueError, TypeError):
        return False


def seal(recipient_public: bytes, plaintext: bytes, info: bytes, aad: bytes = b"") -> bytes:
    try:
        pub = HPKE.import_x25519_public_key(bytes(recipient_public))
    except (ValueError, TypeError) as exc:
        raise MalformedMessage(f"not an X25519 public key: {exc}") from None
    ctx = HPKE.new(receiver_key=pub, aead_id=HPKE.AEAD.AES256_GCM, info=info)
    ct = ctx.seal(plaintext, aad)
    return pack([ctx.enc, ct])


# --- prompts sealed to every attested node that may serve them -----------------------
PROMPT_INFO = b"verinfer/prompt|"
OUTPUT_INFO = b"verinfer/output|"


def seal_prompt(prompt: str, request_id: str, recipients: dict[str, bytes], content_key: bytes,
                nonce: bytes, secret: bytes = b"") -> bytes:
    """Encrypt `prompt` and the client's hash secret once (AES-256-GCM under
    content_key) and seal content_key to each recipient node's HPKE key, so any node
    the selector may still draw can read it and nobody else can. content_key (32
    bytes) and nonce (12 bytes) are the caller's. `secret` salts the signed prompt
    hash of a sealed request (with the request nonce), so only readers of the
    prompt can test a guess against that hash."""
    from Crypto.Cipher import AES

    if not isinstance(content_key, bytes) or len(content_key) != 32 or not isinstance(nonce, bytes) \
            or len(nonce) != 12:
        raise ValueError("seal_prompt needs a 32-byte content key and a 12-byte nonce")
    cipher = AES.new(content_key, AES.MODE_GCM, nonce=nonce)
    cipher.update(PROMPT_INFO + request_id.encode())
    ct, tag = cipher.encrypt_and_digest(pack([prompt, bytes(secret)]))
    keys = {nid: seal(pub, content_key, PROMPT_INFO + request_id.encode() + b"|" + nid.encode())
            for nid, pub in recipients.items()}
    return pack({"ct": ct, "tag": tag, "nonce": nonce, "keys": keys})


def prompt_recipients(blob: bytes) -> frozenset[str]:
    """The node ids a sealed prompt is sealed to (its public recipient table)."""
    try:
        obj = unpack(blob)
        keys = obj["keys"]
        if not isinstance(keys, dict) or not all(isinstance(k, str) for k in keys):
            raise TypeError("recipient table")
    except Exception as exc:
        raise SealError(f"sealed prompt is malformed: {exc}") from None
    return frozenset(keys)


def open_prompt(blob: bytes, request_id: str, node_id: str, kem: KemKey) -> tuple[str, bytes]:
    """(prompt, hash secret) for a recipient node; SealError otherwise."""
    from Crypto.Cipher import AES

    obj = unpack(blob)
    if not isinstance(obj, dict) or not isinstance(obj.get("keys"), dict) or node_id not in obj["keys"]:
        raise SealError(f"the prompt is not sealed to {node_id}")
    key = kem.open(obj["keys"][node_id], PROMPT_INFO + request_id.encode() + b"|" + node_id.encode())
    try:
        cipher = AES.new(key, AES.MODE_GCM, nonce=obj["nonce"])
        cipher.update(PROMPT_INFO + request_id.encode())
        inner = unpack(cipher.decrypt_and_verify(obj["ct"], obj["tag"]))
        if not (isinstance(inner, list) and len(inner) == 2 and isinstance(inner[0], str)
                and isinstance(inner[1], bytes)):
            raise ValueError("sealed content is not [prompt, secret]")
        return inner[0], inner[1]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, MessageError) as exc:
        raise SealError(f"sealed prompt does not open: {exc}") from None


def output_info(request_id: str, member_id: str) -> bytes:
    return OUTPUT_INFO + request_id.encode() + b"|" + member_id.encode()


# --- weights at rest ------------------------------------------------------------------
WEIGHTS_INFO = b"verinfer/weights|"


def encrypt_blob(data: bytes, key: bytes, nonce: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: [nonce, ciphertext, tag] (the weights file format at rest)."""
    from Crypto.Cipher import AES

    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(aad)
    ct, tag = cipher.encrypt_and_digest(data)
    return pack([nonce, ct, tag])


def decrypt_blob(blob: bytes, key: bytes, aad: bytes) -> bytes:
    from Crypto.Cipher import AES

    try:
        nonce, ct, tag = unpack(blob, max_len=1 << 34)
        cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
        cipher.update(aad)
        return cipher.decrypt_and_verify(ct, tag)
    except (ValueError, TypeError) as exc:
        raise SealError(f"encrypted weights do not open: {exc}") from None


def weights_key_info(model_id: str, node_id: str) -> bytes:
    return WEIGHTS_INFO + model_id.encode() + b"|" + node_id.encode()


# --- large weights at rest, sealed in place -------------------------------------------
# Sealed form: header (WEIGHTS_MAGIC, 12-byte nonce, 16-byte GCM tag) then the
# ciphertext, as long as the plaintext. The header comes first so a reader can
# decrypt straight into memory it chose (e.g. page-aligned) with no second copy.
WEIGHTS_MAGIC = b"VRFW\x00GCM"
WEIGHTS_HEADER_LEN = len(WEIGHTS_MAGIC) + 12 + 16


def weights_aad(model_id: str, model_hash: str, files_digest: str = "") -> bytes:
    """What sealed weights are bound to: the model id, the registered model hash and
    the digest of the package's plaintext files (config, tokenizer)."""
    return WEIGHTS_INFO + model_id.encode() + b"|" + model_hash.encode() + b"|" + files_digest.encode()


def _byte_view(buf) -> memoryview:
    mv = memoryview(buf)
    if mv.readonly:
        raise TypeError("weights are sealed and opened in place: pass a writable buffer")
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def seal_weights(buf, key: bytes, nonce: bytes, aad: bytes) -> bytes:
    """AES-256-GCM-encrypt the writable buffer `buf` in place; return the header
    that precedes the ciphertext in the sealed form."""
    from Crypto.Cipher import AES

    if len(key) != 32 or len(nonce) != 12:
        raise ValueError("weights are sealed with a 32-byte key and a 12-byte nonce")
    mv = _byte_view(buf)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(aad)
    cipher.encrypt(mv, output=mv)
    return WEIGHTS_MAGIC + nonce + cipher.digest()


def open_weights(header: bytes, buf, key: bytes, aad: bytes) -> None:
    """Decrypt in place what `seal_weights` sealed. A wrong key, wrong `aad` or
    tampered bytes raise SealError, and `buf` is zeroed (no unverified plaintext)."""
    from Crypto.Cipher import AES

    if len(header) != WEIGHTS_HEADER_LEN or not header.startswith(WEIGHTS_MAGIC):
        raise SealError("not sealed weights (bad header)")
    nonce, tag = header[len(WEIGHTS_MAGIC):-16], header[-16:]
    mv = _byte_view(buf)
    try:
        cipher = AES.new(bytes(key), AES.MODE_GCM, nonce=nonce)
        cipher.update(aad)
        cipher.decrypt(mv, output=mv)
        cipher.verify(tag)
    except (ValueError, TypeError) as exc:
        zero = bytes(max(1, min(len(mv), 1 << 20)))
        for i in range(0, len(mv), len(zero)):
            mv[i:i + len(zero)] = zero[:len(mv) - i]
        raise SealError(f"encrypted weights do not open: {exc}") from None
