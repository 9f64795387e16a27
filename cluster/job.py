"""A workload for `ray job submit`: run prompts against the network, write a report.

    ray job submit --working-dir . -- python -m cluster.job \
        --config cluster/configs/default.toml --prompts prompts.txt --out report.json

Connects to the cluster the job runs on (address "auto"), uses the network
deployed there by `verinfer up` or deploys it (detached) if absent, submits
every prompt (all in flight at once), and writes one JSON report with each
answer, its timings, its receipt (hex) and the ledger balances. Prompts file:
one prompt per line, or a JSON list of strings / of {"prompt", "n", "max_tokens", "mode", "p"}.
Exit code 0 when every request ended final or resolved, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from protocols.modes import MODES


def read_prompts(path: str) -> list[dict]:
    text = open(path, encoding="utf-8").read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [line for line in text.splitlines() if line.strip()]
    out = []
    for item in data:
        if isinstance(item, str):
            out.append({"prompt": item})
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
            out.append(item)
        else:
            raise ValueError(f"bad prompt entry: {item!r}")
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster.job", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="network TOML (default: the repo's default network)")
    ap.add_argument("--prompts", required=True, help="text file (one prompt per line) or JSON list")
    ap.add_argument("--out", required=True, help="report JSON path")
    ap.add_argument("--n", type=int, default=None, help="quorum size for prompts that do not set one")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--mode", default=None, choices=list(MODES),
                    help="mode for prompts that do not set one (default: the config's)")
    ap.add_argument("--p", type=float, default=None, help="cross-validation check probability")
    ap.add_argument("--address", default="auto")
    args = ap.parse_args(argv)

    import ray

    from . import config as cfgmod
    from .report import summary_dict
    from .client import Client
    from .network import connect, deploy

    cfg = cfgmod.load(args.config)
    prompts = read_prompts(args.prompts)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(address=args.address, namespace=cfg.network.namespace, log_to_driver=False)
    try:
        net = connect(cfg)
        print(f"using network {cfg.network.name!r} already on the cluster")
    except Exception:
        print(f"deploying network {cfg.network.name!r} (detached)…")
        net = deploy(cfg, detached=True, log=print)
    client = Client(net)
    t0 = time.time()
    handles = [client.generate(p["prompt"], n=p.get("n", args.n), max_tokens=p.get("max_tokens", args.max_tokens),
                               mode=p.get("mode", args.mode), p=p.get("p", args.p))
               for p in prompts]
    results = []
    for p, h in zip(prompts, handles):
        res = h.result()
        row = summary_dict(res)
        row["prompt"] = p["prompt"]
        row["receipt_hex"] = res.receipt.hex()
        results.append(row)
        print(f"[{res.status}] {p['prompt'][:40]!r} -> {res.text!r} ({res.time_to_finality:.2f}s)")
    report = {"network": cfg.network.name, "requests": results, "wall_s": time.time() - t0,
              "balances": ray.get(net.ledger.balances.remote())}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}: {len(results)} request(s) in {report['wall_s']:.1f}s")
    return 0 if all(r["status"] in ("final", "resolved") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
