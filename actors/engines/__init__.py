"""Inference engines. `make_engine(spec)` builds one from a model spec dict.

Engines that need heavy or optional packages (transformers, vllm) are imported
lazily here so that importing actors never requires them.
"""

from __future__ import annotations

from typing import Any

from .base import Engine, Generation, HONEST, VARIANTS  # noqa: F401


def make_engine(spec: dict[str, Any]) -> Engine:
    """spec: {"engine": "tiny"|"smollm2"|"vllm", ...engine options}."""
    kind = spec.get("engine")
    if kind == "tiny":
        from .tiny import TinyEngine

        return TinyEngine(**{k: v for k, v in spec.items() if k != "engine"})
    if kind == "smollm2":
        from .smollm2 import SmolLM2Engine

        return SmolLM2Engine(**{k: v for k, v in spec.items() if k != "engine"})
    if kind == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(**{k: v for k, v in spec.items() if k != "engine"})
    raise ValueError(f"unknown engine {kind!r}")
