"""Can a client steer its own quorum, or an outsider predict an obfuscated one?

Two draw rules, side by side in the same run (no Ray; the selector's own code):

  public  : seed = H(domain || published beacon || request id || label)  — the rule before VRF draws
  vrf     : seed = H(domain || VRF_selector(request id, label))          — protocols.selection today

Grinding: a client colluding with F of M nodes hashes up to K request ids, each
time computing the draw with everything public (the beacon or the selector's
VRF *public* key, the registry's node list, its request id), and submits the
one its computation says draws only its friends. We count how often the real
draw then is friends-only. Chance is C(F, N) / C(M, N).

Prediction: an outsider holding the same public data predicts an obfuscated
quorum (N+1 members) for a request id it sees; we count exact hits and the mean
number of correctly named members. Chance: 1 / C(M, N+1) and (N+1)^2 / M.

Also: the cost of one VRF proof and one verification (RSA-2048).

    python -m benchmarks.draw_grinding [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from math import comb

from protocols import selection, vrf
from protocols.canonical import sha256

from .common import machine_info, pyplot, save_png, summarize, wilson, write_json


def public_seed(public: bytes, request_id: str, label: str) -> bytes:
    """What anyone can compute from published data (the old beacon rule)."""
    return sha256(b"verinfer/selection/v1|", public, b"|", request_id.encode(), b"|", label.encode())


def grind(pool: list[str], n: int, friends: set[str], public: bytes, budget: int, rng) -> str:
    """The client's best effort: the first of `budget` ids whose publicly computed draw is all friends."""
    last = ""
    for _ in range(budget):
        last = rng.randbytes(16).hex()
        if set(selection.draw(pool, n, public_seed(public, last, "quorum"))) <= friends:
            return last
    return last


def real_draw(rule: str, key: vrf.VrfKey, beacon: bytes, pool: list[str], n: int, rid: str) -> list[str]:
    if rule == "public":
        return selection.draw(pool, n, public_seed(beacon, rid, "quorum"))
    return selection.draw(pool, n, selection.draw_randomness(key, rid, "quorum")[0])


def grinding(key, beacon, pool, n, friends, budget, trials, rng) -> dict:
    out = {}
    for rule in ("public", "vrf"):
        published = beacon if rule == "public" else key.public  # what the attacker can read
        hits = sum(set(real_draw(rule, key, beacon, pool, n, grind(pool, n, friends, published, budget, rng)))
                   <= friends for _ in range(trials))
        lo, hi = wilson(hits, trials)
        out[rule] = {"hits": hits, "trials": trials, "rate": hits / trials, "ci95": [lo, hi]}
    out["chance"] = comb(len(friends), n) / comb(len(pool), n)
    return out


def prediction(key, beacon, pool, n_members, trials, rng) -> dict:
    out = {}
    for rule in ("public", "vrf"):
        published = beacon if rule == "public" else key.public
        exact = named = 0
        for _ in range(trials):
            rid = rng.randbytes(16).hex()
            guess = set(selection.draw(pool, n_members, public_seed(published, rid, "quorum")))
            truth = set(real_draw(rule, key, beacon, pool, n_members, rid))
            exact += guess == truth
            named += len(guess & truth)
        lo, hi = wilson(exact, trials)
        out[rule] = {"exact": exact, "trials": trials, "exact_rate": exact / trials, "ci95": [lo, hi],
                     "members_named_mean": named / trials}
    out["chance_exact"] = 1 / comb(len(pool), n_members)
    out["chance_members_named"] = n_members * n_members / len(pool)
    return out


def vrf_cost(key, reps: int) -> dict:
    prove, check = [], []
    for i in range(reps):
        alpha = vrf.draw_alpha(f"r{i}", "quorum")
        t0 = time.perf_counter()
        _, pi = key.output(alpha)
        t1 = time.perf_counter()
        vrf.verify(key.public, alpha, pi)
        prove.append(t1 - t0)
        check.append(time.perf_counter() - t1)
    return {"prove_s": summarize(prove), "verify_s": summarize(check)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/draw_grinding")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    import random

    rng = random.Random(args.seed)
    trials = 100 if args.quick else 1000
    key, beacon = vrf.VrfKey(), os.urandom(32)
    pool = [f"node-{i:02d}" for i in range(8)]
    friends = {"node-00", "node-01"}
    budgets = [1, 10, 100] if args.quick else [1, 10, 100, 1000]
    t0 = time.time()
    grinds = {b: grinding(key, beacon, pool, 2, friends, b, trials, rng) for b in budgets}
    pred = prediction(key, beacon, pool, 3, trials, rng)
    cost = vrf_cost(key, 50 if args.quick else 300)
    data = {"machine": machine_info(), "seconds": time.time() - t0, "pool": len(pool), "friends": len(friends),
            "n": 2, "obfuscated_members": 3, "grinding_by_budget": grinds, "prediction": pred, "vrf_cost": cost}
    path = write_json(args.out, "draw_grinding", data)

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for rule, style in (("public", "o-"), ("vrf", "s-")):
        rates = [grinds[k][rule]["rate"] for k in budgets]
        err = [[r - grinds[k][rule]["ci95"][0] for k, r in zip(budgets, rates)],
               [grinds[k][rule]["ci95"][1] - r for k, r in zip(budgets, rates)]]
        a.errorbar(budgets, rates, yerr=err, fmt=style, capsize=3,
                   label="public beacon seed" if rule == "public" else "selector VRF seed (now)")
    a.axhline(grinds[budgets[0]]["chance"], ls="--", c="gray", label="chance C(2,2)/C(8,2)")
    a.set_xscale("log"); a.set_xlabel("request ids the client hashes per request"); a.set_ylim(0, 1.05)
    a.set_ylabel("share of requests drawn only from its 2 friends"); a.set_title("grinding a quorum (M=8, N=2)")
    a.legend(fontsize=8)
    labels = ["public beacon seed", "selector VRF seed"]
    b.bar(labels, [pred["public"]["exact_rate"], pred["vrf"]["exact_rate"]], color=["C0", "C1"])
    b.axhline(pred["chance_exact"], ls="--", c="gray", label="chance 1/C(8,3)")
    b.set_ylabel("share of obfuscated quorums predicted exactly"); b.set_ylim(0, 1.05)
    b.set_xlabel("what the draw's seed is")
    b.set_title("outsider predicting N+1=3 of 8"); b.legend(fontsize=8)
    fig.suptitle("Draw grinding: can a client steer or predict its quorum?", fontsize=10)
    png = save_png(fig, args.out, "draw_grinding", data["machine"])
    for k in budgets:
        g = grinds[k]
        print(f"budget {k:>5}: public {g['public']['rate']:.3f}  vrf {g['vrf']['rate']:.3f}  "
              f"(chance {g['chance']:.3f}, {trials} requests)")
    print(f"prediction exact: public {pred['public']['exact_rate']:.3f}  vrf {pred['vrf']['exact_rate']:.4f} "
          f"(chance {pred['chance_exact']:.4f}); members named: vrf {pred['vrf']['members_named_mean']:.2f} "
          f"(chance {pred['chance_members_named']:.2f})")
    print(f"VRF prove p50 {cost['prove_s']['p50'] * 1e3:.2f} ms, verify p50 {cost['verify_s']['p50'] * 1e3:.2f} ms")
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
