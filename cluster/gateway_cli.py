"""`verinfer chat`, `verinfer serve` and `verinfer keys`: the gateway's side of the CLI
(cluster/cli.py builds the parser and dispatches here)."""

from __future__ import annotations

import json

from .cli import EXIT_CHECK, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, _err, _init_ray
from .report import print_network_keys, print_result


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
        return _err(f"{type(exc).__name__}: {exc}", EXIT_USAGE if 400 <= exc.status < 500 else EXIT_UNREACHABLE)
    print_result(res)
    return EXIT_OK if res.status in ("final", "resolved") else EXIT_CHECK


def cmd_serve(args) -> int:
    from . import config as cfgmod
    from . import gateway
    from .network import connect

    cfg = cfgmod.load(args.config)
    _init_ray(args.address, cfg.network.namespace)
    net = connect(cfg)
    print(f"starting the HTTP gateway ({args.replicas} replica(s)) on {args.host}:{args.port}…", flush=True)
    url = gateway.start(net, args.host, args.port, capacity=args.capacity, num_replicas=args.replicas,
                        detached=True)
    print(f"verinfer gateway for network {cfg.network.name!r}: {url}/v1  (OpenAI API; keys: verinfer keys create)")
    return EXIT_OK


def cmd_keys(args) -> int:
    from protocols.errors import ConfigError
    from protocols.quota import Quota

    from . import config as cfgmod
    from .gateway import keys_path
    from .keys import KeyStore

    store = KeyStore(keys_path(cfgmod.load(args.config)))
    if args.keys_cmd == "create":
        try:
            quota = Quota(args.rpm, args.tpm, args.concurrent)
        except ValueError as exc:
            return _err(f"InvalidParams: {exc}", EXIT_USAGE)
        try:
            secret, key = store.create(args.account, args.name, quota)
        except ConfigError as exc:
            return _err(f"--account: {exc}", EXIT_USAGE)
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
        return _err(f"no live key {args.key_id!r}: key_id must be one `verinfer keys list` shows as live",
                    EXIT_USAGE)
    print(f"key {args.key_id} revoked")
    return EXIT_OK


def cmd_keys_network(args) -> int:
    """The network's public keys, for pinning (what cluster.client fetches when nothing is pinned)."""
    import ray

    from . import config as cfgmod
    from .client import _keys_refs
    from .network import connect

    cfg = cfgmod.load(args.config)
    _init_ray(args.address, cfg.network.namespace)
    agg, sel, vrf_pub, roots = ray.get(_keys_refs(connect(cfg)))
    print_network_keys(cfg.network.name, cfg.attestation.provider,
                       {"trust_roots": [r.hex() for r in roots], "aggregator": agg.hex(), "selector": sel.hex(),
                        "vrf": vrf_pub.hex()}, args.json)
    return EXIT_OK
