"""Inference engines: one spec per engine in ENGINES, and `make_engine(spec)`.

Each EngineSpec says how to build the engine, how the deployer computes the
content hash of its weights, whether it takes a CPU thread count, and how its
weights are sealed at rest (None: not supported). Adding an engine is one spec
here. Engines that need heavy or optional packages (transformers, vllm) are
imported lazily, so importing actors never requires them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Callable

from protocols.errors import ConfigError

from .base import Engine, Generation, HONEST, VARIANTS  # noqa: F401


@dataclass(frozen=True)
class EngineSpec:
    name: str
    build: Callable[..., Engine]  # engine options -> Engine
    model_hash: Callable[[str, dict], str]  # (model id, options) -> hex content hash of the weights
    threads: bool = True  # takes `threads` (CPU engines)
    seal_weights: Callable[[str, dict, str, str], bytes] | None = None  # (id, options, path, hash) -> key


def _tiny_shape(options: dict) -> dict:
    from .tiny import TinyConfig

    shape = {f.name for f in fields(TinyConfig)}
    return {k: v for k, v in options.items() if k in shape}


def _tiny_build(**kw) -> Engine:
    from .tiny import TinyEngine

    return TinyEngine(**kw)


def _tiny_hash(model_id: str, options: dict) -> str:
    from .tiny import tiny_model_hash

    return tiny_model_hash(options.get("cache_dir"), **_tiny_shape(options))


def _tiny_seal(model_id: str, options: dict, path: str, model_hash: str) -> bytes:
    """One AES-256-GCM blob of the safetensors file, bound to the model id; returns the key."""
    from protocols.sealing import encrypt_blob

    from .tiny import TinyConfig, weights_path

    plain = weights_path(TinyConfig(**_tiny_shape(options)), options.get("cache_dir"))
    key = os.urandom(32)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(encrypt_blob(plain.read_bytes(), key, os.urandom(12), model_id.encode()))
    os.replace(path + ".tmp", path)
    return key


def _smollm2_build(**kw) -> Engine:
    from .smollm2 import SmolLM2Engine

    return SmolLM2Engine(**kw)


def _smollm2_hash(model_id: str, options: dict) -> str:
    from .smollm2 import smollm2_model_hash

    return smollm2_model_hash(options.get("gguf_path"))


def _smollm2_seal(model_id: str, options: dict, path: str, model_hash: str) -> bytes:
    """A sealed package (actors.engines.sealed_package) of the converted cache, bound to
    the model id and the registered GGUF hash; returns the key."""
    from .sealed_package import write_package
    from .smollm2 import ensure_converted

    src = ensure_converted(options.get("gguf_path"), options.get("cache_dir"))  # the owner converts once
    return write_package(src, path, model_id, model_hash)


def _vllm_build(**kw) -> Engine:
    from .vllm_engine import VLLMEngine

    return VLLMEngine(**kw)


def _vllm_hash(model_id: str, options: dict) -> str:
    if "model_hash" not in options:
        raise ConfigError(f"models[{model_id}]: a vllm model needs options.model_hash")
    return options["model_hash"]


ENGINES: dict[str, EngineSpec] = {s.name: s for s in (
    EngineSpec("tiny", _tiny_build, _tiny_hash, seal_weights=_tiny_seal),
    EngineSpec("smollm2", _smollm2_build, _smollm2_hash, seal_weights=_smollm2_seal),
    EngineSpec("vllm", _vllm_build, _vllm_hash, threads=False),
)}


def engine(name: str) -> EngineSpec:
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose from {tuple(ENGINES)}")
    return ENGINES[name]


def make_engine(spec: dict[str, Any]) -> Engine:
    """spec: {"engine": one of ENGINES, ...engine options}."""
    kind = spec.get("engine")
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}")
    return ENGINES[kind].build(**{k: v for k, v in spec.items() if k != "engine"})
