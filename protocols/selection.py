"""Uniform quorum selection that nobody can steer or predict, and anyone can check.

Randomness: a stream of SHA-256(seed || counter) blocks, where
seed = H(domain || beta) and beta is the selector's VRF output over
(request id, draw label) (protocols.vrf). The client has signed and spent its
request id before anyone but the selector can compute beta, and the selector
cannot choose beta (a VRF output is unique), so neither can aim a draw at
chosen nodes; with the proof, anyone holding the selector's VRF public key
checks the seed offline (`verify_seed`). Uniform integers come from rejection
sampling on 64-bit words (no modulo bias), and N distinct nodes from a partial
Fisher-Yates shuffle of the *sorted* eligible ids, so the eligible set and the
seed fix the draw (`verify_draw`).

Obfuscated draws use the same rule, but the selector keeps the proof secret:
without it nobody, holding the registry and a request id, computes the members.

Eligibility: serves the model, in the determinism class, live, stake at least
the minimum, and (when asked) attested. A request is served inside one class;
the class is itself drawn with probability proportional to its eligible node
count among classes that can field the quorum, which keeps every eligible node
equally likely to be picked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from . import vrf
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
    group: str = ""  # tolerance group (protocols.determinism.group_id), "" if its model has none

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


def seed_of(beta: bytes) -> bytes:
    """The draw seed from a VRF output."""
    return sha256(SELECTION_DOMAIN, beta)


def draw_randomness(key: vrf.VrfKey, request_id: str, label: str) -> tuple[bytes, bytes]:
    """(seed, VRF proof) of one draw: only the key holder can compute it."""
    beta, pi = key.output(vrf.draw_alpha(request_id, label))
    return seed_of(beta), pi


def verify_seed(vrf_public: bytes, request_id: str, label: str, seed: bytes, proof: bytes) -> None:
    """Raise vrf.VrfInvalid unless `seed` is the selector's VRF draw for (request, label)."""
    if seed_of(vrf.verify(vrf_public, vrf.draw_alpha(request_id, label), proof)) != seed:
        raise vrf.VrfInvalid(f"draw {label!r}: seed is not the VRF output's")


def eligible(
    nodes: Iterable[NodeView],
    model_id: str,
    min_stake: int,
    det_class: str | None = None,
    exclude: Iterable[str] = (),
    require_attested: bool = False,
    now: float | None = None,
) -> list[str]:
    """Sorted ids of nodes that may serve `model_id` (in `det_class` if given: an exact
    determinism class, or a tolerance group).

    With require_attested, only nodes whose attestation is valid at `now`."""
    ex = set(exclude)
    return sorted(
        n.node_id
        for n in nodes
        if n.model_id == model_id
        and (det_class is None or n.det_class == det_class or (bool(n.group) and n.group == det_class))
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
    tolerant: bool = False,
) -> str:
    """Pick the determinism class for a request, weighted by eligible node count.
    tolerant: pick among tolerance groups instead (nodes of a model without one count in
    their exact class)."""
    counts: dict[str, int] = {}
    nodes = list(nodes)
    for node in nodes:
        if node.model_id == model_id and node.live and node.stake >= min_stake and (
            not require_attested or node.attested_at(now)
        ):
            c = node.group if tolerant and node.group else node.det_class
            counts[c] = counts.get(c, 0) + 1
    fit = sorted((c, k) for c, k in ((c, k) for c, k in counts.items()) if k >= n)
    if not fit:
        best = max(counts.values(), default=0)
        mine = [v for v in nodes if v.model_id == model_id]
        raise NotEnoughNodes(
            f"no determinism class of model {model_id!r} has {n} eligible nodes (largest has {best}; "
            f"{len(mine)} registered, {sum(v.live for v in mine)} live, "
            f"{sum(v.stake >= min_stake for v in mine)} staked{', attested ' + str(sum(v.attested_at(now) for v in mine)) if require_attested else ''})"
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
