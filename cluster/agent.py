"""`verinfer node run`: a node that runs outside the network's Ray cluster.

The node's operator runs this on their own machine: no code of theirs runs in the
network's cluster, and the network runs none on theirs. The agent loads the model
in its own process (a NodeExecutor, the same class in-cluster nodes run, without
Ray), joins through the network's node endpoint (cluster/node_endpoint.py) under
the key the network operator approved, attests like any node (challenge, evidence,
verification by the registry), then long-polls for its calls and answers them.
Every call it receives is checked exactly as an in-cluster executor checks it (a
signed envelope of the holder of the right, against the operator's roster); its
results, reveals, stream chunks and registry calls are signed with its own keys.
It is drawn, paid and slashed like any node; if it stops, it times out like one.

    verinfer node key --out node.key              # a fresh key; prints the public half
    verinfer node approve ext-01 --pubkey HEX     # the network operator, once
    verinfer node run --network http://gw:8000 --key node.key --config node.toml

node.toml:

    [node]
    id = "ext-01"
    model = "tiny"            # the registered model id; the engine and its options below
    engine = "tiny"
    threads = 1
    behaviour = "honest"      # experiments only: any NodeExecutor behaviour
    [engine]                  # engine options, as in the network config's [[models]] options
    [attestation]             # how this node attests (omit for none)
    provider = "simulated"    # or "nvidia"
    root_seed = "…"           # simulated only: the network's simulated root (tests, demos)
    tcb_version = 3
    [network]
    operator_key = "…"        # pin the operator's key (hex); else the roster's signer is trusted on first use
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import tomllib
from typing import Any, Callable

from actors.executor import NodeExecutor
from actors.remote_node import Opaque, unwire, wire
from protocols import authority as au
from protocols import messages
from protocols.crypto import SigningKey
from protocols.errors import ConfigError, VerinferError

from .node_endpoint import AUTH_HEADER, auth_header

RETRY_S = 1.0


def load_config(path: str) -> dict:
    """The agent's config file, checked: one line naming the field on any error."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read node config {path}: {exc}") from None
    node = raw.get("node")
    if not isinstance(node, dict):
        raise ConfigError("node config: a [node] table with id, model and engine is required")
    for k in ("id", "model", "engine"):
        if not isinstance(node.get(k), str) or not node[k]:
            raise ConfigError(f"node config: node.{k} must be a non-empty string")
    threads = node.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError("node config: node.threads must be an integer >= 1")
    from actors.executor import BEHAVIOURS

    if node.get("behaviour", "honest") not in BEHAVIOURS:
        raise ConfigError(f"node config: node.behaviour must be one of {sorted(BEHAVIOURS)}")
    att = dict(raw.get("attestation") or {})
    if att and att.get("provider") not in ("simulated", "nvidia"):
        raise ConfigError("node config: attestation.provider must be \"simulated\" or \"nvidia\"")
    if att.get("provider") == "simulated":
        try:
            att["root_seed"] = bytes.fromhex(att.get("root_seed", ""))
            if len(att["root_seed"]) != 32:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError("node config: attestation.root_seed must be 64 hex characters") from None
    pin = (raw.get("network") or {}).get("operator_key")
    if pin is not None:
        try:
            if len(bytes.fromhex(pin)) != 32:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError("node config: network.operator_key must be 64 hex characters") from None
    return {"id": node["id"], "model": node["model"], "engine": node["engine"], "threads": threads,
            "dtype": node.get("dtype", ""), "behaviour": node.get("behaviour", "honest"),
            "options": dict(raw.get("engine") or {}), "attestation": att, "operator_key": pin}


def read_key(path: str, create: bool = False) -> SigningKey:
    if create and not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    try:
        with open(path, "rb") as f:
            seed = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read node key {path}: {exc.strerror}") from None
    if len(seed) != 32:
        raise ConfigError(f"node key {path}: 32 bytes expected (verinfer node key --out {path} makes one)")
    return SigningKey(seed)


class Link:
    """The agent's HTTP side: signed POSTs to the node endpoint (aiohttp: comes with Ray)."""

    def __init__(self, url: str, node_id: str, network: str, key: Callable[[], SigningKey]):
        self.url, self.node_id, self.network, self._key = url.rstrip("/"), node_id, network, key
        self._http = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def session(self):
        import aiohttp

        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
            self.loop = asyncio.get_running_loop()
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def network_info(self) -> dict:
        http = await self.session()
        async with http.get(f"{self.url}/v1/nodes/network") as r:
            if r.status != 200:
                raise VerinferError(f"{self.url} has no node endpoint (HTTP {r.status})")
            return unwire(await r.read())

    async def post(self, action: str, body: Any, key: SigningKey | None = None) -> Any:
        data = wire(body)
        signer = au.Signer(key or self._key(), au.NODE, self.node_id, self.network)
        header = auth_header(signer, action, self.node_id, data, time.time(), os.urandom(16))
        http = await self.session()
        async with http.post(f"{self.url}/v1/nodes/{self.node_id}/{action}", data=data,
                             headers={AUTH_HEADER: header, "content-type": "application/msgpack"}) as r:
            got = unwire(await r.read())
        if isinstance(got, BaseException):
            raise got
        return got

    def relay(self, to: str, method: str, args: tuple, kwargs: dict, shard: int = 0):
        return self.post("relay", {"to": to, "method": method, "args": list(args), "kwargs": kwargs, "shard": shard})

    def stub(self, to: str, shard: int = 0) -> "_Stub":
        return _Stub(self, to, shard)


class _Stub:
    """Looks like a Ray handle to the executor: `x.method.remote(...)` relays through the
    endpoint. From the event loop it returns a task; from the engine thread (stream chunks)
    a concurrent future of one."""

    def __init__(self, link: Link, to: str, shard: int):
        self._link, self._to, self._shard = link, to, shard

    def __getattr__(self, method: str):
        if method.startswith("_") or method == "to_wire":
            raise AttributeError(method)
        link, to, shard = self._link, self._to, self._shard

        class _M:
            @staticmethod
            def remote(*args, **kwargs):
                coro = link.relay(to, method, args, kwargs, shard)
                try:
                    asyncio.get_running_loop()
                    return asyncio.ensure_future(coro)
                except RuntimeError:  # the engine thread
                    return asyncio.run_coroutine_threadsafe(coro, link.loop)
        return _M()


class AgentExecutor(NodeExecutor):
    """A NodeExecutor whose pushes and registry calls travel through the node endpoint."""

    def __init__(self, *args, link: Link, **kwargs):
        self._link = link
        super().__init__(*args, **kwargs)

    def _aggregator(self, request_id: str):
        return self._link.stub("aggregator", self._reply_of.get(request_id, 0))

    async def unlock(self, registry=None, auth=None) -> None:
        """Encrypted weights: as NodeExecutor.unlock, through the endpoint to the registry (the
        caller's handle cannot travel; a signed call does not bind it)."""
        return await NodeExecutor.unlock(self, self._link.stub("registry"), auth=auth)


async def _attest(ex: AgentExecutor, link: Link, node_id: str, log) -> None:
    nonce = await link.relay("registry", "challenge", (node_id,), {"auth": ex._call("challenge", node_id)})
    evidence = ex.attest(nonce)
    res = await link.relay("registry", "attest", (node_id, evidence), {"auth": ex._call("attest", node_id, evidence)})
    log(f"attested: {res.get('ok')} ({res.get('reason')}{', SIMULATED root' if res.get('simulated') else ''})")


async def run(url: str, key_path: str, config_path: str, log: Callable[[str], None] = print,
              stop: asyncio.Event | None = None) -> int:
    cfg = load_config(config_path)
    key = read_key(key_path)
    node_id = cfg["id"]
    holder: dict = {}
    link = Link(url, node_id, "", lambda: holder["ex"].key if "ex" in holder else key)
    try:
        info = await link.network_info()
        link.network = info["network"]
        roster = info["roster"]
        if cfg["operator_key"]:
            operators = [bytes.fromhex(cfg["operator_key"])]
        else:  # trust on first use: the roster's signer is the operator from now on
            operators = [messages.open_envelope(roster, "roster").sender]
            log(f"trusting operator key {operators[0].hex()} (pin it: [network] operator_key)")
        spec = {"engine": cfg["engine"], **cfg["options"], "threads": cfg["threads"]}
        if cfg["dtype"]:
            spec["dtype"] = cfg["dtype"]
        control = {"network": link.network, "operators": operators, "roster": roster, "role": "node",
                   "holder": node_id, "target": node_id}
        ex = AgentExecutor(node_id, spec, cfg["behaviour"], key_seed=key.seed,
                           attestation=cfg["attestation"] or None, control=control, link=link)
        holder["ex"] = ex
        if not ex.gate.roster_raw:
            raise VerinferError("the endpoint's roster is not signed by the operator this node trusts")
        desc = await ex.ready()
        log(f"{node_id}: engine {cfg['engine']} loaded, model hash {desc['fingerprint']['model_hash'][:16]}…")
        name = f"{link.network}/node/{node_id}"
        joined = await link.post("join", {"kem_pub": desc["kem_pub"], "fingerprint": desc["fingerprint"],
                                          "auth": ex._call("join", node_id, desc["kem_pub"], desc["fingerprint"],
                                                           Opaque(), name)}, key=key)
        if bytes(joined["pubkey"]) != ex.key.public or bytes(joined["kem_pub"]) != ex.kem.public:
            # known from an earlier run: prove this run's keys the way a restarted node does
            got = await link.relay("registry", "rejoin", (node_id,), {})
            log(f"{node_id}: rejoined ({got.get('reason') or 'keys proven'})")
        elif cfg["attestation"]:
            await _attest(ex, link, node_id, log)
        log(f"{node_id}: joined {link.network} at {url}; serving")
        return await _serve(ex, link, stop)
    finally:
        await link.close()


async def _serve(ex: AgentExecutor, link: Link, stop: asyncio.Event | None) -> int:
    tasks: set = set()
    while stop is None or not stop.is_set():
        try:
            calls = await link.post("poll", {"wait_s": 20.0})
        except Exception:  # the network is restarting, or our key is switching: try again
            await asyncio.sleep(RETRY_S)
            continue
        for c in calls:
            t = asyncio.ensure_future(_answer(ex, link, c))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    return 0


async def _answer(ex: AgentExecutor, link: Link, call: dict) -> None:
    try:
        fn = getattr(ex, call["method"])
        got = fn(*call["args"], **call["kwargs"])
        if asyncio.iscoroutine(got):
            got = await got
        reply = {"id": call["id"], "ok": True, "value": got}
    except Exception as exc:
        reply = {"id": call["id"], "ok": False, "value": exc if isinstance(exc, VerinferError) else
                 VerinferError(f"{type(exc).__name__}: {exc}")}
    for _ in range(3):
        try:
            await link.post("reply", [reply])
            return
        except Exception:
            await asyncio.sleep(RETRY_S)


def main_run(args) -> int:
    """`verinfer node run` (foreground; Ctrl-C stops it)."""
    try:
        return asyncio.run(run(args.network, args.key, args.config))
    except KeyboardInterrupt:
        return 0


def public_key(path: str) -> str:
    return base64.b16encode(read_key(path).public).decode().lower()
