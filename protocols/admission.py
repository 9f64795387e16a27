"""Request admission: the rules a signed request must pass before anyone spends on it.

One function per place that admits:

  * `admit` (the aggregator, before escrow): signature, size, mode and N, the
    cross-validation probability, sampling limits, the seed derivation, the
    model hash, a plain prompt's hash, a sealed prompt's recipients, and the
    member deadline (protocols.deadlines).
  * `admit_at_node` (every executor, before compute): signature, model hash and,
    for a plain prompt, its hash; a sealed prompt is checked by
    `check_prompt_hash` once the node has opened it.

Both start from `Request`, the typed view of the signed envelope, so the two
places cannot drift apart. `Limits` is the network's `[limits]` config section
and validates itself. Pure: replay checks (state) and model lookups (I/O) stay
with the caller, which passes the model record in.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, fields
from typing import Any, Mapping

from . import commitments, crossval, deadlines, messages, modes, sealing
from .errors import (ConfigError, InvalidParams, MessageError, ModelHashMismatch, PromptTooLarge,
                     UnknownSender)
from .params import SamplingParams

SEALED_OVERHEAD = 64 * 1024  # bytes a sealed prompt may carry beyond 8 bytes per character (headers, keys)


@dataclass
class Limits:
    """What the network accepts (the `[limits]` config section). Validates itself when
    built and whenever it is handed to an aggregator (`of`), so edits are checked too."""

    max_prompt_chars: int = 16384
    max_n: int = 16
    max_tokens: int = 512
    timeout_s: float = 30.0  # the network's base deadline per member; clients may ask for longer, never shorter
    timeout_per_token_s: float = 0.0  # added per requested token (models may override both)
    reveal_timeout_s: float = 10.0
    referee_extra: int = 2  # referees = N + referee_extra
    client_credit: int = 10**9  # faucet deposit for a new client (dev networks)
    default_p: float = 0.1  # cross-validation check probability when a request names none
    retain_rounds: int = 10000  # finished rounds kept for `final`/`status`; older ones are evicted
    liveness_interval_s: float = 5.0  # how often a node taken out for lateness is challenged to come back
    max_batch_calls: int = 512  # most items one batch call (draws, escrows, reveals, settlements) carries; 1 = none

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def num(v: Any) -> bool:  # (finite: nan and inf compare false with everything, or pass every bound)
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def whole(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for f in ("timeout_s", "reveal_timeout_s"):
            if not num(getattr(self, f)) or not 0 < getattr(self, f) <= 3600:
                raise ConfigError(f"limits.{f} must be a positive number of seconds, at most 3600, got {getattr(self, f)!r}")
        if not num(self.liveness_interval_s) or self.liveness_interval_s <= 0:
            raise ConfigError(f"limits.liveness_interval_s must be a positive number of seconds, got {self.liveness_interval_s!r}")
        if not num(self.timeout_per_token_s) or self.timeout_per_token_s < 0:
            raise ConfigError(f"limits.timeout_per_token_s must be a non-negative number, got {self.timeout_per_token_s!r}")
        if not num(self.default_p) or not 0 <= self.default_p <= 1:
            raise ConfigError(f"limits.default_p must be a probability in [0, 1], got {self.default_p!r}")
        if not whole(self.referee_extra) or self.referee_extra < 1:
            raise ConfigError(f"limits.referee_extra must be an integer >= 1 (referees outnumber the quorum), got {self.referee_extra!r}")
        if not whole(self.client_credit) or self.client_credit < 0:
            raise ConfigError(f"limits.client_credit must be a non-negative integer (0 = no faucet), got {self.client_credit!r}")
        for f in ("max_prompt_chars", "max_n", "max_tokens", "retain_rounds", "max_batch_calls"):
            if not whole(getattr(self, f)) or getattr(self, f) < 1:
                raise ConfigError(f"limits.{f} must be a positive integer, got {getattr(self, f)!r}")

    @classmethod
    def of(cls, value: "Limits | Mapping | None") -> "Limits":
        if isinstance(value, Limits):
            value.validate()
            return value
        data = dict(value or {})
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"[limits] has unknown keys: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass(frozen=True)
class Request:
    """The typed view of a signed request envelope (fields as the client signed them)."""

    raw: bytes
    sender: bytes
    request_id: str
    client_id: str
    model_id: str
    model_hash: str
    prompt_hash: bytes
    prompt_len: int
    params: SamplingParams
    mode: modes.ModeSpec
    n: int
    p: float | None
    timeout_s: float
    nonce: bytes
    sealed: bool
    require_tee: bool
    client_kem: bytes
    body: Mapping[str, Any]

    @classmethod
    def parse(cls, raw: bytes) -> "Request":
        """Open the envelope and check it is signed by the client it names. A mode the
        network does not serve is refused here (InvalidParams), as are bad params."""
        env = messages.open_envelope(raw, "request")
        b = env.body
        if messages.client_id_of(env.sender) != b["client_id"]:
            raise UnknownSender("request is not signed by the client it names")
        if b["prompt_len"] < 0:
            raise InvalidParams("prompt_len must be >= 0")
        if b["client_kem"] and not sealing.is_public_key(b["client_kem"]):  # else every node runs, then fails
            raise InvalidParams("client_kem is not an X25519 public key: the output could not be sealed to it")
        return cls(raw=env.raw, sender=env.sender, request_id=b["request_id"], client_id=b["client_id"],
                   model_id=b["model_id"], model_hash=b["model_hash"], prompt_hash=b["prompt_hash"],
                   prompt_len=b["prompt_len"], params=SamplingParams.from_wire(b["params"]),
                   mode=modes.spec(b["mode"]), n=b["n"], p=b["p"], timeout_s=b["timeout_s"], nonce=b["nonce"],
                   sealed=bool(b["sealed"]), require_tee=bool(b["require_tee"]), client_kem=b["client_kem"] or b"",
                   body=b)

    type = "request"  # (as an Envelope: replay guards record requests by sender and type)

    @property
    def attested(self) -> bool:
        """Every member must hold valid attestation."""
        return self.mode.attested or self.require_tee

    @property
    def cross_validation(self) -> bool:
        return self.mode.round_kind == modes.CROSS_VALIDATION

    def probability(self, limits: Limits) -> float:
        """The cross-validation check probability (0 for other modes)."""
        if not self.cross_validation:
            return 0.0
        return float(limits.default_p if self.p is None else self.p)


@dataclass(frozen=True)
class Admitted:
    """A request the network will serve, and what follows from it."""

    request: Request
    recipients: tuple[str, ...] | None  # a sealed prompt: the only nodes that can open it
    deadline_s: float  # each member's deadline
    p: float  # cross-validation check probability
    members: int  # nodes drawn at the start
    escrowed_runs: int  # runs the escrow covers

    @property
    def request_id(self) -> str:
        return self.request.request_id


def deadline_rule(model: Mapping, limits: Limits) -> deadlines.DeadlineRule:
    """A model's own timeouts where it has them, the network's limits otherwise."""
    base = model.get("timeout_s") or limits.timeout_s
    per = model.get("timeout_per_token_s")
    return deadlines.DeadlineRule(float(base), float(limits.timeout_per_token_s if per is None else per))


def admit(raw: bytes, prompt: Any, limits: Limits, model: Mapping) -> Admitted:
    """Every rule the aggregator applies before escrow. `model`: the registry's record of
    the model the request names ({"model_hash", "timeout_s", ...}). Raises a typed error."""
    req = Request.parse(raw)
    if req.prompt_len > limits.max_prompt_chars:
        raise PromptTooLarge(f"prompt has {req.prompt_len} characters, limit {limits.max_prompt_chars}")
    recipients = check_prompt(req, prompt, limits)
    req.mode.check_n(req.n, limits.max_n)
    if req.cross_validation:
        crossval.check_probability(req.probability(limits))
    if req.params.max_tokens > limits.max_tokens:
        raise InvalidParams(f"max_tokens exceeds the network limit of {limits.max_tokens}")
    if req.params.seed != SamplingParams().with_seed_for(req.request_id).seed:
        raise InvalidParams("params.seed must be derived from the request id")
    check_model(req, model["model_hash"])
    deadline = deadline_rule(model, limits).member_deadline(req.params.max_tokens, req.timeout_s)
    return Admitted(req, recipients, deadline, req.probability(limits), req.mode.members(req.n),
                    req.mode.escrowed_runs(req.n))


def check_prompt(req: Request, prompt: Any, limits: Limits) -> tuple[str, ...] | None:
    """A plain prompt must be the one the client signed; a sealed one (the aggregator
    holds only ciphertext) must be bytes of bounded size, sealed to named recipients,
    and allowed by the mode. Returns the recipients of a sealed prompt."""
    if req.sealed:
        if not isinstance(prompt, bytes) or len(prompt) > 8 * limits.max_prompt_chars + SEALED_OVERHEAD:
            raise PromptTooLarge("sealed prompt is not bytes or is too large")
        if not req.mode.sealed(req.require_tee):
            raise InvalidParams("sealed prompts go only to attested nodes: set require_tee")
        try:
            return tuple(sorted(sealing.prompt_recipients(prompt)))
        except sealing.SealError as exc:
            raise InvalidParams(str(exc)) from None
    if not isinstance(prompt, str):
        raise InvalidParams("prompt must be a string")
    if len(prompt) > limits.max_prompt_chars:
        raise PromptTooLarge(f"prompt has {len(prompt)} characters, limit {limits.max_prompt_chars}")
    check_prompt_hash(req, prompt)
    return None


def check_prompt_hash(req: Request, prompt: Any, secret: bytes = b"") -> None:
    """The prompt is the one the client signed (`secret`: a sealed prompt's hash secret)."""
    if not isinstance(prompt, str) or commitments.prompt_hash(prompt, req.nonce + secret) != req.prompt_hash \
            or (not secret and req.prompt_len != len(prompt)):
        raise MessageError("prompt does not match the signed prompt hash")


def check_model(req: Request, served_hash: str) -> None:
    if req.model_hash != served_hash:
        raise ModelHashMismatch(f"request names hash {req.model_hash[:16]}…, model {req.model_id!r} "
                                f"is {served_hash[:16]}…")


def admit_at_node(raw: bytes, prompt: Any, served_hash: str | None) -> Request:
    """What an executor checks before spending compute: the client's signature, the
    model it serves (None: skip, for nodes that run no model) and a plain prompt's hash."""
    req = Request.parse(raw)
    if served_hash is not None:
        check_model(req, served_hash)
    if not req.sealed:
        check_prompt_hash(req, prompt)
    return req
