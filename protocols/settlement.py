"""How a decided round turns into money and registry changes — computed once, for every mode.

`settlement_of` turns the decision's Outcome into the ledger's Settlement (in
member ids: node ids, or pseudonyms in obfuscated rounds, which the ledger
resolves through the bindings the selector gave it). `effects` says what the
registry must learn afterwards: the new collateral of every slashed node, and
which of them leave the draw until they answer a liveness challenge.
`resolve` maps a pseudonymous settlement onto accounts, checking each binding
against the mapping commitment the selector published at draw time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .decision import LATE_REASONS, Outcome
from .errors import UnknownRequest
from .ledger import InvalidPosting, Settlement, Slash, collateral_account
from .obfuscation import check_unblinding


def settlement_of(outcome: Outcome, request_id: str, client_id: str, escrowed: int) -> Settlement:
    return Settlement(request_id=request_id, client_id=client_id, escrowed=escrowed,
                      paid_nodes=tuple(outcome.paid), slashes=tuple(Slash(n, r) for n, r in outcome.slashes),
                      beneficiaries=tuple(outcome.beneficiaries), referees=tuple(outcome.referees))


def refund(request_id: str, client_id: str, escrowed: int) -> Settlement:
    """Nobody paid, nobody slashed: the whole escrow goes back."""
    return Settlement(request_id=request_id, client_id=client_id, escrowed=escrowed)


def members_of(s: Settlement) -> set[str]:
    return set(s.paid_nodes) | {sl.node_id for sl in s.slashes} | set(s.beneficiaries) | set(s.referees)


@dataclass(frozen=True)
class Binding:
    """What the selector tells the ledger about one pseudonym (never the aggregator)."""

    node_id: str
    salt: bytes
    key: bytes  # the pseudonym's one-time public key
    digest: str = ""  # attestation evidence digest ("" when drawn without attestation)

    def __post_init__(self) -> None:  # the ledger stores it as given: refuse what could never open a commitment
        if not (isinstance(self.node_id, str) and self.node_id and isinstance(self.salt, bytes)
                and isinstance(self.key, bytes) and self.key and isinstance(self.digest, str)):
            raise InvalidPosting("a binding is (node id, salt bytes, key bytes, digest str)")


def resolve(s: Settlement, bindings: Mapping[str, Binding], commitment: Mapping[str, bytes]) -> Settlement:
    """The settlement in node ids. Every pseudonym it names must be bound, and its binding
    must open the commitment the aggregator holds: a selector that bound a pseudonym to
    another node (to redirect a payment or a slash) is refused (UnblindingRejected)."""
    node_of = {}
    for pid in members_of(s):
        if pid not in bindings:
            raise UnknownRequest(f"{s.request_id}: no binding for {pid}")
        b = bindings[pid]
        check_unblinding(dict(commitment), b.key, b.node_id, b.salt, b.digest)
        node_of[pid] = b.node_id
    return Settlement(request_id=s.request_id, client_id=s.client_id, escrowed=s.escrowed,
                      paid_nodes=tuple(node_of[p] for p in s.paid_nodes),
                      slashes=tuple(Slash(node_of[sl.node_id], sl.reason) for sl in s.slashes),
                      beneficiaries=tuple(node_of[p] for p in s.beneficiaries),
                      referees=tuple(node_of[p] for p in s.referees))


@dataclass(frozen=True)
class Effects:
    stakes: dict[str, int]  # node id -> collateral after the settlement (slashed nodes)
    take_out: tuple[str, ...]  # nodes slashed for lateness: not drawn until they answer a challenge


def effects(outcome: Outcome, balances: Mapping[str, int], node_of: Mapping[str, str] | None = None) -> Effects:
    """`balances`: the ledger's balances after settling; `node_of`: member id -> node id
    (identity when members are nodes; the unblinded slashed pseudonyms otherwise)."""
    node = (lambda m: m) if node_of is None else (lambda m: node_of[m])
    stakes = {}
    for member, _ in outcome.slashes:
        acct = collateral_account(node(member))
        if acct in balances:
            stakes[node(member)] = int(balances[acct])
    late = tuple(sorted(node(m) for m, why in outcome.slashes if why in LATE_REASONS))
    return Effects(stakes, late)
