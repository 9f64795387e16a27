"""Finalized requests per second as N and the number of executors grow.

Two parts, each against its baseline in the same run:
- the control plane: the tiny engine (a real small transformer, a few ms a
  request), 8 executors, N = 1, 3, 5, with batch calls (actors.outbox: one call
  per destination per tick, the client's wave in one call per shard) against
  the baseline of one actor call per request and per member message;
- scaling: a fixed-cost engine (`tiny` with `fixed_cost_s`, 0.5 s a request,
  the engine thread busy and the CPU idle) from 8 to 64 executors on a
  multi-node `ray.cluster_utils.Cluster`, against the ideal executors / (N x cost).

    python -m benchmarks.throughput --out out/throughput        [--quick] [--parts control,scaling]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
import uuid

import ray

from benchmarks import common


def run_case(engine: str, nodes: int, n: int, requests: int, max_tokens: int, fixed_cost_s: float,
             batched: bool = True) -> dict:
    """One network, one wave of `requests` submitted at once. batched=False is the baseline:
    one actor call per request and per member message (limits.max_batch_calls = 1, and the
    client submits and waits request by request), the control plane as it was before batching."""
    from cluster import config as cfgmod
    from cluster.network import deploy, teardown

    cfg = cfgmod.load("tiny.toml")
    cfg.network.name = f"bench-{uuid.uuid4().hex[:6]}"
    cfg.malicious = {}
    cfg.nodes[0].count = nodes
    cfg.nodes[0].cpus = 0.01
    cfg.limits.max_n = max(cfg.limits.max_n, n)
    cfg.limits.max_batch_calls = 512 if batched else 1
    cfg.limits.timeout_s = max(cfg.limits.timeout_s, 120.0)  # a wave queues; lateness is not what we measure
    if engine == "fixed":
        cfg.models[0].options = {"fixed_cost_s": fixed_cost_s}
    net = deploy(cfg, ledger_path=os.path.join(tempfile.mkdtemp(), "ledger.db"), log=common.deploy_log)
    try:
        client = net.client()
        wave(client, ["warm up"] * min(20, requests), n, max_tokens, batched)
        cpu0 = _cpu_by_process()
        t0 = time.perf_counter()
        results = wave(client, [f"request {i}" for i in range(requests)], n, max_tokens, batched)
        wall = time.perf_counter() - t0
        cpu1 = _cpu_by_process()
        final = sum(r.status == "final" for r in results)
        runs = collections.Counter(nid for r in results for nid in getattr(getattr(r, "summary", None), "paid", ()))
        stats = ray.get(net.ledger.stats.remote())
        shard_stats = ray.get(net.aggregator.each("stats"))
        per_batch = {}
        for st in shard_stats:
            for dest, b in st.get("batched", {}).items():
                c, k = per_batch.get(dest, (0, 0))
                per_batch[dest] = (c + b["calls"], k + b["batches"])
        return {"engine": engine, "nodes": nodes, "n": n, "requests": requests, "final": final, "wall_s": wall,
                "batched": batched, "finalized_per_s": final / wall,
                "ledger_groups_per_commit": stats["groups_per_commit"],
                "items_per_call": {d: round(c / k, 2) if k else 0.0 for d, (c, k) in per_batch.items()},
                # where the CPU went: seconds of CPU per request, by kind of process (all on this machine)
                "cpu_ms_per_request": _cpu_per_request(cpu0, cpu1, max(1, final)),
                "ideal_per_s": nodes / (n * fixed_cost_s) if engine == "fixed" else None,
                # random draws load executors unevenly: the busiest one's runs bound the wave's time
                "busiest_runs": max(runs.values(), default=0),
                "bound_per_s": (final / (max(runs.values()) * fixed_cost_s)) if engine == "fixed" and runs else None}
    finally:
        teardown(net)


def _cpu_by_process() -> dict:
    """CPU seconds so far of each Ray process on this machine (and this driver), by pid."""
    import psutil

    out = {}
    for p in psutil.process_iter(["cmdline", "cpu_times"]):
        cmd = (p.info["cmdline"] or [""])[0]
        if p.pid == os.getpid():
            cmd = "driver (client)"
        elif not cmd.startswith("ray::"):
            continue
        t = p.info["cpu_times"]
        out[p.pid] = (cmd.replace("ray::", ""), t.user + t.system)
    return out


def _cpu_per_request(before: dict, after: dict, requests: int) -> dict:
    by: dict = collections.Counter()
    for pid, (name, t) in after.items():
        if pid in before:  # (processes started during the wave are not counted)
            by[name] += t - before[pid][1]
    return {k: round(1000 * v / requests, 2) for k, v in by.most_common() if v > 0.005}


def wave(client, prompts: list[str], n: int, max_tokens: int, batched: bool) -> list:
    if batched:
        return client.results(client.generate_many(prompts, n=n, max_tokens=max_tokens))
    built = [client.build_request(p, n=n, max_tokens=max_tokens) for p in prompts]
    agg = client.aggregator
    ray.get([agg.for_request(rid).submit.remote(raw, p) for (raw, rid), p in zip(built, prompts)])
    finals = ray.get([agg.for_request(rid).final.remote(rid) for _, rid in built])
    return [_Done(f["status"]) for f in finals]


class _Done:
    def __init__(self, status: str):
        self.status = status


def _cluster(nodes: int, cpus_each: int):
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_each})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus_each)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    return cluster


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--max-tokens", type=int, default=2)
    ap.add_argument("--fixed-cost-s", type=float, default=0.5)
    ap.add_argument("--executors", default="8,16,32,64", help="fixed-cost scaling: executor counts")
    ap.add_argument("--ray-nodes", type=int, default=4, help="Ray nodes of the scaling cluster")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="control,scaling", help="control (tiny, N = 1, 3, 5), scaling (fixed-cost)")
    ap.add_argument("--out", default="out/throughput")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.executors = 60, "8,16"
    rows = []
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", num_cpus=None if os.environ.get("RAY_ADDRESS")
                 else 2, include_dashboard=False, log_to_driver=False)
    for n in ((1, 3, 5) if "control" in args.parts else ()):  # the control plane: batched against the unbatched baseline, same run
        for batched in (False, True):
            row = dict(run_case("tiny", 8, n, args.requests, args.max_tokens, args.fixed_cost_s, batched),
                       cluster="local")
            rows.append(row)
            print(f"[local] tiny 8 executors N={n} {'batched ' if batched else 'baseline'}: "
                  f"{row['finalized_per_s']:.1f} finalized/s ({row['final']}/{row['requests']} in "
                  f"{row['wall_s']:.1f}s) items/call {row['items_per_call']}; CPU ms/request "
                  f"{row['cpu_ms_per_request']}", flush=True)
    if "scaling" in args.parts:  # executors, not the control plane, are the limit: does it scale?
        cluster = _cluster(args.ray_nodes, 2)
        try:
            for k in [int(x) for x in args.executors.split(",")]:
                reqs = max(24, 8 * k // 3)  # about eight runs per executor
                row = dict(run_case("fixed", k, 3, reqs, args.max_tokens, args.fixed_cost_s), cluster=f"{args.ray_nodes}-node")
                row["efficiency"] = row["finalized_per_s"] / row["ideal_per_s"]
                row["efficiency_vs_draws"] = row["finalized_per_s"] / row["bound_per_s"]
                first = next((r for r in rows if r["engine"] == "fixed"), row)
                row["scaling_vs_first"] = (row["finalized_per_s"] / first["finalized_per_s"]) / (k / first["nodes"])
                rows.append(row)
                print(f"[{args.ray_nodes}-node] fixed {args.fixed_cost_s}s, {k} executors N=3: "
                      f"{row['finalized_per_s']:.1f} finalized/s of {row['ideal_per_s']:.1f} ideal "
                      f"({100 * row['efficiency']:.0f} %); of {row['bound_per_s']:.1f} the draws allow "
                      f"({100 * row['efficiency_vs_draws']:.0f} %; busiest executor ran {row['busiest_runs']}); "
                      f"linear from the first: {100 * row['scaling_vs_first']:.0f} %", flush=True)
        finally:
            ray.shutdown()
            cluster.shutdown()
    os.makedirs(args.out, exist_ok=True)
    result = {"rows": rows, "params": vars(args), "machine": common.machine_info(),
              "target": "1000 finalized/s at N=3 with the tiny engine on 2 cores; >= 90 % scaling efficiency "
                        "with the fixed-cost engine from 8 to 64 executors"}
    with open(os.path.join(args.out, "throughput.json"), "w") as f:
        json.dump(result, f, indent=2)
    _plot(rows, args.out, result["machine"])
    return 0


def _plot(rows, out_dir: str, machine: dict | None = None) -> str:
    plt = common.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for batched, style in ((False, "o--"), (True, "o-")):
        t = [r for r in rows if r["engine"] == "tiny" and r["batched"] == batched]
        a.plot([r["n"] for r in t], [r["finalized_per_s"] for r in t], style,
               label="batch calls" if batched else "baseline: a call per message")
    f = [r for r in rows if r["engine"] == "fixed"]
    if f:
        b.plot([r["nodes"] for r in f], [r["finalized_per_s"] for r in f], "s-", label="measured")
        b.plot([r["nodes"] for r in f], [r["ideal_per_s"] for r in f], "k:", label="ideal (executors / (N x cost))")
        b.legend()
    scaled = f[0]["cluster"] if f else "multi-node"
    a.set(xlabel="quorum size N (nodes per request)", ylabel="finalized requests / s",
          title="control plane: tiny engine, 8 executors, 2 Ray CPUs")
    b.set(xlabel="executors (count)", ylabel="finalized requests / s",
          title=f"scaling: fixed-cost engine, N = 3, {scaled} Ray cluster")
    a.legend()
    fig.suptitle("Throughput: finalized requests per second", fontsize=10)
    return common.save_png(fig, out_dir, "throughput", machine)


if __name__ == "__main__":
    raise SystemExit(main())
