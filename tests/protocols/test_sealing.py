"""protocols.sealing: HPKE seal/open, sealed prompts and outputs, weights at rest. No Ray."""

from __future__ import annotations

import array
import mmap
import pickle

import pytest
from Crypto.Cipher import AES

from protocols import sealing
from protocols.canonical import pack, unpack
from protocols.errors import MalformedMessage, MessageError
from protocols.sealing import KemKey, SealError, seal

A = KemKey(b"\x0a" * 32)
B = KemKey(b"\x0b" * 32)
C = KemKey(b"\x0c" * 32)
D = KemKey(b"\x0d" * 32)
NODES = {"node-a": A, "node-b": B, "node-c": C, "node-d": D}
CONTENT_KEY = b"K" * 32
NONCE = b"N" * 12
INFO = b"verinfer/test|ctx"

# X25519 public keys of small order: a shared secret with any of them is all zeros
LOW_ORDER = [bytes(32), b"\x01" + bytes(31),
             bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")]


def flipped(data: bytes, i: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[i] ^= mask
    return bytes(b)


def attempt(fn):
    """fn()'s value, or the type of the MessageError it raised (anything else propagates)."""
    try:
        return fn()
    except MessageError as exc:
        return type(exc)


def sealed_prompt(recipients=("node-a", "node-b"), prompt="what is 2+2?", request_id="r1", secret=b"s3cret"):
    return sealing.seal_prompt(prompt, request_id, {n: NODES[n].public for n in recipients}, CONTENT_KEY,
                               NONCE, secret)


# --- KEM keys ---------------------------------------------------------------------------
def test_kem_key_is_derived_from_its_seed_and_survives_pickling():
    again = KemKey(b"\x0a" * 32)
    assert again.public == A.public and len(A.public) == 32
    assert len({A.public, B.public, C.public, D.public}) == 4
    copy = pickle.loads(pickle.dumps(A))
    assert copy.public == A.public
    assert copy.open(seal(A.public, b"x", INFO), INFO) == b"x"


@pytest.mark.parametrize("seed", [b"", b"\x01" * 31, b"\x01" * 33, "a" * 32, None])
def test_kem_key_rejects_a_seed_that_is_not_32_bytes(seed):
    with pytest.raises(ValueError):
        KemKey(seed)


# --- HPKE seal / open ---------------------------------------------------------------------
@pytest.mark.parametrize("plaintext", [b"", b"\x00", b"hello", bytes(range(256)) * 4096])
def test_seal_open_roundtrip(plaintext):
    sealed = seal(A.public, plaintext, INFO, b"aad")
    assert A.open(sealed, INFO, b"aad") == plaintext
    enc, ct = unpack(sealed)
    assert len(enc) == 32 and len(ct) == len(plaintext) + 16  # ephemeral key, GCM tag


def test_each_seal_uses_a_fresh_ephemeral_key():
    s1, s2 = seal(A.public, b"same", INFO), seal(A.public, b"same", INFO)
    assert unpack(s1)[0] != unpack(s2)[0] and s1 != s2
    assert A.open(s1, INFO) == A.open(s2, INFO) == b"same"


@pytest.mark.parametrize("key,info,aad", [
    (B, INFO, b"aad"),                       # another node's key
    (A, INFO + b"x", b"aad"),                # another context
    (A, b"verinfer/test|ct", b"aad"),        # a prefix of the context
    (A, b"", b"aad"),
    (A, INFO, b"aae"),                       # other associated data
    (A, INFO, b""),
])
def test_open_with_wrong_key_context_or_aad_fails(key, info, aad):
    sealed = seal(A.public, b"secret", INFO, b"aad")
    with pytest.raises(SealError):
        key.open(sealed, info, aad)


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_any_tampered_byte_of_a_sealed_blob_is_rejected(mask):
    sealed = seal(A.public, b"a sealed weights key", INFO)
    got = {attempt(lambda: A.open(flipped(sealed, i, mask), INFO)) for i in range(len(sealed))}
    assert got <= {SealError, MalformedMessage}
    assert SealError in got  # the ciphertext and the ephemeral key are authenticated


def test_truncated_or_extended_sealed_blob_is_rejected():
    enc, ct = unpack(seal(A.public, b"payload", INFO))
    for bad in ([enc, ct[:-1]], [enc[:-1], ct], [enc, ct + b"\x00"], [enc, b""], [b"", ct]):
        with pytest.raises(SealError):
            A.open(pack(bad), INFO)


@pytest.mark.parametrize("blob", [b"", b"\xc1", b"\x92\xc4", pack([b"enc"]), pack([b"e", b"c", b"x"]),
                                  pack(["enc", "ct"]), pack({"enc": b"e", "ct": b"c"}), pack(b"x"), pack(None)])
def test_malformed_sealed_blob_is_malformed(blob):
    with pytest.raises(MalformedMessage):
        A.open(blob, INFO)


@pytest.mark.parametrize("sealed", ["text", None, 42])
def test_open_of_a_non_bytes_value_is_malformed(sealed):
    with pytest.raises(MalformedMessage):
        A.open(sealed, INFO)


@pytest.mark.parametrize("public", LOW_ORDER + [b"\x01" * 31, b"\x01" * 33, b"", "a" * 32])
def test_seal_to_a_low_order_or_malformed_public_key_is_refused(public):
    with pytest.raises(MalformedMessage):
        seal(public, b"secret", INFO)


# --- sealed prompts ---------------------------------------------------------------------------
@pytest.mark.parametrize("node", ["node-a", "node-b"])
def test_sealed_prompt_opens_for_each_recipient(node):
    blob = sealed_prompt()
    assert sealing.open_prompt(blob, "r1", node, NODES[node]) == ("what is 2+2?", b"s3cret")


@pytest.mark.parametrize("prompt,secret", [("", b""), ("héllo ✓ 世界", b"\x00" * 32), ("x" * 200_000, b"s")])
def test_sealed_prompt_roundtrips_any_text_and_secret(prompt, secret):
    blob = sealed_prompt(("node-a",), prompt=prompt, secret=secret)
    assert sealing.open_prompt(blob, "r1", "node-a", A) == (prompt, secret)


def test_secret_defaults_to_empty():
    blob = sealing.seal_prompt("p", "r1", {"node-a": A.public}, CONTENT_KEY, NONCE)
    assert sealing.open_prompt(blob, "r1", "node-a", A) == ("p", b"")


def test_sealed_prompt_does_not_carry_the_plaintext():
    blob = sealed_prompt(prompt="the very private prompt", secret=b"hash-salt-secret")
    assert b"the very private prompt" not in blob and b"hash-salt-secret" not in blob
    assert CONTENT_KEY not in blob


def test_non_recipient_cannot_open_under_its_own_or_a_recipients_name():
    blob = sealed_prompt()
    with pytest.raises(SealError, match="not sealed to node-c"):
        sealing.open_prompt(blob, "r1", "node-c", C)
    for name in ("node-a", "node-b"):  # C claiming a recipient's id still lacks its key
        with pytest.raises(SealError):
            sealing.open_prompt(blob, "r1", name, C)


def test_recipient_using_another_recipients_entry_fails():
    blob = sealed_prompt()
    with pytest.raises(SealError):
        sealing.open_prompt(blob, "r1", "node-a", B)


@pytest.mark.parametrize("recipients", [(), ("node-a",), ("node-a", "node-b"), ("node-b", "node-c", "node-d"),
                                        tuple(NODES)])
def test_prompt_recipients_is_exactly_who_can_open(recipients):
    blob = sealed_prompt(recipients)
    assert sealing.prompt_recipients(blob) == frozenset(recipients)
    can_open = set()
    for nid, kem in NODES.items():
        if attempt(lambda: sealing.open_prompt(blob, "r1", nid, kem)) == ("what is 2+2?", b"s3cret"):
            can_open.add(nid)
        else:
            with pytest.raises(SealError):
                sealing.open_prompt(blob, "r1", nid, kem)
    assert can_open == set(recipients)


@pytest.mark.parametrize("other", ["r2", "r10", "r", "", "r1 "])
def test_sealed_prompt_is_bound_to_its_request(other):
    blob = sealed_prompt()
    with pytest.raises(SealError):
        sealing.open_prompt(blob, other, "node-a", A)


def test_key_entry_is_bound_to_the_node_id():
    # a node that re-registers under a new id with the same HPKE key does not inherit the old id's entry
    obj = unpack(sealed_prompt(("node-a",)))
    obj["keys"]["node-a2"] = obj["keys"].pop("node-a")
    blob = pack(obj)
    assert sealing.prompt_recipients(blob) == {"node-a2"}
    with pytest.raises(SealError):
        sealing.open_prompt(blob, "r1", "node-a2", A)


def test_a_recipient_cannot_replay_the_ciphertext_into_another_request():
    # node-b knows the content key; it re-wraps that key to node-a for request r2, keeping r1's ciphertext
    obj = unpack(sealed_prompt())
    assert B.open(obj["keys"]["node-b"], sealing.PROMPT_INFO + b"r1|node-b") == CONTENT_KEY
    obj["keys"] = {"node-a": seal(A.public, CONTENT_KEY, sealing.PROMPT_INFO + b"r2|node-a")}
    with pytest.raises(SealError):
        sealing.open_prompt(pack(obj), "r2", "node-a", A)


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_any_tampered_byte_of_a_single_recipient_prompt_is_rejected(mask):
    blob = sealed_prompt(("node-a",))
    got = {attempt(lambda: sealing.open_prompt(flipped(blob, i, mask), "r1", "node-a", A))
           for i in range(len(blob))}
    assert got <= {SealError, MalformedMessage}
    assert SealError in got


def test_tampering_a_two_recipient_prompt_never_yields_another_plaintext():
    blob = sealed_prompt()
    want = ("what is 2+2?", b"s3cret")
    for i in range(len(blob)):
        bad = flipped(blob, i)
        got = [attempt(lambda: sealing.open_prompt(bad, "r1", n, NODES[n])) for n in ("node-a", "node-b")]
        assert all(g == want or g in (SealError, MalformedMessage) for g in got), (i, got)
        assert want not in got or got.count(want) == 1, i  # a byte lies in one entry or in the shared part


def test_relabelled_recipient_table_opens_for_nobody():
    obj = unpack(sealed_prompt())
    obj["keys"] = {"node-c": obj["keys"]["node-a"], "node-d": obj["keys"]["node-b"]}
    blob = pack(obj)
    assert sealing.prompt_recipients(blob) == {"node-c", "node-d"}
    for nid, kem in NODES.items():
        with pytest.raises(SealError):
            sealing.open_prompt(blob, "r1", nid, kem)


def _craft(inner: bytes, request_id: str = "r1") -> bytes:
    """A well-encrypted sealed prompt whose plaintext is `inner` (a client's own doing)."""
    cipher = AES.new(CONTENT_KEY, AES.MODE_GCM, nonce=NONCE)
    cipher.update(sealing.PROMPT_INFO + request_id.encode())
    ct, tag = cipher.encrypt_and_digest(inner)
    key = seal(A.public, CONTENT_KEY, sealing.PROMPT_INFO + request_id.encode() + b"|node-a")
    return pack({"ct": ct, "tag": tag, "nonce": NONCE, "keys": {"node-a": key}})


def test_crafting_helper_matches_seal_prompt():
    assert sealing.open_prompt(_craft(pack(["p", b"s"])), "r1", "node-a", A) == ("p", b"s")


@pytest.mark.parametrize("inner", [pack(["p"]), pack(["p", b"s", b"t"]), pack([b"p", b"s"]), pack(["p", "s"]),
                                   pack({"prompt": "p"}), pack("p"), b"\xc1", b""])
def test_sealed_content_that_is_not_prompt_and_secret_is_rejected(inner):
    with pytest.raises(SealError):
        sealing.open_prompt(_craft(inner), "r1", "node-a", A)


@pytest.mark.parametrize("drop", ["ct", "tag", "nonce"])
def test_sealed_prompt_missing_a_field_is_rejected(drop):
    obj = unpack(sealed_prompt())
    del obj[drop]
    with pytest.raises(SealError):
        sealing.open_prompt(pack(obj), "r1", "node-a", A)


@pytest.mark.parametrize("field,value", [("ct", "text"), ("ct", 7), ("tag", b"\x00" * 16), ("tag", b"short"),
                                         ("nonce", "text"), ("nonce", b"M" * 12), ("nonce", b"")])
def test_sealed_prompt_with_a_wrong_field_is_rejected(field, value):
    obj = unpack(sealed_prompt())
    obj[field] = value
    with pytest.raises(SealError):
        sealing.open_prompt(pack(obj), "r1", "node-a", A)


@pytest.mark.parametrize("blob,error", [
    (b"", MalformedMessage), (b"\xc1", MalformedMessage), (pack([1, 2]), SealError), (pack({}), SealError),
    (pack({"keys": ["node-a"]}), SealError), (pack({"keys": {"node-a": "text"}}), MalformedMessage),
    (pack({"keys": {"node-a": b"\xc1"}}), MalformedMessage),
])
def test_malformed_sealed_prompt_gives_a_typed_error(blob, error):
    with pytest.raises(error):
        sealing.open_prompt(blob, "r1", "node-a", A)


@pytest.mark.parametrize("blob", [b"", b"\xc1", pack([1, 2]), pack({}), pack({"keys": ["node-a"]}), pack("keys"),
                                  pack({"keys": None})])
def test_prompt_recipients_of_a_malformed_blob_is_seal_error(blob):
    with pytest.raises(SealError):
        sealing.prompt_recipients(blob)


def test_oversize_sealed_prompt_is_refused_before_parsing():
    huge = pack({"keys": {}, "pad": b"\x00" * (16 * 1024 * 1024)})
    with pytest.raises(SealError, match="exceeds"):
        sealing.prompt_recipients(huge)
    with pytest.raises(MalformedMessage, match="exceeds"):
        sealing.open_prompt(huge, "r1", "node-a", A)


def test_seal_prompt_to_a_bad_recipient_key_is_refused():
    with pytest.raises(MalformedMessage):
        sealing.seal_prompt("p", "r1", {"node-a": A.public, "node-x": LOW_ORDER[0]}, CONTENT_KEY, NONCE)


# --- outputs sealed back to the client ------------------------------------------------------
def test_output_info_layout():
    assert sealing.output_info("r1", "p-00ff") == b"verinfer/output|r1|p-00ff"


@pytest.mark.parametrize("request_id,member", [("r1", "m2"), ("r2", "m1"), ("r", "1|m1"), ("r1", "m1 ")])
def test_output_sealed_for_a_member_opens_only_under_that_members_info(request_id, member):
    client = KemKey(b"\xc1" * 32)
    output = pack({"token_ids": [1, 2, 3], "text": "abc"})
    sealed = seal(client.public, output, sealing.output_info("r1", "m1"))
    assert unpack(client.open(sealed, sealing.output_info("r1", "m1"))) == {"token_ids": [1, 2, 3], "text": "abc"}
    with pytest.raises(SealError):
        client.open(sealed, sealing.output_info(request_id, member))


def test_output_and_prompt_contexts_are_separated():
    sealed = seal(A.public, CONTENT_KEY, sealing.PROMPT_INFO + b"r1|node-a")
    with pytest.raises(SealError):
        A.open(sealed, sealing.output_info("r1", "node-a"))
    with pytest.raises(SealError):
        A.open(sealed, sealing.weights_key_info("r1", "node-a"))


# --- weights blob (whole-file AES-GCM) -------------------------------------------------------
WKEY = b"W" * 32


@pytest.mark.parametrize("data", [b"", b"w", bytes(range(256)) * 1000])
def test_weights_blob_roundtrip_and_format(data):
    blob = sealing.encrypt_blob(data, WKEY, NONCE, b"tiny-model")
    nonce, ct, tag = unpack(blob)
    assert nonce == NONCE and len(ct) == len(data) and len(tag) == 16
    assert data == b"" or ct != data
    assert sealing.decrypt_blob(blob, WKEY, b"tiny-model") == data


@pytest.mark.parametrize("key,aad", [(b"X" * 32, b"tiny-model"), (WKEY, b"tiny-modeL"), (WKEY, b""),
                                     (b"W" * 16, b"tiny-model"), (b"W" * 7, b"tiny-model"), ("text", b"tiny-model")])
def test_weights_blob_with_wrong_key_or_aad_fails(key, aad):
    blob = sealing.encrypt_blob(b"weights", WKEY, NONCE, b"tiny-model")
    with pytest.raises(SealError):
        sealing.decrypt_blob(blob, key, aad)


def test_any_tampered_byte_of_a_weights_blob_is_rejected():
    blob = sealing.encrypt_blob(b"weights" * 10, WKEY, NONCE, b"tiny-model")
    got = {attempt(lambda: sealing.decrypt_blob(flipped(blob, i), WKEY, b"tiny-model")) for i in range(len(blob))}
    assert got <= {SealError, MalformedMessage} and SealError in got


@pytest.mark.parametrize("blob,error", [
    (b"", MalformedMessage), (b"\xc1", MalformedMessage), (pack([NONCE, b"ct"]), SealError),
    (pack([NONCE, b"ct", b"t" * 16, b"x"]), SealError), (pack(5), SealError),
    (pack({"a": 1, "b": 2, "c": 3}), SealError),
    (pack([NONCE, "ct", b"t" * 16]), SealError), (pack([b"", b"ct", b"t" * 16]), SealError),
])
def test_malformed_weights_blob_gives_a_typed_error(blob, error):
    with pytest.raises(error):
        sealing.decrypt_blob(blob, WKEY, b"tiny-model")


def test_weights_key_is_released_only_to_the_node_and_model_it_was_sealed_for():
    info = sealing.weights_key_info("tiny", "node-a")
    assert info == b"verinfer/weights|tiny|node-a"
    sealed = seal(A.public, WKEY, info)
    assert A.open(sealed, info) == WKEY
    for other in (sealing.weights_key_info("tiny", "node-b"), sealing.weights_key_info("tiny2", "node-a")):
        with pytest.raises(SealError):
            A.open(sealed, other)


# --- large weights sealed in place ------------------------------------------------------------
AAD = sealing.weights_aad("smollm2", "ab" * 32, "cd" * 32)
PLAIN = bytes(range(256)) * 64


def test_weights_aad_layout_binds_id_hash_and_files():
    assert AAD == b"verinfer/weights|smollm2|" + b"ab" * 32 + b"|" + b"cd" * 32
    assert sealing.weights_aad("m", "h") == b"verinfer/weights|m|h|"
    assert len({sealing.weights_aad("m", "h", "f"), sealing.weights_aad("m2", "h", "f"),
                sealing.weights_aad("m", "h2", "f"), sealing.weights_aad("m", "h", "f2")}) == 4


def sealed_weights(data=PLAIN, key=WKEY, aad=AAD):
    buf = bytearray(data)
    header = sealing.seal_weights(buf, key, NONCE, aad)
    return header, buf


def test_seal_weights_in_place_roundtrip():
    header, buf = sealed_weights()
    assert len(header) == sealing.WEIGHTS_HEADER_LEN == 36
    assert header.startswith(sealing.WEIGHTS_MAGIC) and header[8:20] == NONCE
    assert len(buf) == len(PLAIN) and bytes(buf) != PLAIN
    sealing.open_weights(header, buf, WKEY, AAD)
    assert bytes(buf) == PLAIN


def test_seal_weights_matches_whole_file_aes_gcm():
    header, buf = sealed_weights()
    cipher = AES.new(WKEY, AES.MODE_GCM, nonce=NONCE)
    cipher.update(AAD)
    ct, tag = cipher.encrypt_and_digest(PLAIN)
    assert bytes(buf) == ct and header[-16:] == tag


def test_seal_weights_works_on_typed_and_mapped_buffers():
    words = array.array("I", range(1000))
    header = sealing.seal_weights(words, WKEY, NONCE, AAD)
    assert list(words) != list(range(1000))
    sealing.open_weights(header, words, WKEY, AAD)
    assert list(words) == list(range(1000))
    mem = mmap.mmap(-1, len(PLAIN))
    mem[:] = PLAIN
    header = sealing.seal_weights(mem, WKEY, NONCE, AAD)
    view = memoryview(mem)
    sealing.open_weights(header, view, WKEY, AAD)
    assert bytes(view) == PLAIN
    view.release()
    mem.close()


@pytest.mark.parametrize("key,aad", [
    (b"X" * 32, AAD),
    (WKEY, sealing.weights_aad("other-model", "ab" * 32, "cd" * 32)),
    (WKEY, sealing.weights_aad("smollm2", "ef" * 32, "cd" * 32)),  # another model hash
    (WKEY, sealing.weights_aad("smollm2", "ab" * 32, "00" * 32)),  # tampered tokenizer/config files
    (WKEY, sealing.weights_aad("smollm2", "ab" * 32)),
    (b"W" * 16, AAD), (b"W" * 5, AAD),
])
def test_open_weights_with_wrong_key_or_binding_fails_and_zeroes_the_buffer(key, aad):
    header, buf = sealed_weights()
    with pytest.raises(SealError):
        sealing.open_weights(header, buf, key, aad)
    assert bytes(buf) == bytes(len(PLAIN))  # no unverified plaintext is left behind


@pytest.mark.parametrize("i", [0, 1, len(PLAIN) // 2, len(PLAIN) - 1])
def test_tampered_weights_ciphertext_fails_and_zeroes_the_buffer(i):
    header, buf = sealed_weights()
    buf[i] ^= 0x01
    with pytest.raises(SealError):
        sealing.open_weights(header, buf, WKEY, AAD)
    assert bytes(buf) == bytes(len(PLAIN))


def test_a_buffer_larger_than_the_zeroing_chunk_is_fully_zeroed():
    data = bytes(range(256)) * (5 * 4096 + 3)  # > 1 MiB and not a multiple of it
    header, buf = sealed_weights(data)
    with pytest.raises(SealError):
        sealing.open_weights(header, buf, b"X" * 32, AAD)
    assert buf.count(0) == len(data)


@pytest.mark.parametrize("i", range(sealing.WEIGHTS_HEADER_LEN))
def test_any_tampered_header_byte_is_rejected(i):
    header, buf = sealed_weights()
    with pytest.raises(SealError):
        sealing.open_weights(flipped(header, i), buf, WKEY, AAD)


@pytest.mark.parametrize("cut", [lambda b: b[:-1], lambda b: b + b"\x00"])
def test_truncated_or_extended_sealed_weights_are_rejected(cut):
    header, buf = sealed_weights()
    buf = bytearray(cut(bytes(buf)))
    with pytest.raises(SealError):
        sealing.open_weights(header, buf, WKEY, AAD)


@pytest.mark.parametrize("header", [b"", sealing.WEIGHTS_MAGIC, b"VRFW\x00CTR" + NONCE + bytes(16),
                                    sealing.WEIGHTS_MAGIC + NONCE + bytes(15)])
def test_bad_weights_header_is_rejected(header):
    with pytest.raises(SealError, match="bad header"):
        sealing.open_weights(header, bytearray(16), WKEY, AAD)


@pytest.mark.parametrize("key,nonce", [(b"W" * 16, NONCE), (b"W" * 33, NONCE), (WKEY, b"N" * 11),
                                       (WKEY, b"N" * 16)])
def test_seal_weights_requires_a_32_byte_key_and_12_byte_nonce(key, nonce):
    buf = bytearray(PLAIN)
    with pytest.raises(ValueError):
        sealing.seal_weights(buf, key, nonce, AAD)
    assert bytes(buf) == PLAIN


def test_weights_are_sealed_and_opened_only_in_writable_buffers():
    with pytest.raises(TypeError):
        sealing.seal_weights(PLAIN, WKEY, NONCE, AAD)
    header, buf = sealed_weights()
    with pytest.raises(TypeError):
        sealing.open_weights(header, bytes(buf), WKEY, AAD)


def test_empty_weights_roundtrip():
    header, buf = sealed_weights(b"")
    sealing.open_weights(header, buf, WKEY, AAD)
    assert buf == bytearray()


def test_failed_open_of_empty_weights_is_seal_error():
    header, buf = sealed_weights(b"")
    with pytest.raises(SealError):
        sealing.open_weights(header, buf, b"X" * 32, AAD)


@pytest.mark.parametrize("key,nonce", [(b"k" * 16, b"n" * 12), (b"k" * 31, b"n" * 12), (b"k" * 32, b"n" * 16)])
def test_seal_prompt_refuses_short_keys_and_wrong_nonces(key, nonce):
    with pytest.raises(ValueError):
        sealing.seal_prompt("p", "r1", {}, key, nonce)
