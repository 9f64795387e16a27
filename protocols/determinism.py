"""Determinism classes: nodes whose fingerprints are equal produce equal bits.

A fingerprint lists engine, engine/library versions, device kind, dtype,
thread count and model hash. The class id is a short hash of its canonical
encoding, so any difference in any component makes a different class and
quorums never mix them.

Tolerance groups: a model with a calibrated tolerant check
(protocols.fingerprint.Tolerance) also groups every node serving its hash,
whatever its hardware, dtype, threads or batching. The group id hashes the
model hash with the tolerance, so a receipt that names a group also names the
tolerance its disputes were judged by.
"""

from __future__ import annotations

from typing import Any

from .canonical import digest
from .errors import InvalidParams

REQUIRED = ("engine", "device", "dtype", "threads", "model_hash")
GROUP_PREFIX = "group-"


def class_id(fingerprint: dict[str, Any]) -> str:
    missing = [k for k in REQUIRED if k not in fingerprint]
    if missing:
        raise InvalidParams(f"fingerprint lacks {', '.join(missing)}")
    return f"{fingerprint['engine']}-{digest(fingerprint).hex()[:16]}"


def group_id(model_hash: str, tolerance_wire: dict) -> str:
    """The tolerance group of a model hash under a calibrated tolerance (its wire form)."""
    return f"{GROUP_PREFIX}{digest(['verinfer/tolerance-group/v1', model_hash, tolerance_wire]).hex()[:16]}"


def is_group(det_class: str | None) -> bool:
    return isinstance(det_class, str) and det_class.startswith(GROUP_PREFIX)
