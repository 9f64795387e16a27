"""The wire schema: one versioned, signed msgpack envelope `{v, type, body, sender, sig}`.

This module owns every message type and its body fields. Rules of evolution:
new fields get defaults (listed in OPTIONAL), fields are never reordered or
retyped, and an unknown version or type is rejected, never guessed at.

The signature covers the canonical encoding of (domain, v, type, body, sender),
so a body cannot be moved to another type or sender. `sender` is the signer's
raw Ed25519 public key; mapping it to a node, client or pseudonym is the
receiver's job (it raises UnknownSender when the key is not the expected one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .canonical import pack, unpack
from .crypto import SigningKey, verify
from .errors import (
    MalformedMessage,
    ReplayedMessage,
    UnknownType,
    UnknownVersion,
)

VERSION = 1
DOMAIN = b"verinfer/envelope/v1"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

# type -> {field: accepted python types}. Every listed field is required.
SCHEMAS: dict[str, dict[str, tuple[type, ...]]] = {
    # client -> network: what to run. The prompt itself travels beside the
    # envelope (plaintext or sealed); the signed body binds it by hash.
    "request": {
        "request_id": (str,),
        "client_id": (str,),
        "model_id": (str,),
        "model_hash": (str,),
        "prompt_hash": (bytes,),
        "prompt_len": (int,),
        "params": (dict,),
        "mode": (str,),
        "n": (int,),
        "timeout_s": (float, int),
        "nonce": (bytes,),
        "created_at": (float, int),
        "p": (float, int, type(None)),  # cross-validation check probability; None = network default
        "require_tee": (bool,),  # serve only on nodes with valid attestation (TEE security level)
        "sealed": (bool,),  # the prompt travels sealed to attested nodes' HPKE keys
        "client_kem": (bytes,),  # client's X25519 key: outputs are sealed back to it ("" = plaintext)
    },
    # node -> aggregator, phase 1: a sealed commitment plus a digest of the
    # output it handed the client.
    "result": {
        "request_id": (str,),
        "node_id": (str,),
        "role": (str,),
        "commit_hash": (bytes,),
        "output_digest": (bytes,),
        "engine_seconds": (float, int),
        "nonce": (bytes,),
        # a referee of a tolerance group: its tolerant check of each disputed quorum claim
        # (protocols.fingerprint.check_verdicts says what an entry holds)
        "verdicts": (list,),
    },
    # node -> aggregator, phase 2: open the commitment.
    "reveal": {
        "request_id": (str,),
        "node_id": (str,),
        "role": (str,),
        "commitment": (bytes,),
        "salt": (bytes,),
        "nonce": (bytes,),
        "fingerprint": (bytes,),  # protocols.fingerprint of its output ("" = none); the commit covers it
    },
    # node -> aggregator instead of a result: the client's sealed prompt does not
    # open for this node or does not match its hash (only an attested node can tell).
    "refusal": {
        "request_id": (str,),
        "node_id": (str,),
        "role": (str,),
        "reason": (str,),
        "nonce": (bytes,),
    },
    # node -> aggregator while generating (streamed requests): the next tokens, signed by
    # the member's key. Provisional: the round's commitment decides what is accepted.
    "chunk": {
        "request_id": (str,),
        "node_id": (str,),
        "role": (str,),
        "seq": (int,),  # 0, 1, 2, ... per member
        "token_ids": (list,),  # the new tokens
        "text": (str,),  # the text they add
    },
    # aggregator -> anyone: the signed, self-contained outcome.
    "receipt": {
        "request_id": (str,),
        "request": (bytes,),
        "selection": (dict,),
        "results": (list,),
        "reveals": (list,),
        "decision": (dict,),
        "ledger": (dict,),
        "issued_at": (float, int),
    },
    # caller -> a control-plane actor: the right to change its state (protocols.authority)
    "call": {
        "network": (str,),
        "actor": (str,),  # ledger | registry | selector | aggregator | epochs
        "method": (str,),
        "args": (bytes,),  # authority.args_digest of the arguments, by parameter name
        "holder": (str,),  # who the signer is in the roster (or the node id)
        "nonce": (bytes,),
        "issued_at": (float, int),
    },
    # network operator -> every control-plane actor: whose keys hold which role
    "roster": {
        "network": (str,),
        "version": (int,),
        "entries": (list,),  # [role, holder, public key]
        "issued_at": (float, int),
    },
    # a roster holder -> everyone: its next key, signed by its current one
    "rotation": {
        "network": (str,),
        "role": (str,),
        "holder": (str,),
        "key": (bytes,),
        "issued_at": (float, int),
    },
}
OPTIONAL: dict[str, dict[str, Any]] = {t: {} for t in SCHEMAS}
OPTIONAL["request"] = {"p": None, "require_tee": False, "sealed": False, "client_kem": b""}
OPTIONAL["reveal"] = {"fingerprint": b""}
OPTIONAL["result"] = {"verdicts": []}


@dataclass(frozen=True)
class Envelope:
    v: int
    type: str
    body: dict[str, Any]
    sender: bytes
    sig: bytes
    raw: bytes  # exact bytes received/sent, kept for receipts

    @property
    def request_id(self) -> str:
        return self.body["request_id"]


def _signed_bytes(v: int, type_: str, body: dict[str, Any], sender: bytes) -> bytes:
    return pack([DOMAIN, v, type_, body, sender])


def _check_body(type_: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MalformedMessage(f"{type_}: body must be a map")
    schema = SCHEMAS[type_]
    for field, types in schema.items():
        if field not in body:
            if field in OPTIONAL[type_]:
                continue
            raise MalformedMessage(f"{type_}: missing field {field!r}")
        value = body[field]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise MalformedMessage(
                f"{type_}: field {field!r} must be {'/'.join(t.__name__ for t in types)}"
            )
    return body


def _with_defaults(type_: str, body: dict[str, Any]) -> dict[str, Any]:
    missing = {k: v for k, v in OPTIONAL[type_].items() if k not in body}
    return {**body, **missing} if missing else body


def seal(type_: str, body: dict[str, Any], key: SigningKey) -> Envelope:
    """Build and sign an envelope. Raises the same typed errors a receiver would."""
    if type_ not in SCHEMAS:
        raise UnknownType(f"unknown message type {type_!r}")
    body = _with_defaults(type_, _check_body(type_, dict(body)))
    sig = key.sign(_signed_bytes(VERSION, type_, body, key.public))
    raw = pack({"v": VERSION, "type": type_, "body": body, "sender": key.public, "sig": sig})
    return Envelope(VERSION, type_, body, key.public, sig, raw)


def open_envelope(data: bytes, expect: str | None = None) -> Envelope:
    """Parse, schema-check and signature-check `data`.

    Raises MalformedMessage, UnknownVersion, UnknownType or BadSignature; the
    caller then checks that `sender` is who it should be.
    """
    if isinstance(data, Envelope):
        data = data.raw
    obj = unpack(data, MAX_MESSAGE_BYTES)
    if not isinstance(obj, dict) or set(obj) != {"v", "type", "body", "sender", "sig"}:
        raise MalformedMessage("envelope must be a map of exactly v, type, body, sender, sig")
    v, type_, body, sender, sig = obj["v"], obj["type"], obj["body"], obj["sender"], obj["sig"]
    if not isinstance(v, int) or isinstance(v, bool):
        raise MalformedMessage("envelope version must be an integer")
    if v != VERSION:
        raise UnknownVersion(f"envelope version {v} is not supported (this node speaks {VERSION})")
    if not isinstance(type_, str):
        raise MalformedMessage("envelope type must be a string")
    if type_ not in SCHEMAS:
        raise UnknownType(f"unknown message type {type_!r}")
    if expect is not None and type_ != expect:
        raise UnknownType(f"expected a {expect!r} message, got {type_!r}")
    if not isinstance(sender, bytes) or len(sender) != 32:
        raise MalformedMessage("sender must be a 32-byte Ed25519 public key")
    if not isinstance(sig, bytes):
        raise MalformedMessage("sig must be bytes")
    body = _check_body(type_, body)
    verify(sender, _signed_bytes(v, type_, body, sender), sig)  # over the body as sent
    return Envelope(v, type_, _with_defaults(type_, body), sender, sig, bytes(data))


class ReplayGuard:
    """Remembers (sender, type, request id, nonce) and rejects any repeat.

    A sender may send one message of a type per request: a second one with a
    fresh nonce is a replay too (a node cannot change its commitment).
    """

    def __init__(self) -> None:
        self._seen: dict[str, set[tuple[bytes, str]]] = {}
        self.spent: set[str] = set()  # request ids whose per-message memory was dropped

    def check(self, env: Envelope) -> None:
        seen = self._seen.get(env.request_id)
        if seen is not None and (env.sender, env.type) in seen:
            raise ReplayedMessage(
                f"{env.type} for request {env.request_id} from this sender was already received"
            )

    def record(self, env: Envelope) -> None:
        self._seen.setdefault(env.request_id, set()).add((env.sender, env.type))

    def check_and_record(self, env: Envelope) -> None:
        self.check(env)
        self.record(env)

    def seen_request(self, request_id: str) -> bool:
        return request_id in self._seen

    def forget(self, request_id: str) -> None:
        """Forget a request entirely (it never started: the id may be used again)."""
        self._seen.pop(request_id, None)

    def forget_messages(self, request_id: str) -> None:
        """Drop per-message memory of a finished request; its id stays spent."""
        self._seen.pop(request_id, None)
        self.spent.add(request_id)


def client_id_of(public: bytes) -> str:
    """A client's id is self-certifying: the first 16 bytes of H(its public key), hex."""
    from .canonical import sha256

    return sha256(b"verinfer/client|", public)[:16].hex()
