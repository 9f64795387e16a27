"""A Python SDK for a verinfer gateway that trusts nothing it cannot check. Imports no Ray.

    from cluster.sdk import Verinfer
    vi = Verinfer("http://127.0.0.1:8000/v1", api_key, trust_roots=[ROOT_HEX], aggregator_key=AGG_HEX)
    res = vi.chat([{"role": "user", "content": "Hi"}], n=3)              # signed with your own key
    res = vi.chat([{"role": "user", "content": "secret"}], mode="tee")    # sealed on this machine
    res.text, res.status, res.receipt                                     # verified before you see them

Before sending anything it fetches the attestation report with a fresh nonce and
verifies every node's evidence under the caller's own trust roots. Requests are
signed with the caller's key (non-custodial: the gateway cannot forge or alter
them), TEE prompts are sealed here to the nodes whose evidence verified, so the
gateway and the control plane see only ciphertext, and each answer is accepted
only once its receipt verifies offline and binds the tokens returned. The same
checks as the Ray client: cluster.client_core.

Errors are typed and one line: a bad argument is ConfigError (the constructor) or
InvalidParams / UnknownModel (a request) before anything is sent; the gateway's
refusals are GatewayError with the HTTP status and the gateway's message; a
gateway that cannot be reached is GatewayUnreachable (status 0).
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from protocols import modes
from protocols.errors import ConfigError, InvalidParams, ReceiptInvalid, VerinferError

from . import openai_api as oa
from .client_core import ClientCore, NetworkKeys, Result


class GatewayError(VerinferError):
    def __init__(self, status: int, body: Any):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status}: {' '.join(str(err.get('message') or body).split())}")
        self.status, self.body = status, body

    def __reduce__(self):
        return (type(self), (self.status, self.body))


class GatewayUnreachable(GatewayError):
    """No HTTP answer at all (connection refused, DNS, timeout): status 0."""

    def __init__(self, url: str, why: str):
        VerinferError.__init__(self, f"cannot reach the gateway at {url}: {' '.join(why.split())}")
        self.status, self.body, self.url, self.why = 0, None, url, why

    def __reduce__(self):
        return (type(self), (self.url, self.why))


@dataclass
class Defaults:  # what ClientCore.build_request reads from a network config
    default_model: str
    network: Any
    limits: Any


class Verinfer:
    def __init__(self, base_url: str, api_key: str, trust_roots: list | None = None,
                 aggregator_key: str | bytes | None = None, key_seed: bytes | None = None,
                 allow_simulated: bool = False, timeout: float = 300.0, default_mode: str = "sampling",
                 default_n: int = 3, default_timeout_s: float = 30.0):
        """trust_roots: attestation root keys (hex or bytes) evidence must chain to; None trusts
        the roots the gateway reports (for development only). aggregator_key: pin the key that
        signs receipts; None takes the gateway's word for it. (`verinfer keys network`, run by
        the network's operator, prints both in hex.)"""
        import httpx

        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if not isinstance(api_key, str) or not api_key or any(c.isspace() for c in api_key):
            raise ConfigError("api_key must be a non-empty string without spaces (verinfer keys create makes one)")
        if isinstance(trust_roots, (str, bytes)) or not isinstance(trust_roots, (list, tuple, type(None))):
            raise ConfigError("trust_roots must be a list of root keys (hex or bytes), or None")
        for name, v in (("timeout", timeout), ("default_timeout_s", default_timeout_s)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < float("inf"):
                raise ConfigError(f"{name} must be a positive number of seconds, got {v!r}")
        if default_mode not in modes.MODES:
            raise ConfigError(f"default_mode must be one of {', '.join(modes.MODES)}, got {default_mode!r}")
        if not isinstance(default_n, int) or isinstance(default_n, bool) or default_n < 1:
            raise ConfigError(f"default_n must be an integer >= 1, got {default_n!r}")
        self._url = base_url.rstrip("/")
        self._roots = None if trust_roots is None else [_bytes(r, "trust_roots") for r in trust_roots]
        self._agg = None if aggregator_key is None else _bytes(aggregator_key, "aggregator_key", 32)
        self.http = httpx.Client(base_url=self._url, timeout=timeout, headers={"authorization": f"Bearer {api_key}"})
        self.key_seed = key_seed or os.urandom(32)
        self.allow_simulated = allow_simulated
        self._defaults = (default_mode, default_n, default_timeout_s)
        self._cores: dict[str, ClientCore] = {}
        self._models: dict[str, dict] | None = None

    # --- what the network is
    def _get(self, path: str, **params) -> Any:
        r = self._http("get", path, params=params)
        if r.status_code != 200:
            raise GatewayError(r.status_code, _json(r))
        return r

    def _http(self, method: str, path: str, **kw):
        import httpx

        try:
            return getattr(self.http, method)(path, **kw)
        except httpx.HTTPError as exc:  # (no HTTP answer: connection refused, DNS, timeout)
            raise GatewayUnreachable(self._url, f"{type(exc).__name__}: {exc}") from None

    def models(self) -> dict[str, dict]:
        if self._models is None:
            self._models = {m["id"]: m for m in self._get("/models").json()["data"]}
        return self._models

    def attestation(self, model: str) -> tuple[ClientCore, dict[str, bytes]]:
        """A ClientCore for `model` built from a freshly nonced attestation report, and the
        nodes whose evidence verified under this caller's trust roots (node id -> HPKE key)."""
        nonce = os.urandom(32)
        rep = self._get("/attestation/report", model=model, nonce=nonce.hex()).json()
        if rep["nonce"] != nonce.hex() or rep["model"] != model:
            raise VerinferError("attestation report is not for the nonce and model asked")
        agg = bytes.fromhex(rep["aggregator_key"])
        if self._agg is not None and agg != self._agg:
            raise ReceiptInvalid("the gateway names another aggregator key than the one pinned")
        roots = self._roots if self._roots is not None else [bytes.fromhex(r) for r in rep["trust_roots"]]
        mode, n, timeout_s = self._defaults
        cfg = Defaults(model, type("N", (), {"default_mode": mode, "default_n": n})(),
                       type("L", (), {"timeout_s": timeout_s})())
        keys = NetworkKeys(agg, bytes.fromhex(rep["selector_key"]), bytes.fromhex(rep["vrf_key"]), tuple(roots),
                           {model: rep["model_hash"]}, self.allow_simulated, roots_pinned=self._roots is not None)
        core = self._cores.get(model)
        if core is None or core.aggregator_key != agg:
            core = self._cores[model] = ClientCore(cfg, keys, self.key_seed)
        nodes = [{"node_id": x["node_id"], "kem_pub": bytes.fromhex(x["kem_pub"]),
                  "evidence": base64.b64decode(x["evidence"])} for x in rep["nodes"]]
        for node in nodes:  # each evidence must be bound to *our* nonce
            from protocols import attestation

            if attestation.evidence_report(node["evidence"])["nonce"] != nonce:
                raise VerinferError(f"evidence of {node['node_id']} is not bound to this request's nonce")
        return core, core.recipients_of(model, nodes)

    # --- asking
    def chat(self, messages: list[dict], model: str | None = None, max_tokens: int = 64, temperature: float = 0.0,
             mode: str | None = None, n: int | None = None, p: float | None = None, require_tee: bool = False,
             top_k: int = 0) -> Result:
        return self._ask(oa.CHAT, messages, model, max_tokens, temperature, mode, n, p, require_tee, top_k)

    def complete(self, prompt: str, model: str | None = None, max_tokens: int = 64, temperature: float = 0.0,
                 mode: str | None = None, n: int | None = None, p: float | None = None,
                 require_tee: bool = False, top_k: int = 0) -> Result:
        return self._ask(oa.COMPLETION, prompt, model, max_tokens, temperature, mode, n, p, require_tee, top_k)

    def _ask(self, kind, what, model, max_tokens, temperature, mode, n, p, require_tee, top_k) -> Result:
        models = self.models()
        if model is not None and not (isinstance(model, str) and model):
            raise InvalidParams(f"model must be a model id (a non-empty string), got {model!r}")
        model = model or next(iter(models))
        if model not in models:
            raise GatewayError(404, {"error": {"message": f"model {model!r} is not served"}})
        core, recipients = self.attestation(model)
        mode = self._defaults[0] if mode is None else mode
        if kind == oa.CHAT:  # rendered exactly as the gateway renders it: the signed hash must match
            prompt, template = oa.render_chat(oa._messages(what), models[model]["verinfer"].get("chat_template"))
            body = {"model": model, "messages": what}
        else:
            prompt, template, body = what, False, {"model": model, "prompt": what}
        spec_n = n if n is not None else (1 if mode == "tee" else self._defaults[1])
        raw, rid = core.build_request(prompt, model=model, mode=mode, n=spec_n, max_tokens=max_tokens,
                                      temperature=temperature, top_k=top_k, p=p, require_tee=require_tee,
                                      template=template)
        vi = {"request": base64.b64encode(raw).decode(), "mode": mode, "n": spec_n}
        if core.sealed(mode, require_tee):  # the prompt leaves this machine only sealed
            vi["sealed_prompt"] = base64.b64encode(core.seal_to(prompt, rid, recipients, model)).decode()
            body["messages" if kind == oa.CHAT else "prompt"] = ([{"role": "user", "content": "(sealed)"}]
                                                                 if kind == oa.CHAT else "(sealed)")
        core.submitted(rid)
        t0 = time.time()
        r = self._http("post", "/chat/completions" if kind == oa.CHAT else "/completions",
                       json=dict(body, max_tokens=max_tokens, temperature=temperature, verinfer=vi))
        got = _json(r)
        if r.status_code != 200:
            raise GatewayError(r.status_code, got)
        fin = msgpack.unpackb(base64.b64decode(got["verinfer"]["final"]), raw=False, strict_map_key=False)
        res = core.complete(fin, rid, t0)  # the receipt verifies and binds these tokens, or this raises
        text = (got["choices"][0]["message"]["content"] if kind == oa.CHAT else got["choices"][0]["text"])
        if not core.sealed(mode, require_tee) and (text or "") != (res.text or ""):
            raise ReceiptInvalid("the gateway's text is not the text the receipt binds")
        receipt = self._get(f"/receipts/{rid}").content
        if receipt != res.receipt:
            raise ReceiptInvalid("the receipt served at the receipt URL is not the one returned")
        return res


def _bytes(v, name: str, size: int | None = None) -> bytes:
    """A key given as hex or bytes; ConfigError naming the argument otherwise."""
    try:
        b = bytes.fromhex(v) if isinstance(v, str) else bytes(v) if isinstance(v, (bytes, bytearray)) else None
    except ValueError:
        b = None
    if not b or (size is not None and len(b) != size):
        what = f"{size} bytes ({2 * size} hex characters)" if size else "a key in hex or bytes"
        raise ConfigError(f"{name} must be {what}, as `verinfer keys network` prints it; got {v!r:.60}")
    return b


def _json(r) -> Any:
    try:
        return r.json()
    except ValueError:
        return {"error": {"message": r.text[:200]}}
