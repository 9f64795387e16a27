"""Admission control rules for the gateway: per-key limits and fair sharing. Pure.

Each API key has a Quota: requests per minute, tokens per minute (the request's
max_tokens, charged up front), and requests in flight. `Meter.check` says
whether one more request fits, and if not, after how many seconds it would
(Retry-After). When the network is full, `FairQueue` serves waiting keys in
turn (round robin over keys, FIFO within a key), so one key flooding the
gateway gets one turn in k and cannot starve the others.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from .errors import VerinferError

WINDOW_S = 60.0


class QuotaExceeded(VerinferError):
    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = float(retry_after)

    def __reduce__(self):  # (crosses actor boundaries with its retry_after)
        return (QuotaExceeded, (str(self), self.retry_after))


@dataclass(frozen=True)
class Quota:
    rpm: int = 600  # requests per minute
    tpm: int = 200_000  # max_tokens per minute
    concurrent: int = 16  # requests in flight
    queue: int = 64  # requests waiting for capacity

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "concurrent", "queue"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"quota {name} must be a positive integer")


class Meter:
    """One key's sliding one-minute window and in-flight count."""

    def __init__(self) -> None:
        self.requests: collections.deque = collections.deque()  # admission times
        self.tokens: collections.deque = collections.deque()  # (time, tokens)
        self.in_flight = 0

    def _trim(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.tokens.popleft()

    def check(self, quota: Quota, tokens: int, now: float) -> None:
        """Raise QuotaExceeded (with the seconds until it would fit) unless one more
        request of `tokens` fits this key's limits now."""
        self._trim(now)
        if tokens > quota.tpm:
            raise QuotaExceeded(f"max_tokens {tokens} exceeds this key's {quota.tpm} tokens per minute", WINDOW_S)
        if len(self.requests) >= quota.rpm:
            raise QuotaExceeded(f"rate limit: {quota.rpm} requests per minute",
                                self.requests[0] + WINDOW_S - now)
        used = sum(t for _, t in self.tokens)
        if used + tokens > quota.tpm:
            free, wait = used + tokens - quota.tpm, 0.0
            for at, t in self.tokens:  # until enough of the window has slid past
                free -= t
                wait = at + WINDOW_S - now
                if free <= 0:
                    break
            raise QuotaExceeded(f"rate limit: {quota.tpm} tokens per minute", wait)
        if self.in_flight >= quota.concurrent:
            raise QuotaExceeded(f"{quota.concurrent} requests already in flight for this key", 1.0)

    def charge(self, tokens: int, now: float) -> None:
        self.requests.append(now)
        self.tokens.append((now, tokens))
        self.in_flight += 1

    def done(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)


class FairQueue:
    """Waiting requests per key, served one key at a time in turn."""

    def __init__(self) -> None:
        self._queues: dict[str, collections.deque] = {}
        self._order: collections.deque = collections.deque()  # keys with waiters, next first

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def waiting(self, key: str, owner=None) -> int:
        """Items waiting under `key` (only those whose `.key` is `owner`, when given)."""
        q = self._queues.get(key, ())
        return len(q) if owner is None else sum(1 for t in q if getattr(t, "key", None) == owner)

    def push(self, key: str, item) -> None:
        if key not in self._queues or not self._queues[key]:
            self._queues[key] = collections.deque()
            self._order.append(key)
        self._queues[key].append(item)

    def pop(self):
        """(key, item) of the next turn, or None when nobody waits."""
        while self._order:
            key = self._order.popleft()
            q = self._queues.get(key)
            if not q:
                continue
            item = q.popleft()
            if q:
                self._order.append(key)  # its next request waits for everyone else's turn
            else:
                del self._queues[key]
            return key, item
        return None

    def remove(self, key: str, item) -> bool:
        q = self._queues.get(key)
        if q is None or item not in q:
            return False
        q.remove(item)
        if not q:
            del self._queues[key]
        return True
