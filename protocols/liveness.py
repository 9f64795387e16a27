"""Liveness challenges: how a node taken out for lateness comes back.

A node that missed a deadline (and was slashed for it) stops being drawn. It
returns once it answers a fresh challenge: the registry issues a random nonce,
the node signs (domain, node id, nonce) with its registered key, and the
registry marks it live again if the signature verifies and its stake is still
at least the network's minimum. Each nonce opens once. A transient stall
therefore costs the timeout slash, not the node's place in the network.
"""

from __future__ import annotations

from .canonical import pack
from .crypto import SigningKey, verify
from .errors import MessageError

LIVENESS_DOMAIN = b"verinfer/liveness/v1|"


def answer(key: SigningKey, node_id: str, nonce: bytes) -> bytes:
    return key.sign(LIVENESS_DOMAIN + pack([node_id, nonce]))


def check(public: bytes, node_id: str, nonce: bytes, signature: bytes) -> None:
    """Raise a MessageError unless `signature` answers this node's challenge."""
    if not isinstance(signature, bytes):
        raise MessageError("a liveness answer is a signature")
    verify(public, LIVENESS_DOMAIN + pack([node_id, nonce]), signature)


def may_return(stake: int, min_stake: int) -> bool:
    return stake >= min_stake
