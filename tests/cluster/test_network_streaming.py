"""Streamed rounds: members push signed chunks as they generate; the stream ends with the outcome."""

from __future__ import annotations

import ray

from protocols import messages


def _stream(net, raw, prompt):
    rid = messages.open_envelope(raw, "request").request_id
    ray.get(net.aggregator.submit.remote(raw, prompt, True))
    return [ray.get(ref) for ref in net.aggregator.stream.options(num_returns="streaming").remote(rid)]


def test_stream_yields_the_first_members_tokens_then_the_outcome(tiny_net, tiny_client):
    raw, rid = tiny_client.build_request("stream me", n=3, max_tokens=12)
    items = _stream(tiny_net, raw, "stream me")
    chunks, final = items[:-1], items[-1]
    assert chunks and all(c["type"] == "chunk" for c in chunks) and final["type"] == "final"
    assert len({c["node_id"] for c in chunks}) == 1  # one member's stream, not a mix
    res = tiny_client.complete(final, rid, 0.0)  # the receipt verifies, for the tokens accepted
    streamed = [t for c in chunks for t in c["token_ids"]]
    assert res.status == "final" and streamed == res.token_ids
    assert "".join(c["text"] for c in chunks) == res.text


def test_forged_or_foreign_chunks_change_nothing(tiny_net, tiny_client):
    from protocols.crypto import SigningKey

    raw, rid = tiny_client.build_request("no forgeries", n=3, max_tokens=6)
    ray.get(tiny_net.aggregator.submit.remote(raw, "no forgeries", True))
    members = ray.get(tiny_net.aggregator.status.remote(rid))["members"]
    forged = messages.seal("chunk", {"request_id": rid, "node_id": sorted(members)[0], "role": "quorum", "seq": 0,
                                     "token_ids": [1, 2, 3], "text": "lies"}, SigningKey(b"\x99" * 32))
    try:
        ray.get(tiny_net.aggregator.on_chunk.remote(forged.raw))
    except Exception:
        pass  # refused: not the member's key
    items = [ray.get(r) for r in tiny_net.aggregator.stream.options(num_returns="streaming").remote(rid)]
    assert all(c["text"] != "lies" for c in items[:-1])
    res = tiny_client.complete(items[-1], rid, 0.0)
    assert [t for c in items[:-1] for t in c["token_ids"]] == res.token_ids
