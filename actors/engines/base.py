"""The inference engine interface a NodeExecutor drives.

An engine owns one model on one device. It must be deterministic inside its
determinism class: the same prompt and params give the same token ids on every
node whose `fingerprint()` is equal. `generate` is called one request at a time.

Malicious variants (for experiments) are engine-level so they exercise the same
tensor code: `load(variant=...)` with "requantize" (weights rounded to lower
precision) or "substitute" (a different, smaller model). An engine that cannot
build a variant raises NotImplementedError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from protocols.params import SamplingParams

HONEST = "honest"
VARIANTS = ("honest", "requantize", "substitute")


@dataclass
class Generation:
    """What one generate call produced."""

    token_ids: list[int]  # generated tokens only (no prompt, no EOS padding)
    text: str  # detokenized generated tokens
    engine_seconds: float  # wall time inside the engine for this request
    prompt_token_ids: list[int] = field(default_factory=list)
    fingerprint: bytes = b""  # protocols.fingerprint of the hidden states that chose the tokens ("" = none)


@runtime_checkable
class Engine(Protocol):
    """Typed interface of every engine (tiny, smollm2/torch, vllm, echo)."""

    name: str

    def load(self, variant: str = HONEST) -> None:
        """Load weights (honest, or a malicious variant) onto the device."""

    def model_hash(self) -> str:
        """Hex SHA-256 of the honest weights' content (what the registry records)."""

    def fingerprint(self) -> dict[str, Any]:
        """Determinism-class components: engine, versions, device, dtype, threads, model hash."""

    def generate(self, prompt: str, params: SamplingParams, on_tokens=None) -> Generation:
        """Decode deterministically: greedy, or seeded sampling with params.seed.
        `on_tokens(tokens so far)`, when given, is called as tokens are produced
        (engines that cannot stream call it once, at the end)."""
