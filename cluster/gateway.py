"""The HTTP gateway: OpenAI's API on Ray Serve, in front of one verinfer network.

    verinfer serve [--config F] [--host 127.0.0.1] [--port 8000]

Endpoints (OpenAI request, response and error schemas; cluster.openai_api):
  GET  /v1/models                    registered models + verinfer metadata
  POST /v1/chat/completions          chat (rendered with the model's template)
  POST /v1/completions               text completion
  GET  /v1/receipts/{request_id}     the signed receipt (msgpack; ?format=json decoded)
  GET  /v1/attestation/report        fresh evidence of a model's attested nodes
  GET  /healthz

Every call needs `Authorization: Bearer vi-…` (cluster.keys). For a key the
gateway signs requests on its account's behalf; a request's `verinfer.request`
may instead carry an envelope the caller signed itself. Limits per key and a
fair share of the network (actors.gate) are checked before any escrow; the
account's balance too. The gateway verifies every receipt (cluster.client_core)
before it answers. Replicas hold nothing but caches, so Serve may run several.

Why over 400 lines: the core, its FastAPI routes and the Serve deployment are
built together and lazily (importing this module needs neither Serve nor
FastAPI); what could live apart already does: the status page
(cluster.status_page), the node endpoint (cluster.node_endpoint), the OpenAI
schemas (cluster.openai_api) and the CLI (cluster.gateway_cli).
"""


import asyncio
import base64
import os
import time
from dataclasses import dataclass
from typing import Any

import ray

from protocols import messages, modes
from protocols.quota import QuotaExceeded

from . import openai_api as oa
from .client import AsyncClient
from .keys import KeyStore
from .shards import Aggregators

GATE_NAME = "gateway-gate"
_PROXY: dict = {}  # this driver's Serve proxy address, once started


@dataclass
class NetView:
    """What a gateway replica needs of the network (handles pickle; placement groups do not)."""

    config: Any
    registry: Any
    selector: Any
    ledger: Any
    aggregator: Any
    model_hashes: dict
    roster: bytes = b""  # the operator-signed roster (node agents check calls against it)
    epochs: Any = None  # the epoch keeper (the status page shows renewals), if the network attests


def keys_path(cfg) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(cfg.ledger_file())), "gateway-keys.db")


def _build_app():
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    app = FastAPI(title="verinfer gateway", docs_url=None, redoc_url=None)

    class GatewayCore:
        def __init__(self, net: NetView, keys_file: str, gate: Any, gateway_seed: bytes | None = None):
            if gateway_seed is not None:  # the gateway's calls (client credit) are signed with its key
                from actors.authority import KeyHolder, Signed
                from protocols.crypto import SigningKey

                me = KeyHolder(SigningKey(gateway_seed), "gateway", "gateway", net.config.network.name)
                agg = net.aggregator
                net.aggregator = Aggregators([Signed(h, me, "aggregator") for h in agg.handles], agg.names)
            self.net, self.gate = net, gate
            self.keys = KeyStore(keys_file)
            from .status_page import StatusCore

            self.status = StatusCore(net, self.keys, gate, net.epochs)
            self._clients: dict[str, AsyncClient] = {}
            self._models: dict[str, dict] = {}
            self._lock = asyncio.Lock()

        # --- helpers
        def _key(self, request: Request):
            auth = request.headers.get("authorization", "")
            secret = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            key = self.keys.lookup(secret)
            if key is None:
                raise oa.APIError(401, "invalid or revoked API key (Authorization: Bearer vi-…)",
                                  code="invalid_api_key")
            return key

        async def _client(self, account: str) -> AsyncClient:
            async with self._lock:
                if account not in self._clients:
                    self._clients[account] = await AsyncClient.create(self.net,
                                                                      key_seed=self.keys.signing_seed(account))
                return self._clients[account]

        async def _model(self, model_id: str) -> dict:
            if model_id not in self._models:
                self._models[model_id] = await self.net.registry.model.remote(model_id)
            return self._models[model_id]

        def _base(self, request: Request) -> str:
            return str(request.base_url).rstrip("/")

        # --- endpoints
        async def models(self, request: Request) -> dict:
            self._key(request)
            models, nodes = await asyncio.gather(self.net.registry.list_models.remote(),
                                                 self.net.registry.list_nodes.remote())
            now = time.time()
            data = []
            for m in models:
                mine = [n for n in nodes if n["model_id"] == m["model_id"]]
                attested = sum(1 for n in mine if n["attested"] and n["attested_until"] >= now)
                data.append({"id": m["model_id"], "object": "model", "created": 0, "owned_by": "verinfer",
                             "verinfer": {"model_hash": m["model_hash"], "engine": m["engine"],
                                          "chat_template": m.get("chat_template"),
                                          "determinism_classes": sorted({n["det_class"] for n in mine}),
                                          "nodes": len(mine), "live_nodes": sum(1 for n in mine if n["live"]),
                                          "attested_nodes": attested,
                                          "modes": [s.name for s in modes.SPECS.values()
                                                    if attested or not s.attested]}})
            return {"object": "list", "data": data}

        async def complete(self, request: Request, kind: str):
            raw_body = await request.body()
            if len(raw_body) > oa.MAX_BODY_BYTES:
                raise oa.APIError(413, "request body too large")
            key = self._key(request)
            body = oa.read_body(raw_body)
            cfg = self.net.config
            model_id = (body.get("model") if isinstance(body, dict) else None) or cfg.default_model
            if not isinstance(model_id, str):
                raise oa.APIError(400, "model must be a string", param="model")
            if model_id not in self.net.model_hashes:
                raise oa.APIError(404, f"model {model_id!r} is not served here", code="model_not_found",
                                  param="model")
            template = (await self._model(model_id)).get("chat_template")
            call = oa.parse(kind, body, cfg.default_model, {model_id: template})
            client = await self._client(key.account)
            mode = call.mode or cfg.network.default_mode
            spec = modes.SPECS.get(mode)
            n = call.n or (spec.fixed_n if spec and spec.fixed_n else cfg.network.default_n)
            if call.envelope is not None:  # non-custodial: the caller signed it; it must be for this prompt
                if call.stream:
                    raise oa.APIError(400, "streaming is for key-signed requests; a request signed by the "
                                           "caller is answered whole", param="stream")
                raw, prompt = call.envelope, call.sealed_prompt or call.prompt
                env = messages.open_envelope(raw, "request")
                rid, mode, n = env.request_id, env.body["mode"], env.body["n"]
                payer = env.body["client_id"]
                await self.net.aggregator.register_client.remote(env.sender)
            else:
                raw, rid = client.build_request(call.prompt, model=call.model, mode=mode, n=n,
                                                max_tokens=call.max_tokens, temperature=call.temperature,
                                                top_k=call.top_k, p=call.p, require_tee=call.require_tee,
                                                template=call.template)
                prompt, payer = call.prompt, client.client_id
            if mode not in modes.SPECS:
                raise oa.APIError(400, f"verinfer.mode must be one of {list(modes.MODES)}", param="verinfer.mode")
            need = cfg.economics.price * modes.SPECS[mode].escrowed_runs(max(1, int(n)))
            acct = f"client/{payer}"
            balance = (await self.net.ledger.balances.remote(acct)).get(acct, 0)
            if balance < need:
                raise oa.APIError(402, f"account balance {balance} is below the {need} this request escrows",
                                  type_="insufficient_quota", code="insufficient_quota")
            try:
                await self.gate.enter.remote(key.key_id, key.quota.__dict__, call.max_tokens)
            except Exception as exc:  # (a Ray task error wrapping QuotaExceeded)
                cause = getattr(exc, "cause", exc)
                if isinstance(cause, QuotaExceeded) or isinstance(exc, QuotaExceeded):
                    raise oa.APIError(429, str(cause), type_="rate_limit_exceeded", code="rate_limit_exceeded",
                                      retry_after=getattr(cause, "retry_after", 1.0)) from None
                raise
            created = oa.now()
            url = f"{self._base(request)}/v1/receipts/{rid}"
            if call.envelope is not None:
                try:
                    return await self._own(call, client, raw, prompt, rid, mode, created, url)
                finally:
                    self.gate.leave.remote(key.key_id)
            try:
                handle = await client.submit_raw(raw, prompt, stream=call.stream)
            except BaseException:
                self.gate.leave.remote(key.key_id)
                raise
            if call.stream:
                return StreamingResponse(self._sse(call, handle, created, url, mode, key.key_id),
                                         media_type="text/event-stream",
                                         headers={"x-verinfer-request-id": rid, "x-verinfer-status": "streaming",
                                                  "cache-control": "no-cache"})
            try:
                res = await handle.result()
            finally:
                self.gate.leave.remote(key.key_id)
            vi = oa.verinfer_object(res, url, mode, trust_roots=client.trust_roots)
            return JSONResponse(oa.response(call, res, res.prompt_tokens, created, vi),
                                headers={"x-verinfer-request-id": rid, "x-verinfer-status": res.status})

        async def _own(self, call, client, raw: bytes, prompt, rid: str, mode: str, created: int, url: str):
            """A request the caller signed: submitted as it is. The whole outcome goes back
            (`verinfer.final`, msgpack) for the caller to verify; a sealed output is the caller's
            alone to open, so only the receipt is checked here."""
            import msgpack

            t0 = time.time()
            await self.net.aggregator.submit_async(raw, prompt, False)
            fin = await self.net.aggregator.final.remote(rid)
            out = fin["output"]
            if out is not None and "sealed" in out:
                from types import SimpleNamespace

                from protocols import receipts

                summary = receipts.verify_receipt(fin["receipt"], [client.aggregator_key],
                                                  trusted_roots=client.trust_roots,
                                                  attestation_policy=client.receipt_policy,
                                                  trusted_selectors=[client.selector_key, client.vrf_key])
                res = SimpleNamespace(request_id=rid, status=fin["status"], summary=summary,
                                      branch=fin.get("branch", ""), text="", token_ids=None,
                                      time_to_first_output=None, time_to_finality=time.time() - t0)
            else:
                res = client.complete(fin, rid, t0)
            vi = oa.verinfer_object(res, url, mode, trust_roots=client.trust_roots)
            vi["final"] = base64.b64encode(msgpack.packb(fin, use_bin_type=True)).decode()
            return JSONResponse(oa.response(call, res, 0, created, vi),
                                headers={"x-verinfer-request-id": rid, "x-verinfer-status": res.status})

        async def _sse(self, call: oa.Call, handle, created: int, url: str, mode: str, key_id: str):
            rid, streamed = handle.request_id, ""
            try:
                if call.kind == oa.CHAT:
                    yield oa.sse(oa.chunk(call, rid, created, first=True))
                res = None
                async for item in handle.stream():
                    if isinstance(item, dict):
                        if item["text"]:
                            streamed += item["text"]
                            yield oa.sse(oa.chunk(call, rid, created, text=item["text"]))
                    else:
                        res = item
                vi = oa.verinfer_object(res, url, mode, streamed_text=streamed, trust_roots=handle.client.trust_roots)
                # the last chunk says whether the stream held; if it did not, it carries the accepted text
                tail = None if vi["stream_held"] else ""
                yield oa.sse(oa.chunk(call, rid, created, text=tail, finish=oa.finish_reason(res, call.max_tokens),
                                      vi=vi))
                if call.include_usage:
                    yield oa.sse(oa.chunk(call, rid, created, empty=True,
                                          usage_=oa.usage(res.prompt_tokens, len(res.token_ids or []))))
            except Exception as exc:
                yield oa.sse(oa.error_for(exc).body())
            finally:
                self.gate.leave.remote(key_id)
            yield oa.sse("[DONE]")

        async def receipt(self, request: Request, request_id: str):
            self._key(request)
            try:
                fin = await self.net.aggregator.final.remote(request_id)
            except Exception as exc:
                raise oa.error_for(exc) from None
            raw = fin["receipt"]
            if request.query_params.get("format") == "json":
                body = messages.open_envelope(raw, "receipt").body
                return JSONResponse(_jsonable(dict(body, request=messages.open_envelope(body["request"],
                                                                                        "request").body)))
            return Response(raw, media_type="application/msgpack",
                            headers={"x-verinfer-request-id": request_id, "x-verinfer-status": fin["status"]})

        async def receipt_view(self, request_id: str) -> dict:
            """The decoded receipt for the status page (public: receipts carry hashes only)."""
            client = await self._client("status")
            try:
                return await self.status.receipt(request_id, {
                    "aggregator": client.aggregator_key, "selector": client.selector_key, "vrf": client.vrf_key,
                    "roots": list(client.trust_roots)})
            except Exception as exc:
                raise oa.error_for(exc) from None

        async def attestation(self, request: Request):
            self._key(request)
            q = request.query_params
            model = q.get("model") or self.net.config.default_model
            try:
                nonce = bytes.fromhex(q.get("nonce", ""))
            except ValueError:
                raise oa.APIError(400, "nonce must be hex", param="nonce") from None
            if not 16 <= len(nonce) <= 64:
                raise oa.APIError(400, "nonce must be 16 to 64 bytes of hex", param="nonce")
            if model not in self.net.model_hashes:
                raise oa.APIError(404, f"model {model!r} is not served here", code="model_not_found")
            nodes = await self.net.registry.attested_nodes.remote(model)
            handles = await self.net.registry.handles.remote([n["node_id"] for n in nodes])
            fresh = await asyncio.gather(*(handles[n["node_id"]].attest.remote(nonce) for n in nodes),
                                         return_exceptions=True)
            client = await self._client("attestation")
            out = [{"node_id": n["node_id"], "kem_pub": n["kem_pub"].hex(),
                    "evidence": base64.b64encode(ev).decode()}
                   for n, ev in zip(nodes, fresh) if isinstance(ev, bytes)]
            return {"model": model, "model_hash": self.net.model_hashes[model], "nonce": nonce.hex(), "nodes": out,
                    "trust_roots": [r.hex() for r in client.trust_roots],
                    "aggregator_key": client.aggregator_key.hex(), "selector_key": client.selector_key.hex(),
                    "vrf_key": client.vrf_key.hex(), "allow_simulated": client.allow_simulated}

    def _errors(fn):
        async def run(*a, **kw):
            try:
                return await fn(*a, **kw)
            except oa.APIError as err:
                return JSONResponse(err.body(), status_code=err.status, headers=err.headers())
            except Exception as exc:
                err = oa.error_for(exc)
                return JSONResponse(err.body(), status_code=err.status, headers=err.headers())
        return run

    return app, GatewayCore, _errors, Request


def _jsonable(v):
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def make_deployment(num_replicas: int = 1):
    """The Serve deployment class (built lazily: importing this module needs no Serve)."""
    from ray import serve

    from fastapi.responses import HTMLResponse, PlainTextResponse, Response

    app, Core, errors, Request = _build_app()

    @serve.deployment(num_replicas=num_replicas, ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=256)
    @serve.ingress(app)
    class Gateway:
        def __init__(self, net: NetView, keys_file: str, gate: Any, gateway_seed: bytes | None = None):
            from .node_endpoint import NodeEndpoint

            self.core = Core(net, keys_file, gate, gateway_seed)
            self.nodes = NodeEndpoint(net)  # nodes that run outside the cluster

        @app.get("/")
        async def home(self):
            from .status_page import page

            return HTMLResponse(page("status.html"))

        @app.get("/status")
        async def status_page(self):
            from .status_page import page

            return HTMLResponse(page("status.html"))

        @app.get("/status.json")
        async def status_json(self, request: Request):
            return await errors(self.core.status.status)()

        @app.get("/metrics")
        async def metrics(self):
            return PlainTextResponse(await self.core.status.metrics(),
                                     media_type="text/plain; version=0.0.4; charset=utf-8")

        @app.get("/receipts/{request_id}")
        async def receipt_page(self, request_id: str):
            from .status_page import page

            return HTMLResponse(page("receipt.html"))

        @app.get("/status/receipts/{request_id}")
        async def receipt_json(self, request: Request, request_id: str):
            return await errors(self.core.receipt_view)(request_id)

        @app.get("/v1/nodes/network")
        async def nodes_network(self):
            from actors.remote_node import wire

            return Response(wire(self.nodes.network_info()), media_type="application/msgpack")

        @app.post("/v1/nodes/{node_id}/{action}")
        async def nodes_call(self, request: Request, node_id: str, action: str):
            from .node_endpoint import AUTH_HEADER, error_body

            fn = {"join": self.nodes.join, "poll": self.nodes.poll, "reply": self.nodes.reply,
                  "relay": self.nodes.relay}.get(action)
            if fn is None:
                return Response(b"", status_code=404)
            try:
                data = await fn(node_id, await request.body(), request.headers.get(AUTH_HEADER))
                return Response(data, media_type="application/msgpack")
            except Exception as exc:  # typed errors go back wired, with their HTTP status
                status, data = error_body(exc)
                return Response(data, status_code=status, media_type="application/msgpack")

        @app.get("/healthz")
        async def healthz(self):
            return {"ok": True}

        @app.get("/v1/models")
        async def models(self, request: Request):
            return await errors(self.core.models)(request)

        @app.post("/v1/chat/completions")
        async def chat(self, request: Request):
            return await errors(self.core.complete)(request, oa.CHAT)

        @app.post("/v1/completions")
        async def completions(self, request: Request):
            return await errors(self.core.complete)(request, oa.COMPLETION)

        @app.get("/v1/receipts/{request_id}")
        async def receipt(self, request: Request, request_id: str):
            return await errors(self.core.receipt)(request, request_id)

        @app.get("/v1/attestation/report")
        async def attestation(self, request: Request):
            return await errors(self.core.attestation)(request)

    return Gateway


def start(net, host: str = "127.0.0.1", port: int = 8000, keys_file: str | None = None, capacity: int = 64,
          num_replicas: int = 1, detached: bool = False) -> str:
    """Start the gateway for `net` on the connected Ray cluster; returns its base URL."""
    from ray import serve

    from actors.gate import Gate

    ns = {"namespace": net.config.network.namespace, "lifetime": "detached"} if detached else {}
    name = f"{net.config.network.name}/{GATE_NAME}"
    try:
        gate = ray.get_actor(name, namespace=ns.get("namespace"))
    except ValueError:
        gate = ray.remote(Gate).options(name=name, num_cpus=0, **ns).remote(capacity)
    view = NetView(net.config, net.registry, net.selector, net.ledger, net.aggregator, dict(net.model_hashes),
                   getattr(net, "roster", b""), getattr(net, "epochs", None))
    keys_file = keys_file or keys_path(net.config)
    KeyStore(keys_file)  # create the database (and its master secret) here, once
    if _PROXY.get("cluster") == ray.get_runtime_context().get_job_id() and _PROXY.get("http"):
        host, port = _PROXY["http"]  # Serve's proxy keeps the address it was first started with
    serve.start(http_options={"host": host, "port": int(port)})
    _PROXY.update(cluster=ray.get_runtime_context().get_job_id(), http=(host, int(port)))
    serve.run(make_deployment(num_replicas).bind(view, keys_file, gate, getattr(net, "gateway_seed", None)),
              name="verinfer", route_prefix="/", blocking=False)
    return f"http://{host}:{int(port)}"


def wait_ready(url: str, timeout_s: float = 180.0) -> None:
    """Wait until the gateway answers (Serve starts its proxy and replica in the background)."""
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the gateway at {url} did not come up in {timeout_s:.0f}s")


def stop(shutdown: bool = False) -> None:
    """Remove the gateway app; with shutdown, Serve's controller and proxy too (they keep
    using CPU on an otherwise idle cluster)."""
    from ray import serve

    try:
        serve.delete("verinfer")
        if shutdown:
            serve.shutdown()
            _PROXY.clear()
    except Exception:
        pass
