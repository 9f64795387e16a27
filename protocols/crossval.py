"""Cross Validation Sampling Consensus: the selector's committed coin.

At draw time the selector picks a secret coin seed and publishes only
coin_commit = H(domain || seed). After the executor has committed to its
output, the seed is revealed and the coin is

    value = H(domain || seed || request id || executor commit hash) / 2^256
    checked = value < p

The executor cannot predict the coin before committing (the seed is secret),
the selector cannot steer it after seeing the commitment (the seed is fixed by
the earlier commit, and the commitment enters the hash), and anyone can check
it afterwards from the receipt.
"""

from __future__ import annotations

from fractions import Fraction

from .canonical import sha256
from .errors import InvalidParams

COIN_DOMAIN = b"verinfer/crossval-coin/v1|"


def coin_commit(seed: bytes) -> bytes:
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise InvalidParams("a coin seed is 32 bytes")
    return sha256(COIN_DOMAIN, b"commit|", seed)


def coin_value(seed: bytes, request_id: str, executor_commit: bytes) -> Fraction:
    h = sha256(COIN_DOMAIN, seed, request_id.encode(), b"|", executor_commit)
    return Fraction(int.from_bytes(h, "big"), 1 << 256)


def check_probability(p: float) -> Fraction:
    try:
        frac = Fraction(repr(float(p)))
    except (TypeError, ValueError):
        raise InvalidParams("p must be a number in [0, 1]") from None
    if not 0 <= frac <= 1:
        raise InvalidParams("p must be in [0, 1]")
    return frac


def flip(seed: bytes, request_id: str, executor_commit: bytes, p: float) -> bool:
    """True = this request is re-checked by N verifiers."""
    return coin_value(seed, request_id, executor_commit) < check_probability(p)


def verify_coin(commit: bytes, seed: bytes, request_id: str, executor_commit: bytes, p: float,
                claimed: bool) -> bool:
    return coin_commit(seed) == commit and flip(seed, request_id, executor_commit, p) == bool(claimed)
