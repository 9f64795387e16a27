"""The status page, the decoded receipt view and /metrics, served by the gateway.

    GET /  and  /status          the page (cluster/static/status.html: plain HTML, JS and SVG)
    GET /status.json             what it shows: nodes, recent rounds, slashes, keys, totals
    GET /receipts/{id}           a receipt, decoded (cluster/static/receipt.html)
    GET /status/receipts/{id}    that view's data: request, draws, members, decision, ledger, verification
    GET /metrics                 Prometheus text format

Everything comes from the network's read-only methods (registry nodes, ledger
per-node summary and recent slashes, each shard's observed rounds, the gate's
per-key counters, the epoch keeper's status); nothing here changes state.
Receipts carry hashes only (prompt hash, commitments, output digests), so their
view is public; prompts and outputs never appear on the page.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import Any

from actors.authority import bare
from protocols import messages, receipts

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
CACHE_S = 1.0  # status polls within this share one gathering
SERIES = 300  # samples of the totals kept for the charts (one per poll, at most one a second)


def page(name: str) -> str:
    with open(os.path.join(STATIC, name), encoding="utf-8") as f:
        return f.read()


def attestation_label(node: dict) -> str:
    if not node.get("attested") or node.get("attested_until", 0) < time.time():
        return "no"
    return "simulated" if (node.get("attestation") or {}).get("simulated") else "hardware"


class StatusCore:
    """`net`: the gateway's view of the network (registry, ledger, aggregator shards, config);
    `keys`: the API key store; `gate`: the admission actor; `keys_of`: the network's
    trust roots and signing keys (aggregator, selector, VRF) as the gateway's clients hold them."""

    def __init__(self, net: Any, keys: Any, gate: Any, epochs: Any = None):
        self.net, self.keys, self.gate, self.epochs = net, keys, gate, epochs
        self._cached: tuple[float, dict] | None = None
        self._lock = asyncio.Lock()
        self.series: collections.deque = collections.deque(maxlen=SERIES)

    async def _gather(self) -> dict:
        reg, led = bare(self.net.registry), bare(self.net.ledger)
        shards = [bare(h) for h in self.net.aggregator.handles]
        got = await asyncio.gather(reg.list_nodes.remote(), led.node_summary.remote(), led.recent.remote("slash-", 50),
                                   led.stats.remote(), self.gate.stats.remote(),
                                   *(s.observed.remote() for s in shards), return_exceptions=True)
        nodes, summary, slashes, ledger_stats, gate = got[:5]
        observed = [o for o in got[5:] if isinstance(o, dict)]
        epochs = None
        if self.epochs is not None:
            try:
                epochs = await bare(self.epochs).status.remote()
            except Exception:
                epochs = None
        return {"nodes": nodes if isinstance(nodes, list) else [], "summary": summary if isinstance(summary, dict)
                else {}, "slashes": slashes if isinstance(slashes, list) else [],
                "ledger": ledger_stats if isinstance(ledger_stats, dict) else {},
                "gate": gate if isinstance(gate, dict) else {}, "observed": observed, "epochs": epochs,
                "shards_down": len(shards) - len(observed)}

    async def raw(self) -> dict:
        async with self._lock:
            now = time.time()
            if self._cached is None or now - self._cached[0] > CACHE_S:
                self._cached = (now, await self._gather())
            return self._cached[1]

    # --- /status.json
    async def status(self) -> dict:
        g = await self.raw()
        summary = g["summary"]
        min_stake = self.net.config.economics.min_stake
        nodes = []
        for n in g["nodes"]:
            s = summary.get(n["node_id"], {})
            slashed = s.get("slashed", {})
            nodes.append({"node_id": n["node_id"], "model": n["model_id"], "class": n["det_class"],
                          "group": n.get("group") or None, "attested": attestation_label(n), "stake": n["stake"],
                          "live": n["live"], "drawn": n["live"] and n["stake"] >= min_stake,
                          "served": s.get("served", 0), "earned": s.get("earned", 0),
                          "times_slashed": sum(c for c, _ in slashed.values()),
                          "slashed_amount": sum(a for _, a in slashed.values()), "epoch": n.get("epoch", 0),
                          "rejoining": n.get("rejoining", False)})
        rounds = sorted((r for o in g["observed"] for r in o["recent"]), key=lambda r: r["at"], reverse=True)[:50]
        for r in rounds:
            r["receipt"] = f"/receipts/{r['request_id']}"
        totals = collections.Counter()
        for o in g["observed"]:
            for _, status, c in o["requests"]:
                totals[status] += c
        now = time.time()
        ended = sum(totals.values())
        if not self.series or now - self.series[-1][0] >= 1.0:
            fin = [r["finality_s"] for r in rounds if now - r["at"] < 60]
            self.series.append((now, ended, totals.get("final", 0) + totals.get("resolved", 0),
                                sorted(fin)[len(fin) // 2] if fin else None))
        gate = g["gate"]
        keys = []
        names = {k.key_id: k for k in self.keys.list()} if self.keys is not None else {}
        for kid in sorted(set(gate.get("admitted", {})) | set(gate.get("refused", {})) | set(names)):
            k = names.get(kid)
            keys.append({"key_id": kid, "account": k.account if k else None, "name": k.name if k else None,
                         "revoked": bool(k and k.revoked), "admitted": gate.get("admitted", {}).get(kid, 0),
                         "refused": gate.get("refused", {}).get(kid, 0)})
        return {"network": self.net.config.network.name, "at": now, "nodes": nodes, "rounds": rounds,
                "slashes": [{"node_id": e.src.split("/", 1)[-1], "reason": e.reason[len("slash-"):],
                             "amount": e.amount, "request_id": e.request_id, "at": e.at,
                             "receipt": f"/receipts/{e.request_id}"} for e in g["slashes"]
                            if e.reason != "slash-share" and e.src.startswith("collateral/")][:20],
                "keys": keys, "totals": dict(totals),
                "open_rounds": sum(o.get("open", 0) for o in g["observed"]),
                "gate": {k: gate.get(k) for k in ("in_flight", "waiting", "capacity")},
                "shards_down": g["shards_down"],
                "series": [{"t": t, "ended": e, "finalized": f, "p50_finality_s": p} for t, e, f, p in self.series]}

    # --- /metrics
    async def metrics(self) -> str:
        g = await self.raw()
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[dict, float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
                out.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

        def histogram(name: str, help_: str, parts: list[dict]) -> None:
            if not parts:
                return
            buckets = parts[0]["buckets"]
            counts = [sum(p["counts"][i] for p in parts) for i in range(len(buckets))]
            samples, acc = [], 0
            for le, c in zip(buckets, counts):
                acc += c
                samples.append(({"le": repr(float(le))}, acc))
            total = sum(p["count"] for p in parts)
            samples.append(({"le": "+Inf"}, total))
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} histogram")
            for labels, value in samples:
                out.append(f'{name}_bucket{{le="{labels["le"]}"}} {value}')
            out.append(f"{name}_sum {sum(p['sum'] for p in parts)}")
            out.append(f"{name}_count {total}")

        obs = g["observed"]
        by = collections.Counter()
        for o in obs:
            for mode, status, c in o["requests"]:
                by[(mode, status)] += c
        metric("verinfer_requests_total", "counter", "Requests that ended, by mode and status.",
               [({"mode": m, "status": s}, c) for (m, s), c in sorted(by.items())])
        histogram("verinfer_time_to_first_output_seconds", "From submission to the first output.",
                  [o["first_output"] for o in obs])
        histogram("verinfer_finality_seconds", "From submission to the signed receipt.", [o["finality"] for o in obs])
        metric("verinfer_disputes_total", "counter", "Rounds that went to referees.",
               [({}, sum(o["disputes"] for o in obs))])
        slashes = collections.Counter()
        for o in obs:
            slashes.update(o["slashes"])
        metric("verinfer_slashes_total", "counter", "Members slashed, by reason.",
               [({"reason": r}, c) for r, c in sorted(slashes.items())])
        metric("verinfer_timeouts_total", "counter", "Members slashed for a missed deadline.",
               [({}, sum(o["timeouts"] for o in obs))])
        gate = g["gate"]
        metric("verinfer_queue_depth", "gauge", "Requests waiting, by queue.",
               [({"queue": "gateway"}, gate.get("waiting", 0)), ({"queue": "ledger"}, g["ledger"].get("pending", 0))])
        metric("verinfer_in_flight", "gauge", "Requests admitted and not yet answered (gateway), open rounds.",
               [({"where": "gateway"}, gate.get("in_flight", 0)),
                ({"where": "rounds"}, sum(o.get("open", 0) for o in obs))])
        if g["ledger"].get("commit_seconds"):
            histogram("verinfer_ledger_commit_seconds", "One durable group commit of the ledger.",
                      [g["ledger"]["commit_seconds"]])
        nodes = g["nodes"]
        metric("verinfer_nodes", "gauge", "Registered nodes, by state.",
               [({"state": "registered"}, len(nodes)), ({"state": "live"}, sum(1 for n in nodes if n["live"])),
                ({"state": "attested"}, sum(1 for n in nodes if attestation_label(n) != "no"))])
        if g["epochs"]:
            e = g["epochs"]
            metric("verinfer_attestation_renewals_total", "counter", "Node attestation renewals that passed.",
                   [({}, e.get("node_renewals", 0))])
            metric("verinfer_attestation_renewal_failures_total", "counter", "Node attestation renewals that failed.",
                   [({}, e.get("node_renewal_failures", 0))])
        metric("verinfer_aggregator_shards_down", "gauge", "Aggregator shards that did not answer.",
               [({}, g["shards_down"])])
        return "\n".join(out) + "\n"

    # --- a receipt, decoded
    async def receipt(self, request_id: str, trusted: dict) -> dict:
        """Decoded receipt and its offline verification. `trusted`: the aggregator, selector and
        VRF keys and trust roots, as the gateway's clients pin them."""
        fin = await self.net.aggregator.final.remote(request_id)
        raw = fin["receipt"]
        body = messages.open_envelope(raw, "receipt").body
        req = messages.open_envelope(body["request"], "request")
        members = []
        for r in body["results"]:
            env = messages.open_envelope(r, "result")
            members.append({"node_id": env.body["node_id"], "role": env.body["role"],
                            "commit_hash": env.body["commit_hash"].hex(), "method": fin.get("methods", {}).get(
                                env.body["node_id"]), "verdicts": len(env.body.get("verdicts") or [])})
        reveals = {}
        for r in body["reveals"]:
            env = messages.open_envelope(r, "reveal")
            reveals[env.body["node_id"]] = env.body["commitment"].hex()
        for m in members:
            m["commitment"] = reveals.get(m["node_id"])
        try:
            entries = await bare(self.net.ledger).entries_for.remote(request_id)
        except Exception:
            entries = []
        try:
            s = receipts.verify_receipt(raw, [trusted["aggregator"]], trusted_roots=trusted["roots"],
                                        trusted_selectors=[trusted["selector"], trusted["vrf"]])
            verification = {"valid": True, "status": s.status, "paid": list(s.paid),
                            "slashed": [list(x) for x in s.slashed], "attested": s.attested,
                            "tolerance": s.tolerance, "checked_under": {
                                "aggregator_key": trusted["aggregator"].hex(),
                                "trust_roots": [r.hex() for r in trusted["roots"]]}}
        except Exception as exc:
            verification = {"valid": False, "error": f"{type(exc).__name__}: {exc}"}
        rb = req.body
        return {"request_id": request_id, "status": fin.get("status"),
                "request": {"client_id": rb["client_id"], "model_id": rb["model_id"],
                            "model_hash": rb["model_hash"], "mode": rb["mode"], "n": rb["n"],
                            "prompt_hash": rb["prompt_hash"].hex(), "params": rb["params"],
                            "require_tee": rb["require_tee"], "sealed": rb["sealed"]},
                "draws": [{"label": d.get("label"), "det_class": d.get("det_class"), "selected": d.get("selected"),
                           "eligible": len(d.get("eligible") or []), "excluded": d.get("exclude")}
                          for d in body["selection"].get("draws", [])],
                "obfuscated": bool(body["selection"].get("obfuscated")),
                "members": members, "decision": _plain(body["decision"]),
                "ledger": [{"seq": e.seq, "reason": e.reason, "from": e.src, "to": e.dst, "amount": e.amount}
                           for e in entries],
                "verification": verification, "issued_at": body["issued_at"],
                "download": f"/v1/receipts/{request_id}"}


def _plain(v):
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
