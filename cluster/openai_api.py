"""The OpenAI wire format, without a server: parse and check requests, render chats,
shape responses, stream chunks and errors. Imports no Ray and no web framework.

A request that asks for something verinfer cannot honour (n > 1, top_p < 1,
stop sequences, logprobs, tools, a caller-chosen seed) is refused with a 400
rather than silently ignored: seeds are derived from the request id so that no
party can grind them, and stop sequences would make the answer differ from the
tokens the receipt binds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from protocols import modes
from protocols.errors import (InsufficientFunds, InvalidParams, MessageError, ModelHashMismatch, NotEnoughNodes,
                              PromptTooLarge, ReceiptInvalid, RequestError, SelectorMisbehaved, UnknownModel,
                              UnknownRequest, VerinferError)

ROLES = ("system", "user", "assistant")
CHAT, COMPLETION = "chat.completion", "text_completion"
MAX_BODY_BYTES = 1 << 20


class APIError(Exception):
    """An HTTP error in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, int(round(self.retry_after))))} if self.retry_after is not None else {}


def error_for(exc: BaseException) -> APIError:
    """The HTTP error for a verinfer error (the cause of a Ray task error included)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(exc, APIError):
        exc = cause
    if isinstance(exc, APIError):
        return exc
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, UnknownModel):
        return APIError(404, msg, code="model_not_found", param="model")
    if isinstance(exc, InsufficientFunds):
        return APIError(402, msg, type_="insufficient_quota", code="insufficient_quota")
    if isinstance(exc, NotEnoughNodes):
        return APIError(503, msg, type_="server_error", code="no_capacity", retry_after=1)
    if isinstance(exc, SelectorMisbehaved):
        return APIError(502, msg, type_="server_error", code="selector_misbehaved")
    if isinstance(exc, ReceiptInvalid):
        return APIError(502, msg, type_="server_error", code="receipt_invalid")
    if isinstance(exc, UnknownRequest):
        return APIError(404, msg, code="not_found")
    if isinstance(exc, (PromptTooLarge,)):
        return APIError(400, msg, code="context_length_exceeded", param="messages")
    if isinstance(exc, (InvalidParams, RequestError, MessageError, ModelHashMismatch)):
        return APIError(400, msg, code=type(exc).__name__)
    if isinstance(exc, VerinferError):
        return APIError(400, msg, code=type(exc).__name__)
    return APIError(500, f"internal error: {type(exc).__name__}", type_="server_error")


@dataclass
class Call:
    """One parsed completions / chat completions request."""

    kind: str  # CHAT | COMPLETION
    model: str
    prompt: str  # what the request's prompt hash binds (rendered, for chats with more than one turn)
    template: bool  # True: the engine wraps `prompt` as one user turn with its own template
    max_tokens: int
    temperature: float
    top_k: int
    stream: bool
    include_usage: bool
    mode: str | None
    n: int | None
    p: float | None
    require_tee: bool
    envelope: bytes | None = None  # non-custodial: the caller's own signed request
    sealed_prompt: bytes | None = None  # non-custodial TEE: the prompt sealed on the caller's machine
    messages: list = field(default_factory=list)


def _num(body: dict, name: str, default, lo: float, hi: float, integer: bool = False):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise APIError(400, f"{name} must be {'an integer' if integer else 'a number'}", param=name)
    if not lo <= v <= hi:
        raise APIError(400, f"{name} must be in [{lo}, {hi}]", param=name)
    return v


def _refuse(body: dict, name: str, ok, why: str) -> None:
    if name in body and body[name] is not None and not ok(body[name]):
        raise APIError(400, f"{name} is not supported: {why}", param=name, code="unsupported_parameter")


def read_body(raw: bytes) -> Any:
    """The JSON value of a request body. Raises APIError(413) over MAX_BODY_BYTES and
    APIError(400) for anything that is not JSON (invalid UTF-8, or nested too deep to
    decode: json raises RecursionError there, not ValueError)."""
    if len(raw) > MAX_BODY_BYTES:
        raise APIError(413, "request body too large")
    try:
        return json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise APIError(400, "request body is not valid JSON") from None


def parse(kind: str, body: Any, default_model: str, templates: dict[str, str | None] | None = None,
          default_max_tokens: int = 64) -> Call:
    """Check an OpenAI request body. Raises APIError(400) for anything that cannot be honoured."""
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    model = body.get("model") or default_model
    if not isinstance(model, str) or not _utf8(model):
        raise APIError(400, "model must be a string", param="model")
    _refuse(body, "n", lambda v: v == 1, "every request has exactly one answer (verinfer's N is in `verinfer.n`)")
    _refuse(body, "top_p", lambda v: v == 1 or v == 1.0, "nucleus sampling is not part of the decoding rule; "
                                                          "use temperature (and verinfer.top_k)")
    _refuse(body, "stop", lambda v: v == [] , "the answer must be the tokens the receipt binds")
    _refuse(body, "seed", lambda v: False, "seeds are derived from the request id so nobody can grind them")
    _refuse(body, "logprobs", lambda v: v is False, "no log probabilities are returned")
    _refuse(body, "top_logprobs", lambda v: False, "no log probabilities are returned")
    _refuse(body, "tools", lambda v: v == [], "tool calls are not supported")
    _refuse(body, "functions", lambda v: v == [], "function calls are not supported")
    _refuse(body, "response_format", lambda v: isinstance(v, dict) and v.get("type") == "text",
            "only text responses")
    _refuse(body, "echo", lambda v: v is False, "the prompt is not echoed")
    _refuse(body, "best_of", lambda v: v == 1, "one answer per request")
    _refuse(body, "suffix", lambda v: False, "no insertion")
    for pen in ("presence_penalty", "frequency_penalty"):
        _refuse(body, pen, lambda v: v == 0, "penalties are not part of the decoding rule")
    _refuse(body, "logit_bias", lambda v: v == {}, "logit biases are not part of the decoding rule")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _num({"max_tokens": limit}, "max_tokens", default_max_tokens, 1, 4096, integer=True)
    temperature = float(_num(body, "temperature", 0.0, 0.0, 2.0))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "stream must be a boolean", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise APIError(400, "stream_options must be an object", param="stream_options")
    vi = body.get("verinfer") or {}
    if not isinstance(vi, dict):
        raise APIError(400, "verinfer must be an object {mode, n, p, require_tee}", param="verinfer")
    unknown = set(vi) - {"mode", "n", "p", "require_tee", "top_k", "request", "sealed_prompt"}
    if unknown:
        raise APIError(400, f"verinfer has unknown keys: {sorted(unknown)}", param="verinfer")
    mode = vi.get("mode")
    if mode is not None and (not isinstance(mode, str) or mode not in modes.SPECS):
        raise APIError(400, f"verinfer.mode must be one of {list(modes.MODES)}", param="verinfer.mode")
    n = vi.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise APIError(400, "verinfer.n must be a positive integer", param="verinfer.n")
    p = vi.get("p")
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1):
        raise APIError(400, "verinfer.p must be a probability", param="verinfer.p")
    require_tee = vi.get("require_tee", False)
    if not isinstance(require_tee, bool):
        raise APIError(400, "verinfer.require_tee must be a boolean", param="verinfer.require_tee")
    top_k = _num(vi, "top_k", 0, 0, 100000, integer=True)
    envelope = _b64(vi.get("request"), "verinfer.request")
    sealed = _b64(vi.get("sealed_prompt"), "verinfer.sealed_prompt")
    msgs: list = []
    if kind == CHAT:
        msgs = _messages(body.get("messages"))
        prompt, template = render_chat(msgs, (templates or {}).get(model))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "prompt must be a string (one prompt per request)", param="prompt")
        template = False  # a completion continues the text as given
    if not _utf8(prompt):  # JSON may carry lone surrogates ("\ud800"): no hash or engine can take them
        raise APIError(400, "the prompt is not valid Unicode text", param="messages" if kind == CHAT else "prompt")
    return Call(kind, model, prompt, template, int(max_tokens), temperature, int(top_k), stream,
                bool(opts.get("include_usage", False)), mode, n, None if p is None else float(p), require_tee,
                envelope, sealed, msgs)


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _b64(v: Any, name: str) -> bytes | None:
    import base64
    import binascii

    if v is None:
        return None
    if not isinstance(v, str):
        raise APIError(400, f"{name} must be base64", param=name)
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{name} must be base64", param=name) from None


def _messages(msgs: Any) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "messages must be a non-empty array", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {list(ROLES)}", param=f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):  # [{type: text, text}] parts
            if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                       for c in content):
                raise APIError(400, f"messages[{i}].content: only text parts are supported", param=f"messages[{i}]")
            content = "".join(c["text"] for c in content)
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string", param=f"messages[{i}]")
        out.append({"role": m["role"], "content": content})
    if out[-1]["role"] != "user":
        raise APIError(400, "the last message must be the user's", param="messages")
    return out


def render_chat(msgs: list[dict], template: str | None) -> tuple[str, bool]:
    """(prompt, template flag). A single user turn goes to the engine as is, and the engine
    wraps it with the model's own template; longer chats are rendered here with the
    model's template (a sandboxed jinja render, as transformers does), and the engine
    takes the result as it is. Without a template, turns are joined as "role: content"."""
    if len(msgs) == 1:
        return msgs[0]["content"], True
    if not template:
        return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:", False
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return env.from_string(template).render(messages=msgs, add_generation_prompt=True,
                                                bos_token="", eos_token=""), False
    except TemplateError as exc:
        raise APIError(500, f"the model's chat template failed: {exc}", type_="server_error") from None


# --- responses ------------------------------------------------------------------------
def verinfer_object(res, receipt_url: str, mode: str, streamed_text: str | None = None,
                    trust_roots: list[bytes] | None = None) -> dict:
    """What every response carries about its verification, including how each member was
    attested ("simulated" | "hardware", or "none") and the trust roots that was checked under."""
    s = res.summary
    attested = dict(getattr(s, "attested", None) or {})
    obj = {"request_id": res.request_id, "status": res.status, "mode": mode, "n": s.n,
           "members": dict(s.members), "paid": list(s.paid), "slashed": [list(x) for x in s.slashed],
           "branch": res.branch or None, "receipt_url": receipt_url, "receipt_verified": True,
           "attestation": {m: attested.get(m, "none") for m in s.members},
           "attestation_checked_under": [r.hex() for r in (trust_roots or [])],
           "attestation_note": _attestation_note(attested, trust_roots),
           "time_to_first_output_s": res.time_to_first_output, "time_to_finality_s": res.time_to_finality}
    if streamed_text is not None:
        held = streamed_text == (res.text or "")
        obj["stream_held"] = held
        if not held:
            obj["accepted_text"] = res.text
    return obj


def _attestation_note(attested: dict, roots) -> str:
    """One sentence, in plain words, on how the members were attested and how to check it."""
    if not attested:
        return "no member was attested: this answer was checked by the quorum alone"
    kinds = sorted(set(attested.values()))
    how = ("a SIMULATED root of trust (a test key, not real hardware)" if kinds == ["simulated"] else
           "hardware attestation (NVIDIA GPU confidential computing)" if kinds == ["hardware"] else
           " and ".join(kinds))
    return (f"{len(attested)} member(s) attested by {how}, verified by the gateway under the trust root(s) in "
            "attestation_checked_under; check it yourself: fetch receipt_url and run `verinfer verify FILE "
            "--trust-root HEX --aggregator-key HEX` with the keys `verinfer keys network` prints")


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def finish_reason(res, max_tokens: int) -> str:
    return "length" if res.token_ids is not None and len(res.token_ids) >= max_tokens else "stop"


def response(call: Call, res, prompt_tokens: int, created: int, vi: dict) -> dict:
    text = res.text or ""
    fin = finish_reason(res, call.max_tokens)
    if call.kind == CHAT:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": fin,
                  "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": fin, "logprobs": None}
    return {"id": _id(call, res.request_id), "object": call.kind, "created": created, "model": call.model,
            "choices": [choice], "usage": usage(prompt_tokens, len(res.token_ids or [])),
            "system_fingerprint": None, "verinfer": vi}


def _id(call: Call, request_id: str) -> str:
    return ("chatcmpl-" if call.kind == CHAT else "cmpl-") + request_id


def chunk(call: Call, request_id: str, created: int, text: str | None = None, finish: str | None = None,
          first: bool = False, vi: dict | None = None, usage_: dict | None = None, empty: bool = False) -> dict:
    """One streamed chunk (chat.completion.chunk or text_completion)."""
    if empty:  # the usage-only chunk of stream_options.include_usage
        choices = []
    elif call.kind == CHAT:
        delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
        choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    else:
        choices = [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]
    out = {"id": _id(call, request_id), "object": "chat.completion.chunk" if call.kind == CHAT else COMPLETION,
           "created": created, "model": call.model, "choices": choices, "system_fingerprint": None}
    if vi is not None:
        out["verinfer"] = vi
    if call.include_usage:
        out["usage"] = usage_
    return out


def sse(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def now() -> int:
    return int(time.time())
