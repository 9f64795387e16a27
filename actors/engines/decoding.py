"""The decoding rule every engine shares, and verification of a claimed output by prefill.

Rule (per step, from the last position's logits):
  * greedy (temperature 0): argmax, first index on ties;
  * seeded sampling: logits in float64 / temperature, optional top-k cut (values
    below the k-th largest dropped), softmax, one u = rand() (float64) from a CPU
    generator seeded with params.seed, token = first index whose cumulative
    probability exceeds u * total (inverse CDF). Exactly one draw per step, so a
    verifier can replay the same u sequence without decoding step by step.

Verification by prefill: one forward pass over prompt + claimed tokens gives the
logits at every position; `judge` accepts only if every claimed token is what
the rule picks there and the output stops where the rule stops (a stop token,
or max_tokens). Prefill and step-by-step decoding may differ in the last bits
of a logit (different kernel shapes). So where the claimed token is not the
prefill pick but the decision is within `tau` of flipping (a near-tie of the
top logits, or u within `tau` of a CDF boundary), the verdict is `uncertain`
and the verifier falls back to regenerating with the decode numerics: the
outcome is then exact, and prefill never accepts or rejects on a coin-flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

DEFAULT_TAU = 1e-4


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    uncertain: bool = False  # a near-tie: decide by regenerating
    mismatch_at: int | None = None  # first claimed position the rule rejects
    seconds: float = 0.0


def _sampling_cdf(logits: torch.Tensor, params) -> torch.Tensor:
    x = logits.to(torch.float64) / float(params.temperature)
    k = int(params.top_k)
    if 0 < k < x.numel():
        kth = torch.topk(x, k).values[-1]
        x = torch.where(x < kth, torch.full_like(x, float("-inf")), x)
    return torch.cumsum(torch.softmax(x, dim=-1), dim=-1)


def pick(logits: torch.Tensor, params, gen: torch.Generator | None) -> int:
    """The token the rule chooses from one position's logits."""
    if params.greedy:
        return int(torch.argmax(logits))
    cdf = _sampling_cdf(logits, params)
    u = torch.rand((), generator=gen, dtype=torch.float64)
    return min(int(torch.searchsorted(cdf, u * cdf[-1], right=True)), cdf.numel() - 1)


def generator_for(params) -> torch.Generator | None:
    return None if params.greedy else torch.Generator().manual_seed(params.seed)


def _step(logits: torch.Tensor, claimed: int | None, ok: Sequence[int], params, gen, tau: float) -> str:
    """'ok' | 'bad' | 'near' for one position. `ok` = the tokens acceptable here."""
    if params.greedy:
        best = int(torch.argmax(logits))
        if best in ok:
            return "ok"
        top = float(logits[best])
        margin = min(top - float(logits[t]) for t in ok)
        return "near" if margin <= tau * max(1.0, abs(top)) else "bad"
    cdf = _sampling_cdf(logits, params)
    u = float(torch.rand((), generator=gen, dtype=torch.float64)) * float(cdf[-1])
    chosen = min(int(torch.searchsorted(cdf, torch.tensor(u, dtype=torch.float64), right=True)), cdf.numel() - 1)
    if chosen in ok:
        return "ok"
    near = any(abs(u - float(cdf[t])) <= tau or (t > 0 and abs(u - float(cdf[t - 1])) <= tau) for t in ok)
    return "near" if near else "bad"


def judge(rows: torch.Tensor, claimed: Sequence[int], params, stop_ids: Sequence[int],
          tau: float = DEFAULT_TAU) -> Verdict:
    """rows[i] = logits predicting claimed[i]; rows[len(claimed)] predicts what follows."""
    if len(claimed) > params.max_tokens or any(t in stop_ids for t in claimed):
        return Verdict(False, False, 0)
    if any(not 0 <= int(t) < rows.shape[-1] for t in claimed):
        return Verdict(False, False, 0)
    gen = generator_for(params)
    uncertain = False
    for i, tok in enumerate(claimed):
        s = _step(rows[i], int(tok), [int(tok)], params, gen, tau)
        if s == "bad":
            return Verdict(False, False, i)
        uncertain |= s == "near"
    if len(claimed) < params.max_tokens:  # the rule must stop right here
        s = _step(rows[len(claimed)], None, list(stop_ids), params, gen, tau)
        if s == "bad":
            return Verdict(False, False, len(claimed))
        uncertain |= s == "near"
    return Verdict(not uncertain, uncertain, None)


@dataclass(frozen=True)
class TolerantTokens:
    """The token half of a tolerant check: could the rule have chosen every claimed token
    (and stopped where the claim stops) within `margin` of the verifier's own logits?"""

    accepted: bool
    mismatch_at: int | None  # first position outside the margin
    worst: float  # largest margin a claimed token needed (0: the verifier's own pick everywhere)


def _gap(logits: torch.Tensor, ok: Sequence[int], params, gen) -> float:
    """How far the rule's choice at this position is from any token in `ok`: greedy, the
    top logit's lead (relative to max(1, |top|)); sampling, the draw's distance from the
    tokens' CDF interval. 0 when the rule picks one of them."""
    if params.greedy:
        best = int(torch.argmax(logits))
        if best in ok:
            return 0.0
        top = float(logits[best])
        return min(top - float(logits[t]) for t in ok) / max(1.0, abs(top))
    cdf = _sampling_cdf(logits, params)
    total = float(cdf[-1])
    u = float(torch.rand((), generator=gen, dtype=torch.float64)) * total
    best = math.inf
    for t in ok:
        lo = float(cdf[t - 1]) if t > 0 else 0.0
        hi = float(cdf[t])
        best = min(best, 0.0 if lo <= u < hi else min(abs(u - lo), abs(u - hi)) / total)
    return best


def judge_tolerant(rows: torch.Tensor, claimed: Sequence[int], params, stop_ids: Sequence[int],
                   margin: float) -> TolerantTokens:
    """rows[i] = the verifier's logits predicting claimed[i] (rows[len(claimed)]: what follows)."""
    if len(claimed) > params.max_tokens or any(t in stop_ids for t in claimed) \
            or any(not 0 <= int(t) < rows.shape[-1] for t in claimed):
        return TolerantTokens(False, 0, math.inf)
    gen = generator_for(params)
    worst = 0.0
    for i, tok in enumerate(claimed):
        g = _gap(rows[i], [int(tok)], params, gen)
        if g > margin:
            return TolerantTokens(False, i, g)
        worst = max(worst, g)
    if len(claimed) < params.max_tokens:  # the rule must (nearly) stop right here
        g = _gap(rows[len(claimed)], list(stop_ids), params, gen)
        if g > margin:
            return TolerantTokens(False, len(claimed), g)
        worst = max(worst, g)
    return TolerantTokens(True, None, worst)


@dataclass(frozen=True)
class TolerantVerdict:
    """Both halves of a tolerant check, with the margins measured (they go into receipts)."""

    accepted: bool
    tokens: TolerantTokens
    fingerprint: Any  # protocols.fingerprint.Match
    seconds: float = 0.0

    def to_wire(self) -> dict:
        return {"accepted": self.accepted, "token_margin": round(self.tokens.worst, 6),
                "mismatch_at": self.tokens.mismatch_at, "fingerprint": self.fingerprint.to_wire()}


def verify_tolerant(rows: torch.Tensor, hidden: torch.Tensor, claimed: Sequence[int], params,
                    stop_ids: Sequence[int], claimed_fingerprint: bytes, tolerance) -> TolerantVerdict:
    """One prefill's logits (`rows`) and final hidden states (`hidden`, row j = the state
    that chose claimed[j]) against a claimed output and its fingerprint."""
    from protocols import fingerprint as fingerprints

    tokens = judge_tolerant(rows, claimed, params, stop_ids, tolerance.token_margin)
    states = [hidden[j].float().tolist() for j in fingerprints.positions(len(claimed))]
    match = fingerprints.compare(claimed_fingerprint, states, tolerance.thresholds)
    return TolerantVerdict(tokens.accepted and match.ok, tokens, match)


def too_long(at: int) -> TolerantVerdict:
    """A claim longer than the request or the context allows: rejected without a pass."""
    from protocols import fingerprint as fingerprints

    return TolerantVerdict(False, TolerantTokens(False, at, math.inf),
                           fingerprints.Match(False, 0.0, math.inf, math.inf, 0, "the claim is too long"))
