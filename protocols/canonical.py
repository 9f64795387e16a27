"""Canonical encoding and hashing.

Everything that is signed or hashed goes through `pack`: msgpack with map keys
sorted recursively, binary kept as bytes, no floats reinterpreted. Two parties
that agree on a value therefore agree on its bytes, which is what commitments,
signatures and the ledger hash chain rely on.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from .errors import MalformedMessage


def _canon(value: Any) -> Any:
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"canonical maps need str keys, got {type(k).__name__}")
            items.append((k, _canon(v)))
        items.sort(key=lambda kv: kv[0])
        return dict(items)
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, bytearray):
        return bytes(value)
    return value


def pack(value: Any) -> bytes:
    """Canonical msgpack bytes of `value` (dicts sorted by key, tuples as lists)."""
    return msgpack.packb(_canon(value), use_bin_type=True)


MAX_DEPTH = 64  # nesting far beyond any message's; deeper values would exhaust `_canon`'s recursion


def unpack(data: bytes, max_len: int = 16 * 1024 * 1024) -> Any:
    """Strict inverse of `pack`; raises MalformedMessage on anything odd, including
    what `pack` could not encode again (so a receiver can re-pack what it received
    to check a signature): map keys that are not strings, nesting deeper than MAX_DEPTH."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_len:
        raise MalformedMessage(f"message of {len(data)} bytes exceeds {max_len}")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise MalformedMessage(f"not valid msgpack: {exc}") from None
    if type(obj) in (dict, list):
        _check_packable(obj)
    return obj


def _check_packable(obj: Any) -> None:
    stack = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MalformedMessage(f"nested deeper than {MAX_DEPTH}")
        if isinstance(value, dict):
            if set(map(type, value)) - {str}:
                raise MalformedMessage("map keys must be strings")
            value = value.values()
        kinds = set(map(type, value))  # (in C: long lists of scalars cost little)
        if dict in kinds or list in kinds:
            stack.extend((v, depth + 1) for v in value if type(v) in (dict, list))


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def digest(value: Any) -> bytes:
    """SHA-256 of the canonical encoding."""
    return sha256(pack(value))
