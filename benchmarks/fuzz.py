"""Fuzzing every entry point: how many adversarial inputs crash it or get accepted.

In-process, no Ray. The entry points and the oracle are the adversarial suite's
(tests/adversary.py): requests at the aggregator and at a node, the replay rule,
results, reveals, refusals, chunks, raw envelopes, tickets, unblinding answers,
simulated and NVIDIA attestation evidence, sealed prompts, weights keys, receipts,
ledger calls and the gateway's HTTP bodies. Each case is a seeded mutant of a valid
input built with the project's own builders (bit flips, truncation, extension,
fields re-typed, deleted, added or swapped, edge values, deep nesting, oversize,
re-signed by a forger or by the genuine signer, replayed, re-addressed) or raw
noise, fed the way the entry point's caller feeds it.

Per entry point it reports crashes (an exception that is not a VerinferError;
goal 0), acceptances (a case built to be refused that was accepted, or a refusal
that changed state: replay guard, seen nonces, ledger balances/head/tables; goal
0), and, for context, equivalents (accepted, but saying exactly what the valid
original says, e.g. a non-canonical re-encoding), valid cases (a random HTTP body
that is a well-formed request, an insider's re-signed claim the verifier cannot
check) and the typed errors the refusals carried.

    python -m benchmarks.fuzz                       # 100,000 cases over every entry point
    python -m benchmarks.fuzz --cases 5000 --only receipt,ledger --seed 7
    python -m benchmarks.fuzz --quick               # 3,000 cases
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import tempfile
import time
import traceback
import zlib

from benchmarks import common

NAME = "fuzz"
EXAMPLES_PER_SIGNATURE = 3


def _where(exc: BaseException) -> str:
    """The innermost frame in this project's code (protocols/, cluster/, actors/, tests/)."""
    frames = traceback.extract_tb(exc.__traceback__)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mine = [f for f in frames if f.filename.startswith(here)] or frames
    f = mine[-1]
    return f"{os.path.relpath(f.filename, here)}:{f.lineno}"


def fuzz_entry_point(ep, n: int, seed: int, bar=None) -> dict:
    from tests import adversary as A

    r = random.Random(seed ^ zlib.crc32(ep.name.encode()))
    verdicts: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    crashes: dict[str, dict] = {}
    findings: dict[str, dict] = {}
    t0 = time.perf_counter()
    for _ in range(n):
        case = ep.make(r)
        kinds[case.kind.split(":")[0].split("+")[0]] += 1
        try:
            verdict, why = A.run_case(ep, case)
            ep.check()
        except Exception as exc:  # a crash: anything that is not the entry point's typed error
            sig = f"{type(exc).__name__} at {_where(exc)}"
            c = crashes.setdefault(sig, {"count": 0, "examples": []})
            c["count"] += 1
            if len(c["examples"]) < EXAMPLES_PER_SIGNATURE:
                c["examples"].append({"kind": case.kind, "error": str(exc)[:200], "input": repr(case.data)[:300]})
            verdicts["crash"] += 1
        else:
            verdicts[verdict] += 1
            if why:
                reasons[why] += 1
            if verdict in A.FINDINGS:
                f = findings.setdefault(f"{verdict}: {case.kind}", {"count": 0, "examples": []})
                f["count"] += 1
                if len(f["examples"]) < EXAMPLES_PER_SIGNATURE:
                    f["examples"].append(repr(case.data)[:300])
        if bar is not None:
            bar.update(1)
    seconds = time.perf_counter() - t0
    audit = "ok"
    try:
        ep.audit()
    except Exception as exc:
        audit = f"{type(exc).__name__}: {exc}"
    return {"cases": n, "seconds": seconds, "cases_per_s": n / seconds if seconds else None,
            "crashes": verdicts["crash"], "acceptances": verdicts[A.ACCEPTED],
            "state_changes": verdicts[A.STATE_CHANGED], "rejected": verdicts[A.REJECTED],
            "equivalent": verdicts[A.EQUIVALENT], "valid": verdicts[A.VALID], "audit": audit,
            "crash_signatures": crashes, "findings": findings, "rejection_reasons": dict(reasons.most_common(12)),
            "mutation_kinds": dict(kinds.most_common(20))}


def split(cases: int, eps: dict) -> dict[str, int]:
    """Cases per entry point, by weight (every one gets at least one)."""
    total = sum(ep.weight for ep in eps.values())
    counts = {name: max(1, int(cases * ep.weight / total)) for name, ep in eps.items()}
    rest = cases - sum(counts.values())
    for name in list(counts)[:max(0, rest)]:
        counts[name] += 1
    return counts


def plot(result: dict, out_dir: str) -> str:
    plt = common.pyplot()
    rows = result["entry_points"]
    names = list(rows)
    y = list(range(len(names)))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 0.38 * len(names) + 1.8), sharey=True)
    h = 0.27
    for k, (key, color) in enumerate((("crashes", "tab:red"), ("acceptances", "tab:orange"),
                                      ("state_changes", "tab:purple"))):
        vals = [rows[n][key] for n in names]
        ax.barh([i + (k - 1) * h for i in y], vals, height=h, color=color, label=key.replace("_", " "))
        for i, v in zip(y, vals):
            ax.text(max(v, 0) + 0.05, i + (k - 1) * h, str(v), va="center", fontsize=7)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, max([1] + [rows[n][k] for n in names for k in ("crashes", "acceptances", "state_changes")]) * 1.3)
    ax.set_xlabel("cases (count; goal: 0)")
    ax.set_ylabel("entry point")
    t = result["totals"]
    ax.set_title(f"crashes {t['crashes']}, acceptances {t['acceptances']}, state changes {t['state_changes']} "
                 f"of {t['cases']:,} cases")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="lower right")
    left = [0.0] * len(names)
    for key, color in (("rejected", "tab:green"), ("equivalent", "tab:blue"), ("valid", "tab:gray"),
                       ("acceptances", "tab:orange"), ("crashes", "tab:red")):
        share = [100 * rows[n][key] / rows[n]["cases"] for n in names]
        ax2.barh(y, share, left=left, color=color, label=key)
        left = [a + b for a, b in zip(left, share)]
    ax2.set_xlim(0, 100)
    ax2.set_xlabel("% of the entry point's cases")
    ax2.set_title("what became of the cases")
    ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # (beside: below, it hid the label)
    fig.suptitle("Fuzzing every entry point with malformed, replayed and forged input", fontsize=10)
    return common.save_png(fig, out_dir, NAME, result.get("machine"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000, help="cases in all, spread over the entry points by weight")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated entry points (default: all)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3,000 cases")
    ap.add_argument("--out", default=f"out/{NAME}")
    args = ap.parse_args(argv)
    cases = 3000 if args.quick else args.cases
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if here not in sys.path:  # (the table lives with the tests)
        sys.path.insert(0, here)
    from tests import adversary as A

    t0 = time.time()
    load0 = common.loadavg()
    eps = A.build(tempfile.mkdtemp(prefix="verinfer-fuzz-"))
    build_s = time.time() - t0
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = set(wanted) - set(eps)
        if unknown:
            ap.error(f"unknown entry points {sorted(unknown)}; have {sorted(eps)}")
        eps = {k: eps[k] for k in wanted}
    counts = split(cases, eps)
    rows = {}
    with common.progress(total=sum(counts.values()), desc="fuzz", unit="case") as bar:
        for name, ep in eps.items():
            bar.set_postfix_str(name)
            rows[name] = fuzz_entry_point(ep, counts[name], args.seed, bar)
    totals = {k: sum(r[k] for r in rows.values())
              for k in ("cases", "crashes", "acceptances", "state_changes", "rejected", "equivalent", "valid")}
    totals["seconds"] = sum(r["seconds"] for r in rows.values())
    result = {"params": vars(args), "cases": cases, "machine": common.machine_info(), "loadavg_start": load0,
              "loadavg_end": common.loadavg(), "build_s": build_s, "entry_points": rows, "totals": totals,
              "goals": {"crashes": 0, "acceptances": 0,
                        "met": totals["crashes"] == 0 and totals["acceptances"] + totals["state_changes"] == 0
                        and all(r["audit"] == "ok" for r in rows.values())},
              "seconds": time.time() - t0}
    common.write_json(args.out, NAME, result)
    plot(result, args.out)
    print(f"{'entry point':<20s} {'cases':>7s} {'crash':>6s} {'accept':>6s} {'state':>6s} {'equiv':>6s} "
          f"{'valid':>6s} {'case/s':>7s}  top refusals")
    for name, r in rows.items():
        top = ", ".join(f"{k} {v}" for k, v in list(r["rejection_reasons"].items())[:3])
        print(f"{name:<20s} {r['cases']:7d} {r['crashes']:6d} {r['acceptances']:6d} {r['state_changes']:6d} "
              f"{r['equivalent']:6d} {r['valid']:6d} {r['cases_per_s']:7.0f}  {top}")
        for sig, c in r["crash_signatures"].items():
            print(f"    CRASH x{c['count']}: {sig}  e.g. {c['examples'][0]['kind']}: {c['examples'][0]['error']}")
        for sig, f in r["findings"].items():
            print(f"    FINDING x{f['count']}: {sig}")
        if r["audit"] != "ok":
            print(f"    AUDIT FAILED: {r['audit']}")
    print(f"total: {totals['cases']:,} cases, {totals['crashes']} crashes, {totals['acceptances']} acceptances, "
          f"{totals['state_changes']} state changes (goal 0, 0, 0: {'met' if result['goals']['met'] else 'MISSED'}); "
          f"fuzzing {totals['seconds']:.0f}s, setup {build_s:.1f}s")
    print(f"wrote {args.out}/{NAME}.json and .png in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
