"""Sampling parameters and the per-request seed rule.

Params are part of every output commitment, so their canonical form (`to_wire`)
must never change meaning: greedy is temperature 0; a seeded sampler uses the
seed derived from the request id, so every node of a quorum draws the same
random stream and honest outputs agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .canonical import sha256
from .errors import InvalidParams

MAX_TOKENS_LIMIT = 4096


@dataclass(frozen=True)
class SamplingParams:
    """How a node decodes. temperature == 0 means greedy (argmax)."""

    max_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int = 0  # filled by `with_seed_for(request_id)` before dispatch
    template: bool = True  # engines with a chat template wrap the prompt as one user turn; False: as is

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool):
            raise InvalidParams("max_tokens must be an integer")
        if not 1 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise InvalidParams(f"max_tokens must be in 1..{MAX_TOKENS_LIMIT}")
        if not isinstance(self.temperature, (int, float)) or not 0.0 <= float(self.temperature) <= 10.0:
            raise InvalidParams("temperature must be a number in [0, 10]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidParams("top_k must be a non-negative integer")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise InvalidParams("seed must be an integer in [0, 2**63)")
        if not isinstance(self.template, bool):
            raise InvalidParams("template must be a boolean")

    @property
    def greedy(self) -> bool:
        return float(self.temperature) == 0.0

    def to_wire(self) -> dict[str, Any]:
        # temperature travels as a string so its canonical bytes are exact; `template`
        # only when it is not the default, so every earlier commitment keeps its bytes
        wire = {
            "max_tokens": self.max_tokens,
            "temperature": repr(float(self.temperature)),
            "top_k": self.top_k,
            "seed": self.seed,
        }
        if not self.template:
            wire["template"] = False
        return wire

    @classmethod
    def from_wire(cls, d: Any) -> "SamplingParams":
        if not isinstance(d, dict):
            raise InvalidParams("params must be a map")
        try:
            return cls(
                max_tokens=d["max_tokens"],
                temperature=float(d["temperature"]),
                top_k=d["top_k"],
                seed=d["seed"],
                template=d.get("template", True),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidParams(f"bad params: {exc}") from None

    def with_seed_for(self, request_id: str) -> "SamplingParams":
        return SamplingParams(self.max_tokens, self.temperature, self.top_k, derive_seed(request_id), self.template)


def derive_seed(request_id: str) -> int:
    """Seed every node derives from the request id alone (63 bits of SHA-256)."""
    return int.from_bytes(sha256(b"verinfer-seed|", request_id.encode()), "big") >> 193
