"""Does batching change a token? Requests alone against the same requests in random batches.

In-process, no Ray, one torch thread (like a node). For one engine:
  1. every request runs alone (`engine.generate`: a batch of one, padded to the
     fixed row count);
  2. the same requests go through the executor's engine loop
     (`engines.batching.Batcher`) in random waves: a random number of requests
     arrive, a random pause, more arrive, so each request shares its decode steps
     with a changing, random set of others, in any slot, joining and leaving
     between steps;
  3. the token ids are compared request by request (greedy and seeded sampling,
     random prompts, lengths and parameters).
Also, for contrast, on the first `--naive` requests: the batched loop with the
fixed row count switched off (each step on as many rows as there are requests),
which is what a straightforward batched decode does; its differences show what
the fixed-row policy prevents.

Goal (reported, not asserted): zero token differences with the policy.

    python -m benchmarks.batch_soak --engine tiny --requests 2000 --out out/batch_soak
    python -m benchmarks.batch_soak --engine smollm2 --requests 2000 --max-tokens 6 --out out/batch_soak
"""

from __future__ import annotations

import argparse
import random
import time

from benchmarks import common

NAME = "batch_soak"
WORDS = ("the a cat dog sky blue why how what is are tell me about story poem water fire river king "
         "write explain list three short facts on numbers green light night city code bread").split()


def make_engine(name: str, rows: int):
    import torch

    torch.set_num_threads(1)
    if name == "tiny":
        from actors.engines.tiny import TinyEngine

        e = TinyEngine(batch_rows=rows)
    else:
        from actors.engines.smollm2 import SmolLM2Engine

        e = SmolLM2Engine(batch_rows=rows)
    e.load()
    return e


def requests(n: int, max_tokens: int, seed: int):
    from protocols.params import SamplingParams

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 16)))
        sampled = rng.random() < 0.5
        out.append((prompt, SamplingParams(max_tokens=rng.randrange(1, max_tokens + 1),
                                           temperature=rng.choice((0.7, 1.0, 1.3)) if sampled else 0.0,
                                           top_k=rng.choice((0, 0, 20)) if sampled else 0,
                                           seed=rng.randrange(1 << 31))))
    return out


def batched(engine, reqs, seed: int) -> tuple[list, float, dict]:
    from actors.engines.batching import Batcher

    rng = random.Random(seed + 1)
    loop = Batcher(name="soak")
    loop.engine = engine
    futs, i, t0 = [], 0, time.perf_counter()
    while i < len(reqs):
        k = rng.randrange(1, 2 * engine.rows + 1)  # a wave: fewer or more than one batch
        futs += [loop.generate(p, q) for p, q in reqs[i:i + k]]
        i += k
        time.sleep(rng.random() * 0.05)  # the next wave joins mid-flight
    outs = [f.result() for f in futs]
    return [g.token_ids for g in outs], time.perf_counter() - t0, loop.stats()


class _Naive:
    """The engine with the fixed row count off: each decode step on exactly its requests."""

    def __init__(self, engine):
        self._e = engine
        self.rows = engine.rows

    def __getattr__(self, name):
        return getattr(self._e, name)

    def decode(self, seqs, tokens):
        fwd = getattr(self._e, "_rows_fwd", None) or self._e
        keep = fwd.rows
        fwd.rows = len(seqs)
        try:
            return self._e.decode(seqs, tokens)
        finally:
            fwd.rows = keep


def plot(result: dict, out_dir: str) -> str:
    plt = common.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    labels = ["fixed rows (policy)", "naive batching"]
    diffs = [result["differing_requests"], result["naive"]["differing_requests"]]
    totals = [result["requests"], result["naive"]["requests"]]
    a.bar(labels, [100.0 * d / max(1, t) for d, t in zip(diffs, totals)], color=["tab:green", "tab:red"])
    for x, (d, t) in enumerate(zip(diffs, totals)):
        a.text(x, 0, f"{d} of {t}", ha="center", va="bottom")
    a.set_ylabel("requests whose tokens differ from alone (%)")
    a.set_xlabel("how the engine batches")
    a.set_title(f"{result['engine']}: batched vs alone")
    b.bar(["alone", "batched"], [result["alone_tokens_per_s"], result["batched_tokens_per_s"]],
          color=["tab:gray", "tab:blue"])
    b.set_ylabel("tokens / s (one thread)")
    b.set_xlabel("how the requests ran")
    b.set_title(f"throughput, rows = {result['rows']} (mean {result['batching']['mean_rows']:.1f} in use)")
    fig.suptitle(f"Batch soak: {result['requests']} requests, tokens batched vs alone", fontsize=10)
    return common.save_png(fig, out_dir, f"{NAME}_{result['engine']}", result.get("machine"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--naive", type=int, default=200, help="requests in the contrast run without the policy")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="out/batch_soak")
    args = ap.parse_args(argv)
    engine = make_engine(args.engine, args.rows)
    reqs = requests(args.requests, args.max_tokens, args.seed)

    t0 = time.perf_counter()
    alone = [engine.generate(p, q).token_ids for p, q in common.progress(reqs, desc="alone")]
    alone_s = time.perf_counter() - t0
    print("batched ...", flush=True)
    got, batched_s, stats = batched(engine, reqs, args.seed)
    diff = [i for i, (a, b) in enumerate(zip(alone, got)) if a != b]
    k = min(args.naive, len(reqs))
    naive_got, _, _ = batched(_Naive(engine), reqs[:k], args.seed)
    naive_diff = [i for i in range(k) if naive_got[i] != alone[i]]
    tokens = sum(map(len, alone))
    result = {
        "params": vars(args), "engine": args.engine, "rows": args.rows, "requests": len(reqs),
        "fingerprint": engine.fingerprint(), "machine": common.machine_info(),
        "greedy": sum(q.greedy for _, q in reqs), "sampled": sum(not q.greedy for _, q in reqs),
        "tokens": tokens, "differing_requests": len(diff), "differing": diff[:20],
        "alone_s": alone_s, "batched_s": batched_s,
        "alone_tokens_per_s": tokens / alone_s, "batched_tokens_per_s": tokens / batched_s,
        "batching": stats,
        "naive": {"requests": k, "differing_requests": len(naive_diff), "differing": naive_diff[:20]},
        "goal": "0 differing requests with the fixed-row policy",
    }
    common.write_json(args.out, f"{NAME}_{args.engine}", result)
    plot(result, args.out)
    print(f"{args.engine}: {len(diff)} of {len(reqs)} requests differ batched vs alone "
          f"({result['greedy']} greedy, {result['sampled']} sampled; {tokens} tokens); "
          f"alone {result['alone_tokens_per_s']:.1f} tok/s, batched {result['batched_tokens_per_s']:.1f} tok/s "
          f"(mean {stats['mean_rows']:.2f} rows); naive batching: {len(naive_diff)} of {k} differ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
