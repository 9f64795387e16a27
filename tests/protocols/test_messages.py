"""Wire envelopes: signed, versioned, typed errors for everything malformed."""

import msgpack
import pytest

from protocols import commitments, messages
from protocols.canonical import pack, unpack
from protocols.crypto import SigningKey
from protocols.errors import (BadSignature, MalformedMessage, ReplayedMessage, UnknownType, UnknownVersion,
                              MessageError)

KEY = SigningKey(b"\x07" * 32)
OTHER = SigningKey(b"\x08" * 32)


def reveal_body(**over):
    body = {"request_id": "r1", "node_id": "n1", "role": "quorum", "commitment": b"c" * 32,
            "salt": b"s" * 32, "nonce": b"n" * 16}
    body.update(over)
    return body


def test_seal_and_open_roundtrip():
    env = messages.seal("reveal", reveal_body(), KEY)
    got = messages.open_envelope(env.raw, "reveal")
    assert got.body == env.body and got.sender == KEY.public and got.request_id == "r1"


def test_canonical_pack_ignores_key_order():
    assert pack({"b": 1, "a": [1, {"y": 2, "x": 3}]}) == pack({"a": [1, {"x": 3, "y": 2}], "b": 1})


@pytest.mark.parametrize("data", [b"", b"\xc1", b"not msgpack at all \xff\xff", msgpack.packb([1, 2, 3]),
                                  msgpack.packb({"v": 1})])
def test_malformed_bytes_rejected(data):
    with pytest.raises(MalformedMessage):
        messages.open_envelope(data)


def _reencode(env, **over):
    obj = unpack(env.raw)
    obj.update(over)
    return msgpack.packb(obj, use_bin_type=True)


def test_unknown_version_and_type_rejected():
    env = messages.seal("reveal", reveal_body(), KEY)
    with pytest.raises(UnknownVersion):
        messages.open_envelope(_reencode(env, v=2))
    with pytest.raises(UnknownType):
        messages.open_envelope(_reencode(env, type="gossip"))
    with pytest.raises(UnknownType):
        messages.open_envelope(env.raw, expect="result")


def test_forged_body_or_sender_fails_signature():
    env = messages.seal("reveal", reveal_body(), KEY)
    body = dict(env.body, commitment=b"x" * 32)
    with pytest.raises(BadSignature):
        messages.open_envelope(_reencode(env, body=body))
    with pytest.raises(BadSignature):
        messages.open_envelope(_reencode(env, sender=OTHER.public))
    with pytest.raises(BadSignature):
        messages.open_envelope(_reencode(env, sig=b"\x00" * 64))


def test_body_schema_enforced():
    with pytest.raises(MalformedMessage):
        messages.seal("reveal", reveal_body(salt="not-bytes"), KEY)
    body = reveal_body()
    del body["salt"]
    with pytest.raises(MalformedMessage):
        messages.seal("reveal", body, KEY)
    env = messages.seal("reveal", reveal_body(), KEY)
    with pytest.raises(MalformedMessage):
        messages.open_envelope(_reencode(env, body=dict(env.body, role=True)))


def test_replay_guard_rejects_second_message_of_a_kind():
    guard = messages.ReplayGuard()
    a = messages.seal("reveal", reveal_body(), KEY)
    b = messages.seal("reveal", reveal_body(nonce=b"m" * 16), KEY)
    guard.check_and_record(a)
    with pytest.raises(ReplayedMessage):
        guard.check_and_record(a)
    with pytest.raises(ReplayedMessage):
        guard.check_and_record(b)  # fresh nonce, same sender/type/request: still a replay
    guard.check_and_record(messages.seal("reveal", reveal_body(), OTHER))  # another sender is fine
    assert isinstance(ReplayedMessage("x"), MessageError)


def test_commit_seals_the_fingerprint_so_it_cannot_be_chosen_after_the_commit():
    c = commitments.output_commitment("r", "h" * 64, b"p" * 32, {"max_tokens": 4}, [1, 2, 3])
    salt, fp_, other_fp = b"s" * 32, b"\x01\x04\x01\x00" + b"a" * 16, b"\x01\x04\x01\x00" + b"b" * 16
    commit = commitments.commit_hash(KEY.public, c, salt, fp_)
    assert commitments.opens(commit, KEY.public, c, salt, fp_)
    assert not commitments.opens(commit, KEY.public, c, salt, other_fp)  # another node's fingerprint
    assert not commitments.opens(commit, KEY.public, c, salt)  # dropped after the fact
    assert not commitments.opens(commitments.commit_hash(KEY.public, c, salt), KEY.public, c, salt, fp_)  # added
    assert not commitments.opens(commit, KEY.public, c, salt, "text")  # not bytes


def test_commit_binds_committer_so_a_copied_commit_cannot_be_opened():
    c = commitments.output_commitment("r", "h" * 64, b"p" * 32, {"max_tokens": 4}, [1, 2, 3])
    salt = b"s" * 32
    commit = commitments.commit_hash(KEY.public, c, salt)
    assert commitments.opens(commit, KEY.public, c, salt)
    assert not commitments.opens(commit, OTHER.public, c, salt)  # the copier cannot open it
    assert not commitments.opens(commit, KEY.public, c, b"t" * 32)
    other = commitments.output_commitment("r", "h" * 64, b"p" * 32, {"max_tokens": 4}, [1, 2, 4])
    assert other != c


def test_client_id_is_derived_from_key():
    assert messages.client_id_of(KEY.public) == messages.client_id_of(KEY.public)
    assert messages.client_id_of(KEY.public) != messages.client_id_of(OTHER.public)


def test_signature_backends_agree_with_rfc8032_vector():
    from protocols import crypto

    # RFC 8032 section 7.1, TEST 2
    seed = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
    pub = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
    sig = bytes.fromhex("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
                        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")
    k = SigningKey(seed)
    assert k.public == pub and k.sign(b"\x72") == sig
    crypto.verify(pub, b"\x72", sig)
    crypto.verify_pycryptodome(pub, b"\x72", sig)
    for check in (crypto.verify, crypto.verify_pycryptodome):
        with pytest.raises(BadSignature):
            check(pub, b"\x73", sig)
