"""Which aggregator shard owns a request.

A request belongs to shard H(request id) mod K; when that shard is down the
client tries the next ones in a fixed order, and whichever shard accepted the
request is the one that holds its round and journal until it ends. Everyone
(client, gateway, executor pushes) computes the same order from the id alone.
"""

from __future__ import annotations

from .canonical import sha256


def shard_of(request_id: str, shards: int) -> int:
    if shards < 1:
        raise ValueError("a network has at least one aggregator shard")
    return int.from_bytes(sha256(b"verinfer/shard|", request_id.encode())[:8], "big") % shards


def order(request_id: str, shards: int) -> list[int]:
    """The shards to try for a request, its own first."""
    k = shard_of(request_id, shards)
    return [(k + i) % shards for i in range(shards)]
