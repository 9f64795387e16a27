"""Chaos: requests keep flowing while a loop kill -9s actors of the network.

Runs `--requests` requests (default 1,000) on a tiny network with several
concurrent callers, while a chaos loop SIGKILLs one random actor every
`--interval` seconds: an executor, an aggregator shard, the selector, the
registry or the ledger. Ray restarts each one; what it must not lose it reloads
from its durable store. After every kill two times are taken: until a fresh
probe request finalizes (the network serves again: the recovery time), and
until the killed actor is back (answers again; an executor: drawn again under
fresh keys it proved).

Every request ends one of four ways:
- finalized (final / resolved, receipt verified by the client),
- unresolved, escrow refunded (e.g. its shard died under it),
- refused at submission with a typed error and nothing charged (e.g. not enough
  live nodes while several executors restart),
- lost: anything else (an error after the escrow was taken, an escrow left
  locked, or no answer). The goal is 0.

Then the books: money conserved, the hash chain verified, no escrow left,
no node paid twice for one request, and which slashes hit nodes that were not
killed (goal 0; slashes of killed executors are expected: timeout, or
withholding when one dies between its commit and its reveal, which costs it
its collateral as any withheld reveal does, and keeps it out of draws).

    python -m benchmarks.chaos --out out/chaos            # 1,000 requests
    python -m benchmarks.chaos --quick --out out/chaos    # 150 requests
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
import uuid
from collections import Counter, defaultdict

import ray

from benchmarks import common

TARGETS = ("executor", "aggregator", "selector", "registry", "ledger")


def _pid(handle, timeout: float = 30.0) -> int:
    return ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=timeout)


def _why(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = [ln for ln in str(cause).splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1][:200] if lines else ''}"


async def _caller(client, prompts: asyncio.Queue, outcomes: dict, max_tokens: int, n: int, bar=None):
    while True:
        if bar is not None:
            bar.n = len(outcomes)
            bar.refresh()
        try:
            i = prompts.get_nowait()
        except asyncio.QueueEmpty:
            return
        raw, rid = client.build_request(f"chaos request {i}", n=n, max_tokens=max_tokens)
        t0 = time.time()
        try:
            h = await client.submit_raw(raw, f"chaos request {i}")
        except Exception as exc:  # refused at admission / draw: nothing may have been charged
            outcomes[rid] = {"stage": "submit", "error": _why(exc), "t": t0}
            continue
        try:
            res = await h.result(timeout=120)
            outcomes[rid] = {"stage": "final", "status": res.status, "t": t0, "latency_s": time.time() - t0,
                             "shard": h.submitted.get("shard")}
        except Exception as exc:
            outcomes[rid] = {"stage": "result", "error": _why(exc), "t": t0}


async def _chaos(net, rng: random.Random, interval_s: float, stop: asyncio.Event, kills: list, probe_client,
                 max_tokens: int):
    execs = sorted(net.executors)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
            return
        except asyncio.TimeoutError:
            pass
        kind = rng.choice(TARGETS)
        if kind == "executor":
            name, handle = (lambda nid: (f"node/{nid}", net.executors[nid]))(rng.choice(execs))
        elif kind == "aggregator":
            k = rng.randrange(len(net.aggregator))
            name, handle = f"aggregator/{k}", net.aggregator.handles[k]
        else:
            name, handle = kind, getattr(net, kind)
        try:
            pid = await asyncio.get_running_loop().run_in_executor(None, _pid, handle)
        except Exception as exc:  # still restarting from the last kill
            kills.append({"target": name, "skipped": f"{type(exc).__name__}"})
            continue
        rec = {"target": name, "kind": kind, "pid": pid}
        if kind == "executor":  # it is back once the registry took fresh keys from it
            rec["epoch"] = next(n["epoch"] for n in await net.registry.list_nodes.remote()
                                if n["node_id"] == name.split("/", 1)[1])
        t_kill = time.time()
        os.kill(pid, 9)
        rec["at"] = t_kill
        kills.append(rec)
        # served: a fresh request through the network finalizes (the network recovered);
        # back: the killed actor answers again (an executor: drawn again, under proven fresh keys)
        loop = asyncio.get_running_loop()
        while "served_s" not in rec:
            try:
                h = await probe_client.generate(f"probe {uuid.uuid4().hex[:6]}", n=3, max_tokens=max_tokens)
                if (await h.result(timeout=30)).status in ("final", "resolved"):
                    rec["served_s"] = time.time() - t_kill
            except Exception as exc:
                rec.setdefault("probe_errors", []).append(type(exc).__name__)
                await asyncio.sleep(0.2)
            if time.time() - t_kill > 120:
                rec["served_s"] = None
        while "back_s" not in rec:
            try:
                if kind == "executor":
                    nodes = await net.registry.list_nodes.remote()
                    me = next(n for n in nodes if n["node_id"] == name.split("/", 1)[1])
                    ok = me["live"] and not me.get("rejoining") and me["epoch"] > rec.setdefault("epoch", me["epoch"])
                    if not ok and me["epoch"] > rec["epoch"] and me["stake"] < net.config.economics.min_stake:
                        # it proved its new keys, but died between commit and reveal: slashed for
                        # withholding, below the minimum stake, it is not drawn again (by design)
                        rec["back_s"], rec["out_of_stake"] = None, me["stake"]
                        break
                else:
                    ok = bool(await loop.run_in_executor(None, _pid, handle, 60.0))
                if ok:
                    rec["back_s"] = time.time() - t_kill
            except Exception:
                pass
            if "back_s" not in rec:
                await asyncio.sleep(0.1)
            if time.time() - t_kill > 60:
                rec["back_s"] = None
                if kind == "executor":  # why not: the node's record as the registry has it
                    rec["node_record"] = {k: v for k, v in me.items() if k not in ("pubkey", "kem_pub",
                                                                                   "fingerprint")}
        rec["recovered_s"] = rec["served_s"]


async def _run(net, args) -> dict:
    from cluster.client import AsyncClient

    client = await AsyncClient.create(net)
    probe = await AsyncClient.create(net)
    q: asyncio.Queue = asyncio.Queue()
    for i in range(args.requests):
        q.put_nowait(i)
    outcomes: dict = {}
    kills: list = []
    stop = asyncio.Event()
    rng = random.Random(args.seed)
    t0 = time.time()
    chaos = asyncio.ensure_future(_chaos(net, rng, args.interval, stop, kills, probe, args.max_tokens))
    bar = common.progress(total=args.requests, desc="requests under kill -9s", unit="req")
    await asyncio.gather(*[_caller(client, q, outcomes, args.max_tokens, args.n, bar) for _ in range(args.callers)])
    bar.n = len(outcomes)
    bar.close()
    wall = time.time() - t0
    stop.set()
    await chaos
    return {"outcomes": outcomes, "kills": kills, "wall_s": wall, "client_id": client.client_id,
            "probe_client_id": probe.client_id}


def _books(net, run: dict) -> dict:
    from protocols.ledger import check_conservation

    deadline = time.time() + 180
    while net.aggregator.totals().get("open") and time.time() < deadline:
        time.sleep(0.2)
    balances = ray.get(net.ledger.balances.remote())
    try:
        check_conservation(balances)
        conserved = True
    except Exception:
        conserved = False
    try:
        ray.get(net.ledger.verify.remote())
        chain = True
    except Exception:
        chain = False
    entries, since = [], 0
    while True:
        got = ray.get(net.ledger.entries.remote(since, 10_000))
        if not got:
            break
        entries += got
        since = got[-1].seq
    by_req = defaultdict(list)
    for e in entries:
        by_req[e.request_id].append(e)
    killed_nodes = {k["target"].split("/", 1)[1] for k in run["kills"] if k.get("kind") == "executor"}
    double_paid, honest_slashed, slashes = 0, [], Counter()
    for rid, es in by_req.items():
        paid = Counter(e.dst for e in es if e.reason == "reward")
        double_paid += sum(1 for c in paid.values() if c > 1)
        for e in es:
            if e.reason.startswith("slash-") and e.reason != "slash-share":
                node = e.src.split("/", 1)[1]
                slashes[e.reason] += 1
                if node not in killed_nodes:
                    honest_slashed.append({"request_id": rid, "node": node, "reason": e.reason})
    lost, refunded, refused, finalized, statuses = [], 0, 0, 0, Counter()
    for rid, o in run["outcomes"].items():
        es = by_req.get(rid, [])
        escrowed = sum(e.amount for e in es if e.reason == "escrow")
        back = sum(e.amount for e in es if e.reason == "refund")
        held = balances.get(f"escrow/{rid}", 0)
        if o["stage"] == "final":
            statuses[o["status"]] += 1
            if o["status"] in ("final", "resolved"):
                finalized += 1
            elif o["status"] == "unresolved" and back == escrowed and not held:
                refunded += 1
            else:
                lost.append({"request_id": rid, **o, "escrowed": escrowed, "refunded": back, "held": held})
        elif o["stage"] == "submit" and not escrowed:
            refused += 1
        elif held == 0 and escrowed and back == escrowed:
            refunded += 1  # the call failed, but the round ended and refunded everything
        else:
            lost.append({"request_id": rid, **o, "escrowed": escrowed, "refunded": back, "held": held})
    locked = {k: v for k, v in balances.items() if k.startswith("escrow/") and v}
    return {"finalized": finalized, "unresolved_refunded": refunded, "refused_at_submit": refused,
            "lost": len(lost), "lost_detail": lost[:20], "statuses": dict(statuses),
            "double_payments": double_paid, "escrow_locked": sum(locked.values()), "escrow_locked_accounts":
            len(locked), "money_conserved": conserved, "hash_chain_ok": chain, "entries": len(entries),
            "slashes": dict(slashes), "honest_slashed": len(honest_slashed),
            "honest_slashed_detail": honest_slashed[:20]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--interval", type=float, default=3.0, help="seconds between kills")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="out/chaos")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests = 150
    info = common.init_ray(2)
    from cluster import config as cfgmod
    from cluster.network import deploy, status, teardown

    cfg = cfgmod.load("tiny.toml")
    cfg.network.name = f"chaos-{uuid.uuid4().hex[:6]}"
    cfg.malicious = {}
    cfg.nodes[0].count = args.nodes
    cfg.nodes[0].cpus = 0.05
    cfg.limits.timeout_s, cfg.limits.reveal_timeout_s, cfg.limits.liveness_interval_s = 6.0, 6.0, 0.5
    net = deploy(cfg, ledger_path=os.path.join(tempfile.mkdtemp(), "ledger.db"), log=common.deploy_log)
    try:
        run = asyncio.run(_run(net, args))
        books = _books(net, run)
        health = status(cfg, None)
    finally:
        teardown(net)
    kills = [k for k in run["kills"] if "at" in k]
    rec = [k["recovered_s"] for k in kills if k.get("recovered_s") is not None]
    by_kind, back_by_kind = defaultdict(list), defaultdict(list)
    for k in kills:
        if k.get("recovered_s") is not None:
            by_kind[k["kind"]].append(k["recovered_s"])
        if k.get("back_s") is not None:
            back_by_kind[k["kind"]].append(k["back_s"])
    back = [k["back_s"] for k in kills if k.get("back_s") is not None]
    lat = [o["latency_s"] for o in run["outcomes"].values() if "latency_s" in o]
    result = {
        "config": vars(args), "machine": common.machine_info(), "wall_s": run["wall_s"],
        "requests": len(run["outcomes"]), **books,
        "kills": len(kills), "kills_by_target": dict(Counter(k["kind"] for k in kills)),
        "kills_skipped": sum(1 for k in run["kills"] if "skipped" in k),
        "not_recovered": sum(1 for k in kills if k.get("recovered_s") is None),
        "executors_out_of_stake": sum(1 for k in kills if "out_of_stake" in k),
        "actors_not_back": sum(1 for k in kills if k.get("back_s") is None and "out_of_stake" not in k),
        "recovery_s": common.summarize(rec),
        "recovery_s_by_target": {k: {"p50": common.percentile(v, 50), "max": max(v)} for k, v in by_kind.items()},
        "within_10s": sum(1 for r in rec if r <= 10.0), "latency_s": common.summarize(lat),
        "actor_back_s": common.summarize(back),
        "actor_back_s_by_target": {k: {"p50": common.percentile(v, 50), "max": max(v)}
                                   for k, v in back_by_kind.items()},
        "health_after": health, "kill_log": run["kills"],
        "errors": dict(Counter(f"{o['stage']}: {o['error']}" for o in run["outcomes"].values() if "error" in o)),
    }
    common.write_json(args.out, "chaos", result)
    plt = common.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = ["finalized", "unresolved\nrefunded", "refused at\nsubmit", "lost"]
    vals = [books["finalized"], books["unresolved_refunded"], books["refused_at_submit"], books["lost"]]
    a1.bar(names, vals, color=["tab:green", "tab:orange", "tab:gray", "tab:red"])
    for i, v in enumerate(vals):
        a1.text(i, v, str(v), ha="center", va="bottom")
    a1.set_title(f"{len(run['outcomes'])} requests under {len(kills)} kill -9s: how each ended")
    a1.set_ylabel("requests")
    a1.set_xlabel("how the request ended")
    kinds = sorted(set(by_kind) | set(back_by_kind))
    for i, kd in enumerate(kinds):
        a2.scatter([i - 0.1] * len(by_kind[kd]), by_kind[kd], alpha=0.7, color="tab:blue",
                   label="network serves again" if i == 0 else None)
        a2.scatter([i + 0.1] * len(back_by_kind[kd]), back_by_kind[kd], alpha=0.7, marker="x", color="tab:purple",
                   label="killed actor back" if i == 0 else None)
    a2.axhline(10.0, color="tab:red", ls="--", label="goal: 10 s")
    a2.set_xticks(range(len(kinds)), kinds)
    a2.set_ylabel("seconds after the kill")
    a2.set_xlabel("actor killed (kill -9)")
    a2.set_title(f"recovery: p50 {common.fmt_s(common.percentile(rec, 50)) if rec else '-'}, "
                 f"max {common.fmt_s(max(rec)) if rec else '-'}")
    a2.legend()
    fig.suptitle(f"Chaos: random kill -9s while requests run\nmoney conserved: {books['money_conserved']}, "
                 f"chain ok: {books['hash_chain_ok']}, escrow locked: "
                 f"{books['escrow_locked']}, double payments: {books['double_payments']}, "
                 f"honest slashed: {books['honest_slashed']}")
    fig.tight_layout()
    common.save_png(fig, args.out, "chaos", result["machine"])
    print({k: result[k] for k in ("requests", "finalized", "unresolved_refunded", "refused_at_submit", "lost",
                                  "double_payments", "escrow_locked", "money_conserved", "hash_chain_ok",
                                  "honest_slashed", "kills", "not_recovered", "recovery_s", "actor_back_s",
                                  "actors_not_back", "executors_out_of_stake",
                                  "wall_s")})
    common.shutdown_ray(info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
