"""The keys of a network's control plane, made at deploy (protocols.authority says
what each may ask for; actors.authority checks and signs).

* The operator's key: a 0600 file beside the network's secret
  (`secrets/<network>.operator`), read by deploy, repair and the CLI, never given
  to an actor. It signs the roster and every operator call (admitting nodes,
  funding collateral, experiments).
* Each control-plane holder's first key is derived from the network's secret
  and its name, so a repair recreates the same key for an actor that never
  rotated; an actor that did keeps its rotated key in its own control store.
* The roster lists every holder's current key (asked of the actors themselves),
  signed by the operator, with a version that grows with each deploy or repair.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from actors.authority import Operator, Signed
from protocols import authority as au
from protocols.crypto import SigningKey


def operator_path(secret_path: str) -> str:
    return secret_path[: -len(".key")] + ".operator" if secret_path.endswith(".key") else secret_path + ".operator"


def secret_file(path: str) -> bytes:
    """32 random bytes kept in a 0600 file (made on first use): the network's secret, the
    operator's key."""
    if os.path.exists(path):
        with open(path, "rb") as f:
            got = f.read()
        if len(got) == 32:
            return got
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    secret = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    return secret


def operator_key(secret_path: str, network: str) -> Operator:
    """The operator's signer (made once, then read from its 0600 file)."""
    return Operator(SigningKey(secret_file(operator_path(secret_path))), network)


def holder_seed(secret: bytes, role: str, holder: str) -> bytes:
    return hashlib.sha256(b"verinfer/control-key|" + role.encode() + b"|" + holder.encode() + b"|" + secret).digest()


def store_path(state_dir: str, holder: str) -> str:
    return os.path.join(state_dir, holder.replace("/", "-") + "-control.sqlite")


def spec(network: str, operator: Operator, role: str, holder: str, secret: bytes | None, state_dir: str | None,
         debug_calls: bool = False, roster: bytes | None = None) -> dict:
    """What a control-plane actor (or, without secret and store, an executor) is created with."""
    out = {"network": network, "role": role, "holder": holder, "operators": [operator.public],
           "debug_calls": bool(debug_calls)}
    if secret is not None:
        out["seed"] = holder_seed(secret, role, holder)
    if state_dir is not None and secret is not None:
        out["store"] = {"path": store_path(state_dir, holder), "secret": secret}
    if roster is not None:
        out["roster"] = roster
    return out


def roster(operator: Operator, network: str, keys: list[dict], gateway: bytes | None) -> bytes:
    """The operator's roster of `keys` (each actor's `control_key()`), plus the gateway's."""
    entries = [(k["role"], k["holder"], bytes(k["key"])) for k in keys if k["role"] in au.ROSTER_ROLES]
    if gateway is not None:
        entries.append((au.GATEWAY, "gateway", gateway))
    return au.roster_statement(operator.signer.key, network, int(time.time() * 1000), entries, time.time())


def gateway_key(secret: bytes) -> SigningKey:
    """The gateway's key (the gateway runs where the network's secret is: `verinfer serve`)."""
    return SigningKey(holder_seed(secret, au.GATEWAY, "gateway"))


def signed(handle: Any, operator: Operator | None, kind: str, target: str | None = None) -> Any:
    """A handle whose guarded calls the operator signs (or the bare handle, with no operator key)."""
    return Signed(handle, operator, kind, target) if operator is not None and handle is not None else handle


def debug_calls_default() -> bool:
    """Ray's `__ray_call__` on the network's actors: refused unless VERINFER_DEBUG_CALLS=1 (tests)."""
    return os.environ.get("VERINFER_DEBUG_CALLS", "") == "1"


def as_holder(net, role: str, holder: str):
    """Sign as one of a network's own holders (its first key, derived from the network's
    secret: only whoever holds the secret can; experiments and tests). A holder that has
    rotated its key since is no longer this one."""
    from actors.authority import KeyHolder

    with open(net.secret_path, "rb") as f:
        secret = f.read()
    return KeyHolder(SigningKey(holder_seed(secret, role, holder)), role, holder, net.config.network.name)
