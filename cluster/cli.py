"""`verinfer` command line.

Exit codes (every command): 0 success; 1 a check failed (invalid receipt, a
request that ended unresolved/failed); 2 bad usage, bad config or bad input
(typed verinfer error); 3 no network / no Ray cluster reachable.

Errors are one line on stderr, `verinfer: Type: message`, naming the field or
option and what is allowed, wherever in the cluster the error was found (a typed
error raised inside an actor is unwrapped from Ray's RayTaskError); never a
traceback for a typed error. Bad option values are refused by argparse in one
line too (`verinfer submit: argument --n: must be an integer >= 1, got '0'`).

Why over 400 lines: every subcommand's parser and handler sit here so that each
option's allowed values are declared next to the command that reads them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from protocols.modes import MODES

EXIT_OK, EXIT_CHECK, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_NOT_HEALTHY = 4  # `verinfer status`: some actor is missing, dead or not answering


def _err(msg: str, code: int) -> int:
    print(f"verinfer: {' '.join(str(msg).split())}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported in one line (and exit code 2)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {' '.join(message.split())} (usage: {self.prog} --help)\n")


def _int_in(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"must be an integer {f'from {lo} to {hi}' if hi is not None else f'>= {lo}'}, got {text!r}")
        return v
    return parse


def _float_in(lo: float, hi: float | None = None):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not math.isfinite(v) or v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"must be a number {f'in [{lo:g}, {hi:g}]' if hi is not None else f'>= {lo:g}'}, got {text!r}")
        return v
    return parse


def _hex(size: int | None = None):
    def parse(text: str) -> bytes:
        try:
            v = bytes.fromhex(text)
        except ValueError:
            v = b""
        if not v or (size is not None and len(v) != size):
            raise argparse.ArgumentTypeError(
                f"must be {f'{size} bytes of hex ({2 * size} characters)' if size else 'a key in hex'}, as "
                f"`verinfer keys network` prints it; got {text!r:.80}")
        return v
    return parse


def _init_ray(address: str | None, namespace: str) -> None:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if ray.is_initialized():
        return
    _check_address(address)
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False, configure_logging=False)
    except ValueError as exc:  # (Ray's "Invalid address format")
        raise _UsageError(f"--address must be `auto`, HOST:PORT or ray://HOST:PORT, got {address!r} "
                          f"({exc})") from None


class _UsageError(Exception):
    """A bad option the CLI found itself (exit 2)."""


def _check_address(address: str | None) -> None:
    """An explicit HOST:PORT that nothing answers at fails now, not after Ray's minutes of retries."""
    import socket

    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # (Ray's own check names the format)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {hostport} ({exc.strerror or exc}); is `ray start --head` "
                              "running there? (--address auto finds a local cluster)") from None


def _progress(t0: float):
    """A deploy's step-by-step log line, with the seconds since the command started."""
    return lambda line: print(f"  [{time.time() - t0:5.1f}s] {line}", flush=True)


from .report import (LABELS, PIN_HINT, _slashes, print_ledger, print_network_keys,  # noqa: F401  (re-exported)
                     print_result, summary_dict)


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
    else:
        print(f"deploying network {cfg.network.name!r} from {cfg.source} (namespace {cfg.network.namespace!r})",
              flush=True)
    net = deploy(cfg, detached=True, log=_progress(time.time()), repair=bool(present))
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
    if args.receipt_out:  # refused before anything is paid for
        where = os.path.dirname(os.path.abspath(args.receipt_out))
        if os.path.isdir(args.receipt_out) or not os.path.isdir(where) or not os.access(where, os.W_OK):
            return _err(f"--receipt-out must be a file path in a writable directory, got {args.receipt_out!r}",
                        EXIT_USAGE)
    _init_ray(args.address, cfg.network.namespace)
    client = Client(connect(cfg), trust_roots=args.trust_root)
    h = client.generate(args.prompt, model=args.model, mode=args.mode, n=args.n, max_tokens=args.max_tokens,
                        temperature=args.temperature, p=args.p, require_tee=args.require_tee)
    if not args.json:
        print(f"request {h.request_id} sent; waiting for the first node…", flush=True)
        first = h.first_output()
        if first is not None:
            print(f"first output ({first.seconds:.2f}s, node {first.node_id}, provisional): {first.text!r}")
            print("waiting for the quorum to agree…", flush=True)
    res = h.result()
    if args.receipt_out:
        try:
            with open(args.receipt_out, "wb") as f:
                f.write(res.receipt)
        except OSError as exc:
            return _err(f"cannot write the receipt to {args.receipt_out}: {exc.strerror}", EXIT_USAGE)
    if args.json:
        print(json.dumps(summary_dict(res)))
    else:
        print_result(res, receipt_path=args.receipt_out)
        if args.receipt_out:
            print(f"  receipt written to {args.receipt_out}")
    return EXIT_OK if res.status in ("final", "resolved") else EXIT_CHECK


def cmd_verify(args) -> int:
    from protocols.receipts import verify_receipt

    try:
        raw = open(args.file, "rb").read()
    except OSError as exc:
        return _err(f"cannot read {args.file}: {exc.strerror}", EXIT_USAGE)
    keys, roots, selectors = args.aggregator_key, args.trust_root, args.selector_key
    from protocols.errors import ReceiptInvalid

    try:
        s = verify_receipt(raw, keys, trusted_roots=roots, trusted_selectors=selectors)
    except ReceiptInvalid as exc:
        print(f"INVALID: {' '.join(str(exc).split())}")
        return EXIT_CHECK
    print(f"VALID: request {s.request_id} {s.status}; {len(s.members)} member(s), paid {list(s.paid)}, "
          f"slashed {[list(x) for x in s.slashed]}; signed by aggregator {s.aggregator.hex()[:16]}…")
    if s.attested:
        for label in sorted(set(s.attested.values())):
            print(f"  attested    : {', '.join(sorted(m for m, v in s.attested.items() if v == label))} "
                  f"{LABELS.get(label, label)}")
    if not keys:
        print(f"  aggregator key not pinned (any key that signs a well-formed receipt passes): {PIN_HINT} "
              f"and pass --aggregator-key HEX")
    if s.attested and not roots:
        print(f"  attestation unverified: {PIN_HINT} and pass --trust-root HEX (each root the network's "
              f"evidence chains to)")
    if not selectors:
        print(f"  selector not pinned (the draws were checked against the VRF key the receipt names): {PIN_HINT} "
              f"and pass --selector-key HEX (its VRF key; for obfuscated receipts also its selector key)")
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
    from . import gateway_cli

    p = _Parser(prog="verinfer", description="Verifiable, private LLM inference on Ray.",
                                epilog="exit codes: 0 ok, 1 check failed, 2 bad input/config, 3 unreachable")
    sub = p.add_subparsers(dest="cmd", required=True)
    from cluster.econ_cli import add_parser as add_econ_parser

    add_econ_parser(sub)

    def net_args(sp, address_default="auto"):
        sp.add_argument("--config", default=None, help="network TOML (default: the repo's default network)")
        sp.add_argument("--address", default=address_default, help="Ray cluster address (default: auto)")

    d = sub.add_parser("demo", help="start a local Ray cluster, deploy the default network, serve a few prompts")
    d.add_argument("--config", default=None, help="network TOML (default: SmolLM2 network)")
    d.add_argument("--max-tokens", type=_int_in(1, 4096), default=24)
    d.add_argument("--json", action="store_true", help="also write the demo report as JSON to stdout at the end")
    d.add_argument("--port", type=_int_in(1, 65535), default=8000, help="gateway port (a free one if taken)")
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
    s.add_argument("--trust-root", action="append", type=_hex(),
                   help="hex attestation root key to trust (repeatable; default: the network's own, as it "
                        "reports them: `verinfer keys network` prints them for pinning)")
    s.add_argument("--p", type=_float_in(0, 1), default=None,
                   help="cross-validation: probability of a re-check, in [0, 1]")
    s.add_argument("--n", type=_int_in(1), default=None,
                   help="quorum size (security level), 1 to the network's limits.max_n (default: its default_n)")
    s.add_argument("--max-tokens", type=_int_in(1, 4096), default=32)
    s.add_argument("--temperature", type=_float_in(0, 10), default=0.0,
                   help="0 = greedy; >0 (up to 10) = sampling seeded by request id")
    s.add_argument("--receipt-out", default=None, help="write the signed receipt to this file")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=cmd_submit)

    v = sub.add_parser("verify", help="check a receipt file offline (exit 0 valid, 1 invalid)")
    v.add_argument("file")
    v.add_argument("--aggregator-key", action="append", type=_hex(32),
                   help="hex public key to trust (repeatable; `verinfer keys network` prints it)")
    v.add_argument("--trust-root", action="append", type=_hex(),
                   help="hex attestation root key to require (repeatable; `verinfer keys network` prints them)")
    v.add_argument("--selector-key", action="append", type=_hex(),
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
    sv.add_argument("--port", type=_int_in(1, 65535), default=8000)
    sv.add_argument("--replicas", type=_int_in(1, 64), default=1,
                    help="gateway replicas (stateless apart from caches)")
    sv.add_argument("--capacity", type=_int_in(1), default=64, help="requests in flight before keys wait their turn")
    sv.set_defaults(fn=gateway_cli.cmd_serve)

    k = sub.add_parser("keys", help="API keys of the gateway: create | list | revoke; "
                                    "the network's public keys: network")
    k.add_argument("--config", default=None, help="network TOML (the key database sits next to its ledger)")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)

    def keys_config(sp):  # (also after the subcommand; SUPPRESS keeps one given before it)
        sp.add_argument("--config", default=argparse.SUPPRESS, help="network TOML (as `verinfer keys --config`)")

    kc = ksub.add_parser("create", help="a new key (printed once)")
    keys_config(kc)
    kc.add_argument("--account", required=True, help="ledger account the key pays from")
    kc.add_argument("--name", default="")
    kc.add_argument("--rpm", type=_int_in(1), default=600, help="requests per minute")
    kc.add_argument("--tpm", type=_int_in(1), default=200_000, help="max_tokens per minute")
    kc.add_argument("--concurrent", type=_int_in(1), default=16, help="requests in flight")
    kc.add_argument("--json", action="store_true")
    kc.set_defaults(fn=gateway_cli.cmd_keys)
    kl = ksub.add_parser("list", help="every key (never the secrets)")
    keys_config(kl)
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(fn=gateway_cli.cmd_keys)
    kr = ksub.add_parser("revoke", help="revoke a key by its id (takes effect at once)")
    keys_config(kr)
    kr.add_argument("key_id")
    kr.set_defaults(fn=gateway_cli.cmd_keys)
    kn = ksub.add_parser("network", help="the network's attestation trust roots and its aggregator, selector and "
                                         "VRF keys in hex, to pin in clients and `verinfer verify`")
    keys_config(kn)
    kn.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    kn.add_argument("--json", action="store_true")
    kn.set_defaults(fn=gateway_cli.cmd_keys_network)

    ch = sub.add_parser("chat", help="ask a gateway through the SDK: signed by you, receipt verified by you")
    ch.add_argument("prompt")
    ch.add_argument("--url", default=os.environ.get("VERINFER_URL", "http://127.0.0.1:8000/v1"))
    ch.add_argument("--key", default=os.environ.get("VERINFER_API_KEY"), help="API key (or VERINFER_API_KEY)")
    ch.add_argument("--trust-root", action="append", type=_hex(),
                    help="hex attestation root key to trust (repeatable; `verinfer keys network` prints them)")
    ch.add_argument("--aggregator-key", default=None, type=_hex(32), help="hex key receipts must be signed with")
    ch.add_argument("--model", default=None)
    ch.add_argument("--mode", default=None, choices=list(MODES))
    ch.add_argument("--n", type=_int_in(1), default=None)
    ch.add_argument("--require-tee", action="store_true", help="seal the prompt here, to attested nodes only")
    ch.add_argument("--allow-simulated", action="store_true", help="accept simulated attestation (dev networks)")
    ch.add_argument("--max-tokens", type=_int_in(1, 4096), default=64)
    ch.set_defaults(fn=gateway_cli.cmd_chat)
    for group in (sub, ksub):  # a missing command is named by its choices
        group.metavar = "{" + ",".join(group.choices) + "}"
    return p


def exit_code_for(err) -> int:
    """The exit code of a typed error (see the module docstring)."""
    from protocols.errors import ReceiptInvalid

    if isinstance(err, ReceiptInvalid):
        return EXIT_CHECK
    if "no verinfer network" in str(err) or getattr(err, "status", None) == 0:  # (sdk.GatewayUnreachable)
        return EXIT_UNREACHABLE
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .client_core import one_line, typed_error

    try:
        return args.fn(args)
    except _UsageError as exc:
        return _err(str(exc), EXIT_USAGE)
    except ConnectionError as exc:
        return _err(f"cannot reach the Ray cluster: {exc}", EXIT_UNREACHABLE)
    except Exception as exc:  # a typed error, raised here or in an actor (Ray wraps it): one line
        err = typed_error(exc)
        if err is not None:
            return _err(one_line(err), exit_code_for(err))
        if type(exc).__name__ in ("RaySystemError",) or "Could not find any running Ray instance" in str(exc):
            return _err(f"cannot reach the Ray cluster: {exc}", EXIT_UNREACHABLE)
        raise


if __name__ == "__main__":
    sys.exit(main())
