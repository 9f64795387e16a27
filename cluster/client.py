"""The Ray clients: sign a request, get the first output fast, then the receipt.

    client = network.client()                  # or Client(connect(config))
    handle = client.generate("Hello", n=3)
    first = handle.first_output()              # provisional: the first node to finish
    result = handle.result()                   # final answer + verified receipt

    aclient = await AsyncClient.create(network)   # the same, awaitable (no blocking ray.get)
    handle = await aclient.generate("Hello", n=3)
    result = await handle.result()

The first output is the first node's signed result, handed over by the
aggregator the moment it arrives (the client checks the node's signature and
the output digest), so time to first output is one node's generation plus a
few actor hops. `result()` verifies the receipt offline before returning,
including that the returned tokens are the ones the accepted commitment binds.
What is checked lives in cluster.client_core (no Ray); this module only moves
bytes to and from the aggregator.

Errors: bad arguments raise a typed VerinferError (InvalidParams, UnknownModel, ...)
before anything is sent; a typed error the network raises arrives as that error
too (unwrapped from Ray's RayTaskError, whose text is the remote traceback), so
`str(err)` is always one line naming the field and what is allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Any

import ray

from protocols import messages
from protocols.errors import ReceiptInvalid, VerinferError

from .client_core import ClientCore, FirstOutput, NetworkKeys, Result, typed_error


@contextlib.contextmanager
def _typed():
    """Re-raise a typed error a Ray call wrapped as itself (see the module docstring)."""
    try:
        yield
    except Exception as exc:
        err = typed_error(exc)
        if err is None or err is exc:
            raise
        raise err from None


def _unwrapped(fn):
    if asyncio.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(*a, **kw):
            with _typed():
                return await fn(*a, **kw)
        return run_async

    @functools.wraps(fn)
    def run(*a, **kw):
        with _typed():
            return fn(*a, **kw)
    return run


def _keys_refs(network: Any) -> list:
    reg, sel, agg = network.registry, network.selector, network.aggregator
    return [agg.pubkey.remote(), sel.pubkey.remote(), sel.vrf_public.remote(),
            reg.trust_roots.remote()]


def _keys(network: Any, got: list, trust_roots: list[bytes] | None) -> NetworkKeys:
    agg, sel, vrf, roots = got
    return NetworkKeys(agg, sel, vrf, tuple(roots if trust_roots is None else trust_roots),
                       dict(network.model_hashes), bool(network.config.attestation.allow_simulated),
                       roots_pinned=trust_roots is not None)


class RequestHandle:
    def __init__(self, client: "Client", request_id: str, submitted: dict, t0: float):
        self.client, self.request_id, self._sub, self._t0 = client, request_id, submitted, t0
        self._first: FirstOutput | None = None
        self._result: Result | None = None

    @_unwrapped
    def first_output(self, timeout: float | None = None) -> FirstOutput | None:
        """The first node's output (provisional). None if no node answered."""
        if self._first is None:
            got = ray.get(self.client.aggregator.first_output.remote(self.request_id), timeout=timeout)
            self._first = self.client.check_first(got, self.request_id, self._t0)
        return self._first

    @_unwrapped
    def result(self, timeout: float | None = None) -> Result:
        """Wait for finality; verify the receipt; return the accepted answer."""
        if self._result is None:
            self._complete(ray.get(self.client.aggregator.final.remote(self.request_id), timeout=timeout))
        return self._result

    def _complete(self, fin: dict) -> Result:
        self._result = self.client.complete(fin, self.request_id, self._t0, self._first)
        return self._result


class Client(ClientCore):
    """trust_roots: attestation root keys this client trusts (pin them in production);
    by default the network's own, fetched once. Every attested member's evidence in
    a receipt, and every node a TEE prompt is sealed to, must chain to one of them."""

    @_unwrapped
    def __init__(self, network: Any, key_seed: bytes | None = None, trust_roots: list[bytes] | None = None):
        self.network = network
        self.aggregator = network.aggregator
        super().__init__(network.config, _keys(network, ray.get(_keys_refs(network)), trust_roots), key_seed)
        ray.get(self.aggregator.register_client.remote(self.key.public))

    @_unwrapped
    def attested_recipients(self, model: str) -> dict[str, bytes]:
        """node id -> HPKE key, for each node whose evidence verifies and binds that key."""
        return self.recipients_of(model, ray.get(self.network.registry.attested_nodes.remote(model)))

    def seal_for_attested(self, prompt: str, request_id: str, model: str,
                          recipients: dict[str, bytes] | None = None) -> bytes:
        """Seal the prompt to every node whose attestation we verified (any may be drawn)."""
        if recipients is None:
            return self.seal_to(prompt, request_id, self.attested_recipients(model), model)
        return self.seal_to(prompt, request_id, recipients)

    @_unwrapped
    def submit_raw(self, request_raw: bytes, prompt: str) -> RequestHandle:
        t0 = time.time()
        req = messages.open_envelope(request_raw, "request")
        rid = req.request_id
        if req.body["sealed"] and isinstance(prompt, str):
            prompt = self.seal_for_attested(prompt, rid, req.body["model_id"])
        sub = self.aggregator.submit_sync(request_raw, prompt)
        self.submitted(rid)
        return RequestHandle(self, rid, sub, t0)

    def generate(self, prompt: str, **kw) -> RequestHandle:
        """Send one request; returns at once with a handle (see module docstring)."""
        raw, _rid = self.build_request(prompt, **kw)
        return self.submit_raw(raw, prompt)

    @_unwrapped
    def generate_many(self, prompts: list[str], **kw) -> list[RequestHandle]:
        """Send many requests at once (pipelined: one wait for all submissions)."""
        built = [self.build_request(p, **kw) for p in prompts]
        sealed = self.sealed(kw.get("mode") or self.config.network.default_mode, bool(kw.get("require_tee")))
        t0 = time.time()
        model = kw.get("model") or self.config.default_model
        to = self.attested_recipients(model) if sealed else None
        wire = [self.seal_to(p, rid, to) if sealed else p for (_, rid), p in zip(built, prompts)]
        subs = self.aggregator.submit_many([(raw, w) for (raw, _), w in zip(built, wire)])
        for _, rid in built:
            self.submitted(rid)
        return [RequestHandle(self, rid, sub, t0) for (_, rid), sub in zip(built, subs)]

    @_unwrapped
    def results(self, handles: list[RequestHandle], timeout: float | None = None) -> list[Result]:
        """Finality for many requests with one wait (receipts verified as in `result`)."""
        finals = self.aggregator.final_many([h.request_id for h in handles], timeout=timeout)
        for fin in finals:
            if isinstance(fin, BaseException):
                raise fin
        return [h._complete(fin) for h, fin in zip(handles, finals)]

    @_unwrapped
    def ledger_balances(self, prefix: str = "") -> dict[str, int]:
        return ray.get(self.network.ledger.balances.remote(prefix))


class AsyncRequestHandle:
    def __init__(self, client: "AsyncClient", request_id: str, submitted: dict, t0: float):
        self.client, self.request_id, self.submitted, self._t0 = client, request_id, submitted, t0
        self._first: FirstOutput | None = None
        self._result: Result | None = None

    @_unwrapped
    async def first_output(self, timeout: float | None = None) -> FirstOutput | None:
        if self._first is None:
            got = await asyncio.wait_for(self.client.aggregator.first_output.remote(self.request_id), timeout)
            self._first = self.client.check_first(got, self.request_id, self._t0)
        return self._first

    @_unwrapped
    async def result(self, timeout: float | None = None) -> Result:
        if self._result is None:
            fin = await asyncio.wait_for(self.client.aggregator.final.remote(self.request_id), timeout)
            self._result = self.client.complete(fin, self.request_id, self._t0, self._first)
        return self._result

    async def stream(self):
        """Chunks {"node_id", "token_ids", "text"} of the streamed member's tokens as they come
        (provisional), then the verified Result (a submit with stream=True). If the shard
        dies mid-stream, the rest of the stream is its final answer, fetched by request id
        from the restarted shard."""
        gen = self.client.aggregator.stream.options(num_returns="streaming").remote(self.request_id)
        try:
            async for ref in gen:
                with _typed():
                    item = await ref
                if item["type"] == "chunk":
                    yield item
                else:
                    self._result = self.client.complete(item, self.request_id, self._t0, self._first)
                    yield self._result
                    return
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            pass
        yield await self.result()


class AsyncClient(ClientCore):
    """The Ray client for asyncio code (e.g. inside a Serve deployment or another actor):
    every call awaits the aggregator instead of blocking in ray.get. Build with `create`."""

    def __init__(self, network: Any, keys: NetworkKeys, key_seed: bytes | None = None):
        self.network = network
        self.aggregator = network.aggregator
        super().__init__(network.config, keys, key_seed)

    @classmethod
    @_unwrapped
    async def create(cls, network: Any, key_seed: bytes | None = None,
                     trust_roots: list[bytes] | None = None) -> "AsyncClient":
        got = await asyncio.gather(*_keys_refs(network))
        client = cls(network, _keys(network, list(got), trust_roots), key_seed)
        await client.aggregator.register_client.remote(client.key.public)
        return client

    @_unwrapped
    async def attested_recipients(self, model: str) -> dict[str, bytes]:
        return self.recipients_of(model, await self.network.registry.attested_nodes.remote(model))

    @_unwrapped
    async def submit_raw(self, request_raw: bytes, prompt: str | bytes, stream: bool = False) -> AsyncRequestHandle:
        """stream=True: members push tokens as they make them; iterate `handle.stream()`."""
        t0 = time.time()
        req = messages.open_envelope(request_raw, "request")
        rid = req.request_id
        if req.body["sealed"] and isinstance(prompt, str):
            model = req.body["model_id"]
            prompt = self.seal_to(prompt, rid, await self.attested_recipients(model), model)
        sub = await self.aggregator.submit_async(request_raw, prompt, stream)
        self.submitted(rid)
        return AsyncRequestHandle(self, rid, sub, t0)

    async def generate(self, prompt: str, **kw) -> AsyncRequestHandle:
        raw, _rid = self.build_request(prompt, **kw)
        return await self.submit_raw(raw, prompt)

    @_unwrapped
    async def ledger_balances(self, prefix: str = "") -> dict[str, int]:
        return await self.network.ledger.balances.remote(prefix)


__all__ = ["Client", "AsyncClient", "RequestHandle", "AsyncRequestHandle", "Result", "FirstOutput",
           "ReceiptInvalid", "VerinferError"]
