"""What the TEE security level costs: attestation, epoch renewal, sealed requests.

On a throwaway tiny-engine network (simulated attestation, weights sealed at
rest), measured:

  verify        `protocols.attestation.verify` of one node's evidence (what the
                registry pays per admission, and a client per sealed-to node),
  renewal       one EpochKeeper renewal of every node (new keys attested and
                switched in), wall time for the whole network,
  requests      latency to finality of N=3 sampling requests with and without
                `--require-tee` (prompt sealed to every attested node, output
                sealed to the client, attested members, evidence in the
                receipt), and of the same in obfuscated mode; the client's
                sealing time and the receipt size are reported too.

    python -m benchmarks.tee_cost --out out/tee_cost
    python -m benchmarks.tee_cost --quick
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks import common

NAME = "tee_cost"
CONFIGS = [("sampling", False), ("sampling", True), ("obfuscated", False), ("obfuscated", True)]


def label(mode: str, tee: bool) -> str:
    return f"{mode}{' +tee' if tee else ''}"


def measure_verify(net, reps: int) -> dict:
    import ray

    from protocols import attestation

    roots = ray.get(net.registry.__ray_call__.remote(lambda reg: list(reg.trust_anchors)))
    policy = ray.get(net.registry.__ray_call__.remote(lambda reg: reg._policy_for(next(iter(reg.nodes.values())))))
    node = sorted(net.executors)[0]
    times = []
    for _ in range(reps):
        nonce = os.urandom(32)
        ev = ray.get(net.executors[node].attest.remote(nonce))
        rep = attestation.evidence_report(ev)
        binding = attestation.ExpectedBinding(rep["signing_pub"], rep["kem_pub"], nonce)
        t = time.perf_counter()
        res = attestation.verify(ev, binding, policy, roots, time.time())
        times.append(time.perf_counter() - t)
        assert res.ok, res.reason
    return {"verify_s": common.summarize(times), "evidence_bytes": len(ev)}


def measure_renewal(net, reps: int) -> dict:
    import ray

    nodes = sorted(net.executors)
    times, ok = [], 0
    for _ in range(reps):
        t = time.perf_counter()
        res = ray.get(net.epochs.renew.remote(nodes))
        times.append(time.perf_counter() - t)
        ok += sum(1 for r in res if r["ok"])
    return {"nodes": len(nodes), "renewal_s": common.summarize(times), "renewed_ok": ok,
            "attempts": reps * len(nodes)}


def measure_requests(net, reps: int, max_tokens: int) -> dict:
    from protocols import messages

    client = net.client()
    client.generate("warm up", n=3, max_tokens=max_tokens).result()
    out = {}
    bar = common.progress(total=len(CONFIGS) * reps, desc="requests", unit="req")
    for mode, tee in CONFIGS:
        fin, seal, sizes = [], [], []
        bar.set_postfix_str(label(mode, tee))
        for i in range(reps):
            bar.update()
            prompt = f"benchmark prompt {i} for {mode}"
            raw, rid = client.build_request(prompt, mode=mode, n=3 if mode == "sampling" else 2,
                                            max_tokens=max_tokens, require_tee=tee)
            t0 = time.perf_counter()
            wire = prompt
            if tee:
                wire = client.seal_for_attested(prompt, rid, net.config.default_model)
            t1 = time.perf_counter()
            res = client.submit_raw(raw, wire).result()
            t2 = time.perf_counter()
            assert res.status == "final", res.status
            fin.append(t2 - t0)
            seal.append(t1 - t0)
            sizes.append(len(res.receipt))
        body = messages.open_envelope(res.receipt, "receipt").body
        out[label(mode, tee)] = {"finality_s": common.summarize(fin), "client_seal_s": common.summarize(seal),
                                 "receipt_bytes": common.summarize(sizes),
                                 "members": len(res.summary.members), "attested": dict(res.summary.attested or {}),
                                 "receipt_has_evidence": any(d.get("attestations") for d in
                                                             body["selection"].get("draws", []))}
    bar.close()
    return out


def plot(result: dict, out_dir: str) -> str:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    req = result["requests"]
    labels = list(req)
    p50 = [req[k]["finality_s"]["p50"] * 1e3 for k in labels]
    p95 = [req[k]["finality_s"]["p95"] * 1e3 for k in labels]
    seal = [req[k]["client_seal_s"]["p50"] * 1e3 for k in labels]
    x = range(len(labels))
    axes[0].bar(x, p50, 0.5, label="finality p50")
    axes[0].errorbar(x, p50, yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p95)]], fmt="none", ecolor="k",
                     capsize=3, label="p95")
    axes[0].bar(x, seal, 0.25, label="client sealing p50")
    axes[0].set_xticks(list(x), labels, rotation=20)
    axes[0].set_ylabel("ms")
    axes[0].set_xlabel("security level (mode, sealed or not)")
    axes[0].set_title(f"tiny network, {result['nodes']} nodes, {result['params']['max_tokens']} tokens")
    axes[0].legend(fontsize=7)
    v, r = result["verify"]["verify_s"], result["renewal"]["renewal_s"]
    axes[1].bar([0, 1], [v["p50"] * 1e3, r["p50"] * 1e3], 0.5)
    axes[1].set_xticks([0, 1], ["verify one evidence", f"renew all {result['renewal']['nodes']} nodes"])
    axes[1].set_ylabel("ms (p50)")
    axes[1].set_xlabel("attestation step")
    axes[1].set_title("attestation")
    fig.suptitle("What TEE requests cost: sealing, attested draws, evidence checks, renewal", fontsize=10)
    return common.save_png(fig, out_dir, NAME, result.get("machine"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--requests", type=int, default=0, help="per configuration (default 20; --quick 3)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=f"out/{NAME}")
    args = ap.parse_args(argv)
    reps = args.requests or (3 if args.quick else 20)
    t0 = time.time()
    ray_info = common.init_ray()
    try:
        net, _ = common.deploy_network("tiny.toml", nodes=args.nodes, cpus=0.2, tag="tee")
        try:
            common.step("verifying one node's evidence, repeatedly")
            verify = measure_verify(net, 5 if args.quick else 50)
            common.step("renewing every node's attestation (a new epoch), repeatedly")
            renewal = measure_renewal(net, 2 if args.quick else 10)
            common.step(f"{reps} requests per security level")
            requests = measure_requests(net, reps, args.max_tokens)
        finally:
            from cluster.network import teardown

            teardown(net)
    finally:
        common.shutdown_ray(ray_info)
    result = {"params": vars(args), "machine": common.machine_info(), "ray": ray_info, "nodes": args.nodes,
              "verify": verify, "renewal": renewal, "requests": requests, "seconds": time.time() - t0}
    common.write_json(args.out, NAME, result)
    plot(result, args.out)
    print(f"verify one evidence: p50 {common.fmt_s(verify['verify_s']['p50'])} ({verify['evidence_bytes']} bytes)")
    print(f"renew all {renewal['nodes']} nodes: p50 {common.fmt_s(renewal['renewal_s']['p50'])}, "
          f"{renewal['renewed_ok']}/{renewal['attempts']} ok")
    for k, c in requests.items():
        print(f"{k:18s} finality p50 {common.fmt_s(c['finality_s']['p50'])} p95 {common.fmt_s(c['finality_s']['p95'])}"
              f"  sealing p50 {common.fmt_s(c['client_seal_s']['p50'])}  receipt {c['receipt_bytes']['p50']:.0f} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
