"""protocols.admission: one set of request rules for the aggregator and every executor. No Ray."""

from __future__ import annotations

import os

import pytest

from protocols import admission, commitments, messages, modes, sealing
from protocols.admission import Limits
from protocols.crypto import SigningKey
from protocols.errors import (ConfigError, InvalidParams, MessageError, ModelHashMismatch, PromptTooLarge,
                              UnknownSender)
from protocols.params import SamplingParams

CLIENT = SigningKey(b"\x11" * 32)
HASH = "ab" * 32
MODEL = {"model_hash": HASH, "timeout_s": None, "timeout_per_token_s": None}
LIMITS = Limits(max_prompt_chars=100, max_n=5, max_tokens=16, timeout_s=10.0, default_p=0.25)


def request(prompt: str = "hello", signer: SigningKey = CLIENT, secret: bytes = b"", **over) -> bytes:
    rid = over.pop("request_id", "r1")
    nonce = b"\x07" * 16
    body = {"request_id": rid, "client_id": messages.client_id_of(CLIENT.public), "model_id": "m",
            "model_hash": HASH, "prompt_hash": commitments.prompt_hash(prompt, nonce + secret),
            "prompt_len": len(prompt), "params": SamplingParams(8).with_seed_for(rid).to_wire(),
            "mode": "sampling", "n": 3, "timeout_s": 1.0, "nonce": nonce, "created_at": 0.0, "p": None,
            "require_tee": False}
    body.update(over)
    return messages.seal("request", body, signer).raw


def test_admit_returns_what_follows_from_the_request():
    adm = admission.admit(request(), "hello", LIMITS, MODEL)
    assert (adm.request_id, adm.members, adm.escrowed_runs, adm.recipients, adm.p) == ("r1", 3, 3, None, 0.0)
    assert adm.deadline_s == 10.0  # the client asked for 1 s: a client may lengthen, never shorten
    assert adm.request.mode is modes.SPECS["sampling"] and adm.request.params.max_tokens == 8


@pytest.mark.parametrize("mode,n,members,escrow", [("obfuscated", 2, 3, 3), ("cross-validation", 2, 1, 3)])
def test_members_and_escrow_come_from_the_mode_spec(mode, n, members, escrow):
    adm = admission.admit(request(mode=mode, n=n), "hello", LIMITS, MODEL)
    assert (adm.members, adm.escrowed_runs) == (members, escrow)
    if mode == "cross-validation":
        assert adm.p == 0.25  # the network default when the request names none


@pytest.mark.parametrize("raw,prompt,err", [
    (request(signer=SigningKey(b"\x12" * 32)), "hello", UnknownSender),  # signed by someone else
    (request(), "hellO", MessageError),  # not the prompt the client signed
    (request("x" * 101), "x" * 101, PromptTooLarge),
    (request(prompt_len=500), "hello", PromptTooLarge),
    (request(mode="fastest"), "hello", InvalidParams),
    (request(n=6), "hello", InvalidParams),
    (request(n=0), "hello", InvalidParams),
    (request(mode="tee", n=2), "hello", InvalidParams),
    (request(mode="cross-validation", p=1.5), "hello", InvalidParams),
    (request(params=SamplingParams(17).with_seed_for("r1").to_wire()), "hello", InvalidParams),
    (request(params=SamplingParams(8).with_seed_for("other").to_wire()), "hello", InvalidParams),  # own seed
    (request(model_hash="cd" * 32), "hello", ModelHashMismatch),
    (request(), b"sealed?", InvalidParams),  # a plain request's prompt must be a string
])
def test_bad_requests_get_a_typed_error(raw, prompt, err):
    with pytest.raises(err):
        admission.admit(raw, prompt, LIMITS, MODEL)


def test_sealed_prompts_need_an_attested_mode_and_name_their_recipients():
    kem = sealing.KemKey(b"\x21" * 32)
    secret = os.urandom(32)
    blob = sealing.seal_prompt("hello", "r1", {"n-1": kem.public}, os.urandom(32), os.urandom(12), secret)
    raw = request(secret=secret, sealed=True, client_kem=b"\x01" * 32, require_tee=True)
    assert admission.admit(raw, blob, LIMITS, MODEL).recipients == ("n-1",)
    with pytest.raises(InvalidParams):  # not to unattested nodes
        admission.admit(request(secret=secret, sealed=True, client_kem=b"\x01" * 32), blob, LIMITS, MODEL)
    with pytest.raises(PromptTooLarge):
        admission.admit(raw, b"\x00" * (8 * 100 + admission.SEALED_OVERHEAD + 1), LIMITS, MODEL)
    with pytest.raises(InvalidParams):
        admission.admit(raw, b"not a sealed prompt", LIMITS, MODEL)
    # at the node: the opened prompt must match the hash salted with the secret
    req = admission.admit_at_node(raw, blob, HASH)
    admission.check_prompt_hash(req, "hello", secret)
    with pytest.raises(MessageError):
        admission.check_prompt_hash(req, "hello", os.urandom(32))


def test_nodes_apply_the_same_signature_model_and_prompt_rules():
    assert admission.admit_at_node(request(), "hello", HASH).request_id == "r1"
    assert admission.admit_at_node(request(), "hello", None).request_id == "r1"  # (runs no model)
    with pytest.raises(UnknownSender):
        admission.admit_at_node(request(signer=SigningKey(b"\x12" * 32)), "hello", HASH)
    with pytest.raises(ModelHashMismatch):
        admission.admit_at_node(request(), "hello", "cd" * 32)
    with pytest.raises(MessageError):
        admission.admit_at_node(request(), "other", HASH)


def test_model_timeouts_override_the_network_limits():
    model = dict(MODEL, timeout_s=40.0, timeout_per_token_s=0.5)
    assert admission.admit(request(), "hello", LIMITS, model).deadline_s == 40.0 + 0.5 * 8
    assert admission.admit(request(timeout_s=100.0), "hello", LIMITS, model).deadline_s == 100.0


@pytest.mark.parametrize("bad", [dict(timeout_s=0), dict(timeout_s=4000), dict(max_n=0), dict(max_n=True),
                                 dict(default_p=2), dict(referee_extra=0), dict(client_credit=-1),
                                 dict(liveness_interval_s=0), dict(timeout_per_token_s=-1), dict(max_tokens=1.5)])
def test_limits_validate_themselves(bad):
    with pytest.raises(ConfigError):
        Limits(**bad)
    edited = Limits()
    for k, v in bad.items():
        setattr(edited, k, v)
    with pytest.raises(ConfigError):  # an edit is caught when the limits are handed over
        Limits.of(edited)
    with pytest.raises(ConfigError):
        Limits.of({"max_prompt": 3})  # unknown key


@pytest.mark.parametrize("field, value", [("timeout_per_token_s", float("nan")), ("liveness_interval_s", float("inf")),
                                          ("timeout_s", float("nan")), ("default_p", float("nan"))])
def test_limits_refuse_nan_and_infinity_naming_the_field(field, value):
    from protocols.admission import Limits
    from protocols.errors import ConfigError

    with pytest.raises(ConfigError, match=f"limits.{field} .*got {value!r}"):
        Limits(**{field: value})
