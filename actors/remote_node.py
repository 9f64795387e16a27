"""RemoteNode: the member transport for a node that runs outside the cluster.

A node operator who must not run code inside the network's Ray cluster (and must
not let the network run code on theirs) runs a node agent on their own machine
(cluster/agent.py). Inside the cluster, this actor stands in for that node under
the node's actor name: the aggregator, selector, epoch keeper, registry and
operator call it exactly as they call an in-cluster NodeExecutor (same methods,
same signed `auth` envelopes), and it queues each call for the agent, which
long-polls the network's node endpoint (cluster/node_endpoint.py), runs the call
in its own process against its own NodeExecutor (which checks every signature
exactly as an in-cluster one does) and replies. The answer, or the same typed
error, is returned to the caller.

It holds no key and decides nothing. If the agent stops polling, calls wait
until their caller's own deadline passes: a killed agent is a timeout like any
other node's. `wire` / `unwire` are the encoding both ends use over HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import msgpack

from actors.outbox import Failed

# the NodeExecutor methods callers use; each becomes a forwarding method below
FORWARDED = ("ready", "public_keys", "attest", "answer_liveness", "execute", "reveal", "reveal_many",
             "execute_ticket", "reveal_ticket", "prepare_rotation", "commit_rotation", "abort_rotation", "unlock",
             "set_behaviour", "set_delay", "stats", "install_roster", "accept_rotations", "protocol_calls",
             "received")
CALL_TIMEOUT_S = 600.0  # a call the agent never answers fails after this (its caller's deadline comes first)


# ---- the HTTP encoding of arguments, results and errors ----------------------------------------
def _enc(v: Any) -> Any:
    if isinstance(v, Failed):
        return {"__failed__": _error(v.error)}
    if isinstance(v, BaseException):
        return {"__error__": _error(v)}
    if isinstance(v, (list, tuple)):
        return [_enc(x) for x in v]
    if isinstance(v, dict):
        return {k: _enc(x) for k, x in v.items()}
    if isinstance(v, (bytes, bytearray, str, int, float, bool)) or v is None:
        return v
    return {"__opaque__": True}  # an actor handle (unlock's registry): the agent has its own route to it


class Opaque:
    """What arrives for an argument that cannot travel (an actor handle). Signed calls do not
    bind such arguments (protocols.authority.plain), so the signature still checks."""

    def __repr__(self) -> str:
        return "Opaque()"


def _error(exc: BaseException) -> list:
    return [type(exc).__name__, str(exc)]


def _dec(v: Any) -> Any:
    if isinstance(v, list):
        return [_dec(x) for x in v]
    if isinstance(v, dict):
        if set(v) == {"__failed__"}:
            return Failed(error_of(*v["__failed__"]))
        if set(v) == {"__error__"}:
            return error_of(*v["__error__"])
        if set(v) == {"__opaque__"}:
            return Opaque()
        return {k: _dec(x) for k, x in v.items()}
    return v


def wire(value: Any) -> bytes:
    return msgpack.packb(_enc(value), use_bin_type=True)


def unwire(data: bytes) -> Any:
    return _dec(msgpack.unpackb(data, raw=False, strict_map_key=False))


def error_of(name: str, message: str) -> BaseException:
    """The typed error an agent raised, rebuilt by name (VerinferError if unknown here)."""
    from protocols import authority, errors

    cls = getattr(errors, name, None) or getattr(authority, name, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.VerinferError)):
        cls = errors.NodeError
        message = f"{name}: {message}"
    try:
        return cls(message)
    except TypeError:  # (an error that takes other arguments)
        return errors.NodeError(f"{name}: {message}")


# ---- the stand-in actor ------------------------------------------------------------------------
class RemoteNode:
    def __init__(self, node_id: str, call_timeout_s: float = CALL_TIMEOUT_S):
        self.node_id = node_id
        self.call_timeout_s = float(call_timeout_s)
        self._ids = itertools.count(1)
        self._queue: asyncio.Queue | None = None
        self._waiting: dict[int, asyncio.Future] = {}
        self.last_poll = 0.0
        self.forwarded = 0

    def _q(self) -> asyncio.Queue:
        if self._queue is None:
            self._queue = asyncio.Queue()
        return self._queue

    async def _forward(self, method: str, args: tuple, kwargs: dict) -> Any:
        call_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = fut
        self.forwarded += 1
        await self._q().put({"id": call_id, "method": method, "args": list(args), "kwargs": kwargs,
                             "at": time.time()})
        try:
            got = await asyncio.wait_for(fut, self.call_timeout_s)
        except asyncio.TimeoutError:
            from protocols.errors import NodeError

            raise NodeError(f"{self.node_id}: its agent did not answer {method} in {self.call_timeout_s:.0f}s") \
                from None
        finally:
            self._waiting.pop(call_id, None)
        if isinstance(got, BaseException):
            raise got
        return got

    # --- the agent's side (through the node endpoint)
    async def next_calls(self, max_wait_s: float = 20.0, max_items: int = 64) -> bytes:
        """Calls waiting for the agent (blocks up to max_wait_s for the first), wired."""
        self.last_poll = time.time()
        q, out = self._q(), []
        try:
            out.append(await asyncio.wait_for(q.get(), max_wait_s))
        except asyncio.TimeoutError:
            return wire([])
        while not q.empty() and len(out) < max_items:
            out.append(q.get_nowait())
        self.last_poll = time.time()
        return wire([c for c in out if c["id"] in self._waiting])  # (calls whose caller gave up are dropped)

    def reply(self, data: bytes) -> int:
        """The agent's answers: [{id, ok, value}] wired; returns how many were awaited."""
        n = 0
        for r in unwire(data):
            fut = self._waiting.get(r.get("id"))
            if fut is not None and not fut.done():
                value = r.get("value")
                fut.set_result(value if r.get("ok") else (value if isinstance(value, BaseException) else
                                                          error_of("NodeError", str(value))))
                n += 1
        return n

    def connected(self) -> dict:
        return {"node_id": self.node_id, "last_poll": self.last_poll, "waiting": len(self._waiting),
                "forwarded": self.forwarded}


def _forwarder(name: str):
    async def method(self, *args, **kwargs):
        return await self._forward(name, args, kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"NodeExecutor.{name}, run by the node's agent."
    return method


for _name in FORWARDED:
    setattr(RemoteNode, _name, _forwarder(_name))
