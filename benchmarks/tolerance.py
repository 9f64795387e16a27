"""Calibrating tolerant verification: honest pairs across precision, threads and batching
against cheats, scored by one prefill (engines.decoding.verify_tolerant).

For each request (random prompt and length, half greedy and half seeded sampling):
  * every honest configuration generates it (float32 / bfloat16 x 1 / 2 threads
    x batch rows 1 / 8; tiny, and SmolLM2 with --engines smollm2);
  * honest pairs: one configuration's output and fingerprint, checked by
    another's prefill (all ordered pairs that differ);
  * cheats, each checked by an honest verifier: a smaller model (substitute),
    8-bit and 4-bit requantized weights, random tokens, an altered prompt,
    altered sampling parameters (temperature or seed), a truncated output.
    Each cheat sends a fingerprint computed honestly by its own (cheating) model
    over its own tokens: the strongest a cheater can do without running the
    real model.
Scores per pair: the largest token margin the claim needed, the fingerprint's
worst top-k overlap and worst mean / max value error. Thresholds are calibrated
on half of the honest pairs (the largest score seen, times `--slack`) and the
false positive rate is measured on the other half; detection per cheat at the
same thresholds. Also: fingerprint bytes per 32 tokens, and verification time
against generation time at 128 tokens.

    python -m benchmarks.tolerance --out out/tolerance            # tiny, >= 2,000 honest pairs
    python -m benchmarks.tolerance --engines tiny,smollm2 --smollm2-requests 36 --max-tokens 32

Besides its own calibration (half the pairs) and held-out check, it scores every pair
and cheat against the tolerance the packaged network configs run with (`configured`),
to which all of them are fresh.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch

from benchmarks import common
from protocols import fingerprint as fp
from protocols.params import SamplingParams

NAME = "tolerance"
CHEATS = ("substitute", "requantize-8bit", "requantize-4bit", "random-tokens", "altered-prompt",
          "altered-params", "truncated")


def _quantize(engine, bits: int) -> None:
    with torch.no_grad():
        for p in engine._model.parameters():
            levels = 2 ** (bits - 1) - 1
            scale = p.abs().amax().clamp_min(1e-12) / levels
            p.copy_(torch.round(p / scale) * scale)


def _engine_class(name: str):
    if name == "tiny":
        from actors.engines.tiny import TinyEngine

        return TinyEngine
    from actors.engines.smollm2 import SmolLM2Engine

    return SmolLM2Engine


def configs(name: str) -> dict:
    """The honest configurations: float32 / bfloat16 x 1 / 2 threads x batch rows 1 / 8."""
    cls, out = _engine_class(name), {}
    for dtype in ("float32", "bfloat16"):
        for threads in (1, 2):
            for rows in (1, 8):
                e = cls(dtype=dtype, threads=threads, batch_rows=rows)
                e.load()
                out[f"{dtype}/t{threads}/b{rows}"] = e
    return out


def cheaters(name: str) -> dict:
    """A smaller model (where the engine has one), 8-bit and 4-bit requantized weights."""
    cls, out = _engine_class(name), {}
    for bits in (8, 4):
        e = cls()
        e.load()
        _quantize(e, bits)
        out[f"requantize-{bits}bit"] = e
    try:
        sub = cls()
        sub.load("substitute")
        out["substitute"] = sub
    except NotImplementedError:  # no smaller model at hand: the row is absent, and the JSON says so
        pass
    return out


def _params(r: random.Random, max_tokens: int, rid: str) -> SamplingParams:
    if r.random() < 0.5:
        return SamplingParams(max_tokens=max_tokens)
    return SamplingParams(max_tokens=max_tokens, temperature=r.choice([0.6, 0.8, 1.0]),
                          top_k=r.choice([0, 20])).with_seed_for(rid)


def _prompt(r: random.Random) -> str:
    words = ["the", "cat", "model", "proof", "node", "river", "light", "quick", "story", "why", "seven", "blue"]
    return " ".join(r.choice(words) for _ in range(r.randint(2, 12)))


def score(verifier, prompt, params, tokens, blob, tol) -> dict:
    v = verifier.verify_tolerant(prompt, params, tokens, blob, tol)
    m = v.fingerprint
    return {"token_margin": v.tokens.worst, "overlap": m.overlap, "mean_err": m.mean_err, "max_err": m.max_err,
            "tokens_ok": v.tokens.accepted, "seconds": v.seconds}


OPEN = fp.Tolerance(token_margin=1.0, thresholds=fp.Thresholds(0.0, 10.0, 10.0))  # measure, accept anything


def run_engine(name: str, honest: dict, cheaters: dict, requests: int, max_tokens: int, seed: int) -> dict:
    r = random.Random(seed)
    cfgs = list(honest)
    pairs, cheats = [], {c: [] for c in CHEATS}
    for i in common.progress(range(requests), desc=name):
        rid = f"{name}-{seed}-{i}"
        prompt, params = _prompt(r), _params(r, r.choice([8, 16, 32, max_tokens]), rid)
        outs = {c: honest[c].generate(prompt, params) for c in cfgs}
        for a in cfgs:  # a's claim, b's check
            for b in cfgs:
                if a != b:
                    s = score(honest[b], prompt, params, outs[a].token_ids, outs[a].fingerprint, OPEN)
                    pairs.append(dict(s, producer=a, verifier=b, same_tokens=outs[a].token_ids == outs[b].token_ids))
        ver = honest[r.choice(cfgs)]
        ref = outs[cfgs[0]]
        for c, eng in cheaters.items():
            g = eng.generate(prompt, params)
            cheats[c].append(score(ver, prompt, params, g.token_ids, g.fingerprint, OPEN))
        n = max(1, len(ref.token_ids))
        rnd = [r.randrange(256 if name == "tiny" else 49152) for _ in range(n)]
        cheats["random-tokens"].append(score(ver, prompt, params, rnd, _blob(ver, prompt, rnd), OPEN))
        other = prompt + " and more"
        g = honest[cfgs[0]].generate(other, params)
        cheats["altered-prompt"].append(score(ver, prompt, params, g.token_ids, g.fingerprint, OPEN))
        alt = (SamplingParams(max_tokens=params.max_tokens, temperature=0.9).with_seed_for(rid + "x") if params.greedy
               else SamplingParams(max_tokens=params.max_tokens))
        g = honest[cfgs[0]].generate(prompt, alt)
        cheats["altered-params"].append(score(ver, prompt, params, g.token_ids, g.fingerprint, OPEN))
        if len(ref.token_ids) >= 2:
            cut = ref.token_ids[: len(ref.token_ids) // 2]
            cheats["truncated"].append(score(ver, prompt, params, cut, _blob(honest[cfgs[0]], prompt, cut), OPEN))
    return {"pairs": pairs, "cheats": {c: v for c, v in cheats.items() if v}}


def _blob(engine, prompt: str, tokens: list[int]) -> bytes:
    """The fingerprint `engine` computes over given tokens (what a cheater sends for them)."""
    ids = engine.prompt_token_ids(prompt) if engine.name == "tiny" else engine.prompt_token_ids(prompt, True)
    with torch.inference_mode():
        if engine.name == "tiny":
            _, hidden = engine._model(torch.tensor(ids + tokens), with_hidden=True)
        else:
            _, hidden = engine._rows_fwd.logits(ids + tokens, with_hidden=True)
    hidden = hidden[len(ids) - 1:]
    return fp.encode([hidden[j].float().tolist() for j in fp.positions(len(tokens))])


def calibrate(pairs: list[dict], slack: float) -> fp.Tolerance:
    worst = lambda k: max(p[k] for p in pairs)  # noqa: E731
    low = min(p["overlap"] for p in pairs)
    return fp.Tolerance(token_margin=min(1.0, worst("token_margin") * slack + 1e-6),
                        # (overlap: never tighter than 0.05 below the worst seen; it moves in steps of 1/k)
                        thresholds=fp.Thresholds(min_overlap=max(0.0, min(low - (1 - low) * (slack - 1), low - 0.05)),
                                                 max_mean_err=min(10.0, worst("mean_err") * slack),
                                                 max_err=min(10.0, worst("max_err") * slack)))


def configured(engine: str) -> fp.Tolerance | None:
    """The tolerance a packaged network config gives this engine's model (tiny.toml, default.toml)."""
    from cluster import config as cfgmod

    cfg = cfgmod.load("tiny.toml" if engine == "tiny" else "default.toml")
    return next((m.tolerant() for m in cfg.models if m.engine == engine and m.tolerance is not None), None)


def passes(s: dict, tol: fp.Tolerance) -> bool:
    th = tol.thresholds
    return (s["tokens_ok"] and s["token_margin"] <= tol.token_margin and s["overlap"] >= th.min_overlap
            and s["mean_err"] <= th.max_mean_err and s["max_err"] <= th.max_err)


def load(s: dict, tol: fp.Tolerance) -> float:
    """How much of the tolerance a pair used: the largest of its scores over their
    thresholds (1 = at the limit; a claim whose tokens fail the rule counts as infinite).
    `passes` is load <= 1; scaling every threshold by x moves the cut to x, so sweeping
    x traces each cheat's ROC against the honest pairs."""
    th = tol.thresholds
    if not s["tokens_ok"]:
        return math.inf
    return max(s["token_margin"] / max(tol.token_margin, 1e-12),
               (1 - s["overlap"]) / max(1 - th.min_overlap, 1e-12),
               s["mean_err"] / max(th.max_mean_err, 1e-12), s["max_err"] / max(th.max_err, 1e-12))


def roc(honest: list[float], cheat: list[float]) -> list[tuple[float, float]]:
    """(false positive rate, detection rate) as the cut moves over every observed load."""
    cuts = sorted({x for x in honest + cheat if math.isfinite(x)} | {0.0})
    pts = [(sum(h > c for h in honest) / max(1, len(honest)), sum(x > c for x in cheat) / max(1, len(cheat)))
           for c in cuts]
    return sorted(set(pts + [(0.0, 0.0), (1.0, 1.0)]))


def timing(engine, tokens: int, reps: int) -> dict:
    """Verification (one prefill + checks) against generation, `tokens` greedy tokens."""
    prompt = "Tell me a long story about a lighthouse keeper and the sea."
    params = SamplingParams(max_tokens=tokens)
    gens, vers = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        g = engine.generate(prompt, params)
        gens.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        engine.verify_tolerant(prompt, params, g.token_ids, g.fingerprint, OPEN)
        vers.append(time.perf_counter() - t0)
    gen, ver = common.percentile(gens, 50), common.percentile(vers, 50)
    return {"tokens": len(g.token_ids), "generate_s": gen, "verify_s": ver, "ratio": ver / gen,
            "fingerprint_bytes": len(g.fingerprint),
            "bytes_per_32_tokens": (len(g.fingerprint) - 4) / max(1, len(fp.positions(len(g.token_ids)))) }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="tiny")
    ap.add_argument("--requests", type=int, default=72, help="tiny requests (x 56 honest pairs each)")
    ap.add_argument("--smollm2-requests", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--slack", type=float, default=1.25, help="thresholds = worst calibration score x slack")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="out/tolerance")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.smollm2_requests = 6, 2
    torch.set_num_threads(1)
    result = {"machine": common.machine_info(), "params": vars(args), "engines": {},
              "toploc": {"bytes_per_32_tokens": 258, "detection": "100 % (model, prompt, precision changes)",
                         "false_positives": 0}}
    for name in args.engines.split(","):
        honest = configs(name)
        n = args.requests if name == "tiny" else args.smollm2_requests
        got = run_engine(name, honest, cheaters(name), n, args.max_tokens, args.seed)
        pairs = got["pairs"]
        r = random.Random(args.seed)
        r.shuffle(pairs)
        cal, held = pairs[: len(pairs) // 2], pairs[len(pairs) // 2:]
        tol = calibrate(cal, args.slack)
        fpr = sum(not passes(p, tol) for p in held)
        detect = {c: {"n": len(v), "caught": sum(not passes(s, tol) for s in v)} for c, v in got["cheats"].items()}
        # the tolerance the network runs with (the model's config): every pair here is fresh to it
        deployed = configured(name)
        deployed_fp = sum(not passes(p, deployed) for p in pairs) if deployed else None
        deployed_detect = ({c: sum(not passes(x, deployed) for x in v) for c, v in got["cheats"].items()}
                           if deployed else None)
        loads = {"honest": [load(p, tol) for p in held]}
        loads.update({c: [load(s, tol) for s in v] for c, v in got["cheats"].items()})
        t = timing(next(iter(honest.values())), 128, 3 if name == "tiny" else 1)
        result["engines"][name] = {
            "configs": list(honest), "honest_pairs": len(pairs), "calibration_pairs": len(cal),
            "held_out_pairs": len(held), "false_positives": fpr, "tolerance": tol.to_wire(),
            "differing_tokens_pairs": sum(not p["same_tokens"] for p in pairs),
            "detection": detect, "timing_128": t,
            "configured": {"tolerance": deployed.to_wire() if deployed else None,
                           "false_positives": deployed_fp, "honest_pairs": len(pairs),
                           "caught": deployed_detect},
            # per cheat: (false positive rate on held-out honest pairs, detection rate) as the cut moves
            "roc": {c: roc(loads["honest"], loads[c]) for c in got["cheats"]},
            # the least of the tolerance a cheat of each kind needed (None: every one failed the token rule)
            "min_cheat_load": {c: (lambda m: m if math.isfinite(m) else None)(min(v, default=math.inf))
                               for c, v in loads.items() if c != "honest"},
            "max_honest_load": max(loads["honest"], default=0.0),
            "honest_scores": {k: [p[k] for p in pairs] for k in ("token_margin", "overlap", "mean_err", "max_err")},
            "cheat_scores": {c: {k: [s[k] for s in v] for k in ("token_margin", "overlap", "mean_err", "max_err")}
                             for c, v in got["cheats"].items()},
        }
        print(f"{name}: {len(pairs)} honest pairs ({result['engines'][name]['differing_tokens_pairs']} with "
              f"different tokens), false positives {fpr} of {len(held)} held out; tolerance {tol.to_wire()}")
        for c, d in detect.items():
            print(f"  {c:16s} caught {d['caught']} of {d['n']}")
        if deployed:
            print(f"  configured tolerance {deployed.to_wire()}: false positives {deployed_fp} of {len(pairs)}; "
                  f"caught " + ", ".join(f"{c} {n}/{len(got['cheats'][c])}" for c, n in deployed_detect.items()))
        print(f"  fingerprint {t['bytes_per_32_tokens']:.0f} bytes per 32 tokens; verify/generate at "
              f"{t['tokens']} tokens {t['ratio']:.3f} ({t['verify_s'] * 1000:.1f} ms vs {t['generate_s'] * 1000:.0f} ms)")
    common.write_json(args.out, NAME, result)
    plot(result, args.out)
    return 0


def plot(result: dict, out_dir: str) -> str:
    plt = common.pyplot()
    names = list(result["engines"])
    fig, axes = plt.subplots(len(names), 3, figsize=(16, 4.4 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        e = result["engines"][name]
        a, b, roc_ax = row
        bins = [10 ** (x / 4) for x in range(-20, 5)]
        a.hist([max(x, 1e-5) for x in e["honest_scores"]["mean_err"]], bins=bins, alpha=0.6, label="honest pairs",
               color="tab:green")
        for c, s in e["cheat_scores"].items():
            a.hist([max(x, 1e-5) for x in s["mean_err"]], bins=bins, histtype="step", label=c)
        a.axvline(e["tolerance"]["fingerprint"]["max_mean_err"], color="k", ls=":", label="threshold")
        a.set(xscale="log", xlabel="fingerprint mean error (relative)", ylabel="pairs",
              title=f"{name}: honest vs cheats ({e['honest_pairs']} honest pairs)")
        a.legend(fontsize=7)
        labels = list(e["detection"])
        b.bar(labels, [100 * d["caught"] / max(1, d["n"]) for d in e["detection"].values()], color="tab:red")
        b.axhline(100, color="k", ls=":")
        b.set(ylabel="cheats caught (%)", title=f"false positives: {e['false_positives']} of {e['held_out_pairs']}")
        b.tick_params(axis="x", rotation=30, labelsize=7)
        for cheat, pts in e.get("roc", {}).items():
            roc_ax.plot([x for x, _ in pts], [y for _, y in pts], drawstyle="steps-post", label=cheat)
        roc_ax.plot([0, 1], [0, 1], color="0.8", ls=":")
        roc_ax.set(xlabel="false positive rate (held-out honest pairs)", ylabel="detection rate",
              title=f"{name}: ROC per cheat (cut on the tolerance used)", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        roc_ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Tolerant verification: honest pairs across float32/bfloat16 x 1/2 threads x batch 1/8 "
                 "against cheats", fontsize=11)
    return common.save_png(fig, out_dir, NAME, machine=result.get("machine"))


if __name__ == "__main__":
    raise SystemExit(main())
