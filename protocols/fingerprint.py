"""Activation fingerprints: a compact commitment to a model's hidden states over an output.

What is fingerprinted: for each chunk of `CHUNK` generated tokens, the final
hidden state (after the last norm, the LM head's input) at the position whose
logits chose the chunk's last token. That state depends on the weights, the
prompt and every token before it, so a verifier that prefills prompt + claimed
tokens recomputes it in one pass.

Encoding (per chunk): the `k` largest-magnitude coordinates, as uint16 indices
and bfloat16 values, largest first: 4k bytes; k = 64 gives 256 bytes per 32
tokens, plus a 4-byte header once (TOPLOC's budget is ~258 bytes per 32).
Small states keep half of their coordinates (`k_for`).

Comparison (`compare`): the verifier's own state at the same position against
the committed coordinates: how many committed indices are also in its own
top k + k/2 (`overlap`, a fraction; the margin absorbs honest swaps at the
k-th magnitude), and the error of the committed values
against its own at those indices, relative to the largest magnitude of its own
state (mean and max over the chunk). `Thresholds`
say what passes; they come from calibration (benchmarks/tolerance.py), live in
the model's config and go into the receipt. Pure: no torch, no I/O.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Sequence

from .errors import MalformedMessage

CHUNK = 32
TOP_K = 64
VERSION = 1
MAX_DIM = 65535


@dataclass(frozen=True)
class Thresholds:
    """What an honest pair stays within (measured; see benchmarks/tolerance.py)."""

    min_overlap: float = 0.75  # share of committed top-k indices also in the verifier's top-k
    max_mean_err: float = 0.05  # mean relative error of committed values, per chunk
    max_err: float = 0.5  # largest relative error of one committed value

    def to_wire(self) -> dict:
        return {"min_overlap": self.min_overlap, "max_mean_err": self.max_mean_err, "max_err": self.max_err}

    @classmethod
    def of(cls, d: dict | None) -> "Thresholds":
        if d is None:
            return cls()
        if not isinstance(d, dict) or set(d) - {"min_overlap", "max_mean_err", "max_err"}:
            raise MalformedMessage("fingerprint thresholds: a map of min_overlap, max_mean_err, max_err")
        vals = {k: d[k] for k in d}
        for k, v in vals.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10 or math.isnan(v):
                raise MalformedMessage(f"fingerprint thresholds: {k} must be a number in [0, 10]")
        return cls(**{k: float(v) for k, v in vals.items()})


@dataclass(frozen=True)
class Match:
    ok: bool
    overlap: float  # worst chunk
    mean_err: float  # worst chunk
    max_err: float  # worst chunk
    chunks: int
    reason: str = ""

    def to_wire(self) -> dict:
        return {"ok": self.ok, "overlap": round(self.overlap, 6), "mean_err": round(self.mean_err, 6),
                "max_err": round(self.max_err, 6), "chunks": self.chunks, "reason": self.reason}


def positions(n_tokens: int, chunk: int = CHUNK) -> list[int]:
    """Index j (into the generated tokens) of each chunk's last token: the state that chose
    token j is fingerprinted. No tokens, no chunks."""
    return [min(c * chunk + chunk - 1, n_tokens - 1) for c in range((n_tokens + chunk - 1) // chunk)]


def _bf16(x: float) -> int:
    """float -> bfloat16 bits, round to nearest even (NaN stays NaN)."""
    (b,) = struct.unpack("<I", struct.pack("<f", x))
    if (b & 0x7F800000) == 0x7F800000 and b & 0x7FFFFF:
        return 0x7FC0
    b += 0x7FFF + ((b >> 16) & 1)
    return (b >> 16) & 0xFFFF


def _from_bf16(h: int) -> float:
    return struct.unpack("<f", struct.pack("<I", h << 16))[0]


def _top(state: Sequence[float], k: int) -> list[int]:
    return sorted(range(len(state)), key=lambda i: (-abs(state[i]), i))[:k]


def k_for(dim: int) -> int:
    """How many coordinates a state of `dim` keeps: TOP_K, or half of a small state (the
    top of a state says which coordinates lead only while it is a part of it)."""
    return max(1, min(TOP_K, dim // 2))


def encode(states: Sequence[Sequence[float]], k: int | None = None) -> bytes:
    """One fingerprint for an output: `states[c]` is chunk c's hidden state (a float vector).
    k: coordinates kept per chunk (default `k_for` the state's size)."""
    if k is None:
        k = k_for(len(states[0])) if states else TOP_K
    if not 1 <= k <= 255:
        raise ValueError("k must be 1..255")
    out = [struct.pack("<BBH", VERSION, k, len(states))]
    for st in states:
        if not 0 < len(st) <= MAX_DIM:
            raise ValueError(f"a hidden state has 1..{MAX_DIM} coordinates")
        idx = _top(st, min(k, len(st)))
        idx += [idx[-1]] * (k - len(idx))  # tiny states: repeat (decoded as a set)
        out.append(struct.pack(f"<{k}H", *idx) + struct.pack(f"<{k}H", *(_bf16(float(st[i])) for i in idx)))
    return b"".join(out)


def decode(blob: bytes) -> tuple[int, list[tuple[list[int], list[float]]]]:
    """(k, [(indices, values) per chunk]). Raises MalformedMessage on anything else."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) < 4:
        raise MalformedMessage("a fingerprint is bytes with a 4-byte header")
    v, k, n = struct.unpack_from("<BBH", blob)
    if v != VERSION or k == 0 or len(blob) != 4 + n * 4 * k:
        raise MalformedMessage("fingerprint: unknown version, or its length does not match its header")
    chunks, off = [], 4
    for _ in range(n):
        idx = list(struct.unpack_from(f"<{k}H", blob, off))
        vals = [_from_bf16(h) for h in struct.unpack_from(f"<{k}H", blob, off + 2 * k)]
        chunks.append((idx, vals))
        off += 4 * k
    return k, chunks


def size(n_tokens: int, k: int = TOP_K, chunk: int = CHUNK) -> int:
    """Bytes of the fingerprint of an output of `n_tokens` tokens."""
    return 4 + len(positions(n_tokens, chunk)) * 4 * k


def compare(blob: bytes, states: Sequence[Sequence[float]], th: Thresholds) -> Match:
    """The committed fingerprint against the verifier's own states at the same positions."""
    try:
        k, chunks = decode(blob)
    except MalformedMessage as exc:
        return Match(False, 0.0, math.inf, math.inf, 0, f"malformed: {exc}")
    if len(chunks) != len(states):
        return Match(False, 0.0, math.inf, math.inf, len(chunks),
                     f"{len(chunks)} chunks committed, the output has {len(states)}")
    worst_overlap, worst_mean, worst_max = 1.0, 0.0, 0.0
    for (idx, vals), st in zip(chunks, states):
        if any(i >= len(st) for i in idx):
            return Match(False, 0.0, math.inf, math.inf, len(chunks), "an index beyond the hidden size")
        committed = set(idx)
        # its own top k + k/2: honest numerics swap coordinates near the k-th magnitude, and a
        # committed one just below it is no sign of another computation
        own = set(_top(st, min(k + k // 2, len(st))))
        overlap = len(committed & own) / len(committed)
        scale = max(abs(float(st[i])) for i in own) or 1.0  # relative to the state's own top magnitude
        errs = [abs(v - float(st[i])) / scale for i, v in zip(idx, vals)]
        errs = [e if not math.isnan(e) else math.inf for e in errs]
        worst_overlap = min(worst_overlap, overlap)
        worst_mean = max(worst_mean, sum(errs) / len(errs))
        worst_max = max(worst_max, max(errs))
    ok = worst_overlap >= th.min_overlap and worst_mean <= th.max_mean_err and worst_max <= th.max_err
    reason = "" if ok else ("top-k overlap" if worst_overlap < th.min_overlap else "values")
    return Match(ok, worst_overlap, worst_mean, worst_max, len(chunks), reason)


@dataclass(frozen=True)
class Tolerance:
    """A model's calibrated tolerant check: how far a claimed token may be from the
    verifier's own choice (`token_margin`, see engines.decoding.judge_tolerant) and what
    its fingerprint must stay within. From benchmarks/tolerance.py; in the model's config."""

    token_margin: float = 0.05
    thresholds: Thresholds = Thresholds()

    def to_wire(self) -> dict:
        return {"token_margin": self.token_margin, "fingerprint": self.thresholds.to_wire()}

    @classmethod
    def of(cls, d: dict | None) -> "Tolerance":
        if d is None:
            return cls()
        if not isinstance(d, dict) or set(d) - {"token_margin", "fingerprint"}:
            raise MalformedMessage("tolerance: a map of token_margin and fingerprint")
        m = d.get("token_margin", cls.token_margin)
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 1 or math.isnan(m):
            raise MalformedMessage("tolerance: token_margin must be a number in [0, 1]")
        return cls(float(m), Thresholds.of(d.get("fingerprint")))


# ---- referees' verdicts: what a tolerant check measured, and what it accepts --------------
VERDICT_FIELDS = frozenset({"node_id", "commitment", "fingerprint_hash", "token_margin", "mismatch_at",
                            "overlap", "mean_err", "max_err", "chunks"})
MAX_VERDICTS = 64


def fingerprint_hash(blob: bytes) -> bytes:
    """What a verdict names of the fingerprint it checked (the commit seals the same hash)."""
    from .canonical import sha256

    return sha256(b"verinfer/fingerprint|", bytes(blob))


def verdict(node_id: str, commitment: bytes, blob: bytes, token_margin: float, mismatch_at: int | None,
            match: Match) -> dict:
    """A referee's signed account of one tolerant check (it goes into its result envelope,
    so the receipt carries it): whose claim, which committed output and fingerprint, and
    the measured margins. Whether it passes is not the referee's word: `accepts`."""
    return {"node_id": node_id, "commitment": bytes(commitment), "fingerprint_hash": fingerprint_hash(blob),
            "token_margin": float(token_margin), "mismatch_at": mismatch_at, "overlap": float(match.overlap),
            "mean_err": float(match.mean_err), "max_err": float(match.max_err), "chunks": int(match.chunks)}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def check_verdicts(verdicts) -> list[dict]:
    """The verdicts field of a result, well formed, or MalformedMessage."""
    if not isinstance(verdicts, list) or len(verdicts) > MAX_VERDICTS:
        raise MalformedMessage(f"verdicts: a list of at most {MAX_VERDICTS}")
    seen = set()
    for v in verdicts:
        if not isinstance(v, dict) or set(v) != VERDICT_FIELDS:
            raise MalformedMessage(f"a verdict is a map of {sorted(VERDICT_FIELDS)}")
        if not isinstance(v["node_id"], str) or v["node_id"] in seen:
            raise MalformedMessage("a verdict names one quorum member, once")
        seen.add(v["node_id"])
        if not isinstance(v["commitment"], bytes) or not isinstance(v["fingerprint_hash"], bytes):
            raise MalformedMessage("a verdict names the commitment and fingerprint hash it checked")
        if not all(_number(v[k]) for k in ("token_margin", "overlap", "mean_err", "max_err")) \
                or not (v["mismatch_at"] is None or (isinstance(v["mismatch_at"], int)
                                                     and not isinstance(v["mismatch_at"], bool))) \
                or not isinstance(v["chunks"], int) or isinstance(v["chunks"], bool):
            raise MalformedMessage("a verdict's margins are numbers")
    return verdicts


def accepts(v: dict, tol: Tolerance) -> bool:
    """Whether a verdict's measured margins are within the model's calibrated tolerance:
    every token within `token_margin` of the verifier's choice, and the fingerprint within
    its thresholds (the same rule `compare` applies, recomputed from the figures)."""
    th = tol.thresholds
    return v["mismatch_at"] is None and v["token_margin"] <= tol.token_margin and v["overlap"] >= th.min_overlap \
        and v["mean_err"] <= th.max_mean_err and v["max_err"] <= th.max_err


def accepted(verdicts: list[dict], claims: dict[str, tuple[bytes, bytes]], tol: Tolerance) -> tuple[str, ...]:
    """The quorum members whose claim a referee's verdicts accept: the verdict must name the
    member's revealed commitment and fingerprint (`claims`: node -> (commitment,
    fingerprint hash)) and pass `accepts`. Sorted; what the round and the receipt both use."""
    out = []
    for v in verdicts:
        claim = claims.get(v["node_id"])
        if claim is not None and (v["commitment"], v["fingerprint_hash"]) == claim and accepts(v, tol):
            out.append(v["node_id"])
    return tuple(sorted(out))
