"""Deadlines belong to the network, not to the client.

A member's deadline for a request is what an honest node of the model's class
needs: `base_s + per_token_s * max_tokens`, from the model's limits in the
network config (operators set them from the slowest honest hardware they
admit). A client may ask for longer — up to `max_s` — never for shorter: a
signed `timeout_s` below the network's figure is raised to it, so no client can
fine honest nodes with a deadline nobody could meet.

When the whole stage is late at once the members are excused rather than
slashed (protocols.decision); a node taken out for lateness returns after it
answers a fresh liveness challenge (protocols.liveness).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidParams

MAX_DEADLINE_S = 3600.0


@dataclass(frozen=True)
class DeadlineRule:
    base_s: float  # load, prefill, scheduling: what any request costs
    per_token_s: float = 0.0  # per requested output token
    max_s: float = MAX_DEADLINE_S

    def __post_init__(self) -> None:
        if not (0 < self.base_s <= self.max_s) or self.per_token_s < 0:
            raise InvalidParams("a deadline rule needs 0 < base_s <= max_s and per_token_s >= 0")

    def needed(self, max_tokens: int) -> float:
        """What an honest node of the class needs for `max_tokens` tokens."""
        return min(self.base_s + self.per_token_s * max(0, int(max_tokens)), self.max_s)

    def member_deadline(self, max_tokens: int, requested_s: float | None = None) -> float:
        """Seconds each member gets: the network's figure, or the client's if longer."""
        need = self.needed(max_tokens)
        if requested_s is None:
            return need
        try:
            asked = float(requested_s)
        except (TypeError, ValueError):
            raise InvalidParams("timeout_s must be a number") from None
        if not 0 < asked <= self.max_s:
            raise InvalidParams(f"timeout_s must be in (0, {self.max_s:g}]")
        return max(need, asked)
