"""The Python client: sign a request, get the first output fast, then the receipt.

    client = network.client()                  # or Client.connect(config)
    handle = client.generate("Hello", n=3)
    first = handle.first_output()              # provisional: the first node to finish
    result = handle.result()                   # final answer + verified receipt

The first output is the first node's signed result, handed over by the
aggregator the moment it arrives (the client checks the node's signature and
the output digest), so time to first output is one node's generation plus a
few actor hops. `result()`
verifies the receipt offline before returning, including that the returned
tokens are the ones the accepted commitment binds.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import ray

from protocols import commitments, messages, modes, receipts
from protocols.crypto import SigningKey
from protocols.canonical import unpack
from protocols.sealing import KemKey, output_info
from protocols.errors import MessageError, ReceiptInvalid, VerinferError
from protocols.params import SamplingParams


@dataclass
class FirstOutput:
    text: str
    token_ids: list[int]
    node_id: str
    seconds: float  # since submit


@dataclass
class Result:
    request_id: str
    status: str  # final | resolved | unresolved | failed
    text: str | None
    token_ids: list[int] | None
    receipt: bytes
    summary: receipts.ReceiptSummary
    time_to_first_output: float | None
    time_to_finality: float
    branch: str = ""  # cross-validation: checked | unchecked
    methods: dict | None = None  # node -> how it produced its commitment (generate | prefill | ...)


class RequestHandle:
    def __init__(self, client: "Client", request_id: str, submitted: dict, t0: float, model_hash: str):
        self.client, self.request_id, self._sub, self._t0 = client, request_id, submitted, t0
        self._first: FirstOutput | None = None
        self._result: Result | None = None

    def first_output(self, timeout: float | None = None) -> FirstOutput | None:
        """The first node's output (provisional). None if no node answered."""
        if self._first is not None:
            return self._first
        got = ray.get(self.client.aggregator.first_output.remote(self.request_id), timeout=timeout)
        if got is None:
            return None
        self._first = self._check(got)
        return self._first

    def _check(self, got: dict) -> FirstOutput | None:
        """Accept an output only if its signed digest matches and the signer is a drawn member."""
        try:
            env = messages.open_envelope(got["envelope"], "result")
            out = self.client.open_output(got["output"], self.request_id, env.body["node_id"])
            if commitments.output_digest(out["token_ids"], out["text"]) != env.body["output_digest"]:
                return None
            if "pubkey" in got and got["pubkey"] != env.sender:
                return None
        except (MessageError, KeyError, TypeError, ValueError):
            return None
        return FirstOutput(out["text"], list(out["token_ids"]), env.body["node_id"], time.time() - self._t0)

    def result(self, timeout: float | None = None) -> Result:
        """Wait for finality; verify the receipt; return the accepted answer."""
        if self._result is not None:
            return self._result
        return self._complete(ray.get(self.client.aggregator.final.remote(self.request_id), timeout=timeout))

    def _open_agreed(self, fin: dict) -> dict | None:
        """The first sealed output (the output node's, then other paid members') that
        opens with our key and is the output the accepted commitment binds."""
        body = messages.open_envelope(fin["receipt"], "receipt").body
        dec, rb = body["decision"], messages.open_envelope(body["request"], "request").body
        for member, sealed in [(dec["output_node"], fin["output"]), *fin.get("alternates", {}).items()]:
            try:
                out = self.client.open_output(sealed, self.request_id, member)
            except (MessageError, KeyError, TypeError, ValueError):
                continue
            if commitments.output_commitment(self.request_id, rb["model_hash"], rb["prompt_hash"], rb["params"],
                                             out["token_ids"]) == dec["commitment"]:
                return out
        raise ReceiptInvalid("no sealed output opens to the accepted commitment")

    def _complete(self, fin: dict) -> Result:
        out = fin["output"]
        if out is not None and "sealed" in out:
            out = self._open_agreed(fin)
        summary = receipts.verify_receipt(fin["receipt"], [self.client.aggregator_key],
                                          out["token_ids"] if out is not None and fin["status"] in ("final", "resolved") else None,
                                          trusted_roots=self.client.trust_roots,
                                          attestation_policy=self.client.receipt_policy,
                                          trusted_selectors=[self.client.selector_key, self.client.vrf_key])
        tm = fin["timings"]
        ttfo = (self._first.seconds if self._first else
                (tm["first_output"] - tm["submitted"]) if "first_output" in tm else None)
        self._result = Result(self.request_id, fin["status"], out["text"] if out else None,
                              list(out["token_ids"]) if out else None, fin["receipt"], summary, ttfo,
                              time.time() - self._t0, fin.get("branch", ""), fin.get("methods"))
        return self._result


class Client:
    """Signs requests with its own Ed25519 key; its id is derived from that key."""

    def __init__(self, network: Any, key_seed: bytes | None = None, trust_roots: list[bytes] | None = None):
        """trust_roots: attestation root keys this client trusts (pin them in production);
        by default the network's own, fetched once. Every attested member's evidence in
        a receipt, and every node a TEE prompt is sealed to, must chain to one of them."""
        self.network = network
        self.config = network.config
        self.aggregator = network.aggregator
        self.key = SigningKey(key_seed or os.urandom(32))
        self.kem = KemKey(os.urandom(32))  # outputs of TEE requests are sealed to this key
        self.client_id = messages.client_id_of(self.key.public)
        self.aggregator_key = ray.get(self.aggregator.pubkey.remote())
        if trust_roots is None:
            trust_roots = ray.get(network.registry.__ray_call__.remote(lambda reg: list(reg.trust_anchors)))
        self.trust_roots = [bytes(r) for r in trust_roots]
        self.allow_simulated = bool(self.config.attestation.allow_simulated)
        # the selector's keys: Ed25519 signs obfuscated pseudonym records, the VRF key makes every draw
        self.selector_key, self.vrf_key = ray.get([network.selector.pubkey.remote(),
                                                   network.selector.vrf_public.remote()])
        from protocols.attestation import standing_policy

        # receipts: evidence must verify at receipt time, for the request's model; simulated
        # evidence only where this network's config allows it
        self.receipt_policy = standing_policy(self.allow_simulated)
        ray.get(self.aggregator.register_client.remote(self.key.public))
        self._hashes = dict(network.model_hashes)
        self._secrets: dict[str, bytes] = {}  # request id -> prompt-hash secret of a sealed request

    @classmethod
    def connect(cls, config, **kw) -> "Client":
        from .network import connect

        return cls(connect(config), **kw)

    def build_request(self, prompt: str, model: str | None = None, mode: str | None = None, n: int | None = None,
                      max_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
                      timeout_s: float | None = None, request_id: str | None = None,
                      p: float | None = None, require_tee: bool = False) -> tuple[bytes, str]:
        """Sign a request. mode: "sampling" (N nodes agree) or "cross-validation"
        (one node runs; with probability p, N verifiers re-check it)."""
        model = model or self.config.default_model
        if model not in self._hashes:
            from protocols.errors import UnknownModel

            raise UnknownModel(f"model {model!r} is not served by this network; have {sorted(self._hashes)}")
        rid = request_id or uuid.uuid4().hex
        params = SamplingParams(max_tokens, temperature, top_k).with_seed_for(rid)
        nonce = os.urandom(16)
        mode = mode or self.config.network.default_mode
        body = {
            "request_id": rid, "client_id": self.client_id, "model_id": model, "model_hash": self._hashes[model],
            "prompt_hash": commitments.prompt_hash(prompt, nonce), "prompt_len": len(prompt),
            "params": params.to_wire(),
            "mode": mode, "n": int(n or self.config.network.default_n),
            "timeout_s": float(timeout_s or self.config.limits.timeout_s), "nonce": nonce,
            "created_at": time.time(), "p": None if p is None else float(p), "require_tee": bool(require_tee),
        }
        # TEE levels are private too: prompt and output sealed (an unknown mode is the network's to refuse)
        if require_tee or (mode in modes.SPECS and modes.SPECS[mode].sealed(require_tee)):
            secret = os.urandom(32)  # travels only inside the sealed prompt: the hash cannot be guessed at
            self._secrets[rid] = secret
            body.update(sealed=True, client_kem=self.kem.public,
                        prompt_hash=commitments.prompt_hash(prompt, nonce + secret))
        return messages.seal("request", body, self.key).raw, rid

    def seal_for_attested(self, prompt: str, request_id: str, model: str,
                          recipients: dict[str, bytes] | None = None) -> bytes:
        """Seal the prompt to every node whose attestation we verified (any may be drawn)."""
        from protocols import sealing

        if recipients is None:
            recipients = self.attested_recipients(model)
            if not recipients:
                from protocols.attestation import AttestationError

                raise AttestationError(f"no node of {model!r} has attestation that verifies under this "
                                       "client's trust roots: nothing to seal the prompt to")
        return sealing.seal_prompt(prompt, request_id, recipients, os.urandom(32), os.urandom(12),
                                   self._secrets.get(request_id, b""))

    def attested_recipients(self, model: str) -> dict[str, bytes]:
        """node id -> HPKE key, for each node whose evidence verifies and binds that key."""
        from protocols import attestation

        recipients = {}
        policy = attestation.standing_policy(self.allow_simulated, self._hashes.get(model))  # valid now, this model
        for node in ray.get(self.network.registry.attested_nodes.remote(model)):
            rep = attestation.evidence_report(node["evidence"])
            binding = attestation.ExpectedBinding(rep["signing_pub"], rep["kem_pub"], rep["nonce"])
            res = attestation.verify(node["evidence"], binding, policy, self.trust_roots, time.time())
            if res.ok and rep["kem_pub"] == node["kem_pub"]:
                recipients[node["node_id"]] = node["kem_pub"]
        return recipients

    def submit_raw(self, request_raw: bytes, prompt: str) -> RequestHandle:
        t0 = time.time()
        req = messages.open_envelope(request_raw, "request")
        rid = req.request_id
        if req.body["sealed"] and isinstance(prompt, str):
            prompt = self.seal_for_attested(prompt, rid, req.body["model_id"])
        sub = ray.get(self.aggregator.submit.remote(request_raw, prompt))
        self._secrets.pop(rid, None)
        return RequestHandle(self, rid, sub, t0, "")

    def generate(self, prompt: str, **kw) -> RequestHandle:
        """Send one request; returns at once with a handle (see module docstring)."""
        raw, _rid = self.build_request(prompt, **kw)
        return self.submit_raw(raw, prompt)

    def generate_many(self, prompts: list[str], **kw) -> list[RequestHandle]:
        """Send many requests at once (pipelined: one wait for all submissions)."""
        built = [self.build_request(p, **kw) for p in prompts]
        mode = kw.get("mode") or self.config.network.default_mode
        sealed = bool(kw.get("require_tee")) or (mode in modes.SPECS and modes.SPECS[mode].sealed(False))
        t0 = time.time()
        to = self.attested_recipients(kw.get("model") or self.config.default_model) if sealed else None
        wire = [self.seal_for_attested(p, rid, "", to) if sealed else p for (_, rid), p in zip(built, prompts)]
        subs = ray.get([self.aggregator.submit.remote(raw, w) for (raw, _), w in zip(built, wire)])
        for _, rid in built:
            self._secrets.pop(rid, None)
        return [RequestHandle(self, rid, sub, t0, "") for (_, rid), sub in zip(built, subs)]

    def results(self, handles: list[RequestHandle], timeout: float | None = None) -> list[Result]:
        """Finality for many requests with one wait (receipts verified as in `result`)."""
        finals = ray.get([self.aggregator.final.remote(h.request_id) for h in handles], timeout=timeout)
        return [h._complete(fin) for h, fin in zip(handles, finals)]

    def open_output(self, output: dict, request_id: str, member_id: str) -> dict:
        """Plain outputs pass through; sealed ones open only with this client's key."""
        if "sealed" not in output:
            return output
        opened = unpack(self.kem.open(output["sealed"], output_info(request_id, member_id)))
        return {"token_ids": list(opened["token_ids"]), "text": opened["text"]}

    def ledger_balances(self, prefix: str = "") -> dict[str, int]:
        return ray.get(self.network.ledger.balances.remote(prefix))


__all__ = ["Client", "RequestHandle", "Result", "FirstOutput", "ReceiptInvalid", "VerinferError"]
