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
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from protocols.errors import ReceiptInvalid, VerinferError

from . import openai_api as oa
from .client_core import ClientCore, NetworkKeys, Result


class GatewayError(VerinferError):
    def __init__(self, status: int, body: Any):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status}: {err.get('message') or body}")
        self.status, self.body = status, body


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
        signs receipts; None takes the gateway's word for it."""
        import httpx

        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                 headers={"authorization": f"Bearer {api_key}"})
        self._roots = None if trust_roots is None else [_bytes(r) for r in trust_roots]
        self._agg = None if aggregator_key is None else _bytes(aggregator_key)
        self.key_seed = key_seed or os.urandom(32)
        self.allow_simulated = allow_simulated
        self._defaults = (default_mode, default_n, default_timeout_s)
        self._cores: dict[str, ClientCore] = {}
        self._models: dict[str, dict] | None = None

    # --- what the network is
    def _get(self, path: str, **params) -> Any:
        r = self.http.get(path, params=params)
        if r.status_code != 200:
            raise GatewayError(r.status_code, _json(r))
        return r

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
                           {model: rep["model_hash"]}, self.allow_simulated)
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
        model = model or next(iter(models))
        if model not in models:
            raise GatewayError(404, {"error": {"message": f"model {model!r} is not served"}})
        core, recipients = self.attestation(model)
        mode = mode or self._defaults[0]
        if kind == oa.CHAT:  # rendered exactly as the gateway renders it: the signed hash must match
            prompt, template = oa.render_chat(oa._messages(what), models[model]["verinfer"].get("chat_template"))
            body = {"model": model, "messages": what}
        else:
            prompt, template, body = what, False, {"model": model, "prompt": what}
        spec_n = 1 if mode == "tee" else (n or self._defaults[1])
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
        r = self.http.post("/chat/completions" if kind == oa.CHAT else "/completions",
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


def _bytes(v) -> bytes:
    return bytes.fromhex(v) if isinstance(v, str) else bytes(v)


def _json(r) -> Any:
    try:
        return r.json()
    except ValueError:
        return {"error": {"message": r.text[:200]}}
