"""protocols.obfuscation: sealed tickets, pseudonyms, the committed mapping, unblinding. No Ray."""

from __future__ import annotations

import hashlib

import pytest

from protocols import obfuscation as obf
from protocols.canonical import pack, unpack
from protocols.crypto import SigningKey
from protocols.errors import BadSignature, MalformedMessage, MessageError
from protocols.sealing import KemKey, SealError, seal

SELECTOR = SigningKey(b"\x51" * 32)
IMPOSTOR = SigningKey(b"\x52" * 32)
NODE_A = KemKey(b"\x0a" * 32)
NODE_B = KemKey(b"\x0b" * 32)
SEED = b"\x5e" * 32
TICKET = obf.Ticket("r1", "quorum", SEED)


def flipped(data: bytes, i: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[i] ^= mask
    return bytes(b)


def signed_body(body: dict, signer: SigningKey = SELECTOR, domain: bytes = obf.TICKET_DOMAIN) -> bytes:
    raw = pack(body)
    return pack([raw, signer.sign(domain + raw)])


def body(**over) -> dict:
    d = {"request_id": "r1", "role": "quorum", "seed": SEED, "to": NODE_A.public}
    d.update(over)
    return d


def resealed(plaintext: bytes, kem: KemKey = NODE_A, request_id: str = "r1") -> bytes:
    """Anyone can seal to a node's public key: base-mode HPKE does not authenticate the sender."""
    return seal(kem.public, plaintext, obf.TICKET_DOMAIN + request_id.encode())


# --- pseudonyms --------------------------------------------------------------------------
def test_pseudonym_id_is_the_prefix_of_the_key():
    pub = bytes(range(32))
    assert obf.pseudonym_id(pub) == "p-000102030405060708090a0b0c0d0e0f"
    assert obf.pseudonym_id(SigningKey(b"\x01" * 32).public) != obf.pseudonym_id(SigningKey(b"\x02" * 32).public)


def test_ticket_key_is_the_one_time_seed_and_names_the_pseudonym():
    assert TICKET.key.public == SigningKey(SEED).public
    assert TICKET.key.public != SELECTOR.public
    assert obf.pseudonym_id(TICKET.key.public) == "p-" + SigningKey(SEED).public.hex()[:32]
    other = obf.Ticket("r1", "quorum", b"\x5f" * 32)
    assert obf.pseudonym_id(other.key.public) != obf.pseudonym_id(TICKET.key.public)


# --- tickets -------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["quorum", "referee"])
def test_ticket_roundtrip(role):
    ticket = obf.Ticket("r1", role, SEED)
    got = obf.open_ticket(obf.make_ticket(ticket, NODE_A.public, SELECTOR), "r1", NODE_A, SELECTOR.public)
    assert got == ticket
    assert got.key.public == SigningKey(SEED).public


def test_ticket_does_not_reveal_the_one_time_seed():
    sealed = obf.make_ticket(TICKET, NODE_A.public, SELECTOR)
    assert SEED not in sealed and b"quorum" not in sealed


def test_only_the_addressed_node_opens_its_ticket():
    sealed = obf.make_ticket(TICKET, NODE_A.public, SELECTOR)
    with pytest.raises(SealError):
        obf.open_ticket(sealed, "r1", NODE_B, SELECTOR.public)


@pytest.mark.parametrize("other", ["r2", "r", "r10", ""])
def test_ticket_is_bound_to_its_request(other):
    sealed = obf.make_ticket(TICKET, NODE_A.public, SELECTOR)
    with pytest.raises(SealError):
        obf.open_ticket(sealed, other, NODE_A, SELECTOR.public)


def test_addressee_cannot_move_its_ticket_to_another_request():
    # node A opens its signed ticket and re-seals it for request r2: the signed body still says r1
    inner = NODE_A.open(obf.make_ticket(TICKET, NODE_A.public, SELECTOR), obf.TICKET_DOMAIN + b"r1")
    with pytest.raises(MalformedMessage, match="not a ticket for this request"):
        obf.open_ticket(resealed(inner, request_id="r2"), "r2", NODE_A, SELECTOR.public)


def test_ticket_signed_by_someone_else_is_rejected():
    forged = obf.make_ticket(TICKET, NODE_A.public, IMPOSTOR)
    with pytest.raises(BadSignature):
        obf.open_ticket(forged, "r1", NODE_A, SELECTOR.public)
    genuine = obf.make_ticket(TICKET, NODE_A.public, SELECTOR)
    with pytest.raises(BadSignature):  # checked against the key the node was told, not any key
        obf.open_ticket(genuine, "r1", NODE_A, IMPOSTOR.public)


@pytest.mark.parametrize("change", [dict(role="referee"), dict(seed=b"\x00" * 32), dict(request_id="r1", extra=1)])
def test_altered_ticket_body_under_the_selectors_signature_is_rejected(change):
    genuine = unpack(NODE_A.open(obf.make_ticket(TICKET, NODE_A.public, SELECTOR), obf.TICKET_DOMAIN + b"r1"))
    forged = pack([pack(body(**change)), genuine[1]])
    with pytest.raises(BadSignature):
        obf.open_ticket(resealed(forged), "r1", NODE_A, SELECTOR.public)


@pytest.mark.parametrize("domain", [b"", b"verinfer/ticket/v2|", obf.MAPPING_DOMAIN])
def test_selector_signature_outside_the_ticket_domain_is_rejected(domain):
    with pytest.raises(BadSignature):
        obf.open_ticket(resealed(signed_body(body(), domain=domain)), "r1", NODE_A, SELECTOR.public)


def test_truncated_or_missing_signature_is_rejected():
    raw = pack(body())
    for sig in (b"", SELECTOR.sign(obf.TICKET_DOMAIN + raw)[:63], b"\x00" * 64):
        with pytest.raises(BadSignature):
            obf.open_ticket(resealed(pack([raw, sig])), "r1", NODE_A, SELECTOR.public)


def test_properly_signed_crafted_ticket_opens():  # the helpers below build what make_ticket does
    assert obf.open_ticket(resealed(signed_body(body())), "r1", NODE_A, SELECTOR.public) == TICKET


@pytest.mark.parametrize("bad", [
    body(role="observer"), body(role=None), body(seed=b"\x01" * 31), body(seed=b"\x01" * 33), body(seed="s" * 32),
    body(request_id="r2"), {"role": "quorum", "seed": SEED}, {"request_id": "r1", "seed": SEED},
    {"request_id": "r1", "role": "quorum"},
])
def test_selector_signed_body_that_is_not_a_ticket_is_malformed(bad):
    with pytest.raises(MalformedMessage):
        obf.open_ticket(resealed(signed_body(bad)), "r1", NODE_A, SELECTOR.public)


@pytest.mark.parametrize("raw", [pack(["r1", "quorum", SEED]), pack("ticket"), b"\xc1"])
def test_signed_body_that_is_not_a_map_is_malformed(raw):
    plaintext = pack([raw, SELECTOR.sign(obf.TICKET_DOMAIN + raw)])
    with pytest.raises(MalformedMessage):
        obf.open_ticket(resealed(plaintext), "r1", NODE_A, SELECTOR.public)


@pytest.mark.parametrize("plaintext", [b"", b"\xc1", pack([b"body"]), pack([b"body", b"sig", b"x"]),
                                       pack(["body", "sig"]), pack({"body": b"b", "sig": b"s"})])
def test_sealed_plaintext_that_is_not_body_and_signature_is_malformed(plaintext):
    with pytest.raises(MalformedMessage):
        obf.open_ticket(resealed(plaintext), "r1", NODE_A, SELECTOR.public)


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_any_tampered_byte_of_a_sealed_ticket_is_rejected(mask):
    sealed = obf.make_ticket(TICKET, NODE_A.public, SELECTOR)
    for i in range(len(sealed)):
        with pytest.raises((SealError, MalformedMessage)):
            obf.open_ticket(flipped(sealed, i, mask), "r1", NODE_A, SELECTOR.public)


def test_ticket_to_a_malformed_node_key_is_refused():
    with pytest.raises(MalformedMessage):
        obf.make_ticket(TICKET, bytes(32), SELECTOR)
    with pytest.raises(MalformedMessage):
        obf.make_ticket(TICKET, b"\x01" * 31, SELECTOR)


def test_ticket_forwarded_by_its_addressee_to_another_node_is_rejected():
    inner = NODE_A.open(obf.make_ticket(TICKET, NODE_A.public, SELECTOR), obf.TICKET_DOMAIN + b"r1")
    with pytest.raises(MessageError):
        obf.open_ticket(resealed(inner, NODE_B), "r1", NODE_B, SELECTOR.public)


# --- mapping commitment and unblinding ----------------------------------------------------
P1, P2, P3 = (SigningKey(bytes([0x70 + i]) * 32).public for i in range(3))
SALT1, SALT2, SALT3 = (bytes([0x30 + i]) * 32 for i in range(3))
DIGEST = hashlib.sha256(b"evidence").hexdigest()
ENTRIES = [(P1, "node-01", SALT1), (P2, "node-02", SALT2, DIGEST), (P3, "node-03", SALT3, "")]
COMMITMENT = obf.mapping_commitment(ENTRIES)


def test_mapping_entry_is_the_domain_separated_hash_of_its_fields():
    want = hashlib.sha256(b"verinfer/pseudonym-mapping/v1|" + P1 + b"|node-01|" + SALT1 + b"|" + DIGEST.encode())
    assert obf.mapping_entry(P1, "node-01", SALT1, DIGEST) == want.digest()
    assert obf.mapping_entry(P1, "node-01", SALT1) == obf.mapping_entry(P1, "node-01", SALT1, "")
    assert obf.mapping_entry(P1, "node-01", SALT1) != obf.mapping_entry(P1, "node-01", SALT1, DIGEST)


def test_mapping_commitment_names_entries_by_pseudonym_id():
    assert COMMITMENT == {
        obf.pseudonym_id(P1): obf.mapping_entry(P1, "node-01", SALT1),
        obf.pseudonym_id(P2): obf.mapping_entry(P2, "node-02", SALT2, DIGEST),
        obf.pseudonym_id(P3): obf.mapping_entry(P3, "node-03", SALT3),
    }
    assert obf.mapping_commitment([]) == {}
    assert all(len(v) == 32 for v in COMMITMENT.values())
    assert not any(n.encode() in v for v in COMMITMENT.values() for n in ("node-01", "node-02", "node-03"))


@pytest.mark.parametrize("entry", ENTRIES)
def test_true_opening_is_accepted(entry):
    assert obf.check_unblinding(COMMITMENT, *entry) is None


@pytest.mark.parametrize("pseudonym,node_id,salt,digest", [
    (P1, "node-02", SALT1, ""),          # the lying selector frames another member of the draw
    (P1, "node-99", SALT1, ""),          # ... or a node outside it
    (P1, "node-0", SALT1, ""),
    (P1, "node-01 ", SALT1, ""),
    (P1, "", SALT1, ""),
    (P1, "node-01", SALT2, ""),          # wrong salt
    (P1, "node-01", SALT1[:-1], ""),
    (P1, "node-01", b"", ""),
    (P1, "node-01", SALT1, DIGEST),      # claims evidence the entry did not commit to
    (P2, "node-02", SALT2, ""),          # drops the evidence digest the entry committed to
    (P2, "node-02", SALT2, DIGEST[:-1]),
    (P2, "node-02", SALT2, hashlib.sha256(b"other evidence").hexdigest()),
    (P2, "node-01", SALT1, ""),          # another member's true opening, answered for P2
    (P3, "node-02", SALT2, DIGEST),
])
def test_wrong_opening_is_rejected(pseudonym, node_id, salt, digest):
    with pytest.raises(obf.UnblindingRejected, match="does not open the commitment"):
        obf.check_unblinding(COMMITMENT, pseudonym, node_id, salt, digest)


def test_pseudonym_not_in_the_mapping_is_rejected():
    outsider = SigningKey(b"\x7f" * 32).public
    with pytest.raises(obf.UnblindingRejected, match="not in the committed mapping"):
        obf.check_unblinding(COMMITMENT, outsider, "node-01", SALT1)
    with pytest.raises(obf.UnblindingRejected, match="not in the committed mapping"):
        obf.check_unblinding({}, P1, "node-01", SALT1)


def test_entry_commits_to_the_whole_key_not_just_its_id():
    lookalike = P1[:16] + bytes(16)  # same pseudonym id, another key
    assert obf.pseudonym_id(lookalike) == obf.pseudonym_id(P1)
    with pytest.raises(obf.UnblindingRejected, match="does not open"):
        obf.check_unblinding(COMMITMENT, lookalike, "node-01", SALT1)


@pytest.mark.parametrize("salt,digest", [("0" * 32, ""), (None, ""), (bytearray(SALT1), ""), (SALT1, None),
                                         (SALT1, DIGEST.encode())])
def test_opening_of_the_wrong_type_is_rejected(salt, digest):
    with pytest.raises(obf.UnblindingRejected):
        obf.check_unblinding(COMMITMENT, P2, "node-02", salt, digest)


@pytest.mark.parametrize("node_id", [b"node-01", 1, None])
def test_non_string_node_id_is_rejected(node_id):
    with pytest.raises(obf.UnblindingRejected):
        obf.check_unblinding(COMMITMENT, P1, node_id, SALT1)


def test_unblinding_errors_are_message_errors():
    assert issubclass(obf.UnblindingRejected, MessageError)
