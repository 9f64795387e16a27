"""`verinfer` command line.

Exit codes (every command): 0 success; 1 a check failed (invalid receipt, a
request that ended unresolved/failed); 2 bad usage, bad config or bad input
(typed verinfer error); 3 no network / no Ray cluster reachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from protocols.modes import MODES

EXIT_OK, EXIT_CHECK, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_NOT_HEALTHY = 4  # `verinfer status`: some actor is missing, dead or not answering


def _err(msg: str, code: int) -> int:
    print(f"verinfer: {msg}", file=sys.stderr)
    return code


def _init_ray(address: str | None, namespace: str) -> None:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(address=address, namespace=namespace, log_to_driver=False, configure_logging=False)


from .report import _slashes, print_ledger, print_result, summary_dict  # noqa: F401  (re-exported)


# --- commands -------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_up(args) -> int:
    from . import config as cfgmod
    from .network import deploy, status

    cfg = cfgmod.load(args.config)
    _init_ray(args.address, cfg.network.namespace)
    st = status(cfg, cfg.network.namespace, timeout_s=60.0)
    present = [r for r, v in st["actors"].items() if v != "missing"]
    missing = [r for r, v in st["actors"].items() if v == "missing"]
    if not missing:
        slow = [r for r, v in st["actors"].items() if v != "ok"]
        print(f"network {cfg.network.name!r} is already up"
              + (f" ({', '.join(slow)} not answering yet: Ray restarts crashed actors by itself)" if slow else ""))
        return EXIT_OK
    if present:  # half there: keep what is there, recreate the rest from the durable state
        print(f"network {cfg.network.name!r} is partly up; recreating {', '.join(missing)}")
    net = deploy(cfg, detached=True, log=print, repair=bool(present))
    print(f"network {cfg.network.name!r} is up: {len(net.executors)} nodes, {len(net.aggregator)} aggregator "
          f"shards, models {sorted(net.model_hashes)}")
    return EXIT_OK


def cmd_down(args) -> int:
    from . import config as cfgmod
    from .network import teardown

    cfg = cfgmod.load(args.config)
    _init_ray(args.address, cfg.network.namespace)
    removed = teardown(cfg=cfg, namespace=cfg.network.namespace)
    if not removed:
        return _err(f"no verinfer network {cfg.network.name!r} on this Ray cluster: nothing to remove",
                    EXIT_UNREACHABLE)
    print(f"network {cfg.network.name!r} removed ({len(removed)} actors)")
    return EXIT_OK


def cmd_status(args) -> int:
    import json

    from . import config as cfgmod
    from .network import status

    cfg = cfgmod.load(args.config)
    _init_ray(args.address, cfg.network.namespace)
    st = status(cfg, cfg.network.namespace)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return EXIT_OK if st["healthy"] else EXIT_NOT_HEALTHY
    print(f"network {st['network']!r}: " + ("healthy" if st["healthy"] else "NOT healthy"))
    for role, v in st["actors"].items():
        print(f"  {role:<24} {v}")
    n = st["nodes"]
    print(f"  nodes: {n['live']} live, {n['dead']} dead, {n['attested']} attested, {n['rejoining']} rejoining "
          f"(of {n['total']})")
    print(f"  open rounds: {st['open_rounds']}; escrow held: {st['escrow_held']}")
    if not st["healthy"]:
        print("  run `verinfer up` to repair it")
    return EXIT_OK if st["healthy"] else EXIT_NOT_HEALTHY


def cmd_submit(args) -> int:
    from . import config as cfgmod
    from .client import Client
    from .network import connect

    cfg = cfgmod.load(args.config)
    _init_ray(args.address, cfg.network.namespace)
    try:
        roots = [bytes.fromhex(k) for k in args.trust_root] if args.trust_root else None
    except ValueError:
        return _err("--trust-root must be hex", EXIT_USAGE)
    client = Client(connect(cfg), trust_roots=roots)
    h = client.generate(args.prompt, model=args.model, mode=args.mode, n=args.n, max_tokens=args.max_tokens,
                        temperature=args.temperature, p=args.p, require_tee=args.require_tee)
    if not args.json:
        first = h.first_output()
        if first is not None:
            print(f"first output ({first.seconds:.2f}s, node {first.node_id}, provisional): {first.text!r}")
    res = h.result()
    if args.receipt_out:
        with open(args.receipt_out, "wb") as f:
            f.write(res.receipt)
    if args.json:
        print(json.dumps(summary_dict(res)))
    else:
        print_result(res)
        if args.receipt_out:
            print(f"  receipt written to {args.receipt_out}")
    return EXIT_OK if res.status in ("final", "resolved") else EXIT_CHECK


def cmd_verify(args) -> int:
    from protocols.receipts import verify_receipt

    try:
        raw = open(args.file, "rb").read()
    except OSError as exc:
        return _err(f"cannot read {args.file}: {exc.strerror}", EXIT_USAGE)
    try:
        keys = [bytes.fromhex(k) for k in args.aggregator_key] if args.aggregator_key else None
        roots = [bytes.fromhex(k) for k in args.trust_root] if args.trust_root else None
        selectors = [bytes.fromhex(k) for k in args.selector_key] if args.selector_key else None
    except ValueError:
        return _err("--aggregator-key, --trust-root and --selector-key must be hex", EXIT_USAGE)
    from protocols.errors import ReceiptInvalid

    try:
        s = verify_receipt(raw, keys, trusted_roots=roots, trusted_selectors=selectors)
    except ReceiptInvalid as exc:
        print(f"INVALID: {exc}")
        return EXIT_CHECK
    print(f"VALID: request {s.request_id} {s.status}; {len(s.members)} member(s), paid {list(s.paid)}, "
          f"slashed {[list(x) for x in s.slashed]}; signed by aggregator {s.aggregator.hex()[:16]}…"
          + ("" if keys else " (key not pinned: pass --aggregator-key to trust only a known aggregator)")
          + (f"; attested members: {s.attested}" if s.attested else "")
          + (" (attestation unverified: pass --trust-root)" if s.attested and not roots else ""))
    if s.tolerance is not None:  # a tolerance group's round: the verdict logic was re-checked above
        t = s.tolerance
        print(f"  tolerance group: token margin <= {t['token_margin']:g}, fingerprint "
              + ", ".join(f"{k} {v:g}" for k, v in t["fingerprint"].items())
              + "; accepted by referees: "
              + (", ".join(f"{n}: {list(r)}" for n, r in sorted(s.accepted_by.items()))
                 if "referee" in s.members.values() else "none needed (no dispute)"))
    return EXIT_OK


def cmd_attest(args) -> int:
    """Challenge a node now: fresh nonce, its evidence, the registry's verdict."""
    from . import config as cfgmod
    from .network import attest_all, connect

    cfg = cfgmod.load(args.config)
    _init_ray(args.address, cfg.network.namespace)
    import ray

    net = connect(cfg)
    nodes = sorted(net.executors) if args.node == "all" else [args.node]
    if any(n not in net.executors for n in nodes):
        return _err(f"UnknownNode: no node {args.node!r} in network {cfg.network.name!r}", EXIT_USAGE)
    if not cfg.attestation.enabled:
        return _err("this network's config has no [attestation] provider", EXIT_USAGE)
    if args.rotate:  # a new epoch now: fresh keys, attested before they are used
        if net.epochs is None:
            return _err("this network runs no attestation epochs", EXIT_USAGE)
        results = ray.get(net.epochs.renew.remote(nodes))
    else:
        results = attest_all(net.registry, net.executors, nodes)
    ok = True
    for nid, res in zip(nodes, results):
        node = ray.get(net.registry.describe.remote(nid))
        ok &= res["ok"]
        out = {"node_id": nid, "attested": node["attested"], "attested_until": node["attested_until"],
               **{k: (v.hex() if isinstance(v, bytes) else v) for k, v in res.items()}}
        if args.json:
            print(json.dumps(out))
            continue
        label = "SIMULATED " if res["simulated"] else ""
        print(f"{nid}: {label}attestation {'VALID' if res['ok'] else 'INVALID'} ({res['reason']}): "
              f"{res['detail']}")
        print(f"  evidence digest {res['digest']}  tcb {res['tcb_version']}  device {res['device_id']}"
              + ("  (keys rotated)" if args.rotate else ""))
    return EXIT_OK if ok else EXIT_CHECK


def cmd_ledger(args) -> int:
    from . import config as cfgmod
    from .network import connect

    cfg = cfgmod.load(args.config)
    _init_ray(args.address, cfg.network.namespace)
    import ray

    net = connect(cfg)
    print_ledger(ray.get(net.ledger.balances.remote()), _slashes(net.ledger), args.json)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="verinfer", description="Verifiable, private LLM inference on Ray.",
                                epilog="exit codes: 0 ok, 1 check failed, 2 bad input/config, 3 unreachable")
    sub = p.add_subparsers(dest="cmd", required=True)
    from cluster.econ_cli import add_parser as add_econ_parser

    add_econ_parser(sub)

    def net_args(sp, address_default="auto"):
        sp.add_argument("--config", default=None, help="network TOML (default: the repo's default network)")
        sp.add_argument("--address", default=address_default, help="Ray cluster address (default: auto)")

    d = sub.add_parser("demo", help="start a local Ray cluster, deploy the default network, serve a few prompts")
    d.add_argument("--config", default=None, help="network TOML (default: SmolLM2 network)")
    d.add_argument("--max-tokens", type=int, default=24)
    d.add_argument("--json", action="store_true", help="also write the demo report as JSON to stdout at the end")
    d.add_argument("--port", type=int, default=8000, help="gateway port (a free one if taken)")
    d.add_argument("--no-serve", dest="serve", action="store_false", help="skip the HTTP gateway part")
    d.add_argument("--keep", action="store_true", help="keep the network and gateway up until Ctrl-C")
    d.set_defaults(fn=cmd_demo)

    u = sub.add_parser("up", help="deploy the network as detached actors on an existing Ray cluster "
                                  "(or repair one that is partly there, keeping its state)")
    net_args(u)
    u.set_defaults(fn=cmd_up)
    st = sub.add_parser("status", help="every actor's health, nodes live/dead/attested, open rounds, escrow held "
                                       f"(exit {EXIT_NOT_HEALTHY} when not healthy)")
    net_args(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)
    dn = sub.add_parser("down", help="remove whatever is left of a deployed network")
    net_args(dn)
    dn.set_defaults(fn=cmd_down)

    s = sub.add_parser("submit", help="send one prompt to the network on the current Ray cluster")
    net_args(s)
    s.add_argument("--prompt", required=True)
    s.add_argument("--model", default=None)
    s.add_argument("--mode", default=None, choices=list(MODES),
                   help="sampling: N nodes agree; cross-validation: 1 node, re-checked by N with prob. p; "
                        "obfuscated: N+1 nodes with blinded identities; tee: one attested node")
    s.add_argument("--require-tee", action="store_true", help="serve only on nodes with valid attestation")
    s.add_argument("--trust-root", action="append",
                   help="hex attestation root key to trust (repeatable; default: the network's own)")
    s.add_argument("--p", type=float, default=None, help="cross-validation: probability of a re-check")
    s.add_argument("--n", type=int, default=None, help="quorum size (security level)")
    s.add_argument("--max-tokens", type=int, default=32)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; >0 = sampling seeded by request id")
    s.add_argument("--receipt-out", default=None, help="write the signed receipt to this file")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=cmd_submit)

    v = sub.add_parser("verify", help="check a receipt file offline (exit 0 valid, 1 invalid)")
    v.add_argument("file")
    v.add_argument("--aggregator-key", action="append", help="hex public key to trust (repeatable)")
    v.add_argument("--trust-root", action="append", help="hex attestation root key to require (repeatable)")
    v.add_argument("--selector-key", action="append",
                   help="hex selector key to pin (repeatable): its VRF key (DER) for draws, its Ed25519 key "
                        "for obfuscated pseudonym records")
    v.set_defaults(fn=cmd_verify)

    from cluster.node_cli import add_parser as add_node_parser

    add_node_parser(sub)

    at = sub.add_parser("attest", help="challenge a node now and show its evidence's verification")
    net_args(at)
    at.add_argument("node", help="node id, or `all` (run one attestation epoch for the whole network)")
    at.add_argument("--rotate", action="store_true", help="rotate the node keys first (new epoch)")
    at.add_argument("--json", action="store_true")
    at.set_defaults(fn=cmd_attest)

    lg = sub.add_parser("ledger", help="balances and recent slashes")
    net_args(lg)
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(fn=cmd_ledger)

    sv = sub.add_parser("serve", help="start the OpenAI-compatible HTTP gateway for a deployed network")
    net_args(sv)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--replicas", type=int, default=1, help="gateway replicas (stateless apart from caches)")
    sv.add_argument("--capacity", type=int, default=64, help="requests in flight before keys wait their turn")
    sv.set_defaults(fn=cmd_serve)

    k = sub.add_parser("keys", help="API keys of the gateway: create | list | revoke")
    k.add_argument("--config", default=None, help="network TOML (the key database sits next to its ledger)")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ksub.add_parser("create", help="a new key (printed once)")
    kc.add_argument("--account", required=True, help="ledger account the key pays from")
    kc.add_argument("--name", default="")
    kc.add_argument("--rpm", type=int, default=600, help="requests per minute")
    kc.add_argument("--tpm", type=int, default=200_000, help="max_tokens per minute")
    kc.add_argument("--concurrent", type=int, default=16, help="requests in flight")
    kc.add_argument("--json", action="store_true")
    kc.set_defaults(fn=cmd_keys)
    kl = ksub.add_parser("list", help="every key (never the secrets)")
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(fn=cmd_keys)
    kr = ksub.add_parser("revoke", help="revoke a key by its id (takes effect at once)")
    kr.add_argument("key_id")
    kr.set_defaults(fn=cmd_keys)

    ch = sub.add_parser("chat", help="ask a gateway through the SDK: signed by you, receipt verified by you")
    ch.add_argument("prompt")
    ch.add_argument("--url", default=os.environ.get("VERINFER_URL", "http://127.0.0.1:8000/v1"))
    ch.add_argument("--key", default=os.environ.get("VERINFER_API_KEY"), help="API key (or VERINFER_API_KEY)")
    ch.add_argument("--trust-root", action="append", help="hex attestation root key to trust (repeatable)")
    ch.add_argument("--aggregator-key", default=None, help="hex key receipts must be signed with")
    ch.add_argument("--model", default=None)
    ch.add_argument("--mode", default=None, choices=list(MODES))
    ch.add_argument("--n", type=int, default=None)
    ch.add_argument("--require-tee", action="store_true", help="seal the prompt here, to attested nodes only")
    ch.add_argument("--allow-simulated", action="store_true", help="accept simulated attestation (dev networks)")
    ch.add_argument("--max-tokens", type=int, default=64)
    ch.set_defaults(fn=cmd_chat)
    return p


def cmd_chat(args) -> int:
    from .sdk import GatewayError, Verinfer

    if not args.key:
        return _err("an API key is needed: --key or VERINFER_API_KEY", EXIT_USAGE)
    vi = Verinfer(args.url, args.key, trust_roots=args.trust_root, aggregator_key=args.aggregator_key,
                  allow_simulated=args.allow_simulated)
    try:
        res = vi.chat([{"role": "user", "content": args.prompt}], model=args.model, mode=args.mode, n=args.n,
                      require_tee=args.require_tee, max_tokens=args.max_tokens)
    except GatewayError as exc:
        return _err(str(exc), EXIT_USAGE if 400 <= exc.status < 500 else EXIT_UNREACHABLE)
    print_result(res)
    return EXIT_OK if res.status in ("final", "resolved") else EXIT_CHECK


def cmd_serve(args) -> int:
    from . import config as cfgmod
    from . import gateway
    from .network import connect

    cfg = cfgmod.load(args.config)
    _init_ray(args.address, cfg.network.namespace)
    net = connect(cfg)
    url = gateway.start(net, args.host, args.port, capacity=args.capacity, num_replicas=args.replicas,
                        detached=True)
    print(f"verinfer gateway for network {cfg.network.name!r}: {url}/v1  (OpenAI API; keys: verinfer keys create)")
    return EXIT_OK


def cmd_keys(args) -> int:
    from protocols.quota import Quota

    from . import config as cfgmod
    from .gateway import keys_path
    from .keys import KeyStore

    store = KeyStore(keys_path(cfgmod.load(args.config)))
    if args.keys_cmd == "create":
        try:
            quota = Quota(args.rpm, args.tpm, args.concurrent)
        except ValueError as exc:
            return _err(str(exc), EXIT_USAGE)
        secret, key = store.create(args.account, args.name, quota)
        print(json.dumps({"key": secret, **key.describe()}) if args.json else
              f"{secret}\n  (key {key.key_id}, account {key.account}: shown once, store it now)")
        return EXIT_OK
    if args.keys_cmd == "list":
        keys = [k.describe() for k in store.list()]
        if args.json:
            print(json.dumps(keys))
        for k in keys if not args.json else ():
            state = "revoked" if k["revoked"] else "live"
            print(f"{k['key_id']}  {k['account']:<20} {state:<8} {k['name']}")
        return EXIT_OK
    if not store.revoke(args.key_id):
        return _err(f"no live key {args.key_id!r}", EXIT_USAGE)
    print(f"key {args.key_id} revoked")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from protocols.errors import ConfigError, VerinferError

    try:
        return args.fn(args)
    except ConfigError as exc:
        return _err(f"config: {exc}", EXIT_USAGE)
    except ConnectionError as exc:
        return _err(f"cannot reach the Ray cluster: {exc}", EXIT_UNREACHABLE)
    except VerinferError as exc:
        msg = str(exc)
        code = EXIT_UNREACHABLE if "no verinfer network" in msg else EXIT_USAGE
        return _err(f"{type(exc).__name__}: {msg}", code)
    except Exception as exc:  # Ray wraps remote typed errors; unwrap for the user
        cause = getattr(exc, "cause", None)
        if isinstance(cause, VerinferError):
            return _err(f"{type(cause).__name__}: {cause}", EXIT_USAGE)
        if type(exc).__name__ in ("RaySystemError",) or "Could not find any running Ray instance" in str(exc):
            return _err(f"cannot reach the Ray cluster: {exc}", EXIT_UNREACHABLE)
        raise


if __name__ == "__main__":
    sys.exit(main())
