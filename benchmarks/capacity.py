"""How much of its hardware the network turns into tokens: network against raw engine.

Per engine (`--engines tiny,smollm2`), on the same cores, in one run:
  * raw engine, best batched: `--procs` processes (one torch thread each, like
    nodes), each running its share of the requests through the engine loop
    (`engines.batching.Batcher`, all submitted at once);
  * raw engine, one at a time: the same, each request alone (`engine.generate`);
  * transformers `generate`, batch 8, left-padded (SmolLM2 only): what a user
    of plain transformers gets from batching (not batch-invariant);
  * the network at N = 1 with `--procs` nodes and at N = 3 with 3 nodes: every
    request submitted at once through the client, tokens counted from the final
    results (each request's tokens once: at N = 3 every token is computed three
    times, so the goal there is a third of the raw figure);
  * time to first output at N = 1, one request at a time on the idle network,
    against the same prompt generated alone in this process ("native").
Goals (reported, not asserted): network N = 1 >= 90 % of the best raw figure;
N = 3 >= 90 % of a third of it; TTFO at N = 1 <= 1.05x native.

    python -m benchmarks.capacity --out out/capacity
    python -m benchmarks.capacity --engines tiny --quick
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

from benchmarks import common

NAME = "capacity"
PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a rainbow forms, step by step.",
    "List five ideas for a rainy afternoon and say why each is fun.",
    "Describe the water cycle to a ten year old.",
    "Write a letter to a friend about a trip to the mountains.",
    "Give three tips for learning a new language and explain each.",
    "Tell me about the history of bread.",
    "Write a poem about the night sky in the city.",
]
CONFIG = {"tiny": "tiny.toml", "smollm2": "default.toml"}


def prompts(k: int) -> list[str]:
    return [f"{PROMPTS[i % len(PROMPTS)]} ({i})" for i in range(k)]


def _raw_worker(engine: str, rows: int, work: list[str], max_tokens: int, how: str, barrier, queue) -> None:
    from benchmarks.batch_soak import make_engine
    from protocols.params import SamplingParams

    e = make_engine(engine, rows)
    params = SamplingParams(max_tokens=max_tokens)
    e.generate(work[0], SamplingParams(max_tokens=2))  # warm up
    barrier.wait()
    t0 = time.perf_counter()
    if how == "batched":
        from actors.engines.batching import Batcher

        loop = Batcher(name="raw")
        loop.engine = e
        tokens = sum(len(f.result().token_ids) for f in [loop.generate(p, params) for p in work])
    elif how == "alone":
        tokens = sum(len(e.generate(p, params).token_ids) for p in work)
    else:  # transformers generate, batches of 8, left-padded
        tokens = _hf_generate(e, work, max_tokens)
    queue.put((tokens, time.perf_counter() - t0))


def _hf_generate(e, work: list[str], max_tokens: int) -> int:
    import torch

    tok, model, stop = e._tok, e._model, set(e.stop_token_ids)
    tok.padding_side = "left"
    tokens = 0
    for i in range(0, len(work), 8):
        ids = [e.prompt_token_ids(p) for p in work[i:i + 8]]
        width = max(map(len, ids))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        inp = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.inference_mode():
            out = model.generate(input_ids=inp, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=pad)
        for row in out[:, width:].tolist():
            n = next((j for j, t in enumerate(row) if t in stop), len(row))
            tokens += n
    return tokens


def raw(engine: str, procs: int, work: list[str], max_tokens: int, how: str, rows: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    shares = [work[i::procs] for i in range(procs)]
    ps = [ctx.Process(target=_raw_worker, args=(engine, rows, s, max_tokens, how, barrier, queue)) for s in shares]
    for p in ps:
        p.start()
    got = [queue.get() for _ in ps]
    for p in ps:
        p.join()
    tokens, wall = sum(t for t, _ in got), max(w for _, w in got)
    return {"how": how, "procs": procs, "requests": len(work), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall}


def network(engine: str, n: int, nodes: int, work: list[str], max_tokens: int, ttfo_prompts: list[str]) -> dict:
    from cluster.network import teardown

    common.step(f"{engine} network, N = {n}: {nodes} nodes, {len(work)} requests at once")
    t0 = time.time()
    net, _ = common.deploy_network(CONFIG[engine], nodes=nodes, malicious={}, cpus=min(1.0, 2.0 / nodes),
                                   tag=f"cap-{engine}")
    deploy_s = time.time() - t0
    try:
        client = net.client()
        client.results(client.generate_many(work[:2], n=n, max_tokens=2))  # warm up
        t0 = time.perf_counter()
        results = client.results(client.generate_many(work, n=n, max_tokens=max_tokens))
        wall = time.perf_counter() - t0
        tokens = sum(len(r.token_ids or []) for r in results)
        out = {"n": n, "nodes": nodes, "requests": len(work), "final": sum(r.status == "final" for r in results),
               "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "deploy_s": deploy_s}
        if ttfo_prompts:
            ttfo = []
            for p in ttfo_prompts:
                h = client.generate(p, n=n, max_tokens=max_tokens)
                fo = h.first_output()
                h.result()
                ttfo.append(fo.seconds if fo else None)
            out["ttfo_s"] = dict(zip(ttfo_prompts, ttfo))
        return out
    finally:
        teardown(net)


def native(engine: str, ps: list[str], max_tokens: int, rows: int) -> dict:
    from benchmarks.batch_soak import make_engine
    from protocols.params import SamplingParams

    e = make_engine(engine, rows)
    params = SamplingParams(max_tokens=max_tokens)
    e.generate(ps[0], SamplingParams(max_tokens=2))
    out = {}
    for p in ps:
        walls = []
        for _ in range(3):
            t0 = time.perf_counter()
            e.generate(p, params)
            walls.append(time.perf_counter() - t0)
        out[p] = statistics.median(walls)
    return out


def run_engine(engine: str, args) -> dict:
    k = args.requests or (16 if args.quick else (32 if engine == "smollm2" else 256))
    work = prompts(k)
    res = {"engine": engine, "requests": k, "max_tokens": args.max_tokens, "raw": {}}
    hows = ["batched", "alone"] + (["transformers-batch8"] if engine == "smollm2" else [])
    for how in hows:
        common.step(f"{engine} raw engine ({how}): {len(work)} requests in {args.procs} processes")
        res["raw"][how] = raw(engine, args.procs, work, args.max_tokens, how, args.rows)
        print(f"  {engine} raw {how}: {res['raw'][how]['tokens_per_s']:.1f} tok/s", flush=True)
    best = max(r["tokens_per_s"] for r in res["raw"].values())
    ttfo_prompts = PROMPTS[:2 if args.quick else 4]
    common.step(f"{engine}: the engine's own time per request (native), for time to first output")
    res["native_s"] = native(engine, ttfo_prompts, args.max_tokens, args.rows)
    res["network"] = {}
    for n, nodes in ((1, args.procs), (3, 3)):
        r = network(engine, n, nodes, work, args.max_tokens, ttfo_prompts if n == 1 else [])
        res["network"][f"N={n}"] = r
        share = r["tokens_per_s"] / (best / n)
        r["of_raw_share"] = share
        print(f"  {engine} network N={n}: {r['tokens_per_s']:.1f} tok/s = {100 * share:.0f} % of raw/{n}", flush=True)
    ratios = [s / res["native_s"][p] for p, s in res["network"]["N=1"]["ttfo_s"].items() if s]
    res["best_raw_tokens_per_s"] = best
    res["ttfo_over_native"] = common.summarize(ratios)
    return res


def plot(results: list[dict], out_dir: str, machine: dict | None = None) -> str:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, r in zip(axes[0], results):
        labels = [f"raw {h}" for h in r["raw"]] + [f"network {k}" for k in r["network"]]
        vals = [x["tokens_per_s"] for x in r["raw"].values()] + [x["tokens_per_s"] for x in r["network"].values()]
        ax.bar(range(len(vals)), vals, color=["tab:gray"] * len(r["raw"]) + ["tab:blue"] * len(r["network"]))
        best = r["best_raw_tokens_per_s"]
        ax.axhline(0.9 * best, ls="--", color="tab:green", label="90 % of best raw (N=1 goal)")
        ax.axhline(0.9 * best / 3, ls=":", color="tab:olive", label="90 % of best raw / 3 (N=3 goal)")
        ax.set_xticks(range(len(vals)), labels, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("tokens / s")
        ax.set_xlabel("run (raw engine: how it batched; network: quorum size N)")
        t = r["ttfo_over_native"]["p50"]
        ax.set_title(f"{r['engine']}: {r['requests']} requests x {r['max_tokens']} tokens; TTFO/native {t:.2f}")
        ax.legend(fontsize=7)
    fig.suptitle("Capacity: tokens per second, the raw engine vs the network", fontsize=10)
    return common.save_png(fig, out_dir, NAME, machine)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="tiny,smollm2")
    ap.add_argument("--requests", type=int, default=0, help="per run (default: tiny 256, smollm2 32)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--procs", type=int, default=2, help="raw processes = nodes at N = 1")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="out/capacity")
    args = ap.parse_args(argv)
    info = common.init_ray()
    try:
        results = [run_engine(e, args) for e in args.engines.split(",")]
    finally:
        common.shutdown_ray(info)
    machine = common.machine_info()
    common.write_json(args.out, NAME, {"params": vars(args), "machine": machine, "engines": results})
    plot(results, args.out, machine)
    for r in results:
        n1, n3 = r["network"]["N=1"], r["network"]["N=3"]
        print(f"{r['engine']}: best raw {r['best_raw_tokens_per_s']:.1f} tok/s; network N=1 "
              f"{n1['tokens_per_s']:.1f} ({100 * n1['of_raw_share']:.0f} %), N=3 {n3['tokens_per_s']:.1f} "
              f"({100 * n3['of_raw_share']:.0f} % of a third); TTFO/native p50 {r['ttfo_over_native']['p50']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
