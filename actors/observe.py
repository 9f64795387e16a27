"""What an aggregator shard (and the ledger) keeps for the status page and /metrics.

Counters by mode and status, disputes, slashes by reason, timeouts, histograms
of time to first output, finality and ledger commit latency, and the last few
hundred rounds in brief. Memory only: a restarted shard starts counting again
(the ledger and the journal hold what must not be lost). The gateway sums the
shards' snapshots (cluster/status_page.py).
"""

from __future__ import annotations

import collections
import time

BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)  # seconds
RECENT = 200


class Histogram:
    def __init__(self, buckets: tuple = BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)  # per bucket (not cumulative)
        self.total, self.n = 0.0, 0

    def add(self, seconds: float) -> None:
        for i, le in enumerate(self.buckets):
            if seconds <= le:
                self.counts[i] += 1
                break
        self.total += float(seconds)
        self.n += 1

    def to_wire(self) -> dict:
        return {"buckets": list(self.buckets), "counts": list(self.counts), "sum": self.total, "count": self.n}


class Observer:
    def __init__(self, keep: int = RECENT):
        self.requests: collections.Counter = collections.Counter()  # (mode, status) -> ended rounds
        self.slashes: collections.Counter = collections.Counter()  # reason -> slashes
        self.disputes = 0
        self.timeouts = 0
        self.first_output = Histogram()
        self.finality = Histogram()
        self.recent: collections.deque = collections.deque(maxlen=keep)

    def ended(self, request_id: str, mode: str, n: int, outcome, submitted_at: float, first_at: float | None,
              paid=(), slashes=(), now: float | None = None) -> None:
        """A round ended with `outcome` (protocols.decision.Outcome, or anything with .status)."""
        now = time.time() if now is None else now
        status = getattr(outcome, "status", str(outcome))
        self.requests[(mode, status)] += 1
        if getattr(outcome, "disputed", False):
            self.disputes += 1
        for _, reason in slashes:
            self.slashes[reason] += 1
            self.timeouts += reason == "timeout"
        ttfo = (first_at - submitted_at) if first_at else None
        if ttfo is not None:
            self.first_output.add(ttfo)
        self.finality.add(now - submitted_at)
        self.recent.append({"request_id": request_id, "mode": mode, "n": n, "status": status, "at": now,
                            "ttfo_s": ttfo, "finality_s": now - submitted_at, "paid": list(paid),
                            "slashed": [list(s) for s in slashes]})

    def snapshot(self) -> dict:
        return {"requests": [[m, s, c] for (m, s), c in sorted(self.requests.items())],
                "slashes": dict(self.slashes), "disputes": self.disputes, "timeouts": self.timeouts,
                "first_output": self.first_output.to_wire(), "finality": self.finality.to_wire(),
                "recent": list(self.recent)}
