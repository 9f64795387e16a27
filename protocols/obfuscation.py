"""Node Obfuscation: blinded tickets, pseudonyms and the committed mapping.

At draw time the selector gives each of the N+1 selected nodes a ticket, sealed
to that node's HPKE key and signed by the selector, carrying the request id and
a fresh one-time Ed25519 seed. The node signs its result and reveal with the
one-time key only, so the aggregator sees pseudonyms (one-time public keys),
never node identities. With the draw the selector publishes a mapping
commitment: per pseudonym, H(domain || pseudonym || node id || salt || evidence
digest), the digest of the member's attestation evidence when the request
requires TEE nodes (empty otherwise). To slash
a pseudonym the aggregator asks for (node id, salt) and checks it against the
commitment, so the selector can neither frame an innocent node nor shield a
guilty one. Honest pseudonyms are never unblinded. One-time keys and salts are
fresh per request, so pseudonyms of one node are unlinkable across requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from .canonical import pack, sha256, unpack
from .crypto import SigningKey, verify
from .errors import MalformedMessage, MessageError
from .sealing import KemKey, seal

MAPPING_DOMAIN = b"verinfer/pseudonym-mapping/v1|"
TICKET_DOMAIN = b"verinfer/ticket/v1|"


class UnblindingRejected(MessageError):
    """The selector's (node id, salt) does not open the committed mapping."""


def pseudonym_id(public: bytes) -> str:
    """How a pseudonym is named in rounds and receipts."""
    return "p-" + public.hex()[:32]


def mapping_entry(pseudonym: bytes, node_id: str, salt: bytes, evidence_digest: str = "") -> bytes:
    return sha256(MAPPING_DOMAIN, pseudonym, b"|", node_id.encode(), b"|", salt, b"|", evidence_digest.encode())


def mapping_commitment(entries: list[tuple]) -> dict[str, bytes]:
    """{pseudonym id: entry} for (pseudonym, node id, salt[, evidence digest]) tuples."""
    return {pseudonym_id(e[0]): mapping_entry(*e) for e in entries}


def check_unblinding(commitment: dict[str, bytes], pseudonym: bytes, node_id: str, salt: bytes,
                     evidence_digest: str = "") -> None:
    if not isinstance(commitment, dict) or not isinstance(pseudonym, bytes):  # (a receipt's, possibly forged)
        raise UnblindingRejected("the committed mapping is not a map, or the pseudonym not a key")
    want = commitment.get(pseudonym_id(pseudonym))
    if want is None:
        raise UnblindingRejected(f"{pseudonym_id(pseudonym)} is not in the committed mapping")
    if not isinstance(node_id, str) or not isinstance(salt, bytes) or not isinstance(evidence_digest, str) \
            or mapping_entry(pseudonym, node_id, salt, evidence_digest) != want:
        raise UnblindingRejected(f"selector's answer for {pseudonym_id(pseudonym)} does not open the commitment")


@dataclass(frozen=True)
class Ticket:
    request_id: str
    role: str
    one_time_seed: bytes

    @property
    def key(self) -> SigningKey:
        return SigningKey(self.one_time_seed)


def _info(request_id: str) -> bytes:
    return TICKET_DOMAIN + request_id.encode()


def make_ticket(ticket: Ticket, node_kem_public: bytes, selector: SigningKey) -> bytes:
    """The signed body names the node it is addressed to (its HPKE key): anyone can seal
    to any node, so without it an addressee could forward its ticket to another node
    and be paid, under its pseudonym, for that node's work."""
    body = pack({"request_id": ticket.request_id, "role": ticket.role, "seed": ticket.one_time_seed,
                 "to": bytes(node_kem_public)})
    signed = pack([body, selector.sign(TICKET_DOMAIN + body)])
    return seal(node_kem_public, signed, _info(ticket.request_id))


def open_ticket(sealed: bytes, request_id: str, kem: KemKey, selector_public: bytes) -> Ticket:
    obj = unpack(kem.open(sealed, _info(request_id)))
    if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, bytes) for x in obj)):
        raise MalformedMessage("ticket must be [body, signature]")
    body, sig = obj
    verify(selector_public, TICKET_DOMAIN + body, sig)
    d = unpack(body)
    if not isinstance(d, dict) or d.get("request_id") != request_id or not isinstance(d.get("seed"), bytes) \
            or len(d["seed"]) != 32 or d.get("role") not in ("quorum", "referee"):
        raise MalformedMessage("ticket body is not a ticket for this request")
    if d.get("to") != kem.public:
        raise MalformedMessage("ticket is addressed to another node")
    return Ticket(d["request_id"], d["role"], d["seed"])
