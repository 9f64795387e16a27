"""Adversarial inputs for every entry point: shared by the property-based suite
(tests/protocols/test_adversarial.py) and the fuzz benchmark (benchmarks/fuzz.py).

Why over 400 lines: one table has to know, for every entry point, how its caller
feeds it and what a valid input looks like; splitting it would split the oracle.

`build()` returns every entry point (name -> EntryPoint); each takes one `Case` at a time:

  make(r)     a Case from a `random.Random` (hypothesis drives one through
              `st.randoms()`, the benchmark seeds its own). Mostly mutants of valid
              inputs built with the project's own builders — bit flips, truncation,
              extension, fields re-typed, deleted, added or swapped, values pushed to
              their edges, deep nesting, oversize, re-signed with another key or with
              the genuine one, replayed, re-addressed — and some raw noise.
  feed(case)  runs it the way the entry point's caller does. Returns EQUIVALENT (it
              was accepted, but it says exactly what the valid original says, e.g. a
              non-canonical re-encoding), PASSED (accepted) or ACCEPTED (accepted and
              wrong whatever the case: a well-formed-looking call no caller could serve);
              a typed error (VerinferError) is a rejection.
  snapshot()  the state the entry point may change (a replay guard, seen nonces,
              the ledger's balances, head and tables, a chunk order).

`run_case` is the oracle: a rejection leaves the snapshot unchanged (else
STATE_CHANGED); an acceptance of a case built to be rejected is ACCEPTED (a
finding); a case not built to be rejected (`must_reject=False`: a random HTTP body
that happens to be well formed, an insider re-signing a field the verifier cannot
check) that is accepted is VALID; anything raised that is not the entry point's
typed error propagates: a crash.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import struct
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

from protocols import admission, attestation as att, commitments, messages, obfuscation, receipts, sealing
from protocols import streams
from protocols.canonical import pack, sha256, unpack
from protocols.crypto import SigningKey
from protocols.errors import MessageError, UnknownSender, VerinferError
from protocols.params import SamplingParams

REJECTED, EQUIVALENT, VALID, ACCEPTED, STATE_CHANGED = "rejected", "equivalent", "valid", "accepted", "state-changed"
PASSED = "passed"  # what feed says of an accepted input: a finding only if the case must be rejected
FINDINGS = (ACCEPTED, STATE_CHANGED)


@dataclass
class Case:
    kind: str  # how it was made ("flip", "retype:body/n+genuine", ...): what a report groups by
    data: Any
    must_reject: bool = True


# --- values and encodings ------------------------------------------------------------------
class Deep:
    """`n` nested one-element arrays around `leaf` (encoded without recursion)."""

    def __init__(self, n: int, leaf: Any = None):
        self.n, self.leaf = n, leaf

    def __eq__(self, other):
        return isinstance(other, Deep) and (self.n, self.leaf) == (other.n, other.leaf)


def encode(v: Any, wide: bool = False) -> bytes:
    """msgpack of anything the adversary may send: bytes and int map keys, Deep nesting,
    and (wide=True) the widest encoding of every value, which decodes to the same value."""
    if isinstance(v, Deep):
        return b"\x91" * v.n + encode(v.leaf, wide)
    if v is None:
        return b"\xc0"
    if v is True or v is False:
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        if wide or not -32 <= v < 128:
            if v >= 0:
                return b"\xcf" + v.to_bytes(8, "big") if v < 2**64 else b"\xcf" + b"\xff" * 8
            return b"\xd3" + max(v, -2**63).to_bytes(8, "big", signed=True)
        return struct.pack("b", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        if wide or len(b) >= 32:
            return b"\xdb" + len(b).to_bytes(4, "big") + b
        return bytes([0xA0 | len(b)]) + b
    if isinstance(v, (bytes, bytearray)):
        return b"\xc6" + len(v).to_bytes(4, "big") + bytes(v)
    if isinstance(v, (list, tuple)):
        head = b"\xdd" + len(v).to_bytes(4, "big") if wide or len(v) >= 16 else bytes([0x90 | len(v)])
        return head + b"".join(encode(x, wide) for x in v)
    if isinstance(v, dict):
        head = b"\xdf" + len(v).to_bytes(4, "big") if wide or len(v) >= 16 else bytes([0x80 | len(v)])
        return head + b"".join(encode(k, wide) + encode(x, wide) for k, x in v.items())
    raise TypeError(f"cannot encode {type(v).__name__}")


def try_pack(v: Any) -> bytes | None:
    try:
        return pack(v)
    except (TypeError, ValueError, OverflowError):
        return None


EDGE_INTS = [0, 1, -1, 2, 127, 128, 255, 256, -32, -33, 2**15, 2**16, 2**31 - 1, 2**31, 2**32, 2**53 + 1,
             2**63 - 1, 2**63, -2**63, 2**64 - 1]
EDGE_FLOATS = [0.0, -0.0, 0.5, 1.0, -1.0, 1e-300, 5e-324, 1e308, 2.0**63, math.inf, -math.inf, math.nan]
TEXTS = ["", "a", "quorum", "referee", "sampling", "tee", "cross-validation", "obfuscated", "final", "\x00",
         "é", "日本語", "🦀", "\u202e", "a" * 300, "%s%n{0}", "../..", "client/", "escrow/", "external",
         "treasury", "collateral/n1", " ", "None", "0", "NaN"]
ALPHABET = "abcxyz019 -_/|.\x00\x7fé日🦀\u202e\ufeff"


def rbytes(r: random.Random, n: int) -> bytes:
    if n <= 8:
        return bytes(r.getrandbits(8) for _ in range(n))
    return random.Random(r.getrandbits(64)).randbytes(n)


def rand_text(r: random.Random) -> str:
    if r.random() < 0.5:
        return r.choice(TEXTS)
    return "".join(r.choice(ALPHABET) for _ in range(r.randrange(40)))


def rand_bytes(r: random.Random) -> bytes:
    k = r.randrange(6)
    if k == 0:
        return b""
    if k == 1:
        return bytes(r.choice([1, 15, 16, 31, 32, 33, 63, 64, 65]))
    return rbytes(r, r.choice([1, 12, 16, 31, 32, 33, 64, r.randrange(200)]))


def rand_value(r: random.Random, depth: int = 0) -> Any:
    k = r.randrange(11 if depth < 3 else 7)
    if k == 0:
        return None
    if k == 1:
        return r.random() < 0.5
    if k == 2:
        return r.choice(EDGE_INTS)
    if k == 3:
        return r.choice(EDGE_FLOATS) if r.random() < 0.7 else r.uniform(-1e6, 1e6)
    if k == 4:
        return rand_text(r)
    if k == 5:
        return rand_bytes(r)
    if k == 6:
        return r.randrange(-5, 50)
    if k == 7:
        return [rand_value(r, depth + 1) for _ in range(r.randrange(4))]
    if k == 8:
        return {rand_text(r): rand_value(r, depth + 1) for _ in range(r.randrange(4))}
    if k == 9:  # a map with a bytes key: msgpack allows it, canonical maps do not
        return {rand_bytes(r) or b"k": rand_value(r, depth + 1)}
    return Deep(r.choice([10, 200, 600, 1000, 1100]), rand_value(r, 3))


def _kind(v: Any) -> type:
    return type(v)


def retyped(r: random.Random, v: Any) -> Any:
    """A value of another type than `v` (bool and int count as different)."""
    for _ in range(12):
        new = rand_value(r, 1)
        if _kind(new) is not _kind(v):
            return new
    return Deep(3)


def edge(r: random.Random, v: Any) -> Any:
    """`v` pushed to an edge of its own type."""
    if isinstance(v, bool):
        return r.choice([not v, 0, 1])
    if isinstance(v, int):
        return r.choice(EDGE_INTS + [v + 1, v - 1, -v])
    if isinstance(v, float):
        return r.choice(EDGE_FLOATS + [v + 1e-9, -v])
    if isinstance(v, str):
        return r.choice(["", v + "x", v[:-1], v.upper(), "\x00" + v, v * 50, v[::-1], rand_text(r)])
    if isinstance(v, bytes):
        flip = bytearray(v or b"\0")
        flip[r.randrange(len(flip))] ^= 1 << r.randrange(8)
        return r.choice([b"", v[:-1], v + b"\0", bytes(flip), bytes(len(v)), v * 3])
    if isinstance(v, list):
        return r.choice([[], v[:-1], v + v[-1:], v[::-1], [v]])
    if isinstance(v, dict):
        if v and r.random() < 0.5:
            k = r.choice(list(v))
            return {a: b for a, b in v.items() if a != k}
        return {}
    return r.choice([0, "", b"", False, []])


def paths(obj: Any, prefix: tuple = (), out: list | None = None, depth: int = 0) -> list[tuple]:
    out = [] if out is None else out
    if depth > 7 or len(out) > 600:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            paths(v, prefix + (k,), out, depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append(prefix + (i,))
            paths(v, prefix + (i,), out, depth + 1)
    return out


def get_at(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def set_at(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    get_at(obj, path[:-1])[path[-1]] = value
    return obj


def mutate_struct(r: random.Random, obj: Any, within: tuple = ()) -> tuple[Any, str, tuple]:
    """One structural mutation of a decoded message, somewhere under `within`.
    Returns (mutated copy, label, path)."""
    obj = copy.deepcopy(obj)
    base = get_at(obj, within)
    ps = [within + p for p in paths(base)] or [within]
    path = r.choice(ps)
    op = r.choice(["retype", "retype", "edge", "edge", "delete", "add", "swap", "random", "deep"])
    label = "/".join(str(p) for p in path)
    if op == "delete" and path:
        parent = get_at(obj, path[:-1])
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
        return obj, f"delete:{label}", path
    if op == "add":
        target = get_at(obj, path)
        if not isinstance(target, (dict, list)):
            path, target = path[:-1], get_at(obj, path[:-1])
        key = r.choice([rand_text(r) or "x", rand_bytes(r) or b"k", 7]) if isinstance(target, dict) else None
        if isinstance(target, dict):
            target[key] = rand_value(r)
        else:
            target.append(rand_value(r))
        return obj, f"add:{'/'.join(str(p) for p in path)}", path
    if op == "swap" and len(ps) > 1:
        other = r.choice(ps)
        a, b = get_at(obj, path), get_at(obj, other)
        if not _contains(path, other) and not _contains(other, path):
            set_at(obj, path, copy.deepcopy(b))
            set_at(obj, other, copy.deepcopy(a))
            return obj, f"swap:{label}<>{'/'.join(str(p) for p in other)}", path
    old = get_at(obj, path)
    new = {"retype": lambda: retyped(r, old), "edge": lambda: edge(r, old), "random": lambda: rand_value(r),
           "deep": lambda: Deep(r.choice([100, 600, 1000]), old if not isinstance(old, (dict, list)) else None),
           "swap": lambda: edge(r, old), "delete": lambda: retyped(r, old)}[op]()
    return set_at(obj, path, new), f"{op}:{label}", path


def _contains(a: tuple, b: tuple) -> bool:
    return len(a) <= len(b) and b[:len(a)] == a


def mutate_bytes(r: random.Random, data: bytes, oversize_to: int = 0) -> tuple[bytes, str]:
    """Byte-level damage: flips, truncation, extension, splices, overwrites."""
    b = bytearray(data)
    op = r.choice(["flip", "flip", "flips", "truncate", "extend", "splice", "overwrite", "chunk"]
                  + (["oversize"] if oversize_to else []))
    if op == "oversize":
        return bytes(b) + bytes(oversize_to + 1 - len(b)), op
    if not b:
        return rbytes(r, r.randrange(1, 40)), "noise"
    if op == "flip":
        i = r.randrange(len(b))
        b[i] ^= 1 << r.randrange(8)
    elif op == "flips":
        for _ in range(r.randrange(2, 9)):
            b[r.randrange(len(b))] ^= 1 << r.randrange(8)
    elif op == "truncate":
        del b[r.randrange(len(b)):]
    elif op == "extend":
        b += rbytes(r, r.randrange(1, 64))
    elif op == "splice":
        i = r.randrange(len(b) + 1)
        b[i:i] = rbytes(r, r.randrange(1, 16))
    elif op == "overwrite":
        b[r.randrange(len(b))] = r.choice([0x00, 0xFF, 0xC0, 0xC1, 0xC4, 0xD9, 0xDC, 0xDD, 0xDE, 0xDF, 0x7F, 0x80])
    else:
        i = r.randrange(len(b))
        j = min(len(b), i + r.randrange(1, 32))
        b[i:j] = b[i:j][::-1] if r.random() < 0.5 else bytes(j - i)
    return bytes(b), op


def noise(r: random.Random) -> tuple[bytes, str]:
    """Raw noise: random bytes, or a random msgpack value."""
    if r.random() < 0.5:
        return rbytes(r, r.randrange(0, 300)), "noise:bytes"
    return encode(rand_value(r)), "noise:value"


# --- the world: valid inputs built with the project's own builders -------------------------------
CLIENT = SigningKey(b"\x11" * 32)
OTHER = SigningKey(b"\x66" * 32)  # anyone: a forger's key
MEMBER = SigningKey(b"\x22" * 32)
REFEREE = SigningKey(b"\x23" * 32)
SELECTOR = SigningKey(b"\x51" * 32)
MODEL_HASH = "ab" * 32
MODEL = {"model_hash": MODEL_HASH, "timeout_s": None, "timeout_per_token_s": None}
LIMITS = admission.Limits(max_prompt_chars=100, max_n=5, max_tokens=16, timeout_s=10.0, default_p=0.25)
NODE_A, NODE_B = sealing.KemKey(b"\x0a" * 32), sealing.KemKey(b"\x0b" * 32)
CLIENT_KEM = sealing.KemKey(b"\x0c" * 32)
SECRET = b"\x5c" * 32


def request_body(rid: str, prompt: str = "hello", mode: str = "sampling", n: int = 3, **over) -> dict:
    nonce = b"\x07" * 16
    body = {"request_id": rid, "client_id": messages.client_id_of(CLIENT.public), "model_id": "m",
            "model_hash": MODEL_HASH, "prompt_hash": commitments.prompt_hash(prompt, nonce),
            "prompt_len": len(prompt), "params": SamplingParams(8).with_seed_for(rid).to_wire(),
            "mode": mode, "n": n, "timeout_s": 1.0, "nonce": nonce, "created_at": 0.0, "p": None,
            "require_tee": False}
    if over.pop("sealed", False):
        body.update(sealed=True, client_kem=CLIENT_KEM.public,
                    prompt_hash=commitments.prompt_hash(prompt, nonce + SECRET))
    body.update(over)
    return body


@dataclass
class Original:
    """A valid input and what it means."""

    raw: bytes
    prompt: Any
    body: dict
    sealed: bool = False


def _requests() -> list[Original]:
    out = []
    for rid, kw in (("r-plain", {}), ("r-cv", {"mode": "cross-validation", "n": 2, "p": 0.5}),
                    ("r-obf", {"mode": "obfuscated", "n": 2}), ("r-tee", {"mode": "tee", "n": 1, "sealed": True})):
        body = request_body(rid, **kw)
        env = messages.seal("request", body, CLIENT)
        prompt = "hello"
        if env.body["sealed"]:
            prompt = sealing.seal_prompt("hello", rid, {"node-a": NODE_A.public, "node-b": NODE_B.public},
                                         b"\x33" * 32, b"\x44" * 12, SECRET)
        out.append(Original(env.raw, prompt, env.body, env.body["sealed"]))
    return out


# (field, value, who must refuse it): A / a = the aggregator, for a plain / a sealed request;
# N / n = a node, for a plain / a sealed one (a node checks signature, model, prompt hash and
# what parsing checks; n, p, limits, seed derivation and deadlines are the aggregator's)
ALL = "AaNn"
RULE_BREAKS = [
    ("n", 0, "Aa"), ("n", 6, "Aa"), ("n", -1, "Aa"), ("mode", "fastest", ALL), ("prompt_len", 101, "Aa"),
    ("prompt_len", -1, ALL), ("prompt_len", 6, "AN"), ("model_hash", "cd" * 32, ALL),
    ("prompt_hash", b"\0" * 32, "ANn"), ("nonce", b"\x08" * 16, "ANn"), ("request_id", "r-other", "Aa"),
    ("client_id", messages.client_id_of(OTHER.public), ALL), ("timeout_s", 0.0, "Aa"), ("timeout_s", -1.0, "Aa"),
    ("timeout_s", 3601.0, "Aa"), ("timeout_s", math.nan, "Aa"), ("timeout_s", math.inf, "Aa"),
    ("params", {"max_tokens": 17}, "Aa"), ("params", {"seed": 1}, "Aa"), ("params", {"temperature": "11.0"}, ALL),
    ("params", {"temperature": "nan"}, ALL), ("params", {"top_k": -1}, ALL), ("params", {"max_tokens": 0}, ALL),
    ("params", {"template": 1}, ALL), ("params", {"seed": -1}, ALL), ("params", {"seed": 2**63}, ALL),
    ("client_kem", b"\x01" * 5, ALL), ("client_kem", bytes(32), ALL), ("sealed", False, "an"),
]
CV_BREAKS = [("p", 1.5, "Aa"), ("p", -0.1, "Aa"), ("p", math.nan, "Aa"), ("p", math.inf, "Aa")]


def _resign(obj: dict, key: SigningKey | None) -> bytes:
    """Encode an envelope object, re-signed by `key` when its body still packs."""
    if key is not None and isinstance(obj, dict):
        obj = dict(obj, sender=key.public)
        signed = try_pack([messages.DOMAIN, obj.get("v"), obj.get("type"), obj.get("body"), obj.get("sender")])
        if signed is not None:
            obj["sig"] = key.sign(signed)
    return encode(obj)


def envelope_mutant(r: random.Random, raw: bytes, genuine: SigningKey,
                    within: tuple = ("body",)) -> tuple[bytes, str, tuple]:
    """A mutant of a signed envelope: damaged bytes, or a structural change sent as it is,
    re-signed by a forger, or re-signed by the genuine signer (an insider)."""
    k = r.randrange(10)
    if k < 3:
        data, op = mutate_bytes(r, raw, messages.MAX_MESSAGE_BYTES if r.random() < 0.01 else 0)
        return data, op, ()
    if k == 3:
        data, op = noise(r)
        return data, op, ()
    if k == 4:  # the same content, re-encoded (non-canonical widths, other key order)
        obj = unpack(raw)
        if r.random() < 0.5:
            obj = dict(reversed(list(obj.items())))
        return encode(obj, wide=r.random() < 0.7), "re-encoded", ()
    obj, label, path = mutate_struct(r, unpack(raw), within if r.random() < 0.8 else ())
    who = r.choice(["none", "forger", "genuine", "genuine"])
    return _resign(obj, {"none": None, "forger": OTHER, "genuine": genuine}[who]), f"{label}+{who}", path


def same_envelope(env: messages.Envelope, raw: bytes) -> bool:
    o = messages.open_envelope(raw)
    return (env.v, env.type, env.body, env.sender) == (o.v, o.type, o.body, o.sender)


# --- entry point: requests (admission) -------------------------------------------------------------
class Requests:
    """admission.admit (the aggregator), admit_at_node (+ a sealed prompt's opening and hash
    check, as an executor does), and the aggregator's replay rule for requests."""

    def __init__(self):
        self.originals = _requests()
        self.reset()  # each original was submitted once already

    def make(self, r: random.Random, node: bool = False) -> Case:
        o = r.choice(self.originals)
        k = r.randrange(10)
        if k < 3:  # one admission rule broken, re-signed by the client itself
            breaks = RULE_BREAKS + (CV_BREAKS if o.body["mode"] == "cross-validation" else [])
            name, value, who = r.choice(breaks)
            body = dict(o.body)
            body[name] = {**body["params"], **value} if name == "params" else value
            raw = encode({"v": 1, "type": "request", "body": body, "sender": CLIENT.public,
                          "sig": CLIENT.sign(pack([messages.DOMAIN, 1, "request", body, CLIENT.public]))})
            flag = ("N" if node else "A") if not o.sealed else ("n" if node else "a")
            return Case(f"rule:{name}={value!r}", (o, raw, o.prompt), must_reject=flag in who)
        if k < 5:  # the prompt beside the envelope
            return self._prompt_mutant(r, o, node)
        raw, label, path = envelope_mutant(r, o.raw, CLIENT)
        if label.endswith("+genuine") and path[:1] == ("body",):
            # the client re-signed its own edited request: a new request, which must fail here only
            # when a field left the schema (a field it does not know is ignored; an optional one
            # may be left out)
            return Case(label, (o, raw, o.prompt), must_reject=len(path) > 1 and _out_of_schema(raw, path[1]))
        return Case(label, (o, raw, o.prompt))

    def _prompt_mutant(self, r: random.Random, o: Original, node: bool) -> Case:
        if o.sealed:
            k = r.randrange(5)
            if k == 0:
                p, op = mutate_bytes(r, o.prompt)
            elif k == 1:
                p, op = r.choice(["hello", None, 5, o.prompt.decode("latin-1"), bytes(10 ** 6)]), "retype"
            elif k == 2:
                p, op = sealing.seal_prompt("hellO", o.body["request_id"], {"node-a": NODE_A.public}, b"\x35" * 32,
                                            b"\x45" * 12, SECRET), "other-prompt"
            elif k == 3:
                p, op = sealing.seal_prompt("hello", "r-other", {"node-a": NODE_A.public}, b"\x35" * 32,
                                            b"\x45" * 12, SECRET), "other-request"
            else:
                obj, op, _ = mutate_struct(r, unpack(o.prompt))
                p = encode(obj)
            # the aggregator cannot look inside a sealed prompt: only the node must refuse it
            return Case(f"sealed-prompt:{op}", (o, o.raw, p), must_reject=node)
        p = r.choice(["hellO", "hello ", "", "x" * 101, "hello" * 30, b"hello", None, 5, ["hello"], "helló",
                      "hello\x00", rand_text(r)])
        return Case("prompt", (o, o.raw, p), must_reject=p != "hello")

    def feed_admit(self, case: Case) -> str:
        o, raw, prompt = case.data
        admission.admit(raw, prompt, LIMITS, MODEL)
        return EQUIVALENT if same_envelope(messages.open_envelope(o.raw), raw) and prompt == o.prompt else PASSED

    def feed_node(self, case: Case) -> str:
        o, raw, prompt = case.data
        req = admission.admit_at_node(raw, prompt, MODEL_HASH)
        opened = prompt
        if req.sealed:
            text, secret = sealing.open_prompt(prompt, req.request_id, "node-a", NODE_A)
            admission.check_prompt_hash(req, text, secret)
            opened = prompt if not o.sealed else (text, secret) == ("hello", SECRET)
        same = opened is True or opened == o.prompt
        return EQUIVALENT if same_envelope(messages.open_envelope(o.raw), raw) and same else PASSED

    def make_replay(self, r: random.Random) -> Case:
        o = r.choice(self.originals)
        k = r.randrange(4)
        if k == 0:
            return Case("replay:exact", (o, o.raw, o.prompt))
        if k == 1:
            obj = unpack(o.raw)
            return Case("replay:re-encoded", (o, encode(obj, wide=True), o.prompt))
        body = dict(o.body)  # the client's "fresh" copy of a request it already sent
        field_ = r.choice(["nonce", "created_at", "timeout_s"])
        body[field_] = {"nonce": rbytes(r, 16), "created_at": r.uniform(1, 1e9), "timeout_s": 20.0}[field_]
        if field_ == "nonce":
            body["prompt_hash"] = commitments.prompt_hash("hello", body["nonce"] + (SECRET if o.sealed else b""))
        return Case(f"replay:fresh-{field_}", (o, messages.seal("request", body, CLIENT).raw, o.prompt))

    def feed_replay(self, case: Case) -> str:
        """The aggregator's order: parse, replay check, admission, record."""
        o, raw, prompt = case.data
        req = admission.Request.parse(raw)
        if self.guard.seen_request(req.request_id) or req.request_id in self.guard.spent:
            raise messages.ReplayedMessage(f"request {req.request_id} was already submitted")
        admission.admit(raw, prompt, LIMITS, MODEL)
        self.guard.record(req)
        return PASSED

    def reset(self) -> None:
        self.guard = messages.ReplayGuard()
        for o in self.originals:
            self.guard.record(admission.Request.parse(o.raw))

    def snapshot(self):
        return _guard_state(self.guard)


_MISSING = object()


def _out_of_schema(raw: bytes, name: str, type_: str = "request") -> bool:
    types = messages.SCHEMAS[type_].get(name)
    v = _value_or_missing(raw, ("body", name))
    if v is _MISSING:
        return name in messages.SCHEMAS[type_] and name not in messages.OPTIONAL[type_]
    return types is not None and (isinstance(v, Deep) or not isinstance(v, types)
                                  or (isinstance(v, bool) and bool not in types))


def _value_or_missing(raw: bytes, path: tuple) -> Any:
    try:
        return get_at(unpack(raw), path)
    except Exception:
        return _MISSING


def _guard_state(g: messages.ReplayGuard):
    return ({k: frozenset(v) for k, v in g._seen.items()}, frozenset(g.spent))


# --- entry point: member messages (results, reveals, refusals, chunks) -----------------------------
class Members:
    """What the aggregator does with a member's message: open the envelope, check it is the
    drawn member's own for this round and role, then the replay guard (chunks: the order)."""

    RID = "r-members"

    def __init__(self):
        self.members = {"n1": (MEMBER, "quorum"), "n2": (REFEREE, "referee")}
        c = commitments.output_commitment(self.RID, MODEL_HASH, b"\0" * 32, {}, [1, 2, 3])
        salt = b"\x5a" * 16
        self.originals: dict[str, list[bytes]] = {}
        for nid, (key, role) in self.members.items():
            base = {"request_id": self.RID, "node_id": nid, "role": role, "nonce": b"\x01" * 16}
            msgs = {
                "result": dict(base, commit_hash=commitments.commit_hash(key.public, c, salt), output_digest=b"d" * 32,
                               engine_seconds=0.25),
                "reveal": dict(base, commitment=c, salt=salt),
                "refusal": dict(base, reason="sealed prompt does not open"),
                "chunk": {"request_id": self.RID, "node_id": nid, "role": role, "seq": 0, "token_ids": [1, 2],
                          "text": "hi"},
            }
            for t, body in msgs.items():
                self.originals.setdefault(t, []).append(messages.seal(t, body, key).raw)
        self.originals["chunk"].append(messages.seal("chunk", dict(unpack(self.originals["chunk"][0])["body"],
                                                                    seq=1, token_ids=[3], text="!"), MEMBER).raw)
        self.reset()

    def reset(self) -> None:
        self.guard = messages.ReplayGuard()
        self.order = streams.ChunkOrder()
        for t, raws in self.originals.items():
            for raw in raws:
                env = messages.open_envelope(raw, t)
                if t == "chunk":
                    self.order.accept(env.body["node_id"], env.body["seq"], "x")
                else:
                    self.guard.record(env)

    def maker(self, type_: str) -> Callable[[random.Random], Case]:
        def make(r: random.Random) -> Case:
            raw0 = r.choice(self.originals[type_])
            env0 = messages.open_envelope(raw0)
            key = self.members[env0.body["node_id"]][0]
            k = r.randrange(12)
            if k == 0:
                return Case("replay:exact", (type_, raw0))
            if k == 1:  # the member's own message, again, with a fresh nonce (or a new seq)
                body = dict(env0.body)
                if type_ == "chunk":
                    body["seq"] = r.choice([0, 1, -1, streams.MAX_SEQ, 2**63 - 1])
                else:
                    body["nonce"] = rbytes(r, 16)
                return Case("replay:fresh", (type_, messages.seal(type_, body, key).raw))
            if k == 2:  # another member's key, or the right key speaking for another member
                other = r.choice([m for m in self.members.values() if m[0] is not key] + [(OTHER, "quorum")])
                return Case("impersonate", (type_, messages.seal(type_, dict(env0.body), other[0]).raw))
            if k == 3:  # another type's (valid) message where this type is expected
                t2 = r.choice([t for t in self.originals if t != type_])
                return Case(f"wrong-type:{t2}", (type_, r.choice(self.originals[t2])))
            raw, label, path = envelope_mutant(r, raw0, key)
            if type_ == "chunk" and label.endswith("+genuine") and path[:2] in (("body", "seq"), ("body", "token_ids"),
                                                                                   ("body", "text")):
                # a member may stream a new chunk of its own: only one that breaks the rules must fail
                return Case(label, (type_, raw), must_reject=False)
            return Case(label, (type_, raw))
        return make

    def feed(self, case: Case) -> str:
        type_, raw = case.data
        env = messages.open_envelope(raw, type_)
        nid = env.body["node_id"]
        if nid not in self.members or self.members[nid][0].public != env.sender:
            raise UnknownSender(f"{type_} is not signed by member {nid!r}")
        if env.body["request_id"] != self.RID or env.body["role"] != self.members[nid][1]:
            raise MessageError("message fields do not match the member it came from")
        if type_ == "chunk":
            held = self.order.pending()
            ready = self.order.accept(nid, env.body["seq"], (list(env.body["token_ids"]), env.body["text"]))
            if not ready and self.order.pending() == held:
                raise MessageError("chunk dropped")  # a repeat or out of order: changes nothing
            return PASSED
        self.guard.check_and_record(env)
        return PASSED

    def snapshot(self):
        o = self.order
        return _guard_state(self.guard), (o.member, o.next_seq, repr(o._held))


class RandomEnvelopes:
    """open_envelope on noise and on envelope-shaped maps of random fields."""

    def make(self, r: random.Random) -> Case:
        if r.random() < 0.3:
            data, op = noise(r)
            return Case(op, data)
        type_ = r.choice(list(messages.SCHEMAS) + ["ticket", "", "REQUEST"])
        fields_ = list(messages.SCHEMAS.get(type_, {"request_id": ()}))
        body = {f: rand_value(r) for f in fields_ if r.random() < 0.9}
        obj = {"v": r.choice([1, 1, 1, 0, 2, True, 1.0, "1"]), "type": type_, "body": body,
               "sender": r.choice([rbytes(r, 32), OTHER.public, rand_bytes(r)]),
               "sig": r.choice([rbytes(r, 64), rand_bytes(r)])}
        if r.random() < 0.3:
            return Case("shaped+forger", _resign(obj, OTHER), must_reject=False)  # a forger may sign what it likes
        return Case("shaped", encode(obj))

    def feed(self, case: Case) -> str:
        messages.open_envelope(case.data)
        return PASSED

    def snapshot(self):
        return None


# --- entry point: tickets and unblinding (obfuscated mode) -------------------------------------------
class Tickets:
    RID = "r1"

    def __init__(self):
        self.ticket = obfuscation.Ticket(self.RID, "quorum", b"\x5e" * 32)
        self.sealed = obfuscation.make_ticket(self.ticket, NODE_A.public, SELECTOR)
        self.for_b = obfuscation.make_ticket(self.ticket, NODE_B.public, SELECTOR)
        self.body = {"request_id": self.RID, "role": "quorum", "seed": b"\x5e" * 32, "to": NODE_A.public}

    def _reseal(self, plaintext: bytes, rid: str = RID) -> bytes:
        return sealing.seal(NODE_A.public, plaintext, obfuscation.TICKET_DOMAIN + rid.encode())

    def make(self, r: random.Random) -> Case:
        k = r.randrange(9)
        if k < 2:
            data, op = mutate_bytes(r, self.sealed)
            return Case(f"sealed:{op}", (data, self.RID))
        if k == 2:
            return Case("re-addressed:for-b", (self.for_b, self.RID))
        if k == 3:
            return Case("other-request", (self.sealed, r.choice(["r2", "", "r1 "])))
        body = self.body
        if k == 4:  # the selector's signature, but a body that breaks a rule (or the genuine one, re-sealed)
            name, value = r.choice([("to", NODE_B.public), ("request_id", "r2"), ("role", "boss"), ("seed", b"\1" * 31),
                                    ("seed", "x" * 32), ("to", None), ("role", None), (None, None)])
            b2 = pack(dict(body, **{name: value}) if name else body)
            sealed = self._reseal(pack([b2, SELECTOR.sign(obfuscation.TICKET_DOMAIN + b2)]))
            return Case(f"selector-signed:{name}", (sealed, self.RID), must_reject=name is not None)
        # inside the seal: [body, sig] edited, then signed by nobody, the impostor or the selector
        signed_body = pack(body)
        inner = [signed_body, SELECTOR.sign(obfuscation.TICKET_DOMAIN + signed_body)]
        if k == 5:
            obj, label, _ = mutate_struct(r, inner)
            return Case(f"inner:{label}", (self._reseal(encode(obj)), self.RID))
        b2, label, _ = mutate_struct(r, body)
        enc = try_pack(b2) or encode(b2)
        who = r.choice(["none", "forger", "selector"])
        sig = {"none": inner[1], "forger": OTHER.sign(obfuscation.TICKET_DOMAIN + enc),
               "selector": SELECTOR.sign(obfuscation.TICKET_DOMAIN + enc)}[who]
        return Case(f"body:{label}+{who}", (self._reseal(pack([enc, sig])), self.RID), must_reject=who != "selector")

    def feed(self, case: Case) -> str:
        sealed, rid = case.data
        t = obfuscation.open_ticket(sealed, rid, NODE_A, SELECTOR.public)
        if t == self.ticket:
            return EQUIVALENT
        # the selector may mint tickets; one it signed must still be for this request and node
        ok = t.request_id == rid == self.RID and t.role in ("quorum", "referee") \
            and isinstance(t.one_time_seed, bytes) and len(t.one_time_seed) == 32
        return PASSED if ok else ACCEPTED

    def snapshot(self):
        return None


class Unblinding:
    def __init__(self):
        self.p1, self.p2 = SigningKey(b"\x71" * 32).public, SigningKey(b"\x72" * 32).public
        self.answers = {self.p1: ("n1", b"\x81" * 32, ""), self.p2: ("n2", b"\x82" * 32, "ee" * 32)}
        self.commitment = obfuscation.mapping_commitment([(p, *a) for p, a in self.answers.items()])

    def make(self, r: random.Random) -> Case:
        p = r.choice([self.p1, self.p2])
        args = [self.commitment, p, *self.answers[p]]
        k = r.randrange(6)
        if k == 0:  # the other pseudonym's answer
            q = self.p2 if p == self.p1 else self.p1
            i = r.randrange(1, 4)
            args[1 + i] = self.answers[q][i - 1]
            label = f"other-answer:{i}"
        elif k == 1:
            obj, label, _ = mutate_struct(r, {"c": dict(self.commitment)})
            args[0] = obj.get("c", None) if isinstance(obj, dict) else obj
            label = "commitment:" + label
        else:
            i = r.randrange(1, 5)
            args[i] = r.choice([edge(r, args[i]), retyped(r, args[i])])
            label = f"arg{i}"
        return Case(label, tuple(args))

    def feed(self, case: Case) -> str:
        commitment, p, node_id, salt, digest = case.data
        obfuscation.check_unblinding(commitment, p, node_id, salt, digest)
        pid = obfuscation.pseudonym_id(p)
        same = p in self.answers and (node_id, salt, digest) == self.answers[p] and \
            isinstance(commitment, dict) and commitment.get(pid) == self.commitment[pid]
        return EQUIVALENT if same else PASSED

    def snapshot(self):
        return None


# --- entry point: attestation evidence ---------------------------------------------------------------
NOW = 1_700_000_000.0
ROOT = att.SimulatedRoot(bytes(range(32)))
NODE_KEY = SigningKey(b"\x01" * 32)
KEM_PUB = NODE_A.public
NONCE = b"\x07" * 32
MEAS = {"code_hash": "c0de" * 16, "model_hash": "m0de" * 16, "engine": "tiny"}
BINDING = att.ExpectedBinding(NODE_KEY.public, KEM_PUB, NONCE)
# every measurement pinned: a re-signed report with other measurements must fail
PINNED = att.Policy(allowed_code_hashes=(MEAS["code_hash"],), model_hash=MEAS["model_hash"], allowed_engines=("tiny",),
                    min_tcb_version=5, allow_simulated=True)
# only what the signer vouches for; a change elsewhere (tcb up, issued_at within the window) is the signer's right
BOUND = ("report_data", "signing_pub", "kem_pub", "nonce", "measurements", "device_id")


def _nras():
    import base64

    from Crypto.Hash import SHA384
    from Crypto.PublicKey import ECC
    from Crypto.Signature import DSS

    key = ECC.construct(curve="P-384", d=int.from_bytes(sha256(b"nras-test-key"), "big"))

    def jwt(claims):
        enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
        head = f"{enc(json.dumps({'alg': 'ES384'}).encode())}.{enc(json.dumps(claims).encode())}"
        return f"{head}.{enc(DSS.new(key, 'deterministic-rfc6979', encoding='binary').sign(SHA384.new(head.encode())))}"

    rd = att.report_data(NODE_KEY.public, KEM_PUB, NONCE)
    common = {"eat_nonce": rd.hex(), "iat": int(NOW), "nbf": int(NOW), "exp": int(NOW) + 3600}
    gpu = {**common, "x-nvidia-gpu-attestation-report-parsed": True,
           "x-nvidia-gpu-attestation-report-signature-verified": True,
           "x-nvidia-gpu-attestation-report-nonce-match": True,
           "x-nvidia-gpu-attestation-report-cert-chain": {"x-nvidia-cert-status": "valid",
                                                          "x-nvidia-cert-ocsp-status": "good"},
           "x-nvidia-gpu-arch-check": True, "x-nvidia-gpu-driver-rim-signature-verified": True,
           "x-nvidia-gpu-vbios-rim-signature-verified": True, "measres": "success", "dbgstat": "disabled",
           "x-nvidia-gpu-driver-version": "570.86", "ueid": "4818583115702365474934"}
    eat = [["JWT", jwt({**common, "x-nvidia-overall-att-result": True})], {"GPU-0": jwt(gpu)}]
    ev = att.nvidia_evidence(NODE_KEY, KEM_PUB, NONCE, MEAS, eat, NOW)
    return ev, key.public_key().export_key(format="DER")


class Evidence:
    """attestation.verify on mutants of simulated and NVIDIA evidence, with the caller's
    seen-nonce set (fresh, or already holding this nonce: a replay)."""

    def __init__(self):
        sim = ROOT.evidence("gpu-0", NODE_KEY.public, KEM_PUB, NONCE, MEAS, 5, NOW)
        nv, nras_anchor = _nras()
        self.originals = {"sim": sim, "nvidia": nv}
        self.anchors = (ROOT.trust_anchor, nras_anchor)
        self.policies = {"sim": PINNED, "nvidia": att.Policy(allowed_code_hashes=(MEAS["code_hash"],),
                                                             model_hash=MEAS["model_hash"], allowed_engines=("tiny",))}
        self.seen: set = {NONCE, b"\x09" * 32}  # nonces already accepted: this one is a replay

    def _resign(self, fmt: str, env: Any) -> bytes | None:
        if not isinstance(env, dict) or not isinstance(env.get("report"), dict):
            return None
        rep = env["report"]
        try:
            if fmt == "sim":
                env["sig"] = ROOT.device_key(rep["device_id"]).sign(att._report_bytes(rep))
            else:
                env["sig"] = NODE_KEY.sign(att._nvidia_signed_bytes(rep, env["nvidia"]))
        except Exception:  # the edit left nothing the genuine signer could sign
            return None
        return encode(env)

    def maker(self, fmt: str) -> Callable[[random.Random], Case]:
        def make(r: random.Random) -> Case:
            ev = self.originals[fmt]
            replay = r.random() < 0.2
            k = r.randrange(10)
            if k < 3:
                data, op = mutate_bytes(r, ev, att.MAX_EVIDENCE_BYTES if r.random() < 0.01 else 0)
                return Case(op, (fmt, data, replay))
            if k == 3:
                data, op = noise(r)
                return Case(op, (fmt, data, replay))
            if k == 4:
                return Case("re-encoded", (fmt, encode(unpack(ev), wide=True), replay), must_reject=replay)
            env, label, path = mutate_struct(r, unpack(ev), ("report",) if r.random() < 0.6 else ())
            if r.random() < 0.5:
                resigned = self._resign(fmt, env)
                if resigned is not None:
                    bound = path[:1] == ("report",) and len(path) >= 2 and path[1] in BOUND
                    return Case(f"{label}+genuine", (fmt, resigned, replay), must_reject=replay or bound)
            return Case(label, (fmt, encode(env), replay))
        return make

    def feed(self, case: Case) -> str:
        fmt, ev, replay = case.data
        seen = self.seen if replay else set()
        seen_before = set(seen)
        res = att.verify(ev, BINDING, self.policies[fmt], self.anchors, NOW + 1, seen)
        if not isinstance(res, att.AttestationResult) or res.reason not in att.REASONS:
            raise AssertionError(f"verify returned {res!r}")
        if not res.ok:
            if seen != seen_before:
                return STATE_CHANGED
            raise att.AttestationError(res.reason, res)  # (a rejection)
        if replay and NONCE in seen_before:
            return ACCEPTED
        o, e = unpack(self.originals[fmt]), unpack(ev)  # (it verified: it parses)
        same = e["report"] == o["report"] and e.get("nvidia") == o.get("nvidia") and \
            [att.Cert.from_wire(c) for c in e["chain"]] == [att.Cert.from_wire(c) for c in o["chain"]]
        return EQUIVALENT if same else PASSED

    def snapshot(self):
        return frozenset(self.seen)


# --- entry point: sealed prompts and weights keys -----------------------------------------------------
class SealedPrompts:
    """What a recipient node does with a sealed prompt: open it, then check the signed hash."""

    def __init__(self, requests: Requests):
        self.o = next(o for o in requests.originals if o.sealed)
        self.req = admission.Request.parse(self.o.raw)

    def make(self, r: random.Random) -> Case:
        blob, rid = self.o.prompt, self.req.request_id
        k = r.randrange(8)
        if k < 2:
            data, op = mutate_bytes(r, blob)
            return Case(op, data)
        if k == 2:
            obj, label, _ = mutate_struct(r, unpack(blob))
            return Case(label, encode(obj))
        if k == 3:  # a node's sealed key moved under another node's name
            obj = unpack(blob)
            obj["keys"]["node-a"], obj["keys"]["node-b"] = obj["keys"]["node-b"], obj["keys"]["node-a"]
            return Case("keys-swapped", pack(obj))
        prompt, to_rid, to, secret = "hello", rid, {"node-a": NODE_A.public}, SECRET
        which = r.choice(["prompt", "request", "recipient", "secret", "none"])
        if which == "prompt":
            prompt = r.choice(["hellO", "", "hello\x00", "x" * 10000])
        elif which == "request":
            to_rid = r.choice(["r-plain", "", rid + "x"])
        elif which == "recipient":
            to = {"node-a": NODE_B.public}
        elif which == "secret":
            secret = r.choice([b"", SECRET[:-1], b"\0" * 32])
        sealed = sealing.seal_prompt(prompt, to_rid, to, rbytes(r, 32), rbytes(r, 12), secret)
        return Case(f"resealed:{which}", sealed, must_reject=which != "none")

    def feed(self, case: Case) -> str:
        prompt, secret = sealing.open_prompt(case.data, self.req.request_id, "node-a", NODE_A)
        admission.check_prompt_hash(self.req, prompt, secret)
        return EQUIVALENT if (prompt, secret) == ("hello", SECRET) else PASSED

    def snapshot(self):
        return None


class WeightsKeys:
    """A weights key sealed to the node (as the registry releases it), then the weights it
    opens: the small at-rest blob (decrypt_blob) and the in-place sealed file (open_weights)."""

    MODEL, NODE = "m", "node-a"

    def __init__(self):
        self.key = b"\x6b" * 32
        self.info = sealing.weights_key_info(self.MODEL, self.NODE)
        self.sealed_key = sealing.seal(NODE_A.public, self.key, self.info)
        self.data = bytes(range(256)) * 4
        self.aad = sealing.weights_aad(self.MODEL, MODEL_HASH)
        self.blob = sealing.encrypt_blob(self.data, self.key, b"\x6e" * 12, self.aad)
        buf = bytearray(self.data)
        self.header = sealing.seal_weights(buf, self.key, b"\x6f" * 12, self.aad)
        self.cipher = bytes(buf)

    def make(self, r: random.Random) -> Case:
        sk, info, blob, header, cipher, aad = self.sealed_key, self.info, self.blob, self.header, self.cipher, self.aad
        what = r.choice(["sealed-key", "sealed-key", "readdressed", "forged-key", "blob", "header", "cipher", "aad"])
        if what == "sealed-key":
            sk, op = mutate_bytes(r, sk) if r.random() < 0.7 else (encode(mutate_struct(r, unpack(sk))[0]), "struct")
        elif what == "readdressed":  # released to another node, or for another model
            info = r.choice([sealing.weights_key_info(self.MODEL, "node-b"), sealing.weights_key_info("m2", self.NODE)])
            op = "info"
        elif what == "forged-key":  # anyone can seal a key to a node's public key
            key = r.choice([b"\x6c" * 32, self.key[:16], b"", self.key + b"\0"])
            sk, op = sealing.seal(NODE_A.public, key, info), "forged"
        elif what == "blob":
            blob, op = mutate_bytes(r, blob)
        elif what == "header":
            header, op = mutate_bytes(r, header)
        elif what == "cipher":
            cipher, op = mutate_bytes(r, cipher)
        else:
            aad, op = sealing.weights_aad(self.MODEL, r.choice(["cd" * 32, ""]), r.choice(["", "x"])), "aad"
        return Case(f"{what}:{op}", (sk, info, blob, header, cipher, aad))

    def feed(self, case: Case) -> str:
        sk, info, blob, header, cipher, aad = case.data
        key = NODE_A.open(sk, info)
        a = sealing.decrypt_blob(blob, key, aad)
        buf = bytearray(cipher)
        sealing.open_weights(header, buf, key, aad)
        return EQUIVALENT if (key, a, bytes(buf)) == (self.key, self.data, self.data) else PASSED

    def snapshot(self):
        return None


# --- entry point: receipts ----------------------------------------------------------------------------
class Receipts:
    """verify_receipt with the aggregator, selector and VRF keys pinned."""

    SCENARIOS = ("final", "resolved", "cv-checked", "obfuscated-slashed", "timeout-replaced")

    def __init__(self):
        from tests.roundsim import AGGREGATOR_KEY, HONEST, SELECTOR_KEY, VRF_KEY, Sim, run_until

        def in_quorum(s):
            return "n0" in s.draws[0]["selected"] or "n0" in [s.node_of.get(m) for m in s.members
                                                             if s.members[m][3] == "quorum"]

        make = {
            "final": lambda: Sim().run(),
            "resolved": lambda: run_until(lambda: Sim(behaviour={"n0": "cheat"}), in_quorum),
            "cv-checked": lambda: run_until(lambda: Sim(mode="cross-validation", n=2, p=0.5), coin_checked=True),
            "obfuscated-slashed": lambda: run_until(lambda: Sim(mode="obfuscated", n=2, behaviour={"n0": "cheat"}),
                                                    in_quorum),
            "timeout-replaced": lambda: run_until(lambda: Sim(behaviour={"n0": "silent"}), in_quorum),
        }
        self.agg, self.honest = AGGREGATOR_KEY, HONEST
        self.trusted = [SELECTOR_KEY.public, VRF_KEY.public]
        self.raws = {name: make[name]().receipt() for name in self.SCENARIOS}

    def make(self, r: random.Random) -> Case:
        name = r.choice(self.SCENARIOS)
        raw = self.raws[name]
        tokens = r.choice([None, None, self.honest])
        k = r.randrange(10)
        if k == 0:
            bad = r.choice([[9, 9, 9], [], self.honest + [0], [-1] * 4, self.honest[::-1]])
            return Case("wrong-output", (name, raw, bad))
        if k == 1:  # evidence of another receipt, signed in by the aggregator
            obj = unpack(raw)
            other = unpack(self.raws[r.choice([s for s in self.SCENARIOS if s != name])])
            f = r.choice(["results", "reveals", "decision", "selection", "request"])
            obj["body"][f] = other["body"][f]
            return Case(f"swap-from-other:{f}", (name, _resign(obj, self.agg), tokens))
        if k == 2:  # the aggregator drops or repeats a member's evidence
            obj = unpack(raw)
            f = r.choice(["results", "reveals"])
            lst = obj["body"][f]
            if lst:
                i = r.randrange(len(lst))
                obj["body"][f] = lst[:i] + lst[i + 1:] if r.random() < 0.5 else lst + [lst[i]]
            return Case(f"evidence-edit:{f}", (name, _resign(obj, self.agg), tokens), must_reject=bool(lst))
        raw2, label, path = envelope_mutant(r, raw, self.agg)
        if label.endswith("+genuine"):
            # the aggregator itself signs an edited receipt: a decision it cannot justify, or a request
            # the client never signed, must fail; the rest (ledger ids, issued_at, draw details the
            # receipt cannot prove) are the aggregator's claims: crash-only
            top = path[1] if len(path) > 1 else None
            must = top == "request_id" or (top == "request") or \
                (top == "decision" and len(path) >= 3 and path[2] not in ("coin", "detail"))
            if must and top == "decision":
                must = _value_or_missing(raw2, path) != _value_or_missing(raw, path) and \
                    not (label.startswith("add:") or label.startswith("swap:"))
                must = must or label.startswith("delete:")
            return Case(label, (name, raw2, tokens), must_reject=must)
        return Case(label, (name, raw2, tokens))

    def feed(self, case: Case) -> str:
        name, raw, tokens = case.data
        receipts.verify_receipt(raw, [self.agg.public], output_token_ids=tokens, trusted_selectors=self.trusted)
        o = unpack(self.raws[name])
        try:
            e = messages.open_envelope(raw)
            same = e.body == o["body"] and e.sender == o["sender"]
        except VerinferError:
            same = False
        return EQUIVALENT if same else PASSED

    def snapshot(self):
        return None


# --- entry point: the ledger --------------------------------------------------------------------------
class Ledger:
    """LedgerStore calls as the SlashingLedger actor makes them (deposit, withdraw, escrow,
    submit, settle, bind, settle_members), each built to be refused: wrong types, zero,
    negative or huge amounts, unknown accounts, overdrafts, key reuse, conflicting
    settlements and bindings. A refusal moves nothing: balances, head, tables."""

    def __init__(self, directory: str | None = None):
        from actors import ledger as actor
        from protocols import ledger as L
        from protocols import settlement as S

        BindJob, SettleJob = actor.BindJob, actor.SettleJob
        self.L, self.S, self.BindJob, self.SettleJob = L, S, BindJob, SettleJob
        self.EscrowJob = getattr(actor, "EscrowJob", None)
        LedgerStore = actor.LedgerStore
        directory = directory or tempfile.mkdtemp(prefix="verinfer-adversary-")
        self.store = LedgerStore(os.path.join(directory, "adversary-ledger.db"))
        self.econ = L.Economics(price=100, fee_fraction=0.1, collateral=100, min_stake=10)
        self.salt, self.pkey = b"\x91" * 32, SigningKey(b"\x92" * 32).public
        self.pid = obfuscation.pseudonym_id(self.pkey)
        self.commitment = {self.pid: obfuscation.mapping_entry(self.pkey, "n1", self.salt, "")}
        setup = [L.deposit_postings("client/c1", 1000, "k-c1")]
        setup += [L.deposit_postings(f"collateral/n{i}", 100, f"k-n{i}") for i in (1, 2, 3)]
        setup += [L.escrow_postings("r-open", "c1", 300), L.escrow_postings("r-done", "c1", 100),
                  L.escrow_postings("r-obf", "c1", 300)]
        self._commit(setup)
        self._commit([SettleJob(L.Settlement("r-done", "c1", 100, paid_nodes=("n1",)), self.econ)])
        self._commit([BindJob("r-obf", {self.pid: S.Binding("n1", self.salt, self.pkey, "")})])

    def _commit(self, groups: list) -> list:
        return [res.raise_for_error() for res in self.store.commit_groups([(g, 1.0) for g in groups])]

    BAD_ACCOUNTS = ["", "bogus", "client/", "escrow/", "collateral", 5, None, b"client/c1", ["client/c1"]]
    BAD_AMOUNTS = [0, -1, -2**63, 2**63, 2**64, 10**30, 1.5, 100.0, math.nan, math.inf, "5", None, True, False, [5],
                   b"5"]
    BAD_IDS = ["", None, 5, b"r", ["r"], 1.5]

    def make(self, r: random.Random) -> Case:
        L = self.L
        op = r.choice(["deposit", "withdraw", "escrow", "submit", "settle", "settle", "bind", "settle_members",
                       "replay"])
        if op in ("deposit", "withdraw"):
            account, amount, key = "client/c1", 5, "k-new"
            which = r.choice(["account", "amount", "key", "overdraw", "conflict"])
            if which == "account":
                account = r.choice(self.BAD_ACCOUNTS + ["external"])
            elif which == "amount":
                amount = r.choice(self.BAD_AMOUNTS)
            elif which == "key":
                key = r.choice(self.BAD_IDS)
            elif which == "overdraw":
                op = "withdraw"
                account = r.choice(["client/c1", "escrow/r-open", "collateral/n2", "rewards/n1", "treasury",
                                    "client/nobody"])
                amount = r.choice([1001, 301, 2**62, 10**9])
            else:  # the key of the setup deposit, another amount
                op, account, key, amount = "deposit", "client/c1", "k-c1", r.choice([999, 1001, 1])
            return Case(f"{op}:{which}", (op, account, amount, key))
        if op == "escrow":
            which = r.choice(["client", "amount", "rid", "conflict", "overdraw"]
                             + (["settled"] if self.EscrowJob else []))
            rid, client, amount = "r-new", "c1", 50
            if which == "settled":  # a late escrow for a request already settled
                rid = "r-done"
            if which == "client":
                client = r.choice(["nobody", "", None, 5, "c1/../x"])
            elif which == "amount":
                amount = r.choice(self.BAD_AMOUNTS)
            elif which == "rid":
                rid = r.choice(self.BAD_IDS)
            elif which == "conflict":
                rid, amount = "r-open", r.choice([299, 301, 1])
            else:
                amount = r.choice([701, 10**6, 2**63 - 1])
            return Case(f"escrow:{which}", ("escrow", rid, client, amount))
        if op == "submit":  # a group whose later posting fails: the earlier ones must not land
            good = dict(key="k-sub", request_id="r-sub", reason="deposit", src="external", dst="client/c2", amount=7)
            bad = dict(good, key="k-sub2")
            f = r.choice(["key", "request_id", "reason", "src", "dst", "amount", "overdraw", "self"])
            if f == "overdraw":
                bad.update(src="client/c2", dst="client/c3", amount=8)
            elif f == "self":
                bad.update(src="client/c2", dst="client/c2")
            else:
                bad[f] = r.choice(self.BAD_AMOUNTS if f == "amount" else self.BAD_ACCOUNTS if f in ("src", "dst")
                                  else self.BAD_IDS)
            return Case(f"submit:{f}", ("submit", good, bad))
        if op in ("settle", "settle_members"):
            fields_ = dict(request_id="r-open", client_id="c1", escrowed=300, paid_nodes=("n1", "n2"), slashes=(),
                           beneficiaries=(), referees=())
            which = r.choice(["conflict", "overpay", "unfunded", "field", "field", "slash"])
            if which == "conflict":
                fields_.update(request_id="r-done", escrowed=100, paid_nodes=r.choice([(), ("n2",), ("n1", "n2")]))
            elif which == "overpay":
                fields_["paid_nodes"] = ("n1", "n2", "n3", "n4")
            elif which == "unfunded":
                fields_.update(request_id="r-none", escrowed=r.choice([0, 100, 10**9]), paid_nodes=("n1",))
            elif which == "slash":
                fields_["slashes"] = r.choice([[("n1", "cheat")], [L.Slash("n1", "cheat"), L.Slash("n1", "timeout")], 5,
                                               "n1", [None], {"n1": "cheat"}])
            else:
                f = r.choice(["request_id", "client_id", "escrowed", "paid_nodes", "beneficiaries", "referees"])
                fields_[f] = r.choice({"request_id": self.BAD_IDS, "client_id": self.BAD_IDS,
                                       "escrowed": [-1, 2**63, 1.5, "300", None, True, math.nan]}.get(
                    f, [5, None, "n1n2", b"n1", ("n1", "n1"), ("",), (5,), (None,), 1.5, {"n1": 1}, [["n1"]]]))
            if op == "settle_members":
                which += "+pseudonyms"
                fields_.update(request_id="r-obf" if r.random() < 0.7 else fields_["request_id"],
                               paid_nodes=r.choice([(self.pid, "p-unbound"), ("p-unbound",), (self.pid,) * 2]))
            return Case(f"{op}:{which}", (op, fields_))
        if op == "bind":
            which = r.choice(["conflict", "field", "fresh"])
            b = dict(node_id="n2", salt=self.salt, key=self.pkey, digest="")
            if which != "conflict":  # (a fresh request: only the binding's own fields can refuse it)
                f = r.choice(["node_id", "salt", "key", "digest"])
                bad = {"node_id": [None, 5, "", b"n1", 1.5, ["x"]], "salt": [None, 5, "", "s" * 32, [1]],
                       "key": [None, 5, "", b"", "k" * 32], "digest": [None, 5, b"", 1.5, ["x"]]}[f]
                b = dict(b, node_id="n1")
                b[f] = r.choice(bad)
            return Case(f"bind:{which}", ("bind", "r-obf" if which != "fresh" else "r-fresh", b))
        return Case("replay", ("replay", r.choice(["deposit", "escrow", "settle"])))

    def _build(self, case: Case):
        L, S = self.L, self.S
        op, *a = case.data
        if op == "deposit":
            return L.deposit_postings(a[0], a[1], a[2])
        if op == "withdraw":
            return L.withdraw_postings(a[0], a[1], a[2])
        if op == "escrow":  # (as the actor sends it: refused once the request is settled)
            postings = L.escrow_postings(*a)
            return self.EscrowJob(a[0], tuple(postings)) if self.EscrowJob else postings
        if op == "submit":
            return [L.Posting(**a[0]), L.Posting(**a[1])]
        if op == "settle":
            return self.SettleJob(L.Settlement(**a[0]), self.econ)
        if op == "settle_members":
            return self.SettleJob(L.Settlement(**a[0]), self.econ, dict(self.commitment))
        if op == "bind":
            return self.BindJob(a[0], {self.pid: S.Binding(**a[1])})
        return {"deposit": L.deposit_postings("client/c1", 1000, "k-c1"),
                "escrow": self._build(Case("", ("escrow", "r-open", "c1", 300))),
                "settle": self.SettleJob(L.Settlement("r-done", "c1", 100, paid_nodes=("n1",)), self.econ)}[a[0]]

    def feed(self, case: Case) -> str:
        before = self.snapshot()
        group = self._build(case)
        [res] = self.store.commit_groups([(group, 2.0)])
        res.raise_for_error()
        if self.snapshot() == before:  # a retried call (reported as duplicate): nothing moved
            raise _Absorbed("an idempotent repeat")
        return PASSED

    def snapshot(self):
        db = self.store._db
        counts = tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                       for t in ("entries", "settlements", "members"))
        return self.store.head(), tuple(sorted(self.store.balances().items())), counts

    def check_invariants(self) -> None:
        """Conservation over every account (`store.verify()` also replays the chain)."""
        self.L.check_conservation(self.store.balances())


class _Absorbed(VerinferError):
    """A replayed ledger call: idempotent by design, it moved nothing (counts as a rejection)."""

    reason = "duplicate (absorbed)"


# --- entry point: the gateway's HTTP bodies -------------------------------------------------------------
def _gateway_bodies() -> dict[str, dict]:
    return {
        "chat": {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": [{"type": "text", "text": "hello"}]}],
                 "max_tokens": 8, "temperature": 0.5, "stream": False, "stream_options": {"include_usage": True},
                 "verinfer": {"mode": "sampling", "n": 3, "p": 0.5, "require_tee": False, "top_k": 3}},
        "completion": {"model": "m", "prompt": "hello", "max_completion_tokens": 8, "n": 1, "top_p": 1,
                       "verinfer": {"mode": "cross-validation", "request": "AAAA"}},
    }


# (path, a value that must be refused there)
GATEWAY_BREAKS = [
    (("temperature",), v) for v in ("0.5", [], {}, True, -1, 3, math.nan, math.inf)] + [
    (("max_tokens",), v) for v in (0, 4097, 1.5, "8", True, [], -1)] + [
    (("stream",), v) for v in (1, "true", None, [])] + [
    (("messages",), v) for v in ([], "hi", [{}], [{"role": "user"}], [{"role": "user", "content": 5}],
                                 [{"role": "bot", "content": "x"}], [{"role": "assistant", "content": "x"}],
                                 [{"role": "user", "content": [{"type": "image_url"}]}], None, {"role": "user"})] + [
    (("prompt",), v) for v in (5, None, ["a", "b"], {}, [5], "\ud800", "a\udfff")] + [
    (("model",), v) for v in (5, ["m"], {"m": 1}, 1.5, True, "\ud800")] + [
    (("verinfer",), v) for v in ("x", [1], 5, True)] + [
    (("verinfer", "mode"), v) for v in ("fast", 5, [], {}, ["tee"], True)] + [
    (("verinfer", "n"), v) for v in (0, -1, 1.5, "2", True, [])] + [
    (("verinfer", "p"), v) for v in (-0.1, 1.1, "0.5", True, math.nan, [])] + [
    (("verinfer", "require_tee"), v) for v in (1, "yes", None, [])] + [
    (("verinfer", "top_k"), v) for v in (-1, 1.5, "3", 100001, True)] + [
    (("verinfer", "request"), v) for v in (5, "!!!", "a", "AAA=A", "日本")] + [
    (("verinfer", "sealed_prompt"), v) for v in (5, "@@")] + [
    (("verinfer", "extra"), 1), (("n",), 2), (("n",), "1"), (("top_p",), 0.9), (("stop",), "x"), (("stop",), ["\n"]),
    (("seed",), 1), (("seed",), 0), (("logprobs",), True), (("top_logprobs",), 2), (("tools",), [{}]),
    (("functions",), [{}]), (("response_format",), {"type": "json_object"}), (("response_format",), "text"),
    (("echo",), True), (("best_of",), 2), (("suffix",), "x"), (("presence_penalty",), 0.5),
    (("frequency_penalty",), -1), (("logit_bias",), {"1": 2}), (("stream_options",), "x"), (("stream_options",), 5),
]


class Gateway:
    """The gateway's body handling without the server: size limit, JSON decoding, then
    openai_api.parse. Every refusal is an APIError with a 4xx status."""

    TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"

    def __init__(self):
        from cluster import openai_api as oa

        self.oa = oa
        self.bodies = _gateway_bodies()

    def make(self, r: random.Random) -> Case:
        kind = r.choice(list(self.bodies))
        body = copy.deepcopy(self.bodies[kind])
        k = r.randrange(10)
        if k < 4:
            path, value = r.choice(GATEWAY_BREAKS)
            if path[0] in ("messages", "prompt"):
                kind = "chat" if path[0] == "messages" else "completion"
                body = copy.deepcopy(self.bodies[kind])
            if path == ("max_tokens",):
                body.pop("max_completion_tokens", None)
            target = body
            for p in path[:-1]:
                if not isinstance(target.get(p), dict):
                    target[p] = {}
                target = target[p]
            target[path[-1]] = value
            return Case(f"break:{'.'.join(path)}", (kind, self._dump(body)))
        if k < 6:
            obj, label, _ = mutate_struct(r, body)
            return Case(f"struct:{label}", (kind, self._dump(obj)), must_reject=False)
        if k < 8:
            data, op = mutate_bytes(r, self._dump(body), self.oa.MAX_BODY_BYTES if r.random() < 0.02 else 0)
            return Case(f"bytes:{op}", (kind, data), must_reject=False)
        choice = r.randrange(5)
        if choice == 0:
            data = b"[" * r.choice([1000, 10000, 100000]) + b"]" * r.choice([0, 1])
        elif choice == 1:
            data = json.dumps({"messages": [{"role": "user", "content": "x" * self.oa.MAX_BODY_BYTES}]}).encode()
            data = data if r.random() < 0.2 else data[: self.oa.MAX_BODY_BYTES // 8]
        elif choice == 2:
            data = rbytes(r, r.randrange(200))
        elif choice == 3:
            data = json.dumps(_jsonable(rand_value(r))).encode()
        else:
            data = r.choice([b"", b"null", b"{}", b"[]", b'"x"', b"1e999", b"NaN", b"\xff\xfe{}", b'{"a":1,"a":2}',
                             b'{"messages": [{"role": "user", "content": "\\ud800"}]}'])
        return Case("body:noise", (kind, data), must_reject=False)

    @staticmethod
    def _dump(body: Any) -> bytes:
        return json.dumps(_jsonable(body)).encode("utf-8", "surrogatepass")

    def feed(self, case: Case) -> str:
        kind, raw = case.data
        oa = self.oa
        try:
            body = oa.read_body(raw)
            call = oa.parse(oa.CHAT if kind == "chat" else oa.COMPLETION, body, "m", {"m": self.TEMPLATE})
        except oa.APIError as exc:
            if not 400 <= exc.status < 500:
                raise AssertionError(f"status {exc.status} for a bad body: {exc.message}") from None
            raise _Refused(f"HTTP {exc.status}") from None
        return ACCEPTED if self.problems(call) else PASSED

    def problems(self, c) -> list[str]:
        """An accepted call is something the rest of the gateway can sign and send."""
        bad = []
        for name in ("model", "prompt"):
            v = getattr(c, name)
            if not isinstance(v, str):
                bad.append(name)
            else:
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    bad.append(f"{name} (not UTF-8)")
        if not (isinstance(c.max_tokens, int) and 1 <= c.max_tokens <= 4096):
            bad.append("max_tokens")
        if not (isinstance(c.temperature, float) and 0 <= c.temperature <= 2):
            bad.append("temperature")
        if not (isinstance(c.top_k, int) and c.top_k >= 0) or not isinstance(c.stream, bool):
            bad.append("top_k/stream")
        if c.mode is not None and c.mode not in ("sampling", "cross-validation", "obfuscated", "tee"):
            bad.append("mode")
        if c.n is not None and not (isinstance(c.n, int) and not isinstance(c.n, bool) and c.n >= 1):
            bad.append("n")
        if c.p is not None and not (isinstance(c.p, float) and 0 <= c.p <= 1):
            bad.append("p")
        return bad

    def snapshot(self):
        return None


class _Refused(VerinferError):
    """(An APIError with a 4xx status: the gateway's typed refusal.)"""

    @property
    def reason(self) -> str:
        return str(self)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Deep):
        out: Any = _jsonable(v.leaf)
        for _ in range(min(v.n, 50)):
            out = [out]
        return out
    if isinstance(v, bytes):
        return v.decode("latin-1")
    if isinstance(v, dict):
        return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**70:
        return float(v)
    return v


# --- the table ------------------------------------------------------------------------------------------
@dataclass
class EntryPoint:
    name: str
    make: Callable[[random.Random], Case]
    feed: Callable[[Case], str]
    snapshot: Callable[[], Any]
    reset: Callable[[], None] = lambda: None
    check: Callable[[], None] = lambda: None  # invariants that hold after any case (cheap)
    audit: Callable[[], None] = lambda: None  # the full check, after a run
    weight: float = 1.0  # share of the fuzz benchmark's cases
    original: bytes | None = None  # the valid input's bytes, for byte-level strategies
    wrap: Callable[[bytes], Case] | None = None  # bytes (in place of `original`) -> a Case


def build(directory: str | None = None) -> dict[str, EntryPoint]:
    """Every entry point, with its valid originals built (a few seconds: receipts run real rounds)."""
    req, mem, ev = Requests(), Members(), Evidence()
    tickets, unblind, sealed, weights = Tickets(), Unblinding(), SealedPrompts(req), WeightsKeys()
    rec, ledger, gw, rnd = Receipts(), Ledger(directory), Gateway(), RandomEnvelopes()
    plain = req.originals[0]
    w = weights
    eps = [
        EntryPoint("request.admit", req.make, req.feed_admit, req.snapshot, req.reset, original=plain.raw,
                   wrap=lambda d: Case("bytes", (plain, d, plain.prompt))),
        EntryPoint("request.node", lambda r: req.make(r, node=True), req.feed_node, req.snapshot, req.reset,
                   original=plain.raw, wrap=lambda d: Case("bytes", (plain, d, plain.prompt))),
        EntryPoint("request.replay", req.make_replay, req.feed_replay, req.snapshot, req.reset, weight=0.5),
        *[EntryPoint(t, mem.maker(t), mem.feed, mem.snapshot, mem.reset, original=mem.originals[t][0],
                     wrap=lambda d, t=t: Case("bytes", (t, d))) for t in ("result", "reveal", "refusal", "chunk")],
        EntryPoint("envelope.random", rnd.make, rnd.feed, rnd.snapshot, original=mem.originals["result"][0],
                   wrap=lambda d: Case("bytes", d)),
        EntryPoint("ticket", tickets.make, tickets.feed, tickets.snapshot, original=tickets.sealed,
                   wrap=lambda d: Case("bytes", (d, tickets.RID))),
        EntryPoint("unblinding", unblind.make, unblind.feed, unblind.snapshot, weight=0.5),
        *[EntryPoint(f"attestation.{f}", ev.maker(f), ev.feed, ev.snapshot, original=ev.originals[f],
                     wrap=lambda d, f=f: Case("bytes", (f, d, False))) for f in ("sim", "nvidia")],
        EntryPoint("sealed_prompt", sealed.make, sealed.feed, sealed.snapshot, original=sealed.o.prompt,
                   wrap=lambda d: Case("bytes", d)),
        EntryPoint("weights_key", w.make, w.feed, w.snapshot, original=w.sealed_key,
                   wrap=lambda d: Case("bytes", (d, w.info, w.blob, w.header, w.cipher, w.aad))),
        EntryPoint("receipt", rec.make, rec.feed, rec.snapshot, original=rec.raws["final"],
                   wrap=lambda d: Case("bytes", ("final", d, None))),
        EntryPoint("ledger", ledger.make, ledger.feed, ledger.snapshot, check=ledger.check_invariants,
                   audit=ledger.store.verify),
        EntryPoint("gateway.body", gw.make, gw.feed, gw.snapshot, original=gw._dump(gw.bodies["chat"]),
                   wrap=lambda d: Case("bytes", ("chat", d), must_reject=False)),
    ]
    return {ep.name: ep for ep in eps}


def _why(exc: VerinferError) -> str:
    if isinstance(exc, att.AttestationError) or isinstance(exc, (_Refused, _Absorbed)):
        return exc.reason
    if isinstance(exc, receipts.ReceiptInvalid):  # one type for every reason: name the check
        return "ReceiptInvalid: " + " ".join(str(exc).split(":")[0].split()[:4])
    return type(exc).__name__


def run_case(ep: EntryPoint, case: Case) -> tuple[str, str]:
    """Feed one case: (verdict, the typed error's name for a rejection). Verdicts: REJECTED,
    EQUIVALENT, VALID, ACCEPTED, STATE_CHANGED. Anything raised that is not a VerinferError
    is a crash and propagates."""
    before = ep.snapshot()
    try:
        verdict = ep.feed(case)
    except VerinferError as exc:
        why = _why(exc)
        return (REJECTED if ep.snapshot() == before else STATE_CHANGED), why
    if verdict == PASSED:
        verdict = ACCEPTED if case.must_reject else VALID
    if ep.snapshot() != before:
        ep.reset()
    return verdict, ""
