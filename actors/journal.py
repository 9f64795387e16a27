"""The aggregator's journal of open rounds (on actors.store).

A round's state is a pure function of its inputs (protocols.sampling.Round), so
the journal records the inputs, not the state: the round's parameters when it
opens, then every round call with its arguments and time, every member message
that counted (results, reveals), every draw record and the cross-validation
coin. Replaying them rebuilds the round exactly as it was, which is what a
restarted shard does for each open round before it either finishes it
(decided: settle again — the ledger returns the first settlement — and sign the
receipt) or ends it unresolved with the escrow refunded.

Durability points, each before the effect it guards:
- `open` is written before the client's escrow is taken, synced to disk like
  the ledger's writes (so escrow is never held by a round nobody knows of,
  even after a power loss);
- `flush` runs before every settlement (so what was settled can be rebuilt);
- events in between are group-committed once per event-loop turn.
Once a round ends, its final answer replaces the events (`close`); finals are
kept for the last `retain` rounds, request ids forever (the replay guard).
"""

from __future__ import annotations

import asyncio
from typing import Any

from actors.store import Store

SEALED = ("open", "events", "final")  # prompts' answers and members' outputs are secrets at rest


class Journal:
    def __init__(self, store: Store, retain: int):
        self.store, self.retain = store, int(retain)
        self._buffer: list[tuple[str, str, Any]] = []
        self._seq: dict[str, int] = {}
        self._flush_scheduled = False

    # --- writing
    def open(self, request_id: str, meta: dict) -> None:
        """Durable now: the round exists (before any money moves for it)."""
        self._seq[request_id] = 0
        self.flush(extra=[("open", request_id, meta), ("spent", request_id, 1)], sync=True)

    def event(self, request_id: str, kind: str, *args: Any) -> None:
        if request_id not in self._seq:
            return  # not journaled (a round being rebuilt replays its own events)
        self._seq[request_id] += 1
        self._buffer.append(("events", f"{request_id}/{self._seq[request_id]:08d}", [kind, list(args)]))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self, extra: list = (), sync: bool = False) -> None:
        rows, self._buffer, self._flush_scheduled = self._buffer + list(extra), [], False
        self.store.put_many(rows, sync=sync)

    def close(self, request_id: str, final: dict, counters: dict | None = None) -> None:
        """The round ended: keep its final answer (and the shard's counters), drop its events."""
        n = self._seq.pop(request_id, None)
        self.flush()
        deletes = [("open", request_id)]
        deletes += [("events", f"{request_id}/{i:08d}") for i in range(1, (n or self._stored_events(request_id)) + 1)]
        rows = [("final", request_id, final)] + ([("meta", "counters", counters)] if counters is not None else [])
        self.store.put_many(rows, deletes)
        self._prune()

    def adopt(self, request_id: str, events: int) -> None:
        """A rebuilt round keeps journaling after its replayed events."""
        self._seq[request_id] = events

    def _stored_events(self, request_id: str) -> int:
        return sum(1 for k, _ in self.store.items("events") if k.startswith(request_id + "/"))

    def _prune(self) -> None:
        self._closed = getattr(self, "_closed", 0) + 1
        if self._closed % 64:
            return
        n = self.store.count("final")
        if n > self.retain:  # bounded: the oldest finals go first (their request ids stay spent)
            self.store.put_many((), [("final", k) for k in self.store.keys("final", n - self.retain)])

    # --- reading
    def open_rounds(self) -> dict[str, tuple[dict, list]]:
        """request id -> (meta, [(kind, args), ...]) for every round that had not ended."""
        events: dict[str, list] = {}
        for k, (kind, args) in self.store.items("events"):
            rid, _, seq = k.rpartition("/")
            events.setdefault(rid, []).append((seq, kind, args))
        return {rid: (meta, [(kind, args) for _, kind, args in sorted(events.get(rid, []))])
                for rid, meta in self.store.items("open")}

    def final(self, request_id: str) -> dict | None:
        return self.store.get("final", request_id)

    def spent(self, request_id: str) -> bool:
        return self.store.get("spent", request_id) is not None

    def opened(self, request_id: str) -> dict | None:
        return self.store.get("open", request_id)
