"""Is honesty the better strategy at the re-check rate p the economics predict?

Runs the real protocol core, no Ray: for every request a cross-validation
`Round` (protocols.sampling) with an executor and verifiers drawn by
protocols.selection, the coin of protocols.crossval, referees on a dispute,
and the ledger's real settlement rules (protocols.ledger.settlement_postings).
A fraction r of the M nodes are cheaters who collude: as executor they skip the
work and commit a wrong output; as verifiers they agree with a cheating
executor and behave honestly otherwise (attacking an honest executor only gets
them slashed). Disputes go to TEE referees by default (re-execute faithfully),
which is what the whitepaper's lemmas assume; `--referees quorum` draws them
from all nodes instead, and with r = 1/2 a captured referee quorum then often
rules for the cheater — the lemmas do not model that. Every node that computes
pays C per run; a cheater pays
--cheat-cost (0: a free rider).

Per request we record the executor's profit (ledger rewards and slashes, minus
its compute cost), split by honest / cheating executor, for p on a grid. Both
profits are linear in p; least-squares lines give the measured break-even p
(bootstrap 95% CI), compared with the prediction for this protocol:

    honest(p)   = R - C
    cheater(p)  = R - Cc - p (1 - q) (R + S)     q = P(all N verifiers collude)
    p*          = (C - Cc) / ((1 - q)(R + S))

q is hypergeometric: C(D-1, N) / C(M-1, N). With Cc = 0 and N = 1 this is the
whitepaper's Corollary 1, C / ((1-r)(R+S)); with Cc = C it is the lemma form
C / ((1-r)(R+C+S)) (see protocols/economics.py); both are printed.

    python -m benchmarks.crossval_game --out out/crossval_game
"""

from __future__ import annotations

import argparse
import json
import os
import time
from math import comb

import numpy as np

from benchmarks import common
from protocols.canonical import sha256
from protocols import commitments, crossval, economics, selection
from protocols.crypto import SigningKey
from protocols.ledger import Economics, Settlement, Slash, settlement_postings
from protocols.sampling import (CROSS_VALIDATION, Dispatch, DrawReferees, DrawReplacements, DrawVerifiers,
                                Finalize, FlipCoin, RequestReveals, Round)

TRUE = commitments.output_commitment("q", "m" * 64, b"p" * 32, {}, [1, 2, 3])
FAKE = commitments.output_commitment("q", "m" * 64, b"p" * 32, {}, [6, 6, 6])
SALT = b"s" * 32


class Game:
    def __init__(self, m: int, r: float, n: int, econ: Economics, cost: int, cheat_cost: int, seed: int,
                 tee_referees: bool = True):
        self.m, self.n, self.econ, self.cost, self.cheat_cost = m, n, econ, cost, cheat_cost
        self.tee_referees = tee_referees
        self.ids = [f"n{i:04d}" for i in range(m)]
        self.d = economics.dishonest_count(r, m)
        self.cheaters = set(self.ids[: self.d])
        self.keys = {nid: SigningKey(seed.to_bytes(4, "big") + i.to_bytes(28, "big")).public
                     for i, nid in enumerate(self.ids)}
        self.beacon = seed.to_bytes(32, "big")
        self.coin_seed = (seed + 1).to_bytes(32, "big")
        self.balances = {f"collateral/{nid}": econ.collateral for nid in self.ids}

    def _seed(self, rid: str, label: str) -> bytes:
        """Stands in for the selector's VRF output (uniform and unknown to the players)."""
        return selection.seed_of(sha256(self.beacon, rid.encode(), b"|", label.encode()))

    def play(self, rid: str, p: float) -> tuple[bool, int, str]:
        """One request; returns (executor is a cheater, executor profit, outcome)."""
        r = Round(rid, 1, 10.0, 5.0, self.n + 1, mode=CROSS_VALIDATION, verifiers=self.n)
        executor = selection.draw(self.ids, 1, self._seed(rid, "quorum"))[0]
        cheating = executor in self.cheaters
        committed: dict[str, bytes] = {}
        queue = list(r.start([executor], [self.keys[executor]], 0.0))
        outcome = None
        while queue:
            act = queue.pop(0)
            if isinstance(act, Dispatch):
                for nid in act.node_ids:
                    c = committed[nid] = FAKE if nid in self.cheaters and cheating and act.role == "quorum" else TRUE
                    queue += r.on_result(nid, self.keys[nid], commitments.commit_hash(self.keys[nid], c, SALT), 1.0)
            elif isinstance(act, FlipCoin):
                queue += r.on_coin(crossval.flip(self.coin_seed, rid, act.commit_hash, p), 2.0)
            elif isinstance(act, (DrawVerifiers, DrawReferees)):
                label = "verify" if isinstance(act, DrawVerifiers) else "referee"
                pool = [x for x in self.ids if x not in act.exclude
                        and not (label == "referee" and self.tee_referees and x in self.cheaters)]
                picked = selection.draw(pool, act.count, self._seed(rid, label))
                keys = [self.keys[x] for x in picked]
                queue += (r.on_verifiers(picked, keys, 3.0) if label == "verify"
                          else r.on_referees(picked, keys, 4.0))
            elif isinstance(act, RequestReveals):
                for nid in act.node_ids:
                    queue += r.on_reveal(nid, self.keys[nid], committed[nid], SALT, 5.0)
            elif isinstance(act, Finalize):
                outcome = act.outcome
            elif isinstance(act, DrawReplacements):
                raise AssertionError("nobody times out in this game")
        s = Settlement(rid, "client", self.econ.price * (1 + self.n), outcome.paid,
                       tuple(Slash(nid, why) for nid, why in outcome.slashes), outcome.beneficiaries,
                       outcome.referees)
        bal = dict(self.balances, **{f"escrow/{rid}": self.econ.price * (1 + self.n)})
        gain = 0
        for post in settlement_postings(s, bal, self.econ):
            if post.dst == f"rewards/{executor}":
                gain += post.amount
            if post.src == f"collateral/{executor}":
                gain -= post.amount
        gain -= self.cheat_cost if cheating else self.cost  # what running (or faking) the request cost
        return cheating, gain, outcome.status + ":" + outcome.branch


def fit_line(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    a = np.vstack([np.ones_like(p), p]).T
    (b0, b1), *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(b0), float(b1)


def break_even(ph, yh, pc, yc) -> float:
    h0, h1 = fit_line(ph, yh)
    c0, c1 = fit_line(pc, yc)
    return (c0 - h0) / (h1 - c1) if h1 != c1 else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--r", type=float, default=0.5)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--cost", type=int, default=1000, help="C: compute cost of one run (units)")
    ap.add_argument("--reward", type=int, default=1200, help="R: node reward per run (price with no fee)")
    ap.add_argument("--stake", type=int, default=250_000, help="S: collateral slashed from a caught cheater")
    ap.add_argument("--cheat-cost", type=int, default=0, help="Cc: what faking an output costs a cheater")
    ap.add_argument("--requests", type=int, default=50000, help="requests per p value")
    ap.add_argument("--referees", choices=["tee", "quorum"], default="tee",
                    help="tee: disputes go to attested (honest) referees, as the lemmas assume; "
                         "quorum: referees drawn from all nodes, cheaters included")
    ap.add_argument("--grid", type=int, default=7, help="p values from 0 to 3x the predicted threshold")
    ap.add_argument("--bootstrap", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="out/crossval_game")
    args = ap.parse_args(argv)

    econ = Economics(price=args.reward, fee_fraction=0.0, collateral=args.stake, min_stake=1,
                     cheat_slash_fraction=1.0, referee_fraction=0.1)
    game = Game(args.nodes, args.r, args.n, econ, args.cost, args.cheat_cost, args.seed, args.referees == "tee")
    d, m, n = game.d, args.nodes, args.n
    q = comb(d - 1, n) / comb(m - 1, n) if d - 1 >= n else 0.0
    R, C, S, Cc = args.reward, args.cost, args.stake, args.cheat_cost
    predicted = (C - Cc) / ((1 - q) * (R + S))
    grid = np.linspace(0, 3 * predicted, args.grid)
    rows = []
    t0 = time.time()
    bar = common.progress(total=len(grid) * args.requests, desc="requests played", unit="req")
    for gi, p in enumerate(grid):
        bar.set_postfix_str(f"p={p:.5f}")
        for k in range(args.requests):
            cheat, gain, how = game.play(f"g{gi}-{k}", float(p))
            rows.append((float(p), cheat, gain, how))
            bar.update()
    bar.close()
    P = np.array([r[0] for r in rows])
    X = np.array([r[1] for r in rows])
    Y = np.array([r[2] for r in rows], dtype=float)
    ph, yh, pc, yc = P[~X], Y[~X], P[X], Y[X]
    measured = break_even(ph, yh, pc, yc)
    rng = np.random.default_rng(args.seed)
    boots = []
    for _ in range(args.bootstrap):
        ih = rng.integers(0, len(ph), len(ph))
        ic = rng.integers(0, len(pc), len(pc))
        boots.append(break_even(ph[ih], yh[ih], pc[ic], yc[ic]))
    lo, hi = (float(x) for x in np.percentile(boots, [2.5, 97.5]))
    per_p = []
    for p in grid:
        sel_h, sel_c = (ph == p), (pc == p)
        per_p.append({"p": float(p), "honest_profit": float(yh[sel_h].mean()), "honest_n": int(sel_h.sum()),
                      "cheater_profit": float(yc[sel_c].mean()), "cheater_n": int(sel_c.sum()),
                      "cheater_sem": float(yc[sel_c].std(ddof=1) / max(1, sel_c.sum()) ** 0.5),
                      "predicted_honest": R - C, "predicted_cheater": R - Cc - float(p) * (1 - q) * (R + S)})
    result = {
        "params": vars(args), "dishonest_nodes": d, "q_all_verifiers_collude": q,
        "predicted_break_even_p": predicted, "measured_break_even_p": measured, "ci95": [lo, hi],
        "prediction_inside_ci": lo <= predicted <= hi,
        "whitepaper_closed_form": economics.min_p_closed_form(args.r, R, C, S) if n == 1 else None,
        "whitepaper_lemma_form": economics.min_p_lemma_form(args.r, R, C, S) if n == 1 else None,
        "economics_min_p": economics.min_p(args.r, n, R, C, S, H=R, L=R),
        "per_p": per_p, "requests": len(rows), "seconds": time.time() - t0, "machine": common.machine_info(),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "crossval_game.json"), "w") as f:
        json.dump(result, f, indent=2)
    _plot(result, os.path.join(args.out, "crossval_game.png"))
    print(json.dumps({k: result[k] for k in ("predicted_break_even_p", "measured_break_even_p", "ci95",
                                             "prediction_inside_ci", "whitepaper_closed_form",
                                             "whitepaper_lemma_form", "economics_min_p")}, indent=2))
    return 0


def _plot(res: dict, path: str) -> None:
    plt = common.pyplot()
    ps = [r["p"] for r in res["per_p"]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(ps, [r["predicted_honest"] for r in res["per_p"]], "-", color="tab:green", label="honest (predicted)")
    ax.plot(ps, [r["predicted_cheater"] for r in res["per_p"]], "-", color="tab:red", label="cheater (predicted)")
    ax.errorbar(ps, [r["honest_profit"] for r in res["per_p"]], fmt="o", color="tab:green", label="honest (measured)")
    ax.errorbar(ps, [r["cheater_profit"] for r in res["per_p"]], yerr=[1.96 * r["cheater_sem"] for r in res["per_p"]],
                fmt="s", color="tab:red", capsize=3, label="cheater (measured, 95% CI)")
    ax.axvline(res["predicted_break_even_p"], color="k", ls="--", label=f"predicted p* = {res['predicted_break_even_p']:.5f}")
    lo, hi = res["ci95"]
    ax.axvspan(max(lo, -max(ps)), min(hi, 2 * max(ps)), color="grey", alpha=0.2, label=f"measured p* 95% CI [{lo:.5f}, {hi:.5f}]")
    ax.set_xlim(-0.02 * max(ps), 1.05 * max(ps))  # (a wide CI on a small run must not hide the grid)
    ax.set_xlabel("re-check probability p")
    ax.set_ylabel("executor profit per request (price units)")
    ax.set_title("Cross-validation: executor profit vs p")
    ax.legend(fontsize=7)
    common.save_png(fig, os.path.dirname(path) or ".", os.path.splitext(os.path.basename(path))[0],
                    res.get("machine"))


if __name__ == "__main__":
    raise SystemExit(main())
