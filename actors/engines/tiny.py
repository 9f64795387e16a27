"""`tiny`: a real, small causal transformer for tests and throughput runs.

Byte-level vocabulary (256 bytes + EOS), weights drawn from a fixed seed and
saved as safetensors; the registry records the file's SHA-256. Every forward
pass is genuine tensor math, deterministic on one thread, a few milliseconds
per token. Malicious variants: "requantize" rounds every weight to 4 bits,
"substitute" swaps in a smaller model (one layer, other seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file, save_file

from protocols.errors import ModelHashMismatch, ModelLocked, PromptTooLarge
from protocols.params import SamplingParams

from . import batching, decoding
from .base import HONEST, Generation

ENGINE_VERSION = "tiny-2"  # 2: KV cache, batch-invariant fixed-row decode
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
EOS = 256
VOCAB = 257


@dataclass(frozen=True)
class TinyConfig:
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    max_pos: int = 1024
    seed: int = 1234


class TinyTransformer(torch.nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tok = torch.nn.Embedding(VOCAB, d)
        self.pos = torch.nn.Embedding(cfg.max_pos, d)
        self.blocks = torch.nn.ModuleList()
        for _ in range(cfg.n_layers):
            self.blocks.append(torch.nn.ModuleDict({
                "ln1": torch.nn.LayerNorm(d), "qkv": torch.nn.Linear(d, 3 * d), "proj": torch.nn.Linear(d, d),
                "ln2": torch.nn.LayerNorm(d), "up": torch.nn.Linear(d, cfg.d_ff), "down": torch.nn.Linear(cfg.d_ff, d),
            }))
        self.ln_f = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor, cache: list | None = None, last_only: bool = False,
                with_hidden: bool = False):
        """ids: (T,) -> logits (T, VOCAB) (or (1, VOCAB) with last_only). A `cache` list
        gets each layer's keys and values, (heads, T, head dim) each. with_hidden: also
        the final hidden states the logits come from, (logits, hidden)."""
        t = ids.shape[0]
        h_, d = self.cfg.n_heads, self.cfg.d_model
        x = self.tok(ids) + self.pos(torch.arange(t))
        mask = torch.full((t, t), float("-inf"), dtype=x.dtype).triu(1)
        for b in self.blocks:
            q, k, v = b["qkv"](b["ln1"](x)).split(d, dim=-1)
            q, k, v = (z.view(t, h_, d // h_).transpose(0, 1) for z in (q, k, v))
            if cache is not None:
                cache.append((k, v))
            att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d // h_) + mask, dim=-1)
            x = x + b["proj"]((att @ v).transpose(0, 1).reshape(t, d))
            x = x + b["down"](torch.nn.functional.gelu(b["up"](b["ln2"](x))))
        h = self.ln_f(x[-1:] if last_only else x)
        return (self.head(h), h) if with_hidden else self.head(h)

    def decode_rows(self, ids: torch.Tensor, positions: torch.Tensor, caches: list[list]):
        """One decode step on a fixed number of rows (ids, positions: (R,)); the first
        len(caches) rows are real sequences, each attending over its own cache (which
        grows by one). Returns (logits (len(caches), VOCAB), their final hidden states).
        See engines.batching."""
        rows, n = ids.shape[0], len(caches)
        h_, d = self.cfg.n_heads, self.cfg.d_model
        hd = d // h_
        x = self.tok(ids) + self.pos(positions)
        for li, b in enumerate(self.blocks):
            q, k, v = b["qkv"](b["ln1"](x)).split(d, dim=-1)
            att = torch.zeros(rows, d, dtype=x.dtype)
            for i, cache in enumerate(caches):
                ks, vs = cache[li]
                ks = torch.cat([ks, k[i].view(h_, 1, hd)], dim=1)
                vs = torch.cat([vs, v[i].view(h_, 1, hd)], dim=1)
                cache[li] = (ks, vs)
                w = torch.softmax(q[i].view(h_, 1, hd) @ ks.transpose(1, 2) / math.sqrt(hd), dim=-1)
                att[i] = (w @ vs).reshape(d)
            x = x + b["proj"](att)
            x = x + b["down"](torch.nn.functional.gelu(b["up"](b["ln2"](x))))
        h = self.ln_f(x)
        return self.head(h)[:n], h[:n]


def build_model(cfg: TinyConfig) -> TinyTransformer:
    torch.manual_seed(cfg.seed)
    model = TinyTransformer(cfg)
    with torch.no_grad():  # wider than default init so greedy text is not one repeated byte
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]))
    return model.eval()


def default_cache_dir() -> Path:
    return Path(os.environ.get("VERINFER_CACHE", Path.home() / ".cache" / "verinfer"))


def weights_path(cfg: TinyConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Build (once) and return the safetensors file of the model `cfg` describes."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    tag = hashlib.sha256(repr(sorted(asdict(cfg).items())).encode()).hexdigest()[:12]
    path = root / f"tiny-{tag}.safetensors"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in build_model(cfg).state_dict().items()}
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
        os.close(fd)
        save_file(state, tmp, metadata={"config": repr(sorted(asdict(cfg).items()))})
        os.replace(tmp, path)  # atomic: concurrent builders never see half a file
    return path


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tiny_model_hash(cache_dir: str | None = None, **cfg: Any) -> str:
    return file_sha256(weights_path(TinyConfig(**cfg), cache_dir))


def _quantize_(t: torch.Tensor, bits: int) -> None:
    levels = 2 ** (bits - 1) - 1
    scale = t.abs().amax().clamp_min(1e-12) / levels
    t.copy_(torch.round(t / scale) * scale)


class TinyEngine:
    name = "tiny"

    def __init__(self, cache_dir: str | None = None, threads: int = 1, max_prompt_tokens: int = 512,
                 expected_hash: str | None = None, fixed_cost_s: float = 0.0, encrypted_path: str | None = None,
                 model_id: str = "tiny", batch_rows: int = batching.DEFAULT_ROWS, dtype: str = "float32",
                 **cfg: Any):
        self.cfg = TinyConfig(**cfg)
        self.cache_dir = cache_dir
        self.threads = threads
        self.max_prompt_tokens = max_prompt_tokens
        self.expected_hash = expected_hash
        self.fixed_cost_s = float(fixed_cost_s)  # benchmarks: each request holds the engine this long more, CPU idle
        self.encrypted_path = encrypted_path  # weights at rest: AES-256-GCM file, key released after attestation
        self.model_id = model_id
        if not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or not 1 <= batch_rows <= 256:
            raise ValueError("batch_rows must be an integer from 1 to 256")
        self.rows = batch_rows  # every decode step runs on exactly this many rows
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}")
        self.dtype = dtype  # bfloat16: another precision of the same weights (its own determinism class)
        if encrypted_path and not expected_hash:
            raise ValueError("encrypted weights need expected_hash (the registered plaintext hash)")
        self.variant = HONEST
        self._model: TinyTransformer | None = None
        self._hash: str | None = None

    def _state(self, weights_key: bytes | None) -> dict:
        """The honest weights: from the encrypted file (with the released key) or the cache."""
        if self.encrypted_path:
            if weights_key is None:
                raise ModelLocked("weights are encrypted at rest; the key is released only to attested executors")
            from protocols.sealing import decrypt_blob

            with open(self.encrypted_path, "rb") as f:
                data = decrypt_blob(f.read(), weights_key, self.model_id.encode())
            self._hash = hashlib.sha256(data).hexdigest()
            state = safetensors_load(data)
        else:
            path = weights_path(self.cfg, self.cache_dir)
            self._hash = file_sha256(path)
            state = load_file(str(path))
        if self.expected_hash is not None and self._hash != self.expected_hash:
            raise ModelHashMismatch(f"tiny weights hash {self._hash[:16]}… != registered {self.expected_hash[:16]}…")
        return state

    def load(self, variant: str = HONEST, weights_key: bytes | None = None) -> None:
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True)
        state = self._state(weights_key)
        if variant == "substitute":
            small = TinyConfig(d_model=self.cfg.d_model, n_heads=self.cfg.n_heads, n_layers=1,
                               d_ff=self.cfg.d_ff // 2, max_pos=self.cfg.max_pos, seed=self.cfg.seed + 1)
            model = build_model(small)
        else:
            model = TinyTransformer(self.cfg)
            model.load_state_dict(state)
            if variant == "requantize":
                with torch.no_grad():
                    for p in model.parameters():
                        _quantize_(p, bits=4)
            elif variant != HONEST:
                raise NotImplementedError(f"tiny engine has no variant {variant!r}")
        self._model = model.eval().to(DTYPES[self.dtype])
        self.variant = variant

    def model_hash(self) -> str:
        if self.encrypted_path:
            return self.expected_hash
        if self._hash is None:
            self._hash = file_sha256(weights_path(self.cfg, self.cache_dir))
        return self._hash

    def fingerprint(self) -> dict[str, Any]:
        return {"engine": self.name, "engine_version": ENGINE_VERSION, "torch": torch.__version__,
                "device": "cpu", "dtype": self.dtype, "threads": self.threads,
                "batching": batching.policy(self.rows), "model_hash": self.model_hash()}

    def prompt_token_ids(self, prompt: str) -> list[int]:
        ids = list(prompt.encode("utf-8"))
        if len(ids) > self.max_prompt_tokens:
            raise PromptTooLarge(f"prompt has {len(ids)} tokens, limit {self.max_prompt_tokens}")
        return ids or [EOS]

    @staticmethod
    def detokenize(token_ids: list[int]) -> str:
        return bytes(t for t in token_ids if t < 256).decode("utf-8", errors="replace")

    def stop_token_ids(self) -> list[int]:
        return [EOS]

    def generate(self, prompt: str, params: SamplingParams, on_tokens=None) -> Generation:
        """on_tokens(tokens so far) is called after each new token (streaming). A batch of
        one: the same tokens as in any batch (engines.batching)."""
        return batching.generate_alone(self, prompt, params, on_tokens)

    def begin(self, prompt: str, params: SamplingParams) -> batching.Seq:
        """Check the prompt and run its prefill alone (engines.batching)."""
        if self._model is None:
            raise RuntimeError("engine not loaded")
        prompt_ids = self.prompt_token_ids(prompt)
        if len(prompt_ids) + params.max_tokens > self.cfg.max_pos:
            raise PromptTooLarge(f"prompt + max_tokens exceeds the context of {self.cfg.max_pos}")
        cache: list = []
        with torch.inference_mode():
            logits, hidden = self._model(torch.tensor(prompt_ids), cache=cache, last_only=True, with_hidden=True)
        return batching.Seq(params, prompt_ids, params.max_tokens, frozenset((EOS,)), cache, logits[0],
                            hidden=hidden[0])

    def decode(self, seqs: list[batching.Seq], tokens: list[int]) -> torch.Tensor:
        pad = self.rows - len(seqs)
        ids = torch.tensor(list(tokens) + [0] * pad)
        positions = torch.tensor([s.position for s in seqs] + [0] * pad)
        with torch.inference_mode():
            return self._model.decode_rows(ids, positions, [s.cache for s in seqs])

    def finish(self, seq: batching.Seq) -> Generation:
        if self.fixed_cost_s:  # the engine is busy (CPU idle) this long per request, batched or not
            time.sleep(self.fixed_cost_s)
        seq.cache = None
        return Generation(seq.out, self.detokenize(seq.out), time.perf_counter() - seq.t0, seq.prompt_ids,
                          batching.fingerprint_of(seq))

    def verify_tolerant(self, prompt: str, params: SamplingParams, claimed: list[int], claimed_fingerprint: bytes,
                        tolerance) -> decoding.TolerantVerdict:
        """One forward pass over prompt + claimed tokens, checked within `tolerance`
        (protocols.fingerprint.Tolerance); see engines.decoding.verify_tolerant."""
        if self._model is None:
            raise RuntimeError("engine not loaded")
        t0 = time.perf_counter()
        prompt_ids = self.prompt_token_ids(prompt)
        claimed = [int(t) for t in claimed]
        if len(prompt_ids) + len(claimed) > self.cfg.max_pos or len(claimed) > params.max_tokens:
            return decoding.too_long(max(0, min(params.max_tokens, self.cfg.max_pos - len(prompt_ids))))
        with torch.inference_mode():
            logits, hidden = self._model(torch.tensor(prompt_ids + claimed), with_hidden=True)
        n = len(prompt_ids) - 1
        v = decoding.verify_tolerant(logits[n:], hidden[n:], claimed, params, self.stop_token_ids(),
                                     claimed_fingerprint, tolerance)
        return dataclasses.replace(v, seconds=time.perf_counter() - t0)

    def verify_prefill(self, prompt: str, params: SamplingParams, claimed: list[int],
                       tau: float = decoding.DEFAULT_TAU) -> decoding.Verdict:
        """One forward pass over prompt + claimed tokens; see engines.decoding.judge."""
        if self._model is None:
            raise RuntimeError("engine not loaded")
        t0 = time.perf_counter()
        prompt_ids = self.prompt_token_ids(prompt)
        if len(prompt_ids) + len(claimed) > self.cfg.max_pos or len(claimed) > params.max_tokens:
            return decoding.Verdict(False, False, 0, time.perf_counter() - t0)
        with torch.inference_mode():
            logits = self._model(torch.tensor(prompt_ids + [int(t) for t in claimed]))
        rows = logits[len(prompt_ids) - 1:]
        v = decoding.judge(rows, claimed, params, self.stop_token_ids(), tau)
        return decoding.Verdict(v.accepted, v.uncertain, v.mismatch_at, time.perf_counter() - t0)
