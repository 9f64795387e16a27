"""Signed actor boundaries: the shell around protocols.authority.

* `Gatekeeper` — what one control-plane actor holds to check who is asking and to
  ask others: the roster, the spent nonces of calls that must not repeat, and its
  own key (durable in its own small store, so a restart keeps a rotated key).
* `guarded(actor)` — a method decorator: the method gains a keyword-only `auth`
  (a signed call envelope) that is checked against the rights table before the
  method's body runs. Internal callers use the undecorated `_name` methods.
* `Signed(handle, signer, kind)` — a handle whose guarded methods sign their call
  (over the arguments bound to the callee's signature, defaults applied), and
  whose other methods pass through. Actors talk to each other through these.
"""

from __future__ import annotations

import functools
import inspect
import os
import time
from typing import Any, Callable

from actors.store import open_store
from protocols import authority as au
from protocols.crypto import SigningKey
from protocols.errors import MalformedMessage

_TBL, _KEYS = "control", "control-keys"


def signature_args(sig: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """A call's arguments by parameter name, defaults applied (`self` and `auth` dropped)."""
    bound = sig.bind(None, *args, **kwargs)
    bound.apply_defaults()
    out = dict(bound.arguments)
    for name in ("self", "auth", "_ray_trace_ctx"):  # (Ray adds the last to actor methods' signatures)
        out.pop(name, None)
    for name, p in sig.parameters.items():  # **kwargs, *args: flattened under their name
        if p.kind is p.VAR_KEYWORD and name in out:
            out.update(out.pop(name))
    return out


class Gatekeeper:
    """spec (from deploy): {"network", "role", "holder", "seed", "roster", "operators",
    "store": {"path", "secret"} | None}."""

    def __init__(self, kind: str, spec: dict | None):
        self.kind = kind
        spec = spec or {}
        self.store = open_store(spec.get("store"), sealed=(_KEYS,))
        saved = self.store.get(_TBL, "roster") if self.store is not None else None
        self.roster = au.Roster.of(saved) if saved else au.Roster(spec.get("network", ""),
                                                                  tuple(spec.get("operators", ())))
        self.roster_raw = bytes(self.store.get(_TBL, "roster_raw", b"")) if self.store is not None else b""
        seed = self.store.get(_KEYS, "seed") if self.store is not None else None
        seed = bytes(seed) if seed is not None else (spec.get("seed") or os.urandom(32))
        self.signer = au.Signer(SigningKey(seed), spec.get("role", kind), spec.get("holder", kind),
                                self.roster.network)
        self.guard = au.CallGuard()
        self.debug_calls = bool(spec.get("debug_calls", False))
        self.target = spec.get("target")  # one of many (an executor: its node id): calls must name it
        # a rotated key not yet in use, and the statement announcing it
        self._next: tuple[SigningKey, bytes] | None = None
        if self.store is not None:
            nxt = self.store.get(_KEYS, "next")
            if nxt is not None:
                self._next = (SigningKey(bytes(nxt[0])), bytes(nxt[-1]))
            self.guard.spent = {(bytes(s), bytes(n)): float(t) for s, n, t in self.store.get(_TBL, "spent", [])}
            self.store.put(_KEYS, "seed", self.signer.key.seed)
        if spec.get("roster"):
            self.install(spec["roster"])

    # --- the roster
    def install(self, raw: bytes) -> bool:
        """An operator-signed roster (deploy, repair): newer than the one held, or ignored."""
        changed = self.roster.install(raw, time.time())
        if changed:
            self.roster_raw = bytes(raw)
            if self.store is not None:
                self.store.put(_TBL, "roster_raw", self.roster_raw)
            self._save()
        return changed

    def accept(self, raws: list[bytes]) -> int:
        """Rotation statements (each signed by the holder's current key); returns how many were new."""
        n = 0
        for raw in raws:
            try:
                n += bool(self.roster.rotate(raw, time.time()))
            except au.MessageError:
                continue  # not for this roster (an old or foreign statement): changes nothing
        if n:
            self._save()
        return n

    def rotate(self) -> bytes:
        """A fresh key for this holder: the statement others need (signed with the old key).
        Others accept the new key as soon as the statement reaches them; this holder keeps
        signing with the old one (which counts for GRACE_S more) until `switch`, which the
        epoch keeper asks for once every actor has been handed the statement."""
        if self._next is not None:  # asked again before the switch (a retry): the same statement
            return self._next[1]
        nxt = SigningKey(os.urandom(32))
        raw = self.signer.rotation(nxt.public, time.time())
        self.roster.rotate(raw, time.time())
        self._next = (nxt, raw)
        if self.store is not None:
            self.store.put(_KEYS, "next", [nxt.seed, raw])
        self._save()
        return raw

    def switch(self) -> bool:
        """Sign with the rotated key from now on (False: no rotation was pending)."""
        if self._next is None:
            return False
        self.signer.key, self._next = self._next[0], None
        if self.store is not None:
            self.store.put_many([(_KEYS, "seed", self.signer.key.seed)], [(_KEYS, "next")])
        return True

    def _save(self) -> None:
        if self.store is not None:
            self.roster.prune(time.time())
            self.store.put(_TBL, "roster", self.roster.to_wire())

    # --- checking and signing
    def check(self, method: str, args: dict, auth: Any, node_of: Callable | None = None,
              challenge: Callable | None = None) -> au.Caller:
        now = time.time()
        right = au.RIGHTS[(self.kind, method)]
        caller = au.check_call(auth, self.kind, method, args, self.roster, self.guard, now, node_of, challenge,
                               self.target)
        if not right.replayable and self.store is not None:  # a restart must not reopen a spent nonce
            self.guard.prune(now)
            self.store.put(_TBL, "spent", [[s, n, t] for (s, n), t in self.guard.spent.items()])
        return caller

    def sign(self, actor: str, method: str, args: dict) -> bytes:
        return self.signer.call(actor, method, args, time.time(), os.urandom(16))

    @property
    def public(self) -> bytes:
        return self.signer.key.public


def guarded(kind: str):
    """Decorate a state-changing actor method of `kind` (protocols.authority.RIGHTS): it
    takes `auth=` and refuses, unchanged, any call that is not signed by a holder of the
    right. The actor provides `self.gate` (a Gatekeeper) and may provide `_node_of(key)`
    and `_challenge(node_id, nonce)` (the registry)."""

    def wrap(fn):
        name = fn.__name__
        if (kind, name) not in au.RIGHTS:
            raise KeyError(f"{kind}.{name} has no row in protocols.authority.RIGHTS")
        sig = inspect.signature(fn)

        def check(self, args, kwargs, auth):
            try:
                bound = signature_args(sig, args, kwargs)
            except TypeError as exc:  # wrong arguments: a typed error, like any malformed call
                raise MalformedMessage(f"{kind}.{name}: {exc}") from None
            self.gate.check(name, bound, auth,
                            getattr(self, "_node_of", None), getattr(self, "_challenge", None))

        if inspect.iscoroutinefunction(fn):
            async def wrapper(self, *args, auth=None, **kwargs):
                check(self, args, kwargs, auth)
                return await fn(self, *args, **kwargs)
        else:
            def wrapper(self, *args, auth=None, **kwargs):
                check(self, args, kwargs, auth)
                return fn(self, *args, **kwargs)
        for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(wrapper, attr, getattr(fn, attr))
        params = list(sig.parameters.values())
        extra = inspect.Parameter("auth", inspect.Parameter.KEYWORD_ONLY, default=None)
        at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
        wrapper.__signature__ = sig.replace(parameters=params[:at] + [extra] + params[at:])
        wrapper.__verinfer_signature__ = sig  # what callers bind their arguments to
        return wrapper

    return wrap


class _Method:
    def __init__(self, owner: "Signed", name: str, options: dict | None = None):
        self._owner, self._name, self._options = owner, name, options or {}

    def options(self, **kw) -> "_Method":
        return _Method(self._owner, self._name, {**self._options, **kw})

    def remote(self, *args, **kwargs):
        o = self._owner
        method = getattr(o.handle, self._name)
        if self._options:
            method = method.options(**self._options)
        if kwargs.get("auth") is None:  # (a call signed elsewhere, e.g. a node's own, passes as it is)
            kwargs.pop("auth", None)
            kwargs["auth"] = o.signer().sign(au.addressee(o.kind, o.target), self._name,
                                             signature_args(o.signature(self._name), args, kwargs))
        return method.remote(*args, **kwargs)


class Signed:
    """A Ray handle of a control-plane actor of `kind` whose guarded methods are signed by
    `gate` (a Gatekeeper, or anything with `sign(actor, method, args)`); `cls` gives the
    callee's signatures. Other methods and attributes are the handle's own."""

    def __init__(self, handle: Any, gate: Any, kind: str, target: str | None = None, cls: type | None = None):
        """target: which one of its kind the handle reaches (an executor's node id)."""
        self.handle, self._gate, self.kind, self.target = handle, gate, kind, target
        self._cls = cls or _class_of(kind)

    def signer(self):
        return self._gate

    def signature(self, name: str) -> inspect.Signature:
        return _signature(self._cls, name)

    def __getattr__(self, name: str):
        if (name.startswith("__") and not name.startswith("__ray_")) or name in ("handle", "_gate", "kind", "_cls",
                                                                                  "target"):
            raise AttributeError(name)
        if au.guarded(self.kind, name):
            return _Method(self, name)
        return getattr(self.handle, name)

    def __reduce__(self):  # what travels is the bare handle: a signer stays where it runs
        return (_bare, (self.handle,))

    def __eq__(self, other) -> bool:
        return isinstance(other, Signed) and other.handle == self.handle

    def __hash__(self) -> int:
        return hash(self.handle)


@functools.lru_cache(maxsize=None)
def _signature(cls: type, name: str) -> inspect.Signature:
    fn = getattr(cls, name)
    return getattr(fn, "__verinfer_signature__", None) or inspect.signature(fn)


def _bare(handle):
    return handle


def bare(handle: Any) -> Any:
    """The Ray handle behind a Signed one (or the handle itself)."""
    return handle.handle if isinstance(handle, Signed) else handle


def _class_of(kind: str) -> type:
    if kind == "ledger":
        from actors.ledger import SlashingLedger as c
    elif kind == "registry":
        from actors.registry import ModelRegistry as c
    elif kind == "selector":
        from actors.selector import ObfuscatingSelector as c
    elif kind == "aggregator":
        from actors.aggregator import Aggregator as c
    elif kind == "epochs":
        from actors.epochs import EpochKeeper as c
    elif kind == "executor":
        from actors.executor import NodeExecutor as c
    else:
        raise KeyError(kind)
    return c


class KeyHolder:
    """A signer outside the actors (the operator's deploy and CLI, the gateway's replicas):
    anything with `sign` will do for Signed."""

    def __init__(self, key: SigningKey, role: str, holder: str, network: str):
        self.signer = au.Signer(key, role, holder, network)

    def sign(self, actor: str, method: str, args: dict) -> bytes:
        return self.signer.call(actor, method, args, time.time(), os.urandom(16))

    @property
    def public(self) -> bytes:
        return self.signer.key.public

    def __reduce__(self):
        raise TypeError("a key holder's private key is not sent anywhere")


class Operator(KeyHolder):
    """The network operator (deploy, the CLI, tests acting as the operator)."""

    def __init__(self, key: SigningKey, network: str):
        super().__init__(key, au.OPERATOR, "operator", network)


class Guarded:
    """Mixed into every actor that checks who is asking (`self.gate` is its Gatekeeper):
    keeps its roster current, and closes Ray's `__ray_call__` back door."""

    gate: Gatekeeper

    def install_roster(self, raw: bytes) -> bool:
        """An operator-signed roster (open: the operator's signature is the check)."""
        return self.gate.install(raw)

    def roster(self) -> bytes:
        """Public: the operator-signed roster this actor checks callers against."""
        return self.gate.roster_raw

    def accept_rotations(self, raws: list) -> int:
        """Holders' rotation statements (open: each is signed by the key it replaces)."""
        return self.gate.accept(list(raws))

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "__ray_actor_class__" in cls.__dict__:  # the class Ray wraps an actor in: close its back door
            cls.__ray_call__ = _ray_call


class Controlled(Guarded):
    """A control-plane actor: it also signs its own calls, with a key it rotates."""

    def control_key(self) -> dict:
        """Public: the role, holder and current key this actor signs its calls with."""
        s = self.gate.signer
        return {"role": s.role, "holder": s.holder, "key": s.key.public, "roster": self.gate.roster.version}

    def rotate_key(self, auth: bytes | None = None) -> bytes:
        """A fresh signing key for this actor (the epoch keeper or the operator asks);
        returns the rotation statement the others must accept. Used after `switch_key`."""
        self.gate.check("rotate_key", {}, auth)
        return self.gate.rotate()

    def switch_key(self, auth: bytes | None = None) -> bool:
        """Start signing with the key `rotate_key` made (every actor has the statement by now)."""
        self.gate.check("switch_key", {}, auth)
        return self.gate.switch()


def _ray_call(self, fn, *args, **kwargs):
    """Ray's `__ray_call__` runs any function inside the actor for whoever holds a handle,
    which would bypass every check above: refused, unless the network was deployed with
    debug calls on (tests that inspect an actor's insides)."""
    if not self.gate.debug_calls:
        raise au.Unauthorized("__ray_call__ runs arbitrary code inside this actor; this network refuses it "
                              "(deploy with debug calls on to allow it)")
    return fn(self, *args, **kwargs)


def node_call(key: SigningKey, node_id: str, network: str, kind: str, method: str, args: tuple,
              nonce: bytes | None = None) -> bytes:
    """A node's own signed call (role "node", holder = its id); `nonce`: the callee's challenge."""
    bound = signature_args(_signature(_class_of(kind), method), tuple(args), {})
    return au.Signer(key, au.NODE, node_id, network).call(kind, method, bound, time.time(),
                                                          nonce if nonce is not None else os.urandom(16))
