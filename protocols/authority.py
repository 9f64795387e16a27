"""Who may ask the control plane for what: the one table of rights, and the signed
calls, rosters and key rotations that carry it.

Holding a Ray handle grants nothing. Every method that changes state on the
ledger, registry, selector, aggregator, epoch keeper or a node's executor takes `auth`: a "call"
envelope signed by the caller that binds the network, the actor kind, the
method, a digest of the arguments, a single-use nonce and the time it was
issued. The callee checks it (`check_call`) before doing anything:

  * the signature, and that the envelope names this network, actor, method and
    exactly these arguments (`args_digest`);
  * who signed: a key of the roster (operator, aggregator shards, selector,
    registry, epoch keeper, gateway), or a node's registered key (the registry
    alone knows those);
  * that this role holds the right in RIGHTS, within its scope (a node only for
    itself, the gateway and the aggregator only for client accounts);
  * freshness: issued within WINDOW_S of the callee's clock;
  * the nonce was not used before (CallGuard), except for methods that are
    idempotent by design (`replayable`: the same call twice has the effect of
    one, which is what Ray's retry after an actor restart needs); and for
    rights that say `challenge`, the nonce is a fresh challenge the callee
    issued to that node.

A failed check raises a typed error (Unauthorized, StaleMessage, ReplayedMessage,
BadSignature, MalformedMessage) and the method changes nothing.

The roster is issued by the network operator (whose key is the root: a file
beside the network's secret, never given to an actor) at deploy and re-issued
with a higher version by a repair. A holder rotates its own key by a "rotation"
statement signed with its current key; the old key keeps signing calls for
GRACE_S (calls in flight), and can sign no further rotation.

Pure: no Ray, no I/O, time passed in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .canonical import pack, sha256
from .crypto import SigningKey
from .errors import MalformedMessage, MessageError, ReplayedMessage
from . import messages

OPERATOR, AGGREGATOR, SELECTOR, REGISTRY, EPOCHS, GATEWAY, NODE = (
    "operator", "aggregator", "selector", "registry", "epochs", "gateway", "node")
ROSTER_ROLES = (OPERATOR, AGGREGATOR, SELECTOR, REGISTRY, EPOCHS, GATEWAY)
ACTORS = ("ledger", "registry", "selector", "aggregator", "epochs", "executor", "endpoint")

WINDOW_S = 120.0  # a call must be issued within this of the callee's clock, either way
GRACE_S = 600.0  # a rotated-out key still signs calls this long (until its holder switches, calls in flight)
MAX_NONCES = 200_000  # spent nonces kept per guard (they expire after the window anyway)


class Unauthorized(MessageError):
    """The call carries no valid signature of a key that holds the right to make it."""


class StaleMessage(MessageError):
    """The call was issued too long ago (or too far ahead) to be accepted now."""


@dataclass(frozen=True)
class Right:
    roles: frozenset  # who may ask
    replayable: bool = False  # idempotent by design: a repeated call repeats the same effect
    scope: Mapping[str, str] = field(default_factory=dict)  # role -> rule over the arguments (SCOPES)
    challenge: bool = False  # a node's call must carry, as its nonce, a fresh challenge of the callee


def _r(*roles: str, replayable: bool = False, challenge: bool = False, **scope: str) -> Right:
    return Right(frozenset(roles), replayable, dict(scope), challenge)


_SELF = "self"  # the node_id argument names the signing node
_CLIENT = "client-account"  # the account argument is a client's

# (actor, method) -> Right. Anything not here is read-only and stays open (public data),
# or is checked by a signature of its own (client requests, node results, chunks, evidence,
# rotation statements), or trusts no word of its caller: `registry.rejoin(node)` asks the
# handle registered for that node, never the caller, for its keys, and changes nothing
# unless they changed.
RIGHTS: dict[tuple[str, str], Right] = {
    # --- ledger: money moves only for the aggregator (rounds) and the operator (funding)
    ("ledger", "submit"): _r(OPERATOR),
    ("ledger", "deposit"): _r(OPERATOR, GATEWAY, AGGREGATOR, replayable=True, gateway=_CLIENT, aggregator=_CLIENT),
    ("ledger", "withdraw"): _r(OPERATOR, replayable=True),
    ("ledger", "escrow"): _r(AGGREGATOR, replayable=True),
    ("ledger", "escrow_many"): _r(AGGREGATOR, replayable=True),
    ("ledger", "settle"): _r(AGGREGATOR, replayable=True),
    ("ledger", "settle_many"): _r(AGGREGATOR, replayable=True),
    ("ledger", "settle_members"): _r(AGGREGATOR, replayable=True),
    ("ledger", "bind_members"): _r(SELECTOR, replayable=True),
    # --- registry: the operator admits and removes; rounds move stake and liveness; nodes renew themselves
    ("registry", "register_model"): _r(OPERATOR, replayable=True),
    ("registry", "set_chat_template"): _r(OPERATOR),
    ("registry", "admit"): _r(OPERATOR, replayable=True),
    ("registry", "approve"): _r(OPERATOR, replayable=True),  # an external node may join under this key
    ("registry", "join"): _r(NODE, replayable=True, node=_SELF),  # ... signed with the approved key
    ("registry", "remove"): _r(OPERATOR),
    ("registry", "revoke"): _r(OPERATOR),
    ("registry", "set_stakes"): _r(OPERATOR, AGGREGATOR),
    ("registry", "set_live"): _r(OPERATOR, AGGREGATOR),
    ("registry", "subscribe"): _r(OPERATOR, SELECTOR, AGGREGATOR, replayable=True),
    ("registry", "challenge"): _r(OPERATOR, EPOCHS, NODE, replayable=True, node=_SELF),
    ("registry", "attest"): _r(OPERATOR, EPOCHS, NODE, replayable=True, node=_SELF),
    ("registry", "renew"): _r(NODE, replayable=True, challenge=True, node=_SELF),
    ("registry", "release_weights_key"): _r(NODE, replayable=True, challenge=True, node=_SELF),
    ("registry", "liveness_challenge"): _r(OPERATOR, AGGREGATOR, replayable=True),
    ("registry", "answer_liveness"): _r(OPERATOR, AGGREGATOR, replayable=True),
    # --- selector: draws and unblinding for the aggregator; the registry's pushes
    ("selector", "draw"): _r(AGGREGATOR, replayable=True),
    ("selector", "draw_many"): _r(AGGREGATOR, replayable=True),
    ("selector", "draw_obfuscated"): _r(AGGREGATOR, replayable=True),
    ("selector", "dispatch_tickets"): _r(AGGREGATOR, replayable=True),
    ("selector", "request_reveals"): _r(AGGREGATOR, replayable=True),
    ("selector", "reveal_coin"): _r(AGGREGATOR, replayable=True),  # secret until the executor committed
    ("selector", "unblind"): _r(AGGREGATOR, replayable=True),  # names nodes behind pseudonyms
    ("selector", "forget"): _r(AGGREGATOR, OPERATOR, replayable=True),
    ("selector", "on_registry"): _r(REGISTRY, replayable=True),
    ("selector", "on_registry_delta"): _r(REGISTRY, replayable=True),
    ("selector", "bind"): _r(OPERATOR, replayable=True),
    ("selector", "set_behaviour"): _r(OPERATOR),
    ("selector", "vrf_secret"): _r(OPERATOR, replayable=True),  # experiments: the operator previews draws
    # --- aggregator: the selector's word that a pseudonym failed; credit for new clients
    # (obfuscated results, reveals and refusals carry their pseudonym's own signature)
    ("aggregator", "register_client"): _r(OPERATOR, GATEWAY, replayable=True),
    ("aggregator", "obf_failure"): _r(SELECTOR, replayable=True),
    ("aggregator", "take_out"): _r(OPERATOR, AGGREGATOR, replayable=True),
    ("aggregator", "revive"): _r(OPERATOR, AGGREGATOR, replayable=True),
    # --- a node's executor: only the aggregator may make it run or reveal (a reveal asked for
    # early would hand its commitment to a copier), only the selector hand it tickets
    ("executor", "execute"): _r(AGGREGATOR, replayable=True),
    ("executor", "reveal"): _r(AGGREGATOR, replayable=True),
    ("executor", "reveal_many"): _r(AGGREGATOR, replayable=True),
    ("executor", "execute_ticket"): _r(SELECTOR, replayable=True),
    ("executor", "reveal_ticket"): _r(SELECTOR, replayable=True),
    ("executor", "prepare_rotation"): _r(EPOCHS, OPERATOR, replayable=True),
    ("executor", "commit_rotation"): _r(EPOCHS, OPERATOR, replayable=True),
    ("executor", "abort_rotation"): _r(EPOCHS, OPERATOR, replayable=True),
    ("executor", "unlock"): _r(OPERATOR, REGISTRY, replayable=True),
    ("executor", "set_behaviour"): _r(OPERATOR),
    ("executor", "set_delay"): _r(OPERATOR),
    # --- the node endpoint (HTTP, for nodes outside the cluster): a node polls for its own calls,
    # answers them, and relays its own signed messages; never another node's
    ("endpoint", "poll"): _r(NODE, node=_SELF),
    ("endpoint", "reply"): _r(NODE, node=_SELF),
    ("endpoint", "relay"): _r(NODE, node=_SELF),
    ("endpoint", "join"): _r(NODE, node=_SELF),
    # --- epoch keeper
    ("epochs", "start"): _r(OPERATOR, replayable=True),
    ("epochs", "stop"): _r(OPERATOR, replayable=True),
    ("epochs", "renew"): _r(OPERATOR, replayable=True),
    ("epochs", "rotate_keys"): _r(OPERATOR, replayable=True),
}
# every actor rotates its own key when the epoch keeper (or the operator) asks (rotation
# statements themselves need no right: each is signed by the key it replaces)
for _a in ACTORS[:-2]:  # (a node's key rotates by attestation: EpochKeeper; the endpoint is no actor)
    RIGHTS[(_a, "rotate_key")] = _r(OPERATOR, EPOCHS, replayable=True)
    RIGHTS[(_a, "switch_key")] = _r(OPERATOR, EPOCHS, replayable=True)


def _client_account(args: Mapping[str, Any], _node: str | None) -> bool:
    return isinstance(args.get("account"), str) and args["account"].startswith("client/")


def _self(args: Mapping[str, Any], node: str | None) -> bool:
    return node is not None and args.get("node_id") == node


SCOPES: dict[str, Callable[[Mapping[str, Any], str | None], bool]] = {_CLIENT: _client_account, _SELF: _self}


def guarded(actor: str, method: str) -> bool:
    return (actor, method) in RIGHTS


# ---- arguments ---------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """A canonical, packable form of an argument: dataclasses as maps of their fields,
    `to_wire()` where a type has one, tuples as lists. Values that have no such form
    (actor handles) are not bound: methods that take one are the operator's, and read
    nothing from it that a substitute could abuse (registry.subscribe pushes only public
    views; selector.bind; executor.unlock asks only the registry it is given for a key
    sealed to its own attested HPKE key)."""
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [plain(v) for v in value]
        return sorted(items, key=pack) if isinstance(value, (set, frozenset)) else items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"@": type(value).__name__, **{f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if hasattr(value, "to_wire"):
        return plain(value.to_wire())
    return "<opaque>"  # (the same on both sides: a caller's wrapped handle arrives as a bare one)


def args_digest(args: Mapping[str, Any]) -> bytes:
    """What a call signs of its arguments (by parameter name, defaults applied)."""
    try:
        return sha256(b"verinfer/call-args|", pack(plain(dict(args))))
    except (OverflowError, TypeError, ValueError, RecursionError) as exc:  # (integers beyond 64 bits, ...)
        raise MalformedMessage(f"the call's arguments cannot be encoded: {type(exc).__name__}: {exc}") from None


# ---- signing ---------------------------------------------------------------------------------
@dataclass
class Signer:
    """A caller's key and who it is: the role and holder name a roster lists it under
    (a node signs as role "node", holder = its node id)."""

    key: SigningKey
    role: str
    holder: str
    network: str

    def call(self, actor: str, method: str, args: Mapping[str, Any], now: float, nonce: bytes) -> bytes:
        return messages.seal("call", {"network": self.network, "actor": actor, "method": method,
                                      "args": args_digest(args), "holder": self.holder, "nonce": bytes(nonce),
                                      "issued_at": float(now)}, self.key).raw

    def rotation(self, new_public: bytes, now: float) -> bytes:
        """A statement, signed with the current key, that this holder's key is now `new_public`."""
        return messages.seal("rotation", {"network": self.network, "role": self.role, "holder": self.holder,
                                          "key": bytes(new_public), "issued_at": float(now)}, self.key).raw

    def __reduce__(self):  # a signer never travels: a holder signs where it runs
        raise TypeError("a Signer holds a private key and is not sent anywhere")


def roster_statement(operator: SigningKey, network: str, version: int, entries, now: float) -> bytes:
    """The operator's roster: [(role, holder, public key)], replacing any of a lower version."""
    return messages.seal("roster", {"network": network, "version": int(version),
                                    "entries": [[r, h, bytes(k)] for r, h, k in entries],
                                    "issued_at": float(now)}, operator).raw


# ---- the roster ---------------------------------------------------------------------------
class Roster:
    """The keys of the control plane's holders: key -> (role, holder). Rooted in the
    operator keys it was created with; changed only by an operator-signed roster of a
    higher version, or by a holder's own rotation statement."""

    def __init__(self, network: str, operators: tuple[bytes, ...] = ()):
        self.network = network
        self.roots = tuple(bytes(k) for k in operators)
        self.version = -1
        self.keys: dict[bytes, tuple[str, str]] = {k: (OPERATOR, "operator") for k in self.roots}
        self.retiring: dict[bytes, float] = {}  # rotated-out key -> signs calls until then

    def role_of(self, key: bytes, now: float) -> tuple[str, str] | None:
        got = self.keys.get(bytes(key))
        if got is None:
            return None
        until = self.retiring.get(bytes(key))
        return got if until is None or now <= until else None

    def _operator(self, key: bytes, now: float) -> bool:
        return bytes(key) not in self.retiring and self.role_of(key, now) == (OPERATOR, "operator")

    def install(self, raw: bytes, now: float) -> bool:
        """An operator-signed roster. Returns False (and changes nothing) for one not newer
        than the installed one; raises for one not signed by the operator or malformed."""
        env = messages.open_envelope(raw, "roster")
        b = env.body
        if b["network"] != self.network:
            raise Unauthorized("a roster of another network")
        if not self._operator(env.sender, now):
            raise Unauthorized("a roster must be signed by the network operator")
        entries = []
        for e in b["entries"]:
            if not (isinstance(e, list) and len(e) == 3 and e[0] in ROSTER_ROLES and isinstance(e[1], str)
                    and isinstance(e[2], bytes) and len(e[2]) == 32):
                raise MalformedMessage("a roster entry is [role, holder, 32-byte key]")
            entries.append((e[0], e[1], e[2]))
        if b["version"] <= self.version:
            return False
        self.version = b["version"]
        keys = {bytes(k): (r, h) for r, h, k in entries}
        for k in self.roots:  # the root stays the operator whatever the roster lists
            keys[k] = (OPERATOR, "operator")
        self.keys, self.retiring = keys, {}
        return True

    def rotate(self, raw: bytes, now: float) -> bool:
        """A holder's rotation statement. False if already applied; raises if not signed
        by the holder's current (not retiring) key."""
        env = messages.open_envelope(raw, "rotation")
        b = env.body
        if b["network"] != self.network:
            raise Unauthorized("a rotation of another network")
        if len(b["key"]) != 32:
            raise MalformedMessage("a rotation names a 32-byte key")
        if self.keys.get(bytes(b["key"])) == (b["role"], b["holder"]):
            return False  # applied before
        if bytes(env.sender) in self.retiring or self.keys.get(bytes(env.sender)) != (b["role"], b["holder"]):
            raise Unauthorized("a rotation must be signed by the holder's current key")
        self.keys[bytes(b["key"])] = (b["role"], b["holder"])
        self.retiring[bytes(env.sender)] = now + GRACE_S
        if bytes(env.sender) in self.roots:
            self.roots = tuple(k for k in self.roots if k != bytes(env.sender)) + (bytes(b["key"]),)
        return True

    def prune(self, now: float) -> None:
        for k, until in list(self.retiring.items()):
            if now > until:
                self.retiring.pop(k)
                self.keys.pop(k, None)

    def to_wire(self) -> dict:
        return {"network": self.network, "roots": list(self.roots), "version": self.version,
                "keys": [[k, r, h] for k, (r, h) in self.keys.items()],
                "retiring": [[k, t] for k, t in self.retiring.items()]}

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> "Roster":
        r = cls(d["network"], tuple(d["roots"]))
        r.version = int(d["version"])
        r.keys = {bytes(k): (role, h) for k, role, h in d["keys"]}
        r.retiring = {bytes(k): float(t) for k, t in d["retiring"]}
        return r


# ---- the callee's check ----------------------------------------------------------------------
class CallGuard:
    """Spent nonces of calls that must not be repeated, each kept until its call could no
    longer be fresh (then staleness refuses it anyway)."""

    def __init__(self) -> None:
        self.spent: dict[tuple[bytes, bytes], float] = {}

    def check(self, sender: bytes, nonce: bytes) -> None:
        if (bytes(sender), bytes(nonce)) in self.spent:
            raise ReplayedMessage("this call was already made (a replayed envelope)")

    def record(self, sender: bytes, nonce: bytes, issued_at: float) -> None:
        self.spent[(bytes(sender), bytes(nonce))] = issued_at + WINDOW_S
        if len(self.spent) > MAX_NONCES:
            self.prune(max(self.spent.values()) - 2 * WINDOW_S)

    def prune(self, now: float) -> None:
        for k, until in list(self.spent.items()):
            if until < now:
                del self.spent[k]


@dataclass(frozen=True)
class Caller:
    role: str
    holder: str
    key: bytes
    nonce: bytes
    issued_at: float


def addressee(actor: str, target: str | None) -> str:
    """What a call names as its callee: the actor kind, and for one of many (a node's
    executor) which one, so a call made to one node cannot be replayed to another."""
    return actor if target is None else f"{actor}/{target}"


def check_call(raw: Any, actor: str, method: str, args: Mapping[str, Any], roster: Roster, guard: CallGuard,
               now: float, node_of: Callable[[bytes], str | None] | None = None,
               challenge: Callable[[str, bytes], bool] | None = None, target: str | None = None) -> Caller:
    """The whole check of a guarded call (see the module docstring). Records the nonce
    of a call that is not replayable; raises a typed error and records nothing otherwise.

    target: which one of its kind the callee is (an executor's node id), or None.

    node_of: the registry's map from a key to the node registered under it.
    challenge(node_id, nonce): whether `nonce` is an open challenge of that node (consumed
    by the caller once the call succeeds)."""
    right = RIGHTS[(actor, method)]
    need = "/".join(sorted(right.roles))
    if not raw:
        raise Unauthorized(f"{actor}.{method} needs a call signed by {need}; none was given")
    if not isinstance(raw, (bytes, bytearray)):
        raise MalformedMessage("auth must be a signed call envelope (bytes)")
    env = messages.open_envelope(bytes(raw), "call")
    b = env.body
    callee = addressee(actor, target)
    if (b["network"], b["actor"], b["method"]) != (roster.network, callee, method):
        raise Unauthorized(f"this call was signed for {b['network']}:{b['actor']}.{b['method']}, "
                           f"not {roster.network}:{callee}.{method}")
    if b["args"] != args_digest(args):
        raise Unauthorized(f"{actor}.{method}: the arguments are not the ones the call was signed for")
    who = roster.role_of(env.sender, now)
    node = None
    if who is None and node_of is not None:
        node = node_of(env.sender)
        who = (NODE, node) if node is not None else None
    if who is None:
        raise Unauthorized(f"{actor}.{method}: the signer is not a key of this network's control plane "
                           "(or a node registered here)")
    role, holder = who
    if holder != b["holder"]:
        raise Unauthorized(f"the call names holder {b['holder']!r}, but the key is {holder!r}'s")
    if role not in right.roles:
        raise Unauthorized(f"{role} {holder!r} may not call {actor}.{method} (only {need})")
    rule = right.scope.get(role)
    if rule is not None and not SCOPES[rule](args, node):
        raise Unauthorized(f"{role} {holder!r} may call {actor}.{method} only {rule.replace('-', ' ')}"
                           + (" for itself" if rule == _SELF else "s"))
    if not isinstance(b["issued_at"], (int, float)) or abs(now - b["issued_at"]) > WINDOW_S:
        raise StaleMessage(f"{actor}.{method}: the call was issued {now - b['issued_at']:.0f}s from now "
                           f"(accepted within {WINDOW_S:.0f}s)")
    if right.challenge and role == NODE and (challenge is None or not challenge(node, b["nonce"])):
        raise Unauthorized(f"{actor}.{method}: the call must answer a fresh challenge of this registry")
    if not right.replayable:
        guard.check(env.sender, b["nonce"])
        guard.record(env.sender, b["nonce"], float(b["issued_at"]))
    return Caller(role, holder, env.sender, b["nonce"], float(b["issued_at"]))
