"""`verinfer demo`: a whole network on a local Ray cluster, with one cheater.

Deploys the default network (five SmolLM2 nodes, one malicious), serves a few
prompts at different security levels, and prints for each the answer, time to
first output, time to finality and the receipt; then the ledger. Which nodes
serve a request follows from the selector's VRF output over the request id,
which nobody but the selector can compute in advance; the demo runs the network
itself, so as its operator it previews draws with the selector's secret key
(`steer`) to show one request whose quorum includes the cheater and others that
avoid it. A client of someone else's network cannot do this.
"""

from __future__ import annotations

import json
import os
import time
import uuid

from protocols import modes, selection, vrf

# (prompt, N, cheater in the draw?, mode, p, require TEE)
PROMPTS = [
    ("What is the capital of France?", 1, "avoid", "sampling", None, False),
    ("Give me one tip for writing clear code.", 3, "avoid", "sampling", None, False),
    ("Name three primary colors.", 2, "include", "sampling", None, False),
    ("What is 2 + 2?", 2, "avoid", "cross-validation", 1.0, False),
    ("Name a large ocean.", 2, "avoid", "obfuscated", None, False),
    ("Write a haiku about privacy.", 2, "avoid", "sampling", None, True),
]


def operator_vrf_key(net) -> vrf.VrfKey:
    """The selector's secret VRF key: the operator's privilege, for experiments only."""
    import ray

    return vrf.VrfKey(ray.get(net.selector.vrf_secret.remote()))


def steer(key: vrf.VrfKey, pool: list[str], n: int, want: set[str] = frozenset(),
          avoid: set[str] = frozenset(), tries: int = 5000) -> str:
    """A fresh request id whose first draw contains `want` and none of `avoid`
    (a preview with the selector's secret key: only the operator can do it)."""
    for _ in range(tries):
        rid = uuid.uuid4().hex
        seed, _ = selection.draw_randomness(key, rid, "quorum")
        picked = set(selection.draw(pool, n, seed))
        if want <= picked and not (avoid & picked):
            return rid
    raise RuntimeError("no request id draws the wanted nodes")


def run_demo(args) -> int:
    import ray

    from . import config as cfgmod
    from .report import _slashes, print_ledger, print_result, summary_dict
    from .network import deploy, teardown

    from .cli import _progress

    cfg = cfgmod.load(args.config)
    t0 = time.time()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    print(f"verinfer demo: starting a local Ray cluster ({os.cpu_count() or 2} CPUs)…", flush=True)
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, namespace="verinfer-demo",
             log_to_driver=False, configure_logging=False)
    ledger_path = os.path.expanduser(f"~/.verinfer/demo-{time.strftime('%Y%m%d-%H%M%S')}.db")
    print(f"verinfer demo: network {cfg.network.name!r} from {cfg.source}", flush=True)
    net = deploy(cfg, log=_progress(t0), ledger_path=ledger_path)
    print(f"  ready in {time.time() - t0:.1f}s; ledger at {ledger_path}")
    if cfg.malicious:
        print("  malicious (for the demo): " + ", ".join(f"{k}={v}" for k, v in cfg.malicious.items()))
    client = net.client()
    key = operator_vrf_key(net) if cfg.malicious else None
    nodes = ray.get(net.registry.list_nodes.remote())
    report = []
    try:
        for prompt, n, how, mode, p, tee in PROMPTS:
            if tee and not cfg.attestation.enabled:
                continue
            pool = sorted(x["node_id"] for x in nodes if x["live"] and x["stake"] >= cfg.economics.min_stake)
            drawn = modes.spec(mode).members(n)
            if drawn > len(pool):
                continue
            cheaters = set(cfg.malicious) & set(pool)
            rid = None
            if cheaters:
                rid = steer(key, pool, drawn, {min(cheaters)} if how == "include" else set(),
                            cheaters if how == "avoid" else set())
            h = client.generate(prompt, n=n, max_tokens=args.max_tokens, request_id=rid, mode=mode, p=p,
                                require_tee=tee)
            first = h.first_output()
            if first is not None:
                print(f"\n  [{first.seconds:.2f}s] first output from {first.node_id} (provisional): {first.text!r}")
            res = h.result()
            label = {"sampling": f"N={n}", "cross-validation": f"cross-validation N={n} p={p}, {res.branch}",
                     "obfuscated": f"obfuscated N+1={n + 1}"}[mode]
            receipt_path = None
            if tee:
                kinds = sorted(set((res.summary.attested or {}).values()))
                label += f", --require-tee: prompt and output sealed, members attested ({', '.join(kinds)})"
            if res.summary.attested:  # (attested members or referees: a receipt to check offline, as it says)
                receipt_path = os.path.join(os.path.dirname(ledger_path), f"receipt-{res.request_id[:12]}.bin")
                with open(receipt_path, "wb") as f:
                    f.write(res.receipt)
            print_result(res, f"{prompt}   ({label})", receipt_path=receipt_path)
            if res.methods and mode == "cross-validation":
                print("  verified by : " + ", ".join(f"{k} {v}" for k, v in sorted(res.methods.items())))
            report.append(summary_dict(res))
            nodes = ray.get(net.registry.list_nodes.remote())
        balances = ray.get(net.ledger.balances.remote())
        print_ledger(balances, _slashes(net.ledger), False)
        head = ray.get(net.ledger.verify.remote())
        print(f"\nledger hash chain verified, head {head.hex()[:16]}…")
        report += _gateway_demo(net, args, os.path.dirname(ledger_path))
        print(f"total demo time {time.time() - t0:.1f}s")
        if args.json:
            print(json.dumps({"requests": report, "balances": balances}))
    finally:
        if getattr(args, "serve", False):
            from . import gateway

            gateway.stop()
        teardown(net)
        ray.shutdown()
    ok = all(r["status"] in ("final", "resolved") for r in report)
    return 0 if ok else 1


def _free_port(preferred: int) -> int:
    import socket

    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def _gateway_demo(net, args, key_dir: str) -> list[dict]:
    """Start the HTTP gateway, then call it once with curl and once with the openai package."""
    if not getattr(args, "serve", True):
        return []
    import shutil
    import subprocess

    from . import gateway
    from .keys import KeyStore

    keys_file = os.path.join(key_dir, f"demo-keys-{uuid.uuid4().hex[:6]}.db")
    url = gateway.start(net, "127.0.0.1", _free_port(args.port), keys_file=keys_file)
    secret, _ = KeyStore(keys_file).create("demo", "make demo")
    gateway.wait_ready(url)
    print(f"\nOpenAI-compatible gateway at {url}/v1   (demo API key: {secret})")
    print(f"status page at {url}/   (nodes, rounds, slashes, receipts; Prometheus metrics at {url}/metrics)")
    model = net.config.default_model
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Name a colour."}],
                       "max_tokens": 12, "verinfer": {"n": 3}})
    cmd = ["curl", "-s", f"{url}/v1/chat/completions", "-H", f"Authorization: Bearer {secret}",
           "-H", "Content-Type: application/json", "-d", body]
    print("$ " + " ".join(c if " " not in c and "{" not in c else repr(c) for c in cmd))
    out = []
    if shutil.which("curl"):
        got = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout)
    else:  # (no curl on this machine: the same request with httpx)
        import httpx

        got = httpx.post(cmd[2], content=body, timeout=300,
                         headers={"authorization": f"Bearer {secret}", "content-type": "application/json"}).json()
    vi = got.get("verinfer", {})
    print(f"  -> {got['choices'][0]['message']['content']!r}  status {vi.get('status')}, "
          f"paid {vi.get('paid')}, receipt {vi.get('receipt_url')}")
    out.append({"via": "curl", "status": vi.get("status"), "request_id": vi.get("request_id")})
    try:
        import openai
    except ImportError:
        print("  (pip install openai to see the streamed call)")
        return out
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret)
    print(f">>> openai.OpenAI(base_url={url + '/v1'!r}, api_key=KEY).chat.completions.create(..., stream=True)")
    print("  -> ", end="", flush=True)
    last = None
    for chunk in client.chat.completions.create(model=model, max_tokens=16, stream=True,
                                                messages=[{"role": "user", "content": "Say hello."}],
                                                extra_body={"verinfer": {"n": 3}}):
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        last = chunk
    vi = (last.model_extra or {}).get("verinfer", {}) if last is not None else {}
    print(f"\n     final chunk: status {vi.get('status')}, stream held: {vi.get('stream_held')}, "
          f"receipt {vi.get('receipt_url')}")
    print(f"  check a receipt offline: curl -s -H 'Authorization: Bearer KEY' {url}/v1/receipts/ID > r.bin && "
          "verinfer verify r.bin")
    print(f"  see it decoded: {url}/receipts/{vi.get('request_id')}   the network at work: {url}/")
    out.append({"via": "openai", "status": vi.get("status"), "request_id": vi.get("request_id")})
    if getattr(args, "keep", False):
        print(f"\ngateway stays up at {url}/v1, status page at {url}/ (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return out
