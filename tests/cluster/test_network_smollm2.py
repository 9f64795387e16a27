"""The real model end to end: SmolLM2-135M-Instruct nodes on the shared Ray cluster."""

from __future__ import annotations

import uuid

import pytest
import ray

from cluster import config as cfgmod
from cluster.network import deploy, teardown
from protocols import messages, receipts

pytestmark = pytest.mark.smollm2


@pytest.fixture(autouse=True)
def _conserved(conserved):
    yield


@pytest.fixture(scope="module")
def smol_net(ray_cluster, tmp_path_factory):
    cfg = cfgmod.load("default.toml")
    cfg.network.name = f"t-smol-{uuid.uuid4().hex[:6]}"
    cfg.malicious = {}
    cfg.nodes[0].count = 3
    from tests.conftest import track

    net = track(deploy(cfg, ledger_path=str(tmp_path_factory.mktemp("smol") / "ledger.db")))
    yield net
    teardown(net)


def reveals_of(receipt: bytes) -> dict[str, bytes]:
    body = messages.open_envelope(receipt, "receipt").body
    return {r.body["node_id"]: r.body["commitment"] for r in map(messages.open_envelope, body["reveals"])}


def test_full_n3_round_on_smollm2_agrees_and_the_receipt_verifies(smol_net):
    client = smol_net.client()
    h = client.generate("What is the capital of France?", n=3, max_tokens=8)
    first = h.first_output()
    res = h.result()
    assert res.status == "final" and len(res.summary.paid) == 3
    commits = reveals_of(res.receipt)
    assert len(commits) == 3 and len(set(commits.values())) == 1  # bit-identical across three nodes
    s = receipts.verify_receipt(res.receipt, [client.aggregator_key], res.token_ids)
    assert s.output_checked and s.commitment == next(iter(commits.values()))
    assert "Paris" in res.text and first.token_ids == res.token_ids


def test_cross_validation_on_smollm2_verifies_by_prefill(smol_net):
    client = smol_net.client()
    res = client.generate("Name a primary color.", mode="cross-validation", n=2, p=1.0, max_tokens=8).result()
    assert res.status == "final" and res.branch == "checked"
    assert sorted(res.methods.values()) == ["generate", "prefill", "prefill"]
    receipts.verify_receipt(res.receipt, [client.aggregator_key], res.token_ids)


def test_seeded_sampling_agrees_across_nodes(smol_net):
    client = smol_net.client()
    res = client.generate("Tell me a fun fact.", n=3, max_tokens=8, temperature=0.8, top_k=50).result()
    assert res.status == "final"
    assert len(set(reveals_of(res.receipt).values())) == 1


def test_smollm2_through_the_gateway_streams_what_the_receipt_binds(smol_net, tmp_path):
    openai = pytest.importorskip("openai")
    import socket

    from cluster import gateway
    from cluster.keys import KeyStore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys = str(tmp_path / "keys.db")
    url = gateway.start(smol_net, "127.0.0.1", port, keys_file=keys)
    secret, _ = KeyStore(keys).create("smol")
    gateway.wait_ready(url)
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=300)
        chunks = list(c.chat.completions.create(
            model=smol_net.config.default_model, messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8, stream=True, extra_body={"verinfer": {"n": 3}}))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        vi = [ch for ch in chunks if ch.choices][-1].model_extra["verinfer"]
        assert vi["status"] == "final" and vi["stream_held"] and len(vi["paid"]) == 3 and "Paris" in text
        fin = ray.get(smol_net.aggregator.final.remote(vi["request_id"]))
        assert fin["output"]["text"] == text
        receipts.verify_receipt(fin["receipt"], [smol_net.client().aggregator_key], fin["output"]["token_ids"])
    finally:
        gateway.stop(shutdown=True)
