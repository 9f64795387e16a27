"""Signing control-plane calls in tests (protocols.authority): as the holder of whatever
right a call needs on a roster made here, or as a real network's own holders."""

from __future__ import annotations

import os
import time

from actors.authority import KeyHolder, Signed
from protocols import authority as au
from protocols.crypto import SigningKey

HOLDERS = {"aggregator": "aggregator/0"}


class AnyRole:
    """Tests of one actor alone: a roster of fresh keys, and a signer that signs each call
    as a holder of the right it needs (the operator where the operator holds it)."""

    def __init__(self, network: str = "test-net"):
        self.network = network
        self.keys = {role: SigningKey(os.urandom(32)) for role in au.ROSTER_ROLES}
        entries = [(r, HOLDERS.get(r, r), k.public) for r, k in self.keys.items() if r != au.OPERATOR]
        self.roster = au.roster_statement(self.keys[au.OPERATOR], network, 1, entries, time.time())

    def spec(self, **extra) -> dict:
        return {"network": self.network, "operators": [self.keys[au.OPERATOR].public], "roster": self.roster,
                "debug_calls": True, **extra}

    def sign(self, actor: str, method: str, args: dict) -> bytes:
        right = au.RIGHTS[(actor.split("/")[0], method)]
        role = next(r for r in au.ROSTER_ROLES if r in right.roles)
        return au.Signer(self.keys[role], role, "operator" if role == au.OPERATOR else HOLDERS.get(role, role),
                         self.network).call(actor, method, args, time.time(), os.urandom(16))

    def wrap(self, handle, kind: str, target: str | None = None) -> Signed:
        return Signed(handle, self, kind, target)


def as_holder(net, role: str, holder: str) -> KeyHolder:
    """A real network's holder (cluster.control.as_holder)."""
    from cluster import control

    return control.as_holder(net, role, holder)


def local_call(auth: AnyRole, obj, kind: str, method: str, *args, target: str | None = None, **kwargs):
    """Call a guarded method of an actor object in this process, signed by `auth`."""
    from actors.authority import _class_of, _signature, signature_args

    bound = signature_args(_signature(_class_of(kind), method), args, kwargs)
    return getattr(obj, method)(*args, auth=auth.sign(au.addressee(kind, target), method, bound), **kwargs)
