"""CPU against GPU: the tiny model's tokens and fingerprints on CUDA (float32, bfloat16)
against CPU results read from a file. Standalone: torch only (plus this repository's
tiny model code and pure protocol rules); no Ray, no vLLM, nothing downloaded (the
tiny weights come from a seed).

    # here, on the CPU: write the reference outputs
    python -m benchmarks.tolerance_gpu write --out out/tolerance_gpu/cpu.json
    # on a machine with a GPU, with that file: compare
    python -m benchmarks.tolerance_gpu check --cpu out/tolerance_gpu/cpu.json --device cuda \
        --out out/tolerance_gpu/gpu.json

Both directions are scored with the same tolerant check the network uses
(engines.decoding.judge_tolerant + protocols.fingerprint.compare): the CPU's
claims checked by a prefill on the device, and the device's claims checked by a
prefill on the CPU. The JSON holds every score, for benchmarks/tolerance.py's
calibration to include cross-hardware pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from actors.engines import decoding
from actors.engines.tiny import EOS, TinyConfig, build_model
from protocols import fingerprint as fp
from protocols.params import SamplingParams

PROMPTS = [f"{w} {i}" for i, w in enumerate(["the river", "a proof", "seven nodes", "blue light", "why the model",
                                             "quick story", "the cat", "verifiable"] * 4)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def model_on(device: str, dtype: str):
    return build_model(TinyConfig()).to(device=device, dtype=DTYPES[dtype]).eval()


def prefill(model, device: str, prompt_ids: list[int], tokens: list[int]):
    with torch.inference_mode():
        logits, hidden = model(torch.tensor(prompt_ids + tokens, device=device), with_hidden=True)
    n = len(prompt_ids) - 1
    return logits[n:].float().cpu(), hidden[n:].float().cpu()


def generate(model, device: str, prompt: str, params: SamplingParams) -> dict:
    """The shared decoding rule, one full forward per token (no cache: plain and portable)."""
    ids = list(prompt.encode()) or [EOS]
    gen = decoding.generator_for(params)
    out: list[int] = []
    states = []
    for _ in range(params.max_tokens):
        logits, hidden = prefill(model, device, ids, out)
        tok = decoding.pick(logits[-1], params, gen)
        if tok == EOS:
            break
        out.append(tok)
        if len(out) % fp.CHUNK == 0:
            states.append(hidden[-1])
    if out and len(out) % fp.CHUNK:
        _, hidden = prefill(model, device, ids, out[:-1])
        states.append(hidden[-1])
    return {"token_ids": out, "fingerprint": fp.encode([s.tolist() for s in states]).hex() if out else ""}


def params_for(i: int) -> SamplingParams:
    if i % 2 == 0:
        return SamplingParams(max_tokens=48)
    return SamplingParams(max_tokens=48, temperature=0.8).with_seed_for(f"gpu-{i}")


def score(model, device: str, prompt: str, params: SamplingParams, claim: dict) -> dict:
    tokens, blob = claim["token_ids"], bytes.fromhex(claim["fingerprint"])
    rows, hidden = prefill(model, device, list(prompt.encode()) or [EOS], tokens)
    t = decoding.judge_tolerant(rows, tokens, params, [EOS], 1.0)
    m = fp.compare(blob, [hidden[j].tolist() for j in fp.positions(len(tokens))], fp.Thresholds(0.0, 10.0, 10.0))
    return {"token_margin": t.worst, "tokens_ok": t.accepted, "overlap": m.overlap, "mean_err": m.mean_err,
            "max_err": m.max_err}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("write", "check"))
    ap.add_argument("--cpu", help="the CPU reference file (check)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="out/tolerance_gpu/cpu.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.what == "write":
        torch.set_num_threads(1)
        cpu = model_on("cpu", "float32")
        rows = [dict(prompt=p, **generate(cpu, "cpu", p, params_for(i))) for i, p in enumerate(PROMPTS)]
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"device": "cpu", "dtype": "float32", "torch": torch.__version__, "rows": rows}, f)
        print(f"wrote {len(rows)} CPU outputs to {args.out}")
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: nothing to compare (run this where a GPU is)")
        return 2
    with open(args.cpu) as f:
        ref = json.load(f)
    cpu = model_on("cpu", "float32")
    result = {"device": args.device, "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda")
              else "cpu", "torch": torch.__version__, "cpu_torch": ref["torch"], "by_dtype": {}}
    for dtype in DTYPES:
        dev = model_on(args.device, dtype)
        t0 = time.perf_counter()
        same, on_dev, on_cpu = 0, [], []
        for i, row in enumerate(ref["rows"]):
            p = params_for(i)
            mine = generate(dev, args.device, row["prompt"], p)
            same += mine["token_ids"] == row["token_ids"]
            on_dev.append(score(dev, args.device, row["prompt"], p, row))  # the CPU's claim, checked here
            on_cpu.append(score(cpu, "cpu", row["prompt"], p, mine))  # this device's claim, checked on the CPU
        result["by_dtype"][dtype] = {"same_tokens": same, "outputs": len(ref["rows"]), "seconds": time.perf_counter() - t0,
                                     "cpu_claims_checked_on_device": on_dev, "device_claims_checked_on_cpu": on_cpu}
        worst = {k: max(s[k] for s in on_dev + on_cpu) for k in ("token_margin", "mean_err", "max_err")}
        print(f"{args.device} {dtype}: {same}/{len(ref['rows'])} outputs token-identical to the CPU; worst scores "
              f"{ {k: round(v, 5) for k, v in worst.items()} }, min overlap "
              f"{min(s['overlap'] for s in on_dev + on_cpu):.3f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
