"""The OpenAI-compatible gateway on Ray Serve, driven with the official `openai` package."""

from __future__ import annotations

import json
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import ray  # noqa: E402

from protocols import commitments, messages, receipts  # noqa: E402
from tests.conftest import start_gateway  # noqa: E402


@pytest.fixture(scope="module")
def gateway(tiny_net, tmp_path_factory):
    from cluster import gateway as gw
    from cluster.keys import KeyStore
    from protocols.quota import Quota

    path = str(tmp_path_factory.mktemp("gw") / "keys.db")
    url = start_gateway(tiny_net, path)
    store = KeyStore(path)
    secret, _ = store.create("alice", "tests")
    slow, _ = store.create("slowpoke", "rate-limited", Quota(rpm=1))
    yield {"url": url, "key": secret, "slow": slow, "store": store}
    gw.stop(shutdown=True)


def _client(gw, key=None):
    return openai.OpenAI(base_url=gw["url"] + "/v1", api_key=key or gw["key"], max_retries=0, timeout=120)


def _receipt(gw, rid: str) -> bytes:
    r = httpx.get(f"{gw['url']}/v1/receipts/{rid}", headers={"authorization": f"Bearer {gw['key']}"}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/msgpack"
    return r.content


def test_models_lists_every_model_with_verinfer_metadata(gateway, tiny_net):
    models = _client(gateway).models.list()
    (m,) = [m for m in models.data if m.id == tiny_net.config.default_model]
    meta = m.model_extra["verinfer"]
    assert meta["model_hash"] == tiny_net.model_hashes[m.id] and meta["live_nodes"] == meta["nodes"] == 8
    assert "sampling" in meta["modes"] and meta["determinism_classes"]


def test_chat_completion_carries_a_receipt_that_binds_its_text(gateway, tiny_net, tiny_client):
    raw = _client(gateway).chat.completions.with_raw_response.create(
        model=tiny_net.config.default_model, messages=[{"role": "user", "content": "hello gateway"}],
        max_tokens=6, extra_body={"verinfer": {"mode": "sampling", "n": 3}})
    resp = raw.parse()
    vi = resp.model_extra["verinfer"]
    assert raw.headers["x-verinfer-request-id"] == vi["request_id"] and raw.headers["x-verinfer-status"] == "final"
    assert vi["status"] == "final" and vi["n"] == 3 and len(vi["paid"]) == 3 and vi["receipt_url"].endswith(
        vi["request_id"])
    assert resp.object == "chat.completion" and resp.choices[0].message.role == "assistant"
    blob = _receipt(gateway, vi["request_id"])
    body = messages.open_envelope(blob, "receipt").body
    token_ids = None
    for r in body["results"]:  # the accepted member's result binds the digest of the text we were given
        env = messages.open_envelope(r, "result")
        if env.body["node_id"] == body["decision"]["output_node"]:
            digest = env.body["output_digest"]
    out = ray.get(tiny_net.aggregator.final.remote(vi["request_id"]))["output"]
    token_ids = out["token_ids"]
    assert commitments.output_digest(token_ids, resp.choices[0].message.content) == digest
    s = receipts.verify_receipt(blob, [tiny_client.aggregator_key], token_ids)
    assert s.status == "final" and s.request_id == vi["request_id"]
    req = messages.open_envelope(body["request"], "request").body
    assert req["prompt_hash"] == commitments.prompt_hash("hello gateway", req["nonce"])  # what the model saw


def test_a_multi_turn_chat_is_rendered_and_bound_as_rendered(gateway, tiny_net):
    resp = _client(gateway).chat.completions.create(
        model=tiny_net.config.default_model, max_tokens=4,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    rid = resp.model_extra["verinfer"]["request_id"]
    body = messages.open_envelope(_receipt(gateway, rid), "receipt").body
    req = messages.open_envelope(body["request"], "request").body
    rendered = "system: be brief\nuser: hi\nassistant:"  # the tiny model has no chat template
    assert req["prompt_hash"] == commitments.prompt_hash(rendered, req["nonce"]) and req["params"]["template"] is False


def test_completions_endpoint(gateway, tiny_net):
    resp = _client(gateway).completions.create(model=tiny_net.config.default_model, prompt="once upon",
                                               max_tokens=5, extra_body={"verinfer": {"n": 2}})
    assert resp.object == "text_completion" and resp.model_extra["verinfer"]["status"] == "final"
    assert resp.usage.completion_tokens <= 5


def test_streamed_chat_sends_chunks_then_the_verified_outcome(gateway, tiny_net):
    stream = _client(gateway).chat.completions.create(
        model=tiny_net.config.default_model, messages=[{"role": "user", "content": "stream please"}],
        max_tokens=10, stream=True, stream_options={"include_usage": True},
        extra_body={"verinfer": {"n": 3}})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = [c for c in chunks if c.choices][-1]
    vi = last.model_extra["verinfer"]
    assert vi["status"] == "final" and vi["stream_held"] is True and last.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1  # include_usage
    out = ray.get(tiny_net.aggregator.final.remote(vi["request_id"]))["output"]
    assert text == out["text"]  # what was streamed is what the receipt binds


def test_raw_sse_ends_with_done(gateway, tiny_net):
    with httpx.stream("POST", f"{gateway['url']}/v1/completions", timeout=60,
                      headers={"authorization": f"Bearer {gateway['key']}"},
                      json={"model": tiny_net.config.default_model, "prompt": "abc", "max_tokens": 3,
                            "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.headers["x-verinfer-request-id"] and lines[-1] == "data: [DONE]"
    final = json.loads(lines[-2][6:])
    assert final["verinfer"]["status"] == "final"


@pytest.mark.parametrize("body,param", [
    ({"n": 2}, "n"), ({"stop": ["\n"]}, "stop"), ({"seed": 7}, "seed"), ({"top_p": 0.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"temperature": 3}, "temperature"),
    ({"verinfer": {"mode": "fastest"}}, "verinfer.mode"), ({"verinfer": {"n": 0}}, "verinfer.n"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
])
def test_what_cannot_be_honoured_is_a_400_and_changes_nothing(gateway, tiny_net, body, param):
    before = ray.get(tiny_net.ledger.head.remote())
    req = {"model": tiny_net.config.default_model, "messages": [{"role": "user", "content": "x"}], **body}
    r = httpx.post(f"{gateway['url']}/v1/chat/completions", json=req, timeout=30,
                   headers={"authorization": f"Bearer {gateway['key']}"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    assert ray.get(tiny_net.ledger.head.remote()) == before


def test_missing_or_revoked_keys_are_401(gateway, tiny_net):
    with pytest.raises(openai.AuthenticationError):
        _client(gateway, "vi-nope").models.list()
    store = gateway["store"]
    secret, key = store.create("mallory")
    assert _client(gateway, secret).models.list().data
    store.revoke(key.key_id)
    with pytest.raises(openai.AuthenticationError) as exc:
        _client(gateway, secret).chat.completions.create(model=tiny_net.config.default_model, max_tokens=2,
                                                         messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 401 and exc.value.body["code"] == "invalid_api_key"


def test_a_key_over_its_rate_is_429_with_retry_after_and_pays_nothing(gateway, tiny_net):
    c = _client(gateway, gateway["slow"])
    c.chat.completions.create(model=tiny_net.config.default_model, max_tokens=2,
                              messages=[{"role": "user", "content": "one"}])
    before = ray.get(tiny_net.ledger.head.remote())
    with pytest.raises(openai.RateLimitError) as exc:
        c.chat.completions.create(model=tiny_net.config.default_model, max_tokens=2,
                                  messages=[{"role": "user", "content": "two"}])
    assert exc.value.status_code == 429 and int(exc.value.response.headers["retry-after"]) >= 1
    assert ray.get(tiny_net.ledger.head.remote()) == before


def test_an_account_without_funds_is_402_and_nothing_moves(gateway, tiny_net):
    from protocols.crypto import SigningKey

    store = gateway["store"]
    secret, _ = store.create("broke")
    c = _client(gateway, secret)
    c.chat.completions.create(model=tiny_net.config.default_model, max_tokens=2,
                              messages=[{"role": "user", "content": "first"}])  # registers (faucet credit)
    acct = f"client/{messages.client_id_of(SigningKey(store.signing_seed('broke')).public)}"
    left = ray.get(tiny_net.ledger.balances.remote(acct))[acct]
    ray.get(tiny_net.ledger.withdraw.remote(acct, left, "drain-broke"))
    before = ray.get(tiny_net.ledger.head.remote())
    with pytest.raises(openai.APIStatusError) as exc:
        c.chat.completions.create(model=tiny_net.config.default_model, max_tokens=2,
                                  messages=[{"role": "user", "content": "second"}])
    assert exc.value.status_code == 402 and exc.value.body["code"] == "insufficient_quota"
    assert ray.get(tiny_net.ledger.head.remote()) == before


def test_attestation_report_needs_a_fresh_nonce(gateway):
    h = {"authorization": f"Bearer {gateway['key']}"}
    r = httpx.get(f"{gateway['url']}/v1/attestation/report", params={"nonce": "zz"}, headers=h, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "nonce"
    r = httpx.get(f"{gateway['url']}/v1/attestation/report", params={"nonce": "ab" * 16}, headers=h, timeout=60)
    rep = r.json()
    assert r.status_code == 200 and rep["nonce"] == "ab" * 16 and rep["aggregator_key"] and rep["nodes"]
    import base64

    from protocols import attestation as att

    roots = [bytes.fromhex(k) for k in rep["trust_roots"]]
    policy = att.standing_policy(rep["allow_simulated"], rep["model_hash"])
    for node in rep["nodes"]:  # each node's evidence is bound to *our* nonce, now, and to its HPKE key
        ev = base64.b64decode(node["evidence"])
        report = att.evidence_report(ev)
        assert report["nonce"] == bytes.fromhex("ab" * 16) and report["kem_pub"].hex() == node["kem_pub"]
        res = att.verify(ev, att.ExpectedBinding(report["signing_pub"], report["kem_pub"], bytes.fromhex("ab" * 16)),
                         policy, roots, time.time())
        assert res.ok, res.detail


def test_a_stream_whose_first_node_cheats_ends_saying_so_with_the_accepted_text(gateway, tiny_net, behave):
    cheater = "tiny-05"
    behave(cheater, "substitute")  # another model: another answer, streamed first (the others start late)
    honest = [n for n in tiny_net.executors if n != cheater]
    ray.get([tiny_net.executors[n].set_delay.remote(1.0) for n in honest])
    try:
        for _ in range(24):  # until the draw includes the cheater (3 of 8 each time)
            chunks = list(_client(gateway).chat.completions.create(
                model=tiny_net.config.default_model, messages=[{"role": "user", "content": "the truth, please"}],
                max_tokens=8, stream=True, extra_body={"verinfer": {"n": 3}}))
            vi = [c for c in chunks if c.choices][-1].model_extra["verinfer"]
            if cheater in vi["members"]:
                break
        else:
            pytest.fail("the cheater was never drawn")
    finally:
        ray.get([tiny_net.executors[n].set_delay.remote(0.0) for n in honest])
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert vi["status"] == "resolved" and [cheater, "cheat"] in vi["slashed"]
    out = ray.get(tiny_net.aggregator.final.remote(vi["request_id"]))["output"]
    assert vi["stream_held"] is False and vi["accepted_text"] == out["text"] != streamed
