"""Economics of verification: quorum capture odds and cross-validation incentives.

Pure arithmetic (standard library only: ``math``, ``fractions``). No Ray, no I/O.

1. Quorum capture
-----------------
A request is answered by a quorum of ``n`` nodes drawn at random; a fraction
``r`` of all nodes is dishonest and colludes. The quorum is *captured* when every
member is dishonest (then nobody disagrees and a wrong answer goes through).

* Large network (draws independent, "binomial" model)::

      P(captured) = r ** n                                  p_all_dishonest(r, n)

  With r = 1/3: n = 5 gives 1/243 = 4.1152e-3 and n = 10 gives
  1/59049 = 1.6935e-5. The published figures are 4.11e-3 and 1.69e-5 (the
  first one is *truncated*, not rounded, to 3 significant figures: 4.1152e-3
  rounds to 4.12e-3).

* Finite network of M nodes, D of them dishonest, quorum drawn without
  replacement ("hypergeometric" model)::

      P(captured) = C(D, n) / C(M, n)
                  = prod_{k=0..n-1} (D - k) / (M - k)       p_all_dishonest_finite(M, D, n)

  Every factor (D-k)/(M-k) <= D/M, so this is <= (D/M) ** n, with equality only
  for n = 1 or D in {0, M}; it tends to r ** n as M grows with D/M = r fixed.
  It is exactly 0 once n > D.

* ``min_quorum(r, target, M=None, D=None)`` is the smallest n >= 1 with
  P(captured) <= target (finite model when M is given, with D = round(r*M)
  unless D is given; ``round`` is Python's round-half-to-even on the exact
  value r*M). The comparison is done on exact fractions. It raises
  ``Infeasible`` (a ``ValueError``) when no quorum size reaches the target
  (e.g. r = 1, target < 1; or D = M; or target = 0 with r > 0 in the
  binomial model).

2. Cross-validation incentives (Atoma whitepaper, Appendix A)
-------------------------------------------------------------
A node executes a request for reward R at cost C. With probability p the
request is re-executed by N verifiers drawn from a network where a fraction r
is dishonest. Symbols: S slashed collateral, H (= W1) reward of a cheat that
goes unchecked (default R), L (= W2) reward of a cheat when all N checkers
collude (default 2R). i is the number of dishonest checkers, binomial(N, r),
with weights b_i = C(N, i) r^i (1-r)^(N-i). Lemmas A.1 / A.2, in the form
implemented here (``honest_reward``, ``malicious_reward``)::

    honest(p)    = (1-p)(R-C) + p * sum_{i=0..N}   b_i (i R/N + R - C)
    malicious(p) = (1-p) H    + p r^N L
                              + p * sum_{i=0..N-1} b_i (i R/N - C - S)

Both are linear in p. Summing the binomials (sum b_i = 1, sum b_i i/N = r)::

    honest(p)    = R - C + p r R
    malicious(p) = (1-p) H + p [ r^N L + R (r - r^N) - (C + S)(1 - r^N) ]
    f(p) = honest(p) - malicious(p)
         = (R - C - H) + p [ H + r^N (R - L) + (1 - r^N)(C + S) ]

``min_p`` evaluates f(0) and f(1) from the binomial sums with exact
``Fraction`` arithmetic (floats are converted with ``Fraction(str(x))`` so 0.1
means 1/10) and returns the threshold p* in [0, 1) such that
honest(p) > malicious(p) for every p in (p*, 1]:

* f(1) > 0 and f(0) >= 0  ->  0.0 (honesty already pays at p = 0, or pays for
  every p > 0);
* f(1) > 0 and f(0) < 0   ->  p* = -f(0) / (f(1) - f(0)), the exact crossing;
* f(1) <= 0               ->  raises ``Infeasible`` (a ``ValueError``): no check
  probability in [0, 1] makes honesty pay near p = 1. (If f(0) > 0 but
  f(1) <= 0, honesty pays only for *small* p, which is not a threshold of the
  asked form; this also raises.)

With the whitepaper defaults H = R, L = 2R the expression collapses to::

    f(p) = -C + p (1 - r^N)(R + C + S)   =>   p* = C / ((1 - r^N)(R + C + S))

The closed form vs lemma discrepancy
------------------------------------
The whitepaper's Corollary 1 (N = 1, H = R, L = 2R) states honesty pays when::

    p > C / ((1 - r)(R + S))                                min_p_closed_form

while the lemmas as printed — with the "- C" in the caught-cheater case, i.e.
a caught cheater is charged the execution cost on top of losing S — give::

    p > C / ((1 - r)(R + C + S))                            min_p_lemma_form

Example R = 1.2, C = 1, r = 1/2, S = 250: the corollary gives 0.0079618 and the
lemmas give 0.0079302. Since R + S < R + C + S, the corollary's bound is the
larger one, i.e. a slightly conservative *sufficient* condition (it is exactly
what the lemmas give if the caught cheater does not also pay C). The printed
Lemma A.2 also has typos in its binomial exponents; we implement the binomial
form written above (b_i = C(N,i) r^i (1-r)^(N-i), all-collude weight r^N), whose
N = 1 threshold equals the lemma form exactly; ``min_p`` therefore reproduces
0.0079302 and ``min_p_closed_form`` reproduces 0.0079618. Both are reported.

3. Compute overhead
-------------------
``compute_multiplier(p, n) = 1 + p n``: expected node executions per request
in cross-validation mode (one execution always, n more with probability p).
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from numbers import Rational
from typing import Optional, Union

Number = Union[int, float, Fraction, Decimal, str]

__all__ = [
    "Infeasible",
    "p_all_dishonest",
    "p_all_dishonest_finite",
    "dishonest_count",
    "min_quorum",
    "honest_reward",
    "malicious_reward",
    "min_p",
    "min_p_closed_form",
    "min_p_lemma_form",
    "compute_multiplier",
]


class Infeasible(ValueError):
    """The inputs are valid but no parameter value meets the condition."""


# --- helpers --------------------------------------------------------------------
def _q(x: Number, name: str) -> Fraction:
    """Exact rational value of x; floats go through str() so 0.1 == 1/10."""
    if isinstance(x, bool):
        raise ValueError(f"{name} must be a number, got a bool")
    if isinstance(x, Fraction):
        return x
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, Rational):
        return Fraction(x.numerator, x.denominator)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"{name} must be finite, got {x!r}")
        return Fraction(str(x))
    if isinstance(x, (Decimal, str)):
        try:
            return Fraction(x)
        except (ValueError, ZeroDivisionError) as e:
            raise ValueError(f"{name} must be a finite number, got {x!r}") from e
    raise ValueError(f"{name} must be a number, got {type(x).__name__}")


def _prob(x: Number, name: str, *, upper_open: bool = False) -> Fraction:
    v = _q(x, name)
    if v < 0 or v > 1 or (upper_open and v == 1):
        raise ValueError(f"{name} must be in [0, {'1)' if upper_open else '1]'}, got {x!r}")
    return v


def _nonneg(x: Number, name: str) -> Fraction:
    v = _q(x, name)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {x!r}")
    return v


def _count(x, name: str, *, minimum: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        if isinstance(x, float) and x.is_integer():
            x = int(x)
        else:
            raise ValueError(f"{name} must be an integer, got {x!r}")
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    return x


def _out(v: Fraction, exact: bool):
    return v if exact else float(v)


# --- 1. quorum capture --------------------------------------------------------------
def p_all_dishonest(r: Number, n: int, *, exact: bool = False):
    """Probability that a quorum of n independent draws is all dishonest: r ** n."""
    rv = _prob(r, "r")
    n = _count(n, "n", minimum=1)
    return _out(rv ** n, exact)


def _finite_exact(M: int, D: int, n: int) -> Fraction:
    if n > D:
        return Fraction(0)
    return Fraction(math.comb(D, n), math.comb(M, n))


def _check_finite(M, D, n):
    M = _count(M, "M (nodes)", minimum=1)
    D = _count(D, "D (dishonest)", minimum=0)
    if D > M:
        raise ValueError(f"D (dishonest) = {D} exceeds M (nodes) = {M}")
    n = _count(n, "n", minimum=1)
    if n > M:
        raise ValueError(f"a quorum of n = {n} cannot be drawn from M = {M} nodes")
    return M, D, n


def p_all_dishonest_finite(M: int, D: int, n: int, *, exact: bool = False):
    """Hypergeometric probability that n nodes drawn without replacement from M
    nodes, D of them dishonest, are all dishonest: C(D, n) / C(M, n)."""
    M, D, n = _check_finite(M, D, n)
    return _out(_finite_exact(M, D, n), exact)


def dishonest_count(r: Number, M: int) -> int:
    """D = round(r * M), half-to-even on the exact value of r * M."""
    rv = _prob(r, "r")
    M = _count(M, "M (nodes)", minimum=1)
    return round(rv * M)


def min_quorum(r: Optional[Number], target: Number, M: Optional[int] = None,
               D: Optional[int] = None) -> int:
    """Smallest quorum size n >= 1 with P(all n dishonest) <= target.

    Binomial model (r ** n) when M is None; hypergeometric model when M is given,
    with D = round(r * M) unless D is given (r may then be None). Raises
    ``Infeasible`` (a ValueError) when no n reaches the target, ValueError on bad
    input.
    """
    t = _prob(target, "target")
    if M is None:
        if D is not None:
            raise ValueError("D (dishonest) needs M (nodes)")
        if r is None:
            raise ValueError("r is required without M")
        rv = _prob(r, "r")
        if rv == 0:
            return 1
        if t >= 1:
            return 1
        if rv == 1 or t == 0:
            raise Infeasible(f"no quorum size gets P(captured) = r**n <= {target} with r = {r}")
        # float estimate, then exact correction
        n = max(1, math.ceil(math.log(float(t)) / math.log(float(rv))) - 1)
        while n > 1 and rv ** (n - 1) <= t:
            n -= 1
        while rv ** n > t:
            n += 1
        return n
    M = _count(M, "M (nodes)", minimum=1)
    if D is None:
        if r is None:
            raise ValueError("give r or D with M")
        D = dishonest_count(r, M)
    D = _count(D, "D (dishonest)", minimum=0)
    if D > M:
        raise ValueError(f"D (dishonest) = {D} exceeds M (nodes) = {M}")
    prob = Fraction(1)
    for n in range(1, M + 1):
        prob *= Fraction(D - (n - 1), M - (n - 1))  # P(n) = P(n-1) * (D-n+1)/(M-n+1)
        if prob <= t:
            return n
    raise Infeasible(f"no quorum size n <= M = {M} gets P(captured) <= {target} with D = {D}")


# --- 2. cross-validation incentives -----------------------------------------------------
def _cv_inputs(p, r, N, R, C, S=0, H=None, L=None):
    pv = _prob(p, "p") if p is not None else None
    rv = _prob(r, "r")
    N = _count(N, "N", minimum=1)
    Rv = _nonneg(R, "R (reward)")
    Cv = _nonneg(C, "C (cost)")
    Sv = _nonneg(S, "S (stake)")
    Hv = Rv if H is None else _nonneg(H, "H (cheat reward)")
    Lv = 2 * Rv if L is None else _nonneg(L, "L (collusion reward)")
    return pv, rv, N, Rv, Cv, Sv, Hv, Lv


def _binom_weights(r: Fraction, N: int) -> list[Fraction]:
    return [math.comb(N, i) * r ** i * (1 - r) ** (N - i) for i in range(N + 1)]


def _honest(p: Fraction, r: Fraction, N: int, R: Fraction, C: Fraction) -> Fraction:
    b = _binom_weights(r, N)
    checked = sum((b[i] * (Fraction(i, N) * R + R - C) for i in range(N + 1)), Fraction(0))
    return (1 - p) * (R - C) + p * checked


def _malicious(p, r, N, R, C, S, H, L) -> Fraction:
    b = _binom_weights(r, N)
    caught = sum((b[i] * (Fraction(i, N) * R - C - S) for i in range(N)), Fraction(0))
    return (1 - p) * H + p * r ** N * L + p * caught


def honest_reward(p: Number, r: Number, N: int, R: Number, C: Number, *, exact: bool = False):
    """Expected reward of an honest node (Lemma A.1, binomial form)."""
    pv, rv, N, Rv, Cv, _, _, _ = _cv_inputs(p, r, N, R, C)
    return _out(_honest(pv, rv, N, Rv, Cv), exact)


def malicious_reward(p: Number, r: Number, N: int, R: Number, C: Number, S: Number,
                     H: Optional[Number] = None, L: Optional[Number] = None, *, exact: bool = False):
    """Expected reward of a cheating node (Lemma A.2, binomial form); H defaults
    to R, L to 2R."""
    pv, rv, N, Rv, Cv, Sv, Hv, Lv = _cv_inputs(p, r, N, R, C, S, H, L)
    return _out(_malicious(pv, rv, N, Rv, Cv, Sv, Hv, Lv), exact)


def min_p(r: Number, N: int, R: Number, C: Number, S: Number,
          H: Optional[Number] = None, L: Optional[Number] = None, *, exact: bool = False):
    """Threshold p* in [0, 1): honest_reward > malicious_reward for every p in (p*, 1].

    Returns 0.0 when honesty pays already at p = 0 (or for every p > 0). Raises
    ``Infeasible`` (a ValueError) when honest <= malicious at p = 1, i.e. no
    check probability makes honesty pay. Computed exactly with Fractions.
    """
    _, rv, N, Rv, Cv, Sv, Hv, Lv = _cv_inputs(None, r, N, R, C, S, H, L)
    f0 = _honest(Fraction(0), rv, N, Rv, Cv) - _malicious(Fraction(0), rv, N, Rv, Cv, Sv, Hv, Lv)
    f1 = _honest(Fraction(1), rv, N, Rv, Cv) - _malicious(Fraction(1), rv, N, Rv, Cv, Sv, Hv, Lv)
    if f1 <= 0:
        raise Infeasible("no check probability p in [0, 1] makes honesty pay "
                         f"(honest - malicious = {float(f0):.6g} at p=0, {float(f1):.6g} at p=1)")
    if f0 >= 0:
        return _out(Fraction(0), exact)
    return _out(-f0 / (f1 - f0), exact)


def min_p_closed_form(r: Number, R: Number, C: Number, S: Number, *, exact: bool = False):
    """Whitepaper Corollary 1 (N = 1, H = R, L = 2R): p > C / ((1 - r)(R + S)).

    A slightly conservative sufficient condition; see the module docstring.
    """
    rv = _prob(r, "r")
    Rv, Cv, Sv = _nonneg(R, "R (reward)"), _nonneg(C, "C (cost)"), _nonneg(S, "S (stake)")
    den = (1 - rv) * (Rv + Sv)
    if den == 0:
        if Cv == 0:
            return _out(Fraction(0), exact)
        raise Infeasible("C / ((1 - r)(R + S)) is undefined: (1 - r)(R + S) = 0")
    return _out(Cv / den, exact)


def min_p_lemma_form(r: Number, R: Number, C: Number, S: Number, *, exact: bool = False):
    """What Lemmas A.1/A.2 as printed give for N = 1, H = R, L = 2R:
    p > C / ((1 - r)(R + C + S)). Equals ``min_p(r, 1, R, C, S)`` when it is < 1."""
    rv = _prob(r, "r")
    Rv, Cv, Sv = _nonneg(R, "R (reward)"), _nonneg(C, "C (cost)"), _nonneg(S, "S (stake)")
    den = (1 - rv) * (Rv + Cv + Sv)
    if den == 0:
        if Cv == 0:
            return _out(Fraction(0), exact)
        raise Infeasible("C / ((1 - r)(R + C + S)) is undefined: (1 - r)(R + C + S) = 0")
    return _out(Cv / den, exact)


# --- 3. compute overhead ---------------------------------------------------------------
def compute_multiplier(p: Number, n: int, *, exact: bool = False):
    """Expected node executions per request in cross-validation mode: 1 + p n."""
    pv = _prob(p, "p")
    n = _count(n, "n", minimum=0)
    return _out(1 + pv * n, exact)
