"""`verinfer node`: nodes that run outside the network's cluster (cluster/agent.py).

    verinfer node key --out node.key                 the node operator: a key; prints its public half
    verinfer node approve ext-01 --pubkey HEX        the network operator: deposit collateral, approve
    verinfer node run --network URL --key F --config node.toml     the node operator: serve
"""

from __future__ import annotations

from .cli import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, _err, _init_ray


def run(args) -> int:
    """Nodes that run outside the cluster: make a key, approve one (operator), run one."""
    from . import agent

    if args.node_cmd == "key":
        try:
            agent.read_key(args.out, create=True)
        except OSError as exc:
            return _err(f"--out must be a file path in a writable directory: cannot create {args.out} "
                        f"({exc.strerror})", EXIT_USAGE)
        print(agent.public_key(args.out))
        return EXIT_OK
    if args.node_cmd == "run":
        if not args.network.startswith(("http://", "https://")):
            return _err(f"--network must be the gateway's http:// or https:// URL, got {args.network!r}", EXIT_USAGE)
        import aiohttp

        try:
            return agent.main_run(args)
        except (OSError, aiohttp.ClientError) as exc:  # nothing (or no HTTP) answers at the URL
            return _err(f"cannot reach the network at {args.network}: {' '.join(str(exc).split())}",
                        EXIT_UNREACHABLE)
    from . import config as cfgmod
    from .network import connect

    cfg = cfgmod.load(args.config)
    try:
        pub = bytes.fromhex(args.pubkey)
        if len(pub) != 32:
            raise ValueError
    except ValueError:
        return _err("--pubkey must be 64 hex characters (verinfer node key prints it)", EXIT_USAGE)
    model = args.model or cfg.models[0].id
    if model not in {m.id for m in cfg.models}:
        return _err(f"--model {model!r} is not a model of network {cfg.network.name!r}", EXIT_USAGE)
    _init_ray(args.address, cfg.network.namespace)
    import ray

    net = connect(cfg)
    if net.operator is None:
        return _err("approving a node needs the operator's key file (beside the network's secret)", EXIT_USAGE)
    stake = cfg.economics.collateral
    ray.get(net.ledger.deposit.remote(f"collateral/{args.node_id}", stake, f"stake|{args.node_id}"))
    ray.get(net.registry.approve.remote(args.node_id, pub, model, stake))
    print(f"approved {args.node_id} ({model}, collateral {stake}); it joins with: verinfer node run "
          f"--network URL --key FILE --config NODE.toml")
    return EXIT_OK


def add_parser(sub) -> None:
    """Register `node` and its subcommands (key, approve, run)."""
    nd = sub.add_parser("node", help="nodes outside the cluster: key | approve (operator) | run (the node)")
    nsub = nd.add_subparsers(dest="node_cmd", required=True)
    nk = nsub.add_parser("key", help="make a node key file (once) and print its public key")
    nk.add_argument("--out", required=True)
    na = nsub.add_parser("approve", help="the operator lets a node join under its key (deposits its collateral)")
    na.add_argument("node_id")
    na.add_argument("--pubkey", required=True, help="hex, as `verinfer node key` printed it")
    na.add_argument("--model", default=None, help="the model it serves (default: the network's first)")
    na.add_argument("--config", default=None, help="network TOML (default: the repo's default network)")
    na.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    nr = nsub.add_parser("run", help="run a node on this machine and connect it to a network over HTTP")
    nr.add_argument("--network", required=True, help="the gateway's URL, e.g. http://127.0.0.1:8000")
    nr.add_argument("--key", required=True, help="the node's key file (verinfer node key --out FILE)")
    nr.add_argument("--config", required=True, help="the node's TOML config (see cluster/agent.py)")
    nd.set_defaults(fn=run)
    nsub.metavar = "{" + ",".join(nsub.choices) + "}"  # (named so when missing)
