"""Determinism classes: nodes whose fingerprints are equal produce equal bits.

A fingerprint lists engine, engine/library versions, device kind, dtype,
thread count and model hash. The class id is a short hash of its canonical
encoding, so any difference in any component makes a different class and
quorums never mix them.
"""

from __future__ import annotations

from typing import Any

from .canonical import digest
from .errors import InvalidParams

REQUIRED = ("engine", "device", "dtype", "threads", "model_hash")


def class_id(fingerprint: dict[str, Any]) -> str:
    missing = [k for k in REQUIRED if k not in fingerprint]
    if missing:
        raise InvalidParams(f"fingerprint lacks {', '.join(missing)}")
    return f"{fingerprint['engine']}-{digest(fingerprint).hex()[:16]}"
