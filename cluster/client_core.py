"""The client's rules without a transport: build and sign requests, seal prompts,
open sealed outputs, accept first outputs and verify receipts. Imports no Ray.

The Ray client (cluster.client: Client, AsyncClient) and the HTTP gateway both
wrap a ClientCore; only how bytes reach the aggregator differs. Everything a
client must check before believing an answer is here, once.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from protocols import attestation, commitments, crossval, messages, modes, receipts, sealing
from protocols.canonical import unpack
from protocols.crypto import SigningKey
from protocols.errors import ConfigError, InvalidParams, MessageError, ReceiptInvalid, UnknownModel, VerinferError
from protocols.params import SamplingParams
from protocols.sealing import KemKey, output_info


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
    prompt_tokens: int = 0  # as the output node reports it (usage figures; not verified)
    # the attestation roots the receipt was verified under, and whether the caller pinned them
    # (False: the roots the network itself reported, which proves nothing about the network)
    trust_roots: tuple[bytes, ...] = ()
    roots_pinned: bool = False


@dataclass(frozen=True)
class NetworkKeys:
    """What a client pins about the network it talks to."""

    aggregator: bytes  # signs receipts
    selector: bytes  # signs obfuscated pseudonym records
    vrf: bytes  # makes every draw (DER)
    trust_roots: tuple[bytes, ...]  # attestation roots evidence must chain to
    model_hashes: Mapping[str, str]  # model id -> weights content hash
    allow_simulated: bool = False  # simulated attestation is acceptable (dev networks)
    roots_pinned: bool = False  # the caller gave trust_roots (else: what the network reported)


def typed_error(exc: BaseException) -> VerinferError | None:
    """The typed verinfer error behind `exc`: itself, or the one a Ray task error wraps
    (its `.cause`, however deep); None for anything else. A RayTaskError(X) is also an
    X, but its text is the remote traceback: always take the cause."""
    for _ in range(16):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            break
        exc = cause
    return exc if isinstance(exc, VerinferError) else None


def one_line(err: BaseException) -> str:
    """`Type: message` on one line (what the CLI prints for a typed error)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _check_request(prompt: Any, model: Any, n: Any, timeout_s: Any, request_id: Any, p: Any,
                   require_tee: Any) -> None:
    """A request's own fields, before anything is signed (the network checks them again,
    with its limits): each refusal names the field and what it may be."""
    if not isinstance(prompt, str):
        raise InvalidParams(f"prompt must be a string, got {type(prompt).__name__}")
    if model is not None and not (isinstance(model, str) and model):
        raise InvalidParams(f"model must be a model id (a non-empty string), got {model!r}")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise InvalidParams(f"n must be an integer >= 1 (the quorum size; omit it for the network's default), "
                            f"got {n!r}")
    if timeout_s is not None and (not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool)
                                  or not math.isfinite(timeout_s) or timeout_s <= 0):
        raise InvalidParams(f"timeout_s must be a positive number of seconds (omit it for the network's "
                            f"deadline), got {timeout_s!r}")
    if request_id is not None and not (isinstance(request_id, str) and 0 < len(request_id) <= 128):
        raise InvalidParams(f"request_id must be a non-empty string of at most 128 characters, got {request_id!r}")
    if p is not None:
        if isinstance(p, bool):
            raise InvalidParams("p must be a number in [0, 1], got a boolean")
        crossval.check_probability(p)
    if not isinstance(require_tee, bool):
        raise InvalidParams(f"require_tee must be true or false, got {require_tee!r}")


class ClientCore:
    """Signs requests with its own Ed25519 key; its id is derived from that key."""

    def __init__(self, config: Any, keys: NetworkKeys, key_seed: bytes | None = None):
        if key_seed is not None and not (isinstance(key_seed, bytes) and len(key_seed) == 32):
            raise ConfigError("key_seed must be 32 bytes (the client's Ed25519 seed), or None for a fresh key")
        if any(not isinstance(r, (bytes, bytearray)) or not r for r in keys.trust_roots):
            raise ConfigError("trust_roots must be a list of root keys (bytes; hex as `verinfer keys network` "
                              "prints them)")
        self.config = config
        self.key = SigningKey(key_seed or os.urandom(32))
        self.kem = KemKey(os.urandom(32))  # outputs of TEE requests are sealed to this key
        self.client_id = messages.client_id_of(self.key.public)
        self.aggregator_key, self.selector_key, self.vrf_key = keys.aggregator, keys.selector, keys.vrf
        self.trust_roots = [bytes(r) for r in keys.trust_roots]
        self.roots_pinned = bool(keys.roots_pinned)
        self.allow_simulated = bool(keys.allow_simulated)
        # receipts: evidence must verify at receipt time, for the request's model; simulated
        # evidence only where this network's config allows it
        self.receipt_policy = attestation.standing_policy(self.allow_simulated)
        self._hashes = dict(keys.model_hashes)
        self._secrets: dict[str, bytes] = {}  # request id -> prompt-hash secret of a sealed request

    # --- requests
    def build_request(self, prompt: str, model: str | None = None, mode: str | None = None, n: int | None = None,
                      max_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
                      timeout_s: float | None = None, request_id: str | None = None,
                      p: float | None = None, require_tee: bool = False, template: bool = True) -> tuple[bytes, str]:
        """Sign a request. mode: see protocols.modes (sampling, cross-validation, obfuscated, tee).
        n (None: the mode's fixed N, else the network's default N), timeout_s (None: the network's
        deadline), p (None: the network's default check probability).
        template=False: the prompt is already rendered (a chat), engines take it as it is.
        Bad arguments raise InvalidParams / UnknownModel, naming the field; nothing is signed."""
        _check_request(prompt, model, n, timeout_s, request_id, p, require_tee)
        model = model or self.config.default_model
        if model not in self._hashes:
            raise UnknownModel(f"model {model!r} is not served by this network; have {sorted(self._hashes)}")
        mode = self.config.network.default_mode if mode is None else mode
        if not isinstance(mode, str) or mode not in modes.SPECS:
            raise InvalidParams(f"mode must be one of {', '.join(modes.MODES)}, got {mode!r}")
        if n is None:
            n = modes.SPECS[mode].fixed_n or self.config.network.default_n
        rid = request_id or uuid.uuid4().hex
        params = SamplingParams(max_tokens, temperature, top_k, template=bool(template)).with_seed_for(rid)
        nonce = os.urandom(16)
        body = {
            "request_id": rid, "client_id": self.client_id, "model_id": model, "model_hash": self._hashes[model],
            "prompt_hash": commitments.prompt_hash(prompt, nonce), "prompt_len": len(prompt),
            "params": params.to_wire(),
            "mode": mode, "n": int(n),
            "timeout_s": float(self.config.limits.timeout_s if timeout_s is None else timeout_s), "nonce": nonce,
            "created_at": time.time(), "p": None if p is None else float(p), "require_tee": bool(require_tee),
        }
        if self.sealed(mode, require_tee):  # TEE levels are private too: prompt and output sealed
            secret = os.urandom(32)  # travels only inside the sealed prompt: the hash cannot be guessed at
            self._secrets[rid] = secret
            body.update(sealed=True, client_kem=self.kem.public,
                        prompt_hash=commitments.prompt_hash(prompt, nonce + secret))
        return messages.seal("request", body, self.key).raw, rid

    @staticmethod
    def sealed(mode: str, require_tee: bool) -> bool:
        """Whether a request travels sealed (an unknown mode is the network's to refuse)."""
        return bool(require_tee) or (mode in modes.SPECS and modes.SPECS[mode].sealed(require_tee))

    def recipients_of(self, model: str, nodes: list[dict]) -> dict[str, bytes]:
        """node id -> HPKE key, for each listed node ({node_id, kem_pub, evidence}) whose
        evidence verifies now, for this model, under this client's trust roots, and binds that key."""
        recipients = {}
        policy = attestation.standing_policy(self.allow_simulated, self._hashes.get(model))
        for node in nodes:
            rep = attestation.evidence_report(node["evidence"])
            binding = attestation.ExpectedBinding(rep["signing_pub"], rep["kem_pub"], rep["nonce"])
            res = attestation.verify(node["evidence"], binding, policy, self.trust_roots, time.time())
            if res.ok and rep["kem_pub"] == node["kem_pub"]:
                recipients[node["node_id"]] = node["kem_pub"]
        return recipients

    def seal_to(self, prompt: str, request_id: str, recipients: Mapping[str, bytes], model: str = "") -> bytes:
        """Seal the prompt to every given node (any of them may be drawn). With `model`
        named, an empty set is refused here, before anything is sent."""
        if not recipients and model:
            raise attestation.AttestationError(
                f"no node of {model!r} has attestation that verifies under this client's trust roots: "
                "nothing to seal the prompt to")
        return sealing.seal_prompt(prompt, request_id, dict(recipients), os.urandom(32), os.urandom(12),
                                   self._secrets.get(request_id, b""))

    def submitted(self, request_id: str) -> None:
        """The request left: its prompt-hash secret is not needed any more."""
        self._secrets.pop(request_id, None)

    # --- answers
    def open_output(self, output: dict, request_id: str, member_id: str) -> dict:
        """Plain outputs pass through; sealed ones open only with this client's key."""
        if "sealed" not in output:
            return output
        opened = unpack(self.kem.open(output["sealed"], output_info(request_id, member_id)))
        return {"token_ids": list(opened["token_ids"]), "text": opened["text"]}

    def check_first(self, got: dict | None, request_id: str, t0: float) -> FirstOutput | None:
        """Accept a first output only if its signed digest matches and the signer is the drawn member."""
        if got is None:
            return None
        try:
            env = messages.open_envelope(got["envelope"], "result")
            if env.request_id != request_id:
                return None
            out = self.open_output(got["output"], request_id, env.body["node_id"])
            if commitments.output_digest(out["token_ids"], out["text"]) != env.body["output_digest"]:
                return None
            if "pubkey" in got and got["pubkey"] != env.sender:
                return None
        except (MessageError, KeyError, TypeError, ValueError):
            return None
        return FirstOutput(out["text"], list(out["token_ids"]), env.body["node_id"], time.time() - t0)

    def _open_agreed(self, fin: dict, request_id: str) -> dict:
        """The first sealed output (the output node's, then other paid members') that
        opens with our key and is the output the accepted commitment binds."""
        body = messages.open_envelope(fin["receipt"], "receipt").body
        dec, rb = body["decision"], messages.open_envelope(body["request"], "request").body
        for member, sealed in [(dec["output_node"], fin["output"]), *fin.get("alternates", {}).items()]:
            try:
                out = self.open_output(sealed, request_id, member)
            except (MessageError, KeyError, TypeError, ValueError):
                continue
            if commitments.output_commitment(request_id, rb["model_hash"], rb["prompt_hash"], rb["params"],
                                             out["token_ids"]) == dec["commitment"]:
                return out
        raise ReceiptInvalid("no sealed output opens to the accepted commitment")

    def complete(self, fin: dict, request_id: str, t0: float, first: FirstOutput | None = None) -> Result:
        """Verify the receipt offline (including that the returned tokens are the ones the
        accepted commitment binds) and return the accepted answer. Raises ReceiptInvalid."""
        out = fin["output"]
        if out is not None and "sealed" in out:
            out = self._open_agreed(fin, request_id)
        accepted = fin["status"] in ("final", "resolved")
        summary = receipts.verify_receipt(fin["receipt"], [self.aggregator_key],
                                          out["token_ids"] if out is not None and accepted else None,
                                          trusted_roots=self.trust_roots, attestation_policy=self.receipt_policy,
                                          trusted_selectors=[self.selector_key, self.vrf_key])
        if summary.request_id != request_id:
            raise ReceiptInvalid(f"receipt is for {summary.request_id}, not {request_id}")
        tm = fin["timings"]
        ttfo = (first.seconds if first else
                (tm["first_output"] - tm["submitted"]) if "first_output" in tm else None)
        return Result(request_id, fin["status"], out["text"] if out else None,
                      list(out["token_ids"]) if out else None, fin["receipt"], summary, ttfo,
                      time.time() - t0, fin.get("branch", ""), fin.get("methods"),
                      int((fin["output"] or {}).get("prompt_tokens", 0) or 0),
                      tuple(self.trust_roots), self.roots_pinned)
