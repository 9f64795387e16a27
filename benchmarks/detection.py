"""Detection: how often does a cheater's output get accepted, against theory?

A tiny-engine network of M nodes (the config's count, `--nodes`) is deployed
once. For each fraction r (`--r`) and each misbehaviour (`--behaviours`), a
random subset of D = round(r M) nodes is switched to that behaviour
(`NodeExecutor.set_behaviour`), and K requests are sent one at a time in every
mode/size cell:

    sampling N = 1, 2, 3 · cross-validation p = 1, N = 1, 2 · obfuscated N = 1, 2

A request counts as *undetected cheating* when it ends `final` with a
commitment different from the honest one (computed once per prompt with the
honest engine in-process). It ends `resolved` with a wrong commitment when the
referees themselves are captured; both are reported.

Theory. A round is captured when every one of its q quorum members cheats in
the same way: q = N (sampling), 1 + N (cross-validation with p = 1), N + 1
(obfuscated: N + 1 nodes run in parallel). Draws are without replacement, so
the exact value is hypergeometric, C(D, q) / C(M, q)
(`protocols.economics.p_all_dishonest_finite`); r^q (`p_all_dishonest`) is the
infinite-network value, shown for reference. Which cheaters can form a captured
quorum depends on the behaviour:

  substitute   the same smaller model on every cheater: identical wrong outputs,
               so cheaters collude by construction -> C(D,q)/C(M,q)
  requantize   the same 4-bit weights on every cheater: also colluding (unless
               rounding leaves the greedy output unchanged) -> C(D,q)/C(M,q)
  random       independent random tokens: only a lone cheater (q = 1) escapes
  copy         copies a commit it cannot open; alone (q = 1) it commits an empty
               output and escapes, with anyone else it is caught
  silent       never answers: timed out and replaced, never accepted -> 0

Measured rates get 95% Wilson intervals. Cheaters are *re-armed* after every
request that slashed them (collateral deposited back, stake and liveness
restored in the registry), so D and M stay constant and every request sees the
same r; without that, a slashed cheater drops below min_stake and is never
drawn again, and r decays to 0 within a few disputes. Honest nodes slashed
(for cheating or a bad reveal: must be 0; for timeouts: reported) are counted
from every receipt's decision, with obfuscated pseudonyms unblinded through
the selector (the experimenter may; the protocol does so only to slash). At
the end, ledger conservation and the hash chain are checked.

    python -m benchmarks.detection --out out/detection
    python -m benchmarks.detection --r 0.5 --requests 60 --out out/detection-r050
"""

from __future__ import annotations

import argparse
import random
import time
import uuid

from benchmarks import common

NAME = "detection"
BEHAVIOURS = ("substitute", "requantize", "random", "copy", "silent")
COLLUDING = {"substitute", "requantize"}  # all cheaters produce the same wrong output
CELLS = [  # (label, mode, n, p)
    ("sampling N=1", "sampling", 1, None),
    ("sampling N=2", "sampling", 2, None),
    ("sampling N=3", "sampling", 3, None),
    ("xval p=1 N=1", "cross-validation", 1, 1.0),
    ("xval p=1 N=2", "cross-validation", 2, 1.0),
    ("obfuscated N=1", "obfuscated", 1, None),
    ("obfuscated N=2", "obfuscated", 2, None),
]
PROMPTS = [f"Request {i}: tell me about the number {i * 7 + 3}" for i in range(24)]


def quorum_size(mode: str, n: int) -> int:
    return {"sampling": n, "cross-validation": 1 + n, "obfuscated": n + 1}[mode]


def theory(behaviour: str, m: int, d: int, q: int, r: float) -> dict:
    from protocols import economics

    hyper = economics.p_all_dishonest_finite(m, d, q) if q <= m else 0.0
    binom = economics.p_all_dishonest(r, q) if r > 0 else 0.0
    if behaviour in COLLUDING:
        expected = hyper
    elif behaviour in ("random", "copy"):
        expected = hyper if q == 1 else 0.0
    else:
        expected = 0.0
    return {"q": q, "all_dishonest_hypergeometric": hyper, "all_dishonest_binomial": binom,
            "expected_undetected": expected}


class Bench:
    def __init__(self, net, max_tokens: int, seed: int):
        import ray

        from actors.engines.tiny import TinyEngine
        from protocols.params import SamplingParams

        self.net, self.ray = net, ray
        self.client = net.client()
        self.econ = net.config.economics
        self.max_tokens = max_tokens
        self.rng = random.Random(seed)
        self.nodes = sorted(net.executors)
        eng = TinyEngine(threads=1)
        eng.load()
        params = SamplingParams(max_tokens=max_tokens)
        self.honest = {p: eng.generate(p, params).token_ids for p in PROMPTS}
        self.rearmed = 0
        self.result_timeout = 20 * net.config.limits.timeout_s + 30

    # --- network state
    def set_cheaters(self, behaviour: str, cheaters: list[str]) -> None:
        ray = self.ray
        ray.get([self.net.executors[n].set_behaviour.remote(behaviour if n in cheaters else "honest")
                 for n in self.nodes])
        self.rearm(force=True)

    def rearm(self, force: bool = False) -> None:
        """Top every node's collateral back up to the configured stake, mark it live."""
        ray, led = self.ray, self.net.ledger
        bal = ray.get(led.balances.remote("collateral/"))
        low = {n: bal.get(f"collateral/{n}", 0) for n in self.nodes if bal.get(f"collateral/{n}", 0) < self.econ.collateral}
        for n, b in low.items():
            ray.get(led.deposit.remote(f"collateral/{n}", self.econ.collateral - b, f"rearm|{n}|{uuid.uuid4().hex}"))
        self.rearmed += len(low)
        if low or force:
            bal = ray.get(led.balances.remote("collateral/"))
            ray.get(self.net.registry.set_stakes.remote({n: bal[f"collateral/{n}"] for n in self.nodes}))
            ray.get([self.net.registry.set_live.remote(n, True) for n in self.nodes])

    # --- one request
    def request(self, mode: str, n: int, p, cheaters: set[str]) -> dict:
        from protocols import commitments, messages

        prompt = self.rng.choice(PROMPTS)
        h = self.client.generate(prompt, mode=mode, n=n, p=p, max_tokens=self.max_tokens)
        try:
            res = h.result(timeout=self.result_timeout)
        except Exception as exc:  # count it and go on: a benchmark reports, it does not stop
            return {"status": "error", "error": f"{type(exc).__name__}: {exc}", "correct": False, "branch": "",
                    "undetected": False, "wrong_resolved": False, "quorum": [], "quorum_cheaters": 0,
                    "referees": [], "slashes": [], "honest_slashed_cheat": [], "honest_slashed_timeout": [],
                    "cheaters_slashed": [], "finality_s": None}
        body = messages.open_envelope(res.receipt, "receipt").body
        rb = messages.open_envelope(body["request"], "request").body
        dec = body["decision"]
        members = dict(res.summary.members)  # id or pseudonym -> role
        if mode == "obfuscated":  # the experimenter unblinds everyone to score the round
            from actors.authority import Signed, bare
            from cluster.control import as_holder

            shard = as_holder(self.net, "aggregator", "aggregator/0")  # (the selector unblinds for a shard only)
            real = self.ray.get(Signed(bare(self.net.selector), shard, "selector").unblind.remote(
                h.request_id, list(members)))
            to_node = {pid: real[pid][0] for pid in members}
        else:
            to_node = {m: m for m in members}
        quorum = [to_node[m] for m, role in members.items() if role == "quorum"]
        honest_c = commitments.output_commitment(h.request_id, rb["model_hash"], rb["prompt_hash"], rb["params"],
                                                 self.honest[prompt])
        slashes = [(to_node.get(s[0], s[0]), s[1]) for s in dec.get("slashes", [])]
        correct = res.summary.commitment == honest_c
        return {
            "status": res.status, "correct": correct, "branch": res.branch,
            "undetected": res.status == "final" and not correct,
            "wrong_resolved": res.status == "resolved" and not correct,
            "quorum": quorum, "quorum_cheaters": sum(x in cheaters for x in quorum),
            "referees": sorted(to_node[m] for m, role in members.items() if role == "referee"),
            "slashes": slashes,
            "honest_slashed_cheat": [nid for nid, why in slashes if nid not in cheaters and why != "timeout"],
            "honest_slashed_timeout": [nid for nid, why in slashes if nid not in cheaters and why == "timeout"],
            "cheaters_slashed": [nid for nid, why in slashes if nid in cheaters],
            "finality_s": res.time_to_finality,
        }


def run(args) -> dict:
    import ray

    from cluster.network import teardown
    from protocols.ledger import check_conservation

    t_deploy = time.time()
    net, ledger_path = common.deploy_network("tiny.toml", nodes=args.nodes or None, malicious={},
                                             timeout_s=args.timeout, reveal_timeout_s=args.timeout, tag="detect")
    m = len(net.executors)
    print(f"deployed {m} tiny nodes in {time.time() - t_deploy:.1f}s", flush=True)
    cells = [CELLS[0], CELLS[3], CELLS[5]] if args.quick else CELLS
    behaviours = [b.strip() for b in args.behaviours.split(",") if b.strip()]
    rs = [float(x) for x in args.r.split(",")]
    results = []
    try:
        bench = Bench(net, args.max_tokens, args.seed)
        for _ in range(2):  # warm every node
            bench.client.generate(PROMPTS[0], n=min(m, net.config.limits.max_n), max_tokens=args.max_tokens).result()
        total = sum((args.silent_requests if b == "silent" else args.requests) * len(cells)
                    for b in behaviours) * len(rs)
        bar = common.progress(total=total, desc="requests")
        for r in rs:
            from protocols import economics

            d = economics.dishonest_count(r, m)
            for beh in behaviours:
                cheaters = sorted(bench.rng.sample(bench.nodes, d))
                bench.set_cheaters(beh, cheaters)
                k = args.silent_requests if beh == "silent" else args.requests
                for label, mode, n, p in cells:
                    q = quorum_size(mode, n)
                    rows = []
                    for _ in range(k):
                        row = bench.request(mode, n, p, set(cheaters))
                        rows.append(row)
                        if row["slashes"]:
                            bench.rearm()
                        bar.update(1)
                    results.append(score(r, m, d, beh, cheaters, label, mode, n, q, rows))
                    bar.set_postfix_str(f"r={r} {beh} {label}")
        bar.close()
        bench.set_cheaters("honest", [])
        balances = ray.get(net.ledger.balances.remote())
        conservation_ok, conservation_err = True, None
        try:
            check_conservation(balances)
        except Exception as exc:  # report, do not assert
            conservation_ok, conservation_err = False, f"{type(exc).__name__}: {exc}"
        chain_ok, chain_err = True, None
        try:
            head = ray.get(net.ledger.verify.remote())
        except Exception as exc:
            chain_ok, chain_err, head = False, f"{type(exc).__name__}: {exc}", b""
        ledger_stats = ray.get(net.ledger.stats.remote())
        rearmed = bench.rearmed
    finally:
        teardown(net)
    return {"nodes": m, "cells": results, "rearmed_nodes": rearmed,
            "ledger": {"conservation_ok": conservation_ok, "conservation_error": conservation_err,
                       "chain_ok": chain_ok, "chain_error": chain_err, "head": head, "stats": ledger_stats,
                       "sum_of_balances": sum(balances.values()), "accounts": len(balances)},
            "ledger_path": ledger_path}


def score(r, m, d, beh, cheaters, label, mode, n, q, rows) -> dict:
    k = len(rows)
    und = sum(x["undetected"] for x in rows)
    captured = sum(x["quorum_cheaters"] == len(x["quorum"]) and len(x["quorum"]) > 0 for x in rows)
    th = theory(beh, m, d, q, r)
    lo, hi = common.wilson(und, k)
    clo, chi = common.wilson(captured, k)
    statuses = {}
    for x in rows:
        statuses[x["status"]] = statuses.get(x["status"], 0) + 1
    return {
        "r": r, "nodes": m, "dishonest": d, "behaviour": beh, "cheaters": cheaters, "cell": label, "mode": mode,
        "n": n, "requests": k, "statuses": statuses, **th,
        "undetected": und, "undetected_rate": und / k if k else 0.0, "undetected_ci95": [lo, hi],
        "theory_inside_ci": lo <= th["expected_undetected"] <= hi,
        "quorum_all_cheaters": captured, "quorum_all_cheaters_rate": captured / k if k else 0.0,
        "quorum_all_cheaters_ci95": [clo, chi],
        "hypergeometric_inside_capture_ci": clo <= th["all_dishonest_hypergeometric"] <= chi,
        "cheater_in_quorum": sum(x["quorum_cheaters"] > 0 for x in rows),
        "wrong_resolved": sum(x["wrong_resolved"] for x in rows),
        "correct": sum(x["correct"] for x in rows),
        "honest_slashed_cheat": sum(len(x["honest_slashed_cheat"]) for x in rows),
        "honest_slashed_timeout": sum(len(x["honest_slashed_timeout"]) for x in rows),
        "cheaters_slashed": sum(len(x["cheaters_slashed"]) for x in rows),
        "finality_s": common.summarize(x["finality_s"] for x in rows),
        "rows": rows,
    }


def plot(result: dict, out_dir: str) -> str:
    import numpy as np

    plt = common.pyplot()
    cells = result["run"]["cells"]
    rs = sorted({c["r"] for c in cells})
    behs = list(dict.fromkeys(c["behaviour"] for c in cells))
    fig, axes = plt.subplots(len(rs), 1, figsize=(max(9, 0.32 * len(cells) / len(rs) + 4), 4.6 * len(rs)),
                             squeeze=False)
    colors = dict(zip(BEHAVIOURS, ["tab:red", "tab:purple", "tab:orange", "tab:brown", "tab:gray"]))
    for row, r in enumerate(rs):
        ax = axes[row][0]
        sub = [c for c in cells if c["r"] == r]
        labels = list(dict.fromkeys(c["cell"] for c in sub))
        width = 0.8 / max(1, len(behs))
        for i, b in enumerate(behs):
            cs = [next((c for c in sub if c["behaviour"] == b and c["cell"] == lab), None) for lab in labels]
            x = np.arange(len(labels)) + (i - (len(behs) - 1) / 2) * width
            y = np.array([c["undetected_rate"] if c else np.nan for c in cs])
            lo = np.array([c["undetected_ci95"][0] if c else np.nan for c in cs])
            hi = np.array([c["undetected_ci95"][1] if c else np.nan for c in cs])
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="o", color=colors.get(b), capsize=2, ms=4,
                        label=f"{b}: measured (95% Wilson)")
            ax.plot(x, [c["expected_undetected"] if c else np.nan for c in cs], "_", color=colors.get(b), ms=14,
                    mew=2)
        hyp = [next(c for c in sub if c["cell"] == lab)["all_dishonest_hypergeometric"] for lab in labels]
        bino = [next(c for c in sub if c["cell"] == lab)["all_dishonest_binomial"] for lab in labels]
        ax.plot(np.arange(len(labels)), hyp, "k*", ms=9, label="C(D,q)/C(M,q) (all-cheater quorum)")
        ax.plot(np.arange(len(labels)), bino, "kx", ms=7, label="r^q (infinite network)")
        d = sub[0]["dishonest"]
        ax.set_title(f"r = {r}: {d} of {sub[0]['nodes']} nodes cheat — undetected (final, wrong) rate; "
                     f"bars: per-behaviour theory")
        ax.set_xticks(np.arange(len(labels)), [f"{lab}\n(q={next(c for c in sub if c['cell'] == lab)['q']})"
                                               for lab in labels], fontsize=8)
        ax.set_ylabel("fraction of requests undetected")
        ax.set_xlabel("cell: mode and quorum size q (members drawn)")
        ax.set_ylim(-0.02, max(0.05, max(max(hyp), max(bino)) * 1.3, max(c["undetected_ci95"][1] for c in sub) * 1.05))
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Detection: how often cheaters' wrong answers end final, measured vs theory", fontsize=10)
    return common.save_png(fig, out_dir, NAME, result.get("machine"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=0, help="M (default: the tiny config's count, 8)")
    ap.add_argument("--r", default="0.25", help="comma-separated dishonest fractions; D = round(r M)")
    ap.add_argument("--behaviours", default=",".join(BEHAVIOURS))
    ap.add_argument("--requests", type=int, default=40, help="K: requests per behaviour and cell")
    ap.add_argument("--silent-requests", type=int, default=12,
                    help="K for `silent` (each draw of a silent node waits out --timeout)")
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--timeout", type=float, default=1.5, help="commit and reveal timeout (s)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 cells, substitute and random, K = 4")
    ap.add_argument("--out", default=f"out/{NAME}")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.silent_requests = 4, 2
        if args.behaviours == ",".join(BEHAVIOURS):
            args.behaviours = "substitute,random"
    for b in args.behaviours.split(","):
        if b.strip() and b.strip() not in BEHAVIOURS:
            ap.error(f"unknown behaviour {b!r}; choose from {BEHAVIOURS}")

    t0 = time.time()
    load0 = common.loadavg()
    ray_info = common.init_ray()
    try:
        run_res = run(args)
    finally:
        common.shutdown_ray(ray_info)
    cells = run_res["cells"]
    result = {"params": vars(args), "machine": common.machine_info(), "loadavg_start": load0, "ray": ray_info,
              "run": run_res, "seconds": time.time() - t0,
              "totals": {
                  "requests": sum(c["requests"] for c in cells),
                  "undetected": sum(c["undetected"] for c in cells),
                  "wrong_resolved": sum(c["wrong_resolved"] for c in cells),
                  "honest_slashed_cheat": sum(c["honest_slashed_cheat"] for c in cells),
                  "honest_slashed_timeout": sum(c["honest_slashed_timeout"] for c in cells),
                  "cheaters_slashed": sum(c["cheaters_slashed"] for c in cells),
                  "theory_inside_ci": sum(c["theory_inside_ci"] for c in cells), "cells": len(cells)}}
    common.write_json(args.out, NAME, result)
    plot(result, args.out)
    print(f"\n{'r':>5s} {'behaviour':10s} {'cell':15s} {'q':>2s} {'K':>4s} {'undet':>6s} {'rate':>6s} "
          f"{'95% CI':>15s} {'theory':>7s} {'C(D,q)/C(M,q)':>13s} {'r^q':>6s} {'captured':>8s} {'wrongRes':>8s} "
          f"{'honSl':>5s}")
    for c in cells:
        print(f"{c['r']:5.2f} {c['behaviour']:10s} {c['cell']:15s} {c['q']:2d} {c['requests']:4d} {c['undetected']:6d} "
              f"{c['undetected_rate']:6.3f} [{c['undetected_ci95'][0]:.3f},{c['undetected_ci95'][1]:.3f}] "
              f"{c['expected_undetected']:7.3f} {c['all_dishonest_hypergeometric']:13.3f} "
              f"{c['all_dishonest_binomial']:6.3f} {c['quorum_all_cheaters']:8d} {c['wrong_resolved']:8d} "
              f"{c['honest_slashed_cheat']:5d}{'' if c['theory_inside_ci'] else '  <- theory outside CI'}")
    t, led = result["totals"], run_res["ledger"]
    print(f"\n{t['requests']} requests: {t['undetected']} undetected, {t['wrong_resolved']} wrong after referees, "
          f"theory inside the 95% CI in {t['theory_inside_ci']}/{t['cells']} cells; honest nodes slashed: "
          f"{t['honest_slashed_cheat']} for cheating (must be 0), {t['honest_slashed_timeout']} for timeouts; "
          f"cheaters slashed {t['cheaters_slashed']}x (re-armed {run_res['rearmed_nodes']}x)")
    print(f"ledger: conservation {'ok' if led['conservation_ok'] else 'VIOLATED: ' + str(led['conservation_error'])}, "
          f"hash chain {'ok' if led['chain_ok'] else 'BROKEN: ' + str(led['chain_error'])}")
    print(f"wrote {args.out}/{NAME}.json and .png in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
