"""The aggregator shards of a network, used like one aggregator handle.

    net.aggregator.final.remote(request_id)      # goes to the shard holding it
    sub = await net.aggregator.submit_async(raw, prompt)   # routes around a dead shard

Which shard owns a request is protocols.shards' rule (H(request id) mod K, then
the next ones in order). A shard Ray is restarting is waited for (its calls are
retried on the restarted actor, which answers from its journal); a shard that
is gone for good (ActorDiedError) is skipped, and the request goes to the next
one. Methods that name a request are routed; the rest go to the first live
shard (keys, client registration) — `each` asks all of them.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import ray

from actors.outbox import Failed
from protocols import messages, shards

PER_REQUEST = frozenset({"first_output", "final", "stream", "status", "public_view", "debug_state"})


class Aggregators:
    def __init__(self, handles: list, names: list[str] | None = None):
        if not handles:
            raise ValueError("a network has at least one aggregator shard")
        self.handles = list(handles)
        self.names = list(names or [])
        self._accepted: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._dead: set[int] = set()

    def __len__(self) -> int:
        return len(self.handles)

    def __getstate__(self):
        return {"handles": self.handles, "names": self.names}

    def __setstate__(self, state):
        self.__init__(state["handles"], state["names"])

    # --- routing
    def order(self, request_id: str) -> list[int]:
        got = self._accepted.get(request_id)
        ks = shards.order(request_id, len(self.handles))
        return ([got] + [k for k in ks if k != got]) if got is not None else ks

    def for_request(self, request_id: str):
        for k in self.order(request_id):
            if k not in self._dead:
                return self.handles[k]
        return self.handles[self.order(request_id)[0]]

    def accepted(self, request_id: str, shard: int) -> None:
        self._accepted[request_id] = shard
        while len(self._accepted) > 100_000:
            self._accepted.popitem(last=False)

    def first(self):
        return next((h for k, h in enumerate(self.handles) if k not in self._dead), self.handles[0])

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)

    # --- submitting, around dead shards
    def _live_order(self, request_raw: bytes) -> tuple[str, list[int]]:
        rid = messages.open_envelope(request_raw, "request").request_id
        return rid, [k for k in self.order(rid) if k not in self._dead]

    def submit_sync(self, request_raw: bytes, prompt: Any, stream: bool = False, timeout: float | None = None) -> dict:
        rid, ks = self._live_order(request_raw)
        for k in ks:
            try:
                return self._took(rid, k, ray.get(self.handles[k].submit.remote(request_raw, prompt, stream),
                                                  timeout=timeout))
            except ray.exceptions.ActorDiedError:
                self._dead.add(k)
        raise ray.exceptions.ActorDiedError()

    async def submit_async(self, request_raw: bytes, prompt: Any, stream: bool = False) -> dict:
        rid, ks = self._live_order(request_raw)
        for k in ks:
            try:
                return self._took(rid, k, await self.handles[k].submit.remote(request_raw, prompt, stream))
            except ray.exceptions.ActorDiedError:
                self._dead.add(k)
        raise ray.exceptions.ActorDiedError()

    def _took(self, rid: str, k: int, sub: dict) -> dict:
        self.accepted(rid, k)
        return sub

    def _by_shard(self, rids: list[str]) -> dict[int, list[int]]:
        """Positions of `rids` grouped by the live shard each goes to."""
        groups: dict[int, list[int]] = collections.defaultdict(list)
        for i, rid in enumerate(rids):
            groups[next((k for k in self.order(rid) if k not in self._dead), self.order(rid)[0])].append(i)
        return groups

    def submit_many(self, items: list[tuple[bytes, Any]]) -> list[dict]:
        """One `submit_many` call per shard for all its requests, then the ones whose shard is
        gone again, one by one. Raises the first request's error, like `submit` would."""
        rids = [messages.open_envelope(raw, "request").request_id for raw, _ in items]
        groups = self._by_shard(rids)
        refs = {k: self.handles[k].submit_many.remote([tuple(items[i]) for i in pos]) for k, pos in groups.items()}
        subs: list = [None] * len(items)
        for k, pos in groups.items():
            try:
                answers = ray.get(refs[k])
            except ray.exceptions.ActorDiedError:
                self._dead.add(k)
                answers = [self.submit_sync(*items[i]) for i in pos]
            for i, a in zip(pos, answers):
                subs[i] = a
        for i, sub in enumerate(subs):  # each caller's own error, in order
            if isinstance(sub, Failed):
                raise sub.error
        for rid, sub in zip(rids, subs):
            self.accepted(rid, sub.get("shard", self.order(rid)[0]))
        return subs

    def final_many(self, request_ids: list[str], timeout: float | None = None) -> list:
        """`final` for each request with one call per shard; a request's own error is its entry
        (an exception), a dead shard's requests are asked again where they went."""
        groups = self._by_shard(list(request_ids))
        refs = {k: self.handles[k].final_many.remote([request_ids[i] for i in pos]) for k, pos in groups.items()}
        out: list = [None] * len(request_ids)
        for k, pos in groups.items():
            try:
                answers = ray.get(refs[k], timeout=timeout)
            except ray.exceptions.ActorDiedError:
                self._dead.add(k)
                answers = [ray.get(self.for_request(request_ids[i]).final.remote(request_ids[i]), timeout=timeout)
                           for i in pos]
            for i, a in zip(pos, answers):
                out[i] = a.error if isinstance(a, Failed) else a
        return out

    def each(self, method: str, *args, **kw) -> list:
        """ObjectRefs of `method` on every shard (stats, health)."""
        return [getattr(h, method).remote(*args, **kw) for h in self.handles]

    def totals(self, timeout: float = 30.0) -> dict:
        """Counters summed over the shards that answer."""
        got = []
        for ref in self.each("stats"):
            try:
                got.append(ray.get(ref, timeout=timeout))
            except Exception:
                continue
        return _sum(got)

    async def totals_async(self) -> dict:
        return _sum(await asyncio.gather(*self.each("stats"), return_exceptions=True))


def _sum(stats: list) -> dict:
    total: collections.Counter = collections.Counter()
    for g in stats:
        if isinstance(g, dict):
            total.update({k: v for k, v in g.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    total.pop("shard", None)
    total.pop("pid", None)
    return dict(total)


class _Method:
    def __init__(self, shards_: Aggregators, name: str, options: dict | None = None):
        self._s, self._name, self._options = shards_, name, options or {}

    def options(self, **opts) -> "_Method":
        return _Method(self._s, self._name, {**self._options, **opts})

    def remote(self, *args, **kw):
        if self._name == "submit":
            rid = messages.open_envelope(args[0], "request").request_id
            h = self._s.for_request(rid)
        elif self._name in PER_REQUEST:
            h = self._s.for_request(args[0] if args else kw["request_id"])
        else:
            h = self._s.first()
        m = getattr(h, self._name)
        return (m.options(**self._options) if self._options else m).remote(*args, **kw)
