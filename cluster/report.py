"""How results, receipts, the network's keys and the ledger are shown: the CLI, the demo
and the job share it.

Attestation labels (protocols.receipts): "simulated" (the evidence chains to a
simulated root of trust: proves nothing about hardware), "hardware" (it chains
to a hardware vendor's root), "unverified" (no trust root was given, so nothing
was checked), or none (the member was not drawn as an attested node).
"""

from __future__ import annotations

import json


def _hex(b) -> str:
    return b.hex() if isinstance(b, (bytes, bytearray)) else str(b)


LABELS = {
    "simulated": "simulated (a test root of trust signed the evidence: not a real TEE)",
    "hardware": "hardware (the evidence chains to the hardware vendor's root)",
    "unverified": "unverified (no trust root given: the evidence was not checked)",
}
PIN_HINT = "run `verinfer keys network` on the operator's side"


def attestation_dict(res) -> dict:
    """Each member's attestation label ("none": not drawn as an attested node), the trust roots
    (hex) the evidence was checked under, whether the caller pinned them or they are the ones the
    network reported, and a sentence saying so. The same keys as the gateway's `verinfer` object
    (cluster.openai_api.verinfer_object), so a script reads the CLI and the HTTP API alike."""
    s = res.summary
    att = s.attested or {}
    pinned = bool(getattr(res, "roots_pinned", False))
    roots = [_hex(r) for r in getattr(res, "trust_roots", ())]
    if not att:
        note = "no member was attested: this answer was checked by the quorum alone"
    else:
        note = (f"{len(att)} member(s) attested: " + "; ".join(f"{LABELS.get(k, k)}" for k in sorted(set(att.values())))
                + ", checked under the trust root(s) in attestation_checked_under, "
                + ("which you pinned" if pinned else f"as the network reported them (to trust them, {PIN_HINT} and "
                                                     "pass --trust-root HEX)")
                + "; check it offline: verinfer verify RECEIPT --trust-root HEX --aggregator-key HEX")
    return {"attestation": {m: att.get(m, "none") for m in sorted(set(s.members) | set(att))},
            "attestation_checked_under": roots if att else [], "trust_roots_pinned": pinned,
            "attestation_note": note}


def attestation_lines(res, receipt_path: str | None = None) -> list[str]:
    """In plain words: how the members were attested, and how to check that offline."""
    att = res.summary.attested or {}
    if not att:
        return []
    by: dict[str, list[str]] = {}
    for m, label in sorted(att.items()):
        by.setdefault(label, []).append(m)
    roots = [_hex(r) for r in getattr(res, "trust_roots", ())]
    lines = ["  attestation : " + "; ".join(f"{', '.join(ms)} {LABELS.get(k, k)}" for k, ms in sorted(by.items()))]
    if roots:
        lines.append(f"  trust roots : {', '.join(roots)} "
                     + ("(pinned by you)" if getattr(res, "roots_pinned", False) else
                        f"(as the network reported them: to trust them, {PIN_HINT} and pass --trust-root HEX)"))
    pins = " ".join(f"--trust-root {r}" for r in roots) or "--trust-root HEX"
    lines.append(f"  check it    : verinfer verify {receipt_path or 'RECEIPT'} {pins} "
                 f"--aggregator-key {_hex(res.summary.aggregator)}"
                 + ("" if receipt_path else "   (save the receipt with --receipt-out RECEIPT)"))
    return lines


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
        **attestation_dict(res),
    }


def print_result(res, prompt: str | None = None, receipt_path: str | None = None) -> None:
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
    for line in attestation_lines(res, receipt_path):
        print(line)


def print_network_keys(name: str, provider: str, keys: dict, as_json: bool) -> None:
    """`verinfer keys network`: what a client pins (hex), and the commands that pin it."""
    if as_json:
        print(json.dumps({"network": name, "attestation_provider": provider, **keys}))
        return
    kind = {"simulated": "SIMULATED root of trust: proves nothing about hardware",
            "nvidia": "NVIDIA attestation service (NRAS) key", "none": "no attestation provider"}.get(provider, provider)
    print(f"network {name!r}: keys to pin (hex)")
    for r in keys["trust_roots"] or ["(none)"]:
        print(f"  attestation trust root : {r}   ({kind})")
    print(f"  aggregator key         : {keys['aggregator']}   (signs every receipt)")
    print(f"  selector key           : {keys['selector']}   (signs obfuscated rounds' pseudonym records)")
    print(f"  selector VRF key       : {keys['vrf']}   (makes every draw; DER)")
    pins = [f"--aggregator-key {keys['aggregator']}", *(f"--trust-root {r}" for r in keys["trust_roots"]),
            f"--selector-key {keys['vrf']}", f"--selector-key {keys['selector']}"]
    print("check a receipt with them pinned:")
    print("  verinfer verify RECEIPT " + " ".join(pins))


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
