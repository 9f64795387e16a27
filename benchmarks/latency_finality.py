"""Latency: time to first output and time to finality against native inference.

For each engine (`--engines tiny,smollm2`) a throwaway, all-honest network is
deployed (tiny: 8 nodes, smollm2: 5 nodes) and requests are sent one at a time
(so latency is never queueing) in these configurations:

    sampling N = 1, 3, 5 · cross-validation N = 1 with p = 0, 0.5, 1 · obfuscated N = 2

Per request: time to first output (TTFO, client side, from just before submit),
time to finality (receipt received and verified), each member's engine seconds
(from the signed result envelopes in the receipt), and the protocol overhead

    overhead = finality - engine critical path

where the engine critical path is the slowest member's engine time (sampling,
obfuscated, unchecked cross-validation) or executor + slowest verifier
(checked cross-validation: the verifiers start only after the coin). The
aggregator's own timestamps split the overhead into submit (draw + escrow +
dispatch), first output -> decided (the reveal round), decided -> client
(settlement in the ledger, receipt build, return) and the client's offline
receipt check.

Baselines, measured in the same run: the same engine generating the same
prompts in-process with no network ("native"), and the round trip of an empty
Ray actor call (sync one at a time, and pipelined per call). Overhead is
reported as a ratio to native and in actor round trips. Targets (reported, not
asserted): TTFO within 5% of native at N = 1; protocol overhead on the
critical path <= 3 actor round trips.

    python -m benchmarks.latency_finality --out out/latency_finality
    python -m benchmarks.latency_finality --engines tiny --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks import common

NAME = "latency_finality"

CONFIGS = [  # (label, mode, n, p)
    ("sampling N=1", "sampling", 1, None),
    ("sampling N=3", "sampling", 3, None),
    ("sampling N=5", "sampling", 5, None),
    ("xval N=1 p=0", "cross-validation", 1, 0.0),
    ("xval N=1 p=0.5", "cross-validation", 1, 0.5),
    ("xval N=1 p=1", "cross-validation", 1, 1.0),
    ("obfuscated N=2", "obfuscated", 2, None),
]

PROMPTS = {
    "tiny": [f"The quick brown fox {i} jumps over the lazy dog" for i in range(16)],
    "smollm2": [
        "What is the capital of France?",
        "Name three primary colours.",
        "Explain photosynthesis in one sentence.",
        "Write a haiku about the sea.",
        "What is 12 times 12?",
        "Give me a tip for learning to code.",
        "Why is the sky blue?",
        "Describe a cat in two sentences.",
    ],
}

ENGINE = {  # engine -> (config file, nodes, default requests per config, max tokens)
    "tiny": ("tiny.toml", 8, 30, 32),
    "smollm2": ("default.toml", 5, 6, 32),
}


def native_baseline(engine_name: str, prompts: list[str], max_tokens: int, reps: int) -> dict:
    """The engine in this process, no network: per-prompt generation and prefill-check time."""
    from actors.engines.smollm2 import SmolLM2Engine
    from actors.engines.tiny import TinyEngine
    from protocols.params import SamplingParams

    eng = TinyEngine(threads=1) if engine_name == "tiny" else SmolLM2Engine(threads=1)
    eng.load()
    params = SamplingParams(max_tokens=max_tokens)
    eng.generate(prompts[0], params)  # warm up
    per_prompt = {}
    for prompt in common.progress(prompts, desc=f"{engine_name} native", leave=False):
        gens, walls, checks = [], [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            g = eng.generate(prompt, params)
            walls.append(time.perf_counter() - t0)
            gens.append(g.engine_seconds)
            checks.append(eng.verify_prefill(prompt, params, g.token_ids).seconds)
        per_prompt[prompt] = {"engine_s": statistics.median(gens), "wall_s": statistics.median(walls),
                              "prefill_s": statistics.median(checks), "tokens": len(g.token_ids),
                              "token_ids": g.token_ids}
    return per_prompt


def hop_costs(net, calls: int = 100) -> dict:
    """Sync round trip of the control-plane calls a request makes, one at a time."""
    import uuid

    import ray

    from actors.authority import Signed, bare
    from cluster.control import as_holder

    model = net.config.models[0].id
    node = sorted(net.executors)[0]
    selector = Signed(bare(net.selector), as_holder(net, "aggregator", "aggregator/0"), "selector")  # as a shard
    calls_ = {
        "aggregator.pubkey (async actor, no work)": lambda: net.aggregator.pubkey.remote(),
        "executor.stats (no work)": lambda: net.executors[node].stats.remote(),
        "registry.views": lambda: net.registry.views.remote(model),
        "selector.draw (+ registry.views inside)": lambda: selector.draw.remote(uuid.uuid4().hex, model, 1),
        "selector.record": lambda: net.selector.record.remote("-"),
        "ledger.head (read via writer thread)": lambda: net.ledger.head.remote(),
        "ledger.deposit (durable group commit)": lambda: net.ledger.deposit.remote(
            "client/bench-hops", 1, uuid.uuid4().hex),
    }
    out = {}
    for name, fn in calls_.items():
        ray.get(fn())
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter()
            ray.get(fn())
            ts.append(time.perf_counter() - t0)
        out[name] = common.summarize(ts)
    return out


def engine_times(receipt: bytes) -> list[dict]:
    from protocols import messages

    out = []
    for raw in messages.open_envelope(receipt, "receipt").body["results"]:
        b = messages.open_envelope(raw, "result").body
        out.append({"node": b["node_id"], "role": b["role"], "engine_s": float(b["engine_seconds"])})
    return out


def critical_engine(members: list[dict], branch: str) -> float:
    q = [m["engine_s"] for m in members if m["role"] == "quorum"]
    if not q:
        return 0.0
    if branch == "checked" and len(q) > 1:  # executor first, then the verifiers in parallel
        return q[0] + max(q[1:])
    return max(q)


def one_request(net, client, prompt: str, mode: str, n: int, p, max_tokens: int) -> dict:
    import ray

    from protocols import receipts

    h = client.generate(prompt, mode=mode, n=n, p=p, max_tokens=max_tokens)
    fo = h.first_output()
    res = h.result()
    t_end = h._t0 + res.time_to_finality
    fin = ray.get(net.aggregator.final.remote(h.request_id))
    tm = fin["timings"]
    t0 = time.perf_counter()
    receipts.verify_receipt(res.receipt, [client.aggregator_key], res.token_ids)
    verify_s = time.perf_counter() - t0
    members = engine_times(res.receipt)
    crit = critical_engine(members, res.branch)
    return {
        "status": res.status, "branch": res.branch, "methods": res.methods, "messages": fin.get("messages"),
        "tokens": len(res.token_ids or []), "token_ids": res.token_ids,
        "ttfo_s": fo.seconds if fo else None, "finality_s": res.time_to_finality,
        "members": members, "engine_max_s": max((m["engine_s"] for m in members), default=0.0),
        "engine_critical_s": crit, "overhead_s": res.time_to_finality - crit,
        "split": {
            "client_to_aggregator_s": tm["submitted"] - h._t0,
            "submit_to_first_output_s": tm.get("first_output", tm["decided"]) - tm["submitted"],
            "first_output_to_decided_s": tm["decided"] - tm.get("first_output", tm["decided"]),
            "decided_to_client_s": t_end - tm["decided"],
            "receipt_verify_s": verify_s,
        },
        # the overhead, split along the critical path (sums to overhead_s)
        "overhead_split": {
            "client_to_aggregator_s": tm["submitted"] - h._t0,
            "submit_to_decided_minus_engine_s": tm["decided"] - tm["submitted"] - crit,
            "decided_to_client_s": t_end - tm["decided"] - verify_s,
            "client_receipt_check_s": verify_s,
        },
    }


def run_engine(engine_name: str, args, rtt: dict) -> dict:
    import ray

    from cluster.network import teardown

    cfg_file, nodes, default_k, max_tokens = ENGINE[engine_name]
    k = args.requests or (2 if args.quick else default_k)
    max_tokens = args.max_tokens or max_tokens
    prompts = PROMPTS[engine_name]
    configs = CONFIGS[:1] + CONFIGS[5:] if args.quick else CONFIGS
    used_prompts = sorted({prompts[i % len(prompts)] for i in range(k)})
    t0 = time.time()
    net, ledger = common.deploy_network(cfg_file, nodes=nodes, malicious={}, tag=f"lat-{engine_name}")
    deploy_s = time.time() - t0
    print(f"[{engine_name}] deployed {nodes} nodes in {deploy_s:.1f}s", flush=True)
    try:
        client = net.client()
        # warm every node (first forward pass, lazy imports) and every code path
        for i in range(2):
            client.generate(prompts[0], n=min(nodes, net.config.limits.max_n), max_tokens=max_tokens).result()
        for _, mode, n, p in configs:
            client.generate(prompts[1], mode=mode, n=n, p=p, max_tokens=max_tokens).result()
        native = native_baseline(engine_name, used_prompts, max_tokens, reps=1 if args.quick else 3)
        rtt_here = common.actor_rtt(calls=300, pipelined=1000)
        hops = hop_costs(net)
        rows = []
        bar = common.progress(total=k * len(configs), desc=f"{engine_name} requests")
        for label, mode, n, p in configs:
            for i in range(k):
                prompt = prompts[i % len(prompts)]
                r = one_request(net, client, prompt, mode, n, p, max_tokens)
                nat = native[prompt]
                r.update(config=label, mode=mode, n=n, p=p, prompt_index=i % len(prompts),
                         native_s=nat["wall_s"], native_engine_s=nat["engine_s"],
                         matches_native=r["token_ids"] == nat["token_ids"])
                r.pop("token_ids")
                rows.append(r)
                bar.update(1)
        bar.close()
        ledger_stats = ray.get(net.ledger.stats.remote())
    finally:
        teardown(net)
    return {"engine": engine_name, "nodes": nodes, "requests_per_config": k, "max_tokens": max_tokens,
            "deploy_s": deploy_s, "rtt": rtt_here, "hops": hops, "rtt_at_start": rtt, "ledger_stats": ledger_stats,
            "native": {p: {kk: v for kk, v in d.items() if kk != "token_ids"} for p, d in native.items()},
            "requests": rows, "summary": summarize(rows, native, rtt_here, configs)}


def summarize(rows: list[dict], native: dict, rtt: dict, configs) -> dict:
    rtt_s = rtt["sync"]["p50"]
    nat = common.summarize(d["wall_s"] for d in native.values())
    out = {"native_s": nat, "native_prefill_s": common.summarize(d["prefill_s"] for d in native.values()),
           "rtt_sync_p50_s": rtt_s, "configs": {}}
    for label, *_ in configs:
        rs = [r for r in rows if r["config"] == label]
        if not rs:
            continue
        ov = common.summarize(r["overhead_s"] for r in rs)
        s = {
            "requests": len(rs),
            "statuses": {st: sum(r["status"] == st for r in rs) for st in {r["status"] for r in rs}},
            "branches": {b: sum(r["branch"] == b for r in rs) for b in {r["branch"] for r in rs} if b},
            "ttfo_s": common.summarize(r["ttfo_s"] for r in rs),
            "finality_s": common.summarize(r["finality_s"] for r in rs),
            "engine_member_s": common.summarize(m["engine_s"] for r in rs for m in r["members"]),
            "engine_max_s": common.summarize(r["engine_max_s"] for r in rs),
            "engine_critical_s": common.summarize(r["engine_critical_s"] for r in rs),
            "overhead_s": ov,
            "overhead_vs_slowest_engine_s": common.summarize(r["finality_s"] - r["engine_max_s"] for r in rs),
            "ttfo_over_native": common.summarize(r["ttfo_s"] / r["native_s"] for r in rs if r["ttfo_s"]),
            "finality_over_native": common.summarize(r["finality_s"] / r["native_s"] for r in rs),
            "overhead_over_native": common.summarize(r["overhead_s"] / r["native_s"] for r in rs),
            "overhead_in_rtts_p50": ov["p50"] / rtt_s, "overhead_in_rtts_p95": ov["p95"] / rtt_s,
            "split_p50_s": {k: common.percentile([r["split"][k] for r in rs], 50) for k in rs[0]["split"]},
            "overhead_split_p50_s": {k: common.percentile([r["overhead_split"][k] for r in rs], 50)
                                     for k in rs[0]["overhead_split"]},
            "messages_p50": {k: common.percentile([(r["messages"] or {}).get(k, 0) for r in rs], 50)
                             for k in (rs[0]["messages"] or {})},
            "outputs_match_native": sum(r["matches_native"] for r in rs),
        }
        out["configs"][label] = s
    n1 = out["configs"].get("sampling N=1")
    if n1:
        ratio = n1["ttfo_over_native"]["p50"]
        out["target_ttfo_within_5pct_of_native_n1"] = {"ttfo_over_native_p50": ratio, "met": ratio <= 1.05}
    worst = max(out["configs"].values(), key=lambda s: s["overhead_in_rtts_p50"])
    out["target_overhead_le_3_rtts"] = {
        "per_config_p50_rtts": {k: v["overhead_in_rtts_p50"] for k, v in out["configs"].items()},
        "worst_p50_rtts": worst["overhead_in_rtts_p50"],
        "met": all(v["overhead_in_rtts_p50"] <= 3 for v in out["configs"].values())}
    return out


def plot(result: dict, out_dir: str) -> str:
    import numpy as np

    plt = common.pyplot()
    engines = result["engines"]
    fig, axes = plt.subplots(2, len(engines), figsize=(6.5 * len(engines), 8), squeeze=False)
    for col, er in enumerate(engines):
        s = er["summary"]
        labels = list(s["configs"])
        x = np.arange(len(labels))
        ax = axes[0][col]
        for off, key, color, name in ((-0.2, "ttfo_s", "tab:blue", "time to first output"),
                                      (0.2, "finality_s", "tab:orange", "time to finality")):
            p50 = np.array([s["configs"][c][key]["p50"] for c in labels])
            p95 = np.array([s["configs"][c][key]["p95"] for c in labels])
            ax.bar(x + off, p50, 0.4, color=color, label=f"{name} (p50; whisker p95)")
            ax.errorbar(x + off, p50, yerr=[np.zeros_like(p50), p95 - p50], fmt="none", ecolor="k", capsize=3)
        ax.axhline(s["native_s"]["p50"], color="tab:green", ls="--", label=f"native p50 {common.fmt_s(s['native_s']['p50'])}")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("seconds")
        ax.set_xlabel("configuration (mode, N)")
        ax.set_title(f"{er['engine']}: {er['nodes']} nodes, {er['requests_per_config']} req/config, "
                     f"{er['max_tokens']} tokens")
        ax.legend(fontsize=7)
        ax = axes[1][col]
        keys = [("client_to_aggregator_s", "client -> aggregator (submit call)"),
                ("submit_to_decided_minus_engine_s", "submit -> decided, minus engine (draw, escrow, dispatch, results, reveals)"),
                ("decided_to_client_s", "decided -> client (settle, receipt, return)"),
                ("client_receipt_check_s", "client receipt check")]
        bottom = np.zeros(len(labels))
        for key, name in keys:
            vals = np.array([s["configs"][c]["overhead_split_p50_s"][key] * 1e3 for c in labels])
            ax.bar(x, vals, 0.5, bottom=bottom, label=name)
            bottom += vals
        ov = np.array([s["configs"][c]["overhead_s"]["p50"] * 1e3 for c in labels])
        ov95 = np.array([s["configs"][c]["overhead_s"]["p95"] * 1e3 for c in labels])
        ax.errorbar(x, ov, yerr=[np.zeros_like(ov), ov95 - ov], fmt="kD", capsize=3,
                    label="overhead = finality - engine critical path (p50; whisker p95)")
        ax.axhline(3 * s["rtt_sync_p50_s"] * 1e3, color="tab:red", ls="--",
                   label=f"target: 3 actor RTTs ({3 * s['rtt_sync_p50_s'] * 1e3:.1f} ms)")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("ms (stacked: p50 of each part)")
        ax.set_xlabel("configuration (mode, N)")
        ax.set_title("protocol overhead on the critical path (aggregator timestamps)")
        ax.legend(fontsize=6)
    fig.suptitle("Latency: time to first output and to finality, and the protocol's overhead", fontsize=10)
    return common.save_png(fig, out_dir, NAME, result.get("machine"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    ap.add_argument("--requests", type=int, default=0,
                    help="requests per configuration (default: tiny 30, smollm2 6; --quick 2)")
    ap.add_argument("--max-tokens", type=int, default=0, help="default 32")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 requests, fewer configurations")
    ap.add_argument("--out", default=f"out/{NAME}")
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in ENGINE:
            ap.error(f"unknown engine {e!r}; choose from {sorted(ENGINE)}")

    t0 = time.time()
    load0 = common.loadavg()
    ray_info = common.init_ray()
    try:
        rtt = common.actor_rtt()
        print(f"empty actor call: sync p50 {common.fmt_s(rtt['sync']['p50'])}, "
              f"pipelined {common.fmt_s(rtt['pipelined_per_call_s'])}/call", flush=True)
        per_engine = [run_engine(e, args, rtt) for e in engines]
    finally:
        common.shutdown_ray(ray_info)
    result = {"params": vars(args), "machine": common.machine_info(), "ray": ray_info, "loadavg_start": load0, "rtt_at_start": rtt,
              "engines": per_engine, "seconds": time.time() - t0}
    common.write_json(args.out, NAME, result)
    plot(result, args.out)
    for er in per_engine:
        s = er["summary"]
        print(f"\n== {er['engine']} ({er['nodes']} nodes, {er['requests_per_config']} requests/config, "
              f"{er['max_tokens']} tokens) native p50 {common.fmt_s(s['native_s']['p50'])}, "
              f"actor RTT p50 {common.fmt_s(s['rtt_sync_p50_s'])}")
        print(f"{'config':16s} {'TTFO p50/p95':>18s} {'final p50/p95':>18s} {'engine crit p50':>15s} "
              f"{'overhead p50/p95':>18s} {'ovh/RTT':>8s} {'TTFO/nat':>8s}")
        for label, c in s["configs"].items():
            print(f"{label:16s} {common.fmt_s(c['ttfo_s']['p50']):>8s}/{common.fmt_s(c['ttfo_s']['p95']):<9s} "
                  f"{common.fmt_s(c['finality_s']['p50']):>8s}/{common.fmt_s(c['finality_s']['p95']):<9s} "
                  f"{common.fmt_s(c['engine_critical_s']['p50']):>15s} "
                  f"{common.fmt_s(c['overhead_s']['p50']):>8s}/{common.fmt_s(c['overhead_s']['p95']):<9s} "
                  f"{c['overhead_in_rtts_p50']:8.1f} {c['ttfo_over_native']['p50']:8.3f}")
        t = s.get("target_ttfo_within_5pct_of_native_n1")
        if t:
            print(f"target TTFO(N=1) <= 1.05 x native: {t['ttfo_over_native_p50']:.3f} -> "
                  f"{'met' if t['met'] else 'MISSED'}")
        print("control-plane hops (sync p50): " + ", ".join(f"{k.split(' ')[0]} {common.fmt_s(v['p50'])}"
                                                           for k, v in er["hops"].items()))
        print("overhead split p50 (sampling N=1): " + ", ".join(
            f"{k[:-2]} {common.fmt_s(v)}" for k, v in s["configs"][next(iter(s["configs"]))]["overhead_split_p50_s"].items()))
        t = s["target_overhead_le_3_rtts"]
        print(f"target overhead <= 3 actor RTTs: worst config p50 {t['worst_p50_rtts']:.1f} RTTs -> "
              f"{'met' if t['met'] else 'MISSED'}")
    print(f"\nwrote {args.out}/{NAME}.json and .png in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
