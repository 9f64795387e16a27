"""Uniform, publicly recomputable quorum selection.

Randomness: a stream of SHA-256(seed || counter) blocks, where
seed = H(domain || beacon || request id || draw label). Uniform integers come
from rejection sampling on 64-bit words (no modulo bias), and N distinct nodes
from a partial Fisher-Yates shuffle of the *sorted* eligible ids. Anyone with
the beacon, the request id and the eligible set recomputes the same draw
(`verify_draw`), so the selector cannot steer a request to a favoured node.

Eligibility: serves the model, in the determinism class, live, stake at least
the minimum, and (when asked) attested. A request is served inside one class;
the class is itself drawn with probability proportional to its eligible node
count among classes that can field the quorum, which keeps every eligible node
equally likely to be picked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .canonical import sha256
from .errors import NotEnoughNodes

SELECTION_DOMAIN = b"verinfer/selection/v1|"


@dataclass(frozen=True)
class NodeView:
    """What selection needs to know about a node."""

    node_id: str
    model_id: str
    det_class: str
    stake: int
    live: bool = True
    attested: bool = False
    attested_until: float = 0.0  # attestation is valid for selection until this time (epoch end)

    def attested_at(self, now: float | None) -> bool:
        return self.attested and (now is None or now <= self.attested_until)


class RandomStream:
    """Deterministic uniform integers from a 32-byte seed."""

    def __init__(self, seed: bytes):
        self._seed = seed
        self._counter = 0
        self._buf = b""

    def _word(self) -> int:
        if len(self._buf) < 8:
            self._buf += sha256(self._seed, self._counter.to_bytes(8, "big"))
            self._counter += 1
        w, self._buf = self._buf[:8], self._buf[8:]
        return int.from_bytes(w, "big")

    def below(self, n: int) -> int:
        """Uniform integer in [0, n)."""
        if n <= 0:
            raise ValueError("n must be positive")
        limit = (2**64 // n) * n
        while True:
            w = self._word()
            if w < limit:
                return w % n


def draw_seed(beacon: bytes, request_id: str, label: str = "quorum") -> bytes:
    return sha256(SELECTION_DOMAIN, beacon, b"|", request_id.encode(), b"|", label.encode())


def eligible(
    nodes: Iterable[NodeView],
    model_id: str,
    min_stake: int,
    det_class: str | None = None,
    exclude: Iterable[str] = (),
    require_attested: bool = False,
    now: float | None = None,
) -> list[str]:
    """Sorted ids of nodes that may serve `model_id` (in `det_class` if given).

    With require_attested, only nodes whose attestation is valid at `now`."""
    ex = set(exclude)
    return sorted(
        n.node_id
        for n in nodes
        if n.model_id == model_id
        and (det_class is None or n.det_class == det_class)
        and n.live
        and n.stake >= min_stake
        and n.node_id not in ex
        and (not require_attested or n.attested_at(now))
    )


def draw(eligible_ids: Sequence[str], n: int, seed: bytes) -> list[str]:
    """N distinct ids drawn uniformly from `eligible_ids` (order = draw order)."""
    pool = sorted(set(eligible_ids))
    if n < 1:
        raise ValueError("a draw needs n >= 1")
    if len(pool) < n:
        raise NotEnoughNodes(f"need {n} eligible nodes, have {len(pool)}")
    rng = RandomStream(seed)
    for i in range(n):
        j = i + rng.below(len(pool) - i)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:n]


def choose_class(
    nodes: Iterable[NodeView],
    model_id: str,
    n: int,
    min_stake: int,
    seed: bytes,
    require_attested: bool = False,
    now: float | None = None,
) -> str:
    """Pick the determinism class for a request, weighted by eligible node count."""
    counts: dict[str, int] = {}
    for node in nodes:
        if node.model_id == model_id and node.live and node.stake >= min_stake and (
            not require_attested or node.attested_at(now)
        ):
            counts[node.det_class] = counts.get(node.det_class, 0) + 1
    fit = sorted((c, k) for c, k in ((c, k) for c, k in counts.items()) if k >= n)
    if not fit:
        best = max(counts.values(), default=0)
        raise NotEnoughNodes(
            f"no determinism class of model {model_id!r} has {n} eligible nodes (largest has {best})"
        )
    total = sum(k for _, k in fit)
    pick = RandomStream(sha256(seed, b"|class")).below(total)
    for cls, k in fit:
        if pick < k:
            return cls
        pick -= k
    raise AssertionError("unreachable")


def verify_draw(eligible_ids: Sequence[str], n: int, seed: bytes, selected: Sequence[str]) -> bool:
    """Recompute a draw and compare (what a receipt verifier does)."""
    try:
        return draw(eligible_ids, n, seed) == list(selected)
    except (NotEnoughNodes, ValueError):
        return False
