"""How results, receipts and the ledger are shown: the CLI, the demo and the job share it."""

from __future__ import annotations

import json


def _hex(b) -> str:
    return b.hex() if isinstance(b, (bytes, bytearray)) else str(b)


def summary_dict(res) -> dict:
    s = res.summary
    return {
        "request_id": res.request_id, "status": res.status, "mode": s.mode, "branch": res.branch or None,
        "text": res.text, "token_ids": res.token_ids,
        "time_to_first_output_s": res.time_to_first_output, "time_to_finality_s": res.time_to_finality,
        "receipt": {"commitment": _hex(s.commitment) if s.commitment else None, "n": s.n,
                    "members": s.members, "paid": list(s.paid), "slashed": [list(x) for x in s.slashed],
                    "aggregator": _hex(s.aggregator), "ledger_entries": list(s.ledger_entries),
                    "output_checked": s.output_checked},
    }


def print_result(res, prompt: str | None = None) -> None:
    s = res.summary
    if prompt is not None:
        print(f"\n> {prompt}")
    print(f"  answer      : {res.text!r}")
    ttfo = f"{res.time_to_first_output:.2f}s" if res.time_to_first_output is not None else "-"
    print(f"  first output: {ttfo}   finality: {res.time_to_finality:.2f}s   status: {res.status}")
    roles = {}
    for nid, role in s.members.items():
        roles.setdefault(role, []).append(nid)
    print(f"  receipt     : commitment {_hex(s.commitment)[:16] if s.commitment else '-'}…  "
          + "  ".join(f"{r}={','.join(sorted(v))}" for r, v in sorted(roles.items())))
    if s.slashed:
        print("  slashed     : " + ", ".join(f"{n} ({why})" for n, why in s.slashed))


def print_ledger(balances: dict, slashes: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"balances": balances, "recent_slashes": slashes}, indent=2))
        return
    print("\nledger balances:")
    for acct in sorted(balances):
        if acct.startswith(("collateral/", "rewards/", "treasury")):
            print(f"  {acct:<28} {balances[acct]:>14,}")
    clients = sum(v for k, v in balances.items() if k.startswith("client/"))
    print(f"  {'clients (all)':<28} {clients:>14,}")
    if slashes:
        print("recent slashes:")
        for e in slashes:
            print(f"  {e['reason']:<22} {e['src']:<24} -{e['amount']:,}  request {e['request_id'][:12]}")


def _slashes(ledger) -> list[dict]:
    import ray

    seen, out = set(), []
    for e in ray.get(ledger.recent.remote("slash", 50)):
        if e.src.startswith("collateral/") and (e.request_id, e.src) not in seen:
            seen.add((e.request_id, e.src))
            total = sum(x.amount for x in ray.get(ledger.entries_for.remote(e.request_id))
                        if x.src == e.src and x.reason.startswith("slash"))
            out.append({"request_id": e.request_id, "reason": e.reason, "src": e.src, "amount": total})
    return out
