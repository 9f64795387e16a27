"""Finalized requests per second as N and the number of executors grow.

Engines: `tiny` (a real small transformer, a few ms per request) and a
fixed-cost engine (`tiny` with `fixed_cost_s`, e.g. 50 ms per request, CPU
idle while it waits) that shows how throughput scales with executors when
the engine, not the control plane, is the bottleneck. Requests are submitted
pipelined (`Client.generate_many`) in waves and gathered with one wait, so the
client is not the limit. Optionally runs on a multi-node Ray cluster built
with `ray.cluster_utils.Cluster` (`--multinode`).

    python -m benchmarks.throughput --out out/throughput
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid

import ray


def run_case(engine: str, nodes: int, n: int, requests: int, max_tokens: int, fixed_cost_s: float) -> dict:
    from cluster import config as cfgmod
    from cluster.network import deploy, teardown

    cfg = cfgmod.load("tiny.toml")
    cfg.network.name = f"bench-{uuid.uuid4().hex[:6]}"
    cfg.malicious = {}
    cfg.nodes[0].count = nodes
    cfg.nodes[0].cpus = 0.01
    cfg.limits.max_n = max(cfg.limits.max_n, n)
    if engine == "fixed":
        cfg.models[0].options = {"fixed_cost_s": fixed_cost_s}
    net = deploy(cfg, ledger_path=os.path.join(tempfile.mkdtemp(), "ledger.db"))
    try:
        client = net.client()
        client.results(client.generate_many(["warm up"] * min(20, requests), n=n, max_tokens=max_tokens))
        t0 = time.perf_counter()
        handles = client.generate_many([f"request {i}" for i in range(requests)], n=n, max_tokens=max_tokens)
        results = client.results(handles)
        wall = time.perf_counter() - t0
        final = sum(r.status == "final" for r in results)
        stats = ray.get(net.ledger.stats.remote())
        return {"engine": engine, "nodes": nodes, "n": n, "requests": requests, "final": final, "wall_s": wall,
                "finalized_per_s": final / wall, "ledger_groups_per_commit": stats["groups_per_commit"]}
    finally:
        teardown(net)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--max-tokens", type=int, default=2)
    ap.add_argument("--fixed-cost-s", type=float, default=0.05)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--multinode", action="store_true", help="also run on a 2-node ray.cluster_utils.Cluster")
    ap.add_argument("--out", default="out/throughput")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests = 60
    cases = [("tiny", 8, n) for n in (1, 3, 5)] + [("fixed", k, 3) for k in (3, 6, 12)]
    rows = []
    clusters = [("local", None)]
    if args.multinode:
        clusters.append(("2-node", "multinode"))
    for label, kind in clusters:
        cluster = None
        if kind == "multinode":
            from ray.cluster_utils import Cluster

            ray.shutdown()
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
            cluster.add_node(num_cpus=1)
            ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        elif not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), num_cpus=None if os.environ.get("RAY_ADDRESS") else 2,
                     include_dashboard=False, log_to_driver=False)
        for engine, nodes, n in cases:
            row = run_case(engine, nodes, n, args.requests, args.max_tokens, args.fixed_cost_s)
            row["cluster"] = label
            rows.append(row)
            print(f"[{label}] {engine:5s} nodes={nodes:2d} N={n}: {row['finalized_per_s']:.1f} finalized/s "
                  f"({row['final']}/{row['requests']} in {row['wall_s']:.1f}s)")
        if cluster is not None:
            ray.shutdown()
            cluster.shutdown()
    os.makedirs(args.out, exist_ok=True)
    result = {"rows": rows, "params": vars(args),
              "target": "1000 finalized/s at N=3 with the tiny engine on 2 cores"}
    with open(os.path.join(args.out, "throughput.json"), "w") as f:
        json.dump(result, f, indent=2)
    _plot(rows, os.path.join(args.out, "throughput.png"))
    return 0


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for cl in sorted({r["cluster"] for r in rows}):
        t = [r for r in rows if r["engine"] == "tiny" and r["cluster"] == cl]
        a.plot([r["n"] for r in t], [r["finalized_per_s"] for r in t], "o-", label=cl)
        f = [r for r in rows if r["engine"] == "fixed" and r["cluster"] == cl]
        b.plot([r["nodes"] for r in f], [r["finalized_per_s"] for r in f], "s-", label=cl)
    a.set(xlabel="quorum size N", ylabel="finalized requests / s", title="tiny engine, 8 executors")
    b.set(xlabel="executors", ylabel="finalized requests / s", title="fixed-cost engine, N = 3")
    a.legend(), b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
