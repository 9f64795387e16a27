"""What checking an output costs: prefill verification vs regeneration, by length.

In-process, no Ray: one SmolLM2 engine (the network's default model, 1 torch
thread like a node) generates greedy outputs of 16, 32, 64, 128 and 256 tokens
and we time, per length,

  generation     `generate(prompt, params)` (what the executor pays),
  prefill check  `verify_prefill(prompt, params, honest output)`: one forward
                 pass over prompt + claimed tokens (what a cross-validation
                 verifier pays when the claim is right),
  regeneration   `generate` again (what a verifier without prefill, or a
                 referee, pays; also the fallback on a near-tie).

To get outputs of the wanted lengths the script picks, from a list of
long-form prompts, the first one whose greedy output runs to the longest
length without a stop token; shorter lengths are then prefixes of it (greedy
decoding with max_tokens = L yields the first L tokens). If no prompt runs
that long, the actual lengths are reported. Target (reported, not asserted):
prefill / generation <= 15% at 128 tokens.

    python -m benchmarks.verify_cost --out out/verify_cost
    python -m benchmarks.verify_cost --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks import common

NAME = "verify_cost"
TARGET_LEN, TARGET_RATIO = 128, 0.15

LONG_PROMPTS = [
    "Write a long, detailed story about a dragon who learns to bake bread in a small mountain village.",
    "Write a long essay about the history of the printing press and how it changed Europe.",
    "Tell me a long story about a lighthouse keeper and a storm that lasted seven days.",
    "Explain in great detail, step by step, how to plan a vegetable garden for a whole year.",
    "Write a very long letter from a sailor to his family describing every port he visited.",
]


def make_engine(name: str, threads: int):
    if name == "tiny":
        from actors.engines.tiny import TinyEngine

        return TinyEngine(threads=threads)
    from actors.engines.smollm2 import SmolLM2Engine

    return SmolLM2Engine(threads=threads)


def pick_prompt(eng, longest: int) -> tuple[str, int, list[dict]]:
    """The first long-form prompt whose greedy output reaches `longest` tokens (else the longest seen)."""
    from protocols.params import SamplingParams

    tried = []
    best = ("", -1)
    for prompt in common.progress(LONG_PROMPTS, desc="choosing a prompt", leave=False):
        g = eng.generate(prompt, SamplingParams(max_tokens=longest))
        tried.append({"prompt": prompt, "tokens": len(g.token_ids), "seconds": g.engine_seconds})
        if len(g.token_ids) > best[1]:
            best = (prompt, len(g.token_ids))
        if len(g.token_ids) >= longest:
            break
    return best[0], best[1], tried


def measure(eng, prompt: str, lengths: list[int], reps: int) -> list[dict]:
    from protocols.params import SamplingParams

    rows = []
    bar = common.progress(total=len(lengths) * reps, desc="lengths x reps")
    for length in lengths:
        params = SamplingParams(max_tokens=length)
        gen_s, pre_s, regen_s, verdicts = [], [], [], []
        toks = None
        for _ in range(reps):
            g = eng.generate(prompt, params)
            gen_s.append(g.engine_seconds)
            v = eng.verify_prefill(prompt, params, g.token_ids)
            pre_s.append(v.seconds)
            verdicts.append("accepted" if v.accepted else ("uncertain" if v.uncertain else "rejected"))
            g2 = eng.generate(prompt, params)
            regen_s.append(g2.engine_seconds)
            if g2.token_ids != g.token_ids:
                verdicts[-1] += "+regen-differs"
            toks = g.token_ids
            bar.update(1)
        gen, pre, regen = statistics.median(gen_s), statistics.median(pre_s), statistics.median(regen_s)
        rows.append({"requested_tokens": length, "actual_tokens": len(toks),
                     "prompt_tokens": len(eng.prompt_token_ids(prompt)),
                     "generation_s": gen, "prefill_s": pre, "regeneration_s": regen,
                     "generation_all_s": gen_s, "prefill_all_s": pre_s, "regeneration_all_s": regen_s,
                     "prefill_over_generation": pre / gen, "regeneration_over_generation": regen / gen,
                     "generation_s_per_token": gen / max(1, len(toks)), "verdicts": verdicts})
    bar.close()
    return rows


def plot(result: dict, out_dir: str) -> str:
    plt = common.pyplot()
    rows = result["rows"]
    x = [r["actual_tokens"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax.plot(x, [r["generation_s"] for r in rows], "o-", label="generation")
    ax.plot(x, [r["regeneration_s"] for r in rows], "s--", label="regeneration (verify by re-running)")
    ax.plot(x, [r["prefill_s"] for r in rows], "^-", label="prefill verification")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("output tokens")
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"{result['engine']} ({result['threads']} thread): time vs output length")
    ax.legend(fontsize=8)
    ax2.plot(x, [100 * r["prefill_over_generation"] for r in rows], "^-", color="tab:green", label="prefill / generation")
    ax2.axhline(100 * TARGET_RATIO, color="tab:red", ls="--", label=f"target {100 * TARGET_RATIO:.0f}% at {TARGET_LEN} tokens")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(x, [str(v) for v in x])
    ax2.set_xlabel("output tokens")
    ax2.set_ylabel("% of generation time")
    ax2.set_title("verification cost relative to generation")
    ax2.legend(fontsize=8)
    fig.suptitle("Verification cost: one prefill pass vs generating again", fontsize=10)
    return common.save_png(fig, out_dir, NAME, result.get("machine"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--lengths", default="16,32,64,128,256", help="comma-separated output lengths (tokens)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per length (medians reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (nodes run 1)")
    ap.add_argument("--quick", action="store_true", help="smoke run: lengths 16,32,64,128, one repetition")
    ap.add_argument("--out", default=f"out/{NAME}")
    args = ap.parse_args(argv)
    lengths = [16, 32, 64, 128] if args.quick else sorted(int(x) for x in args.lengths.split(","))
    reps = 1 if args.quick else args.reps

    t0 = time.time()
    load0 = common.loadavg()
    eng = make_engine(args.engine, args.threads)
    eng.load()
    load_s = time.time() - t0
    prompt, reached, tried = pick_prompt(eng, max(lengths))
    print(f"prompt reaching {reached} tokens: {prompt!r}", flush=True)
    rows = measure(eng, prompt, lengths, reps)
    at = next((r for r in rows if r["requested_tokens"] == TARGET_LEN), None)
    result = {"params": vars(args), "engine": args.engine, "threads": args.threads, "machine": common.machine_info(),
              "loadavg_start": load0, "loadavg_end": common.loadavg(), "load_s": load_s, "prompt": prompt,
              "prompt_search": tried, "rows": rows, "seconds": time.time() - t0,
              "target": {"length": TARGET_LEN, "max_ratio": TARGET_RATIO,
                         "ratio": at["prefill_over_generation"] if at else None,
                         "actual_tokens": at["actual_tokens"] if at else None,
                         "met": (at["prefill_over_generation"] <= TARGET_RATIO) if at else None}}
    common.write_json(args.out, NAME, result)
    plot(result, args.out)
    print(f"{'tokens':>7s} {'generation':>11s} {'prefill':>9s} {'regen':>9s} {'prefill/gen':>11s}  verdicts")
    for r in rows:
        print(f"{r['actual_tokens']:7d} {common.fmt_s(r['generation_s']):>11s} {common.fmt_s(r['prefill_s']):>9s} "
              f"{common.fmt_s(r['regeneration_s']):>9s} {100 * r['prefill_over_generation']:10.1f}%  "
              f"{','.join(sorted(set(r['verdicts'])))}")
    t = result["target"]
    if t["ratio"] is not None:
        print(f"target prefill/generation <= {100 * TARGET_RATIO:.0f}% at {TARGET_LEN} tokens: "
              f"{100 * t['ratio']:.1f}% ({t['actual_tokens']} tokens) -> {'met' if t['met'] else 'MISSED'}")
    print(f"wrote {args.out}/{NAME}.json and .png in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
