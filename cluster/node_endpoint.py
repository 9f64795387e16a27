"""The node endpoint: how a node outside the cluster takes part, over HTTP.

Served by the gateway's Serve application under /v1/nodes/. A node agent
(cluster/agent.py) joins, then long-polls for the calls its RemoteNode stand-in
(actors/remote_node.py) queued, answers them, and relays its own signed messages
(stream chunks, obfuscated results and reveals, its calls to the registry for
challenges, attestation and its weights key). Every request carries, in the
`X-Verinfer-Auth` header, a call envelope signed with the node's registered key
(before it joins: the key the operator approved) over the request body's hash
(protocols.authority, rights "endpoint.*": a node only for itself, fresh, each
envelope once). The endpoint relays only what the node may send anyway: messages
that carry their own signatures, to methods that check them.

    GET  /v1/nodes/network           public: network name, roster, keys
    POST /v1/nodes/{id}/join         stand-in created, registry.join (node-signed)
    POST /v1/nodes/{id}/poll         the calls waiting for the node (long poll)
    POST /v1/nodes/{id}/reply        its answers
    POST /v1/nodes/{id}/relay        its own messages to the registry or an aggregator shard
"""

from __future__ import annotations

import base64
import time
from typing import Any

from actors.authority import bare
from actors.remote_node import RemoteNode, unwire, wire
from protocols import authority as au
from protocols.canonical import sha256
from protocols.errors import MessageError, UnknownNode, VerinferError

AUTH_HEADER = "x-verinfer-auth"
POLL_S = 20.0  # a poll waits this long for a call before it returns empty
RELAY = {  # what a node may relay, and to whom: each carries its own signature (or is public)
    "registry": frozenset({"challenge", "attest", "release_weights_key", "rejoin"}),
    "aggregator": frozenset({"on_chunk", "obf_result", "obf_reveal", "obf_refusal", "public_view"}),
}


def body_args(node_id: str, body: bytes) -> dict:
    """What an endpoint call signs: the node and a hash of the request body."""
    return {"node_id": node_id, "body": sha256(b"verinfer/node-endpoint|", body)}


def auth_header(signer: au.Signer, method: str, node_id: str, body: bytes, now: float, nonce: bytes) -> str:
    return base64.b64encode(signer.call("endpoint", method, body_args(node_id, body), now, nonce)).decode()


class NodeEndpoint:
    """The endpoint's logic (the gateway's routes call it). `net`: registry, aggregator
    shards and config, as the gateway holds them."""

    def __init__(self, net: Any):
        self.net = net
        self.network = net.config.network.name
        self.roster = au.Roster(self.network)  # (only nodes call the endpoint: no roster holder may)
        self.guard = au.CallGuard()
        self._proxies: dict[str, Any] = {}
        self._ns: str | None = None

    async def _check(self, method: str, node_id: str, body: bytes, header: str | None) -> None:
        try:
            raw = base64.b64decode(header or "", validate=True)
        except ValueError:
            raise au.Unauthorized("the X-Verinfer-Auth header is not base64") from None
        keys = {bytes(k) for k in await bare(self.net.registry).node_keys.remote(node_id)}
        au.check_call(raw, "endpoint", method, body_args(node_id, body), self.roster, self.guard, time.time(),
                      node_of=lambda k: node_id if bytes(k) in keys else None)

    def actor_name(self, node_id: str) -> str:
        return f"{self.network}/node/{node_id}"

    async def _proxy(self, node_id: str, create: bool = False):
        import ray

        if node_id in self._proxies:
            return self._proxies[node_id]
        name = self.actor_name(node_id)
        if self._ns is None:  # (the network's actors' namespace: the stand-in lives beside them)
            self._ns = await bare(self.net.registry).namespace.remote()
        try:
            h = ray.get_actor(name, namespace=self._ns)
        except ValueError:
            if not create:
                raise UnknownNode(f"{node_id!r} has not joined through this endpoint") from None
            h = ray.remote(RemoteNode).options(name=name, namespace=self._ns, lifetime="detached",
                                               num_cpus=0, max_concurrency=1000, get_if_exists=True).remote(node_id)
        self._proxies[node_id] = h
        return h

    # --- the routes
    def network_info(self) -> dict:
        return {"network": self.network, "roster": getattr(self.net, "roster", b""),
                "aggregator_shards": len(self.net.aggregator.handles)}

    async def join(self, node_id: str, body: bytes, header: str | None) -> bytes:
        await self._check("join", node_id, body, header)
        msg = unwire(body)
        proxy = await self._proxy(node_id, create=True)
        got = await bare(self.net.registry).join.remote(node_id, msg["kem_pub"], msg["fingerprint"], proxy,
                                                        self.actor_name(node_id), auth=msg["auth"])
        return wire(got)

    async def poll(self, node_id: str, body: bytes, header: str | None) -> bytes:
        await self._check("poll", node_id, body, header)
        wait = float((unwire(body) or {}).get("wait_s", POLL_S))
        return await (await self._proxy(node_id)).next_calls.remote(max(0.0, min(wait, POLL_S)))

    async def reply(self, node_id: str, body: bytes, header: str | None) -> bytes:
        await self._check("reply", node_id, body, header)
        return wire(await (await self._proxy(node_id)).reply.remote(body))

    async def relay(self, node_id: str, body: bytes, header: str | None) -> bytes:
        await self._check("relay", node_id, body, header)
        msg = unwire(body)
        to, method = msg.get("to"), msg.get("method")
        if method not in RELAY.get(to, ()):
            raise au.Unauthorized(f"a node may not relay {to}.{method}")
        args, kwargs = list(msg.get("args") or []), dict(msg.get("kwargs") or {})
        if to == "registry":
            target = bare(self.net.registry)
            if not args or args[0] != node_id:  # (its own record only)
                raise au.Unauthorized(f"a node relays registry calls for itself only, not {args[:1]}")
        else:
            shards = self.net.aggregator.handles
            k = msg.get("shard", 0)
            if not isinstance(k, int) or not 0 <= k < len(shards):
                raise MessageError(f"no aggregator shard {k!r}")
            target = bare(shards[k])
        return wire(await getattr(target, method).remote(*args, **kwargs))


def error_body(exc: BaseException) -> tuple[int, bytes]:
    """The HTTP status and wired error for an exception from the endpoint."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, au.Unauthorized):
        status = 401
    elif isinstance(cause, UnknownNode):
        status = 404
    elif isinstance(cause, VerinferError):
        status = 400
    else:
        status, cause = 500, VerinferError(f"{type(cause).__name__}: {cause}")
    return status, wire(cause)
