"""Ledger rules: accounts, postings, the money rules of a round, the hash chain.

Everything here is pure: rule functions turn facts (a deposit, a settlement, the
balances read at apply time) into `Posting`s; `apply_postings` checks them against
balances; `entry_hash` / `verify_chain` / `replay` let an auditor recheck a stored
ledger. Persistence and batching live in actors/ledger.py.

Money is integer smallest units. Fractions from config are floats; an amount is
`floor(amount * Fraction(repr(frac)))`, i.e. the float's shortest decimal form
taken exactly (0.1 means 1/10, not 0.1000000000000000055...), so every party gets
the same integers. Whatever integer division leaves over goes to the treasury,
so every split sums exactly to what was taken.

Idempotency: each posting has a key `request|reason|account[|extra]`; a key is
applied at most once, so a retried call (Ray retries actor tasks) is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Mapping

from .canonical import pack, sha256
from .errors import (
    ChainBroken, ConfigError, ConservationViolation, InsufficientFunds, LedgerError,
)

EXTERNAL = "external"  # the outside world; the only account that may go negative
TREASURY = "treasury"
PREFIXES = ("collateral/", "rewards/", "client/", "escrow/")
GENESIS = bytes(32)
MAX_AMOUNT = 2**63 - 1  # SQLite INTEGER range
SLASH_REASONS = ("cheat", "timeout", "invalid-reveal", "withheld")


class InvalidPosting(LedgerError):
    """A posting, settlement or account name is malformed."""


class KeyConflict(LedgerError):
    """An idempotency key was reused for a different movement of money."""


class SettlementConflict(LedgerError):
    """A request was already settled with different contents."""


class BalanceMismatch(LedgerError):
    """Stored balances differ from the balances the entries replay to."""


class ChainFault(ChainBroken):
    """The chain breaks at entry `seq`; `kind` is "seq", "link" or "hash"."""

    def __init__(self, seq: int, kind: str, detail: str = "") -> None:
        super().__init__(seq, kind, detail)
        self.seq, self.kind, self.detail = seq, kind, detail

    def __str__(self) -> str:
        return f"ledger chain broken at seq {self.seq} ({self.kind}): {self.detail}"


# --- accounts -------------------------------------------------------------------
def collateral_account(node_id: str) -> str:
    return f"collateral/{node_id}"


def rewards_account(node_id: str) -> str:
    return f"rewards/{node_id}"


def client_account(client_id: str) -> str:
    return f"client/{client_id}"


def escrow_account(request_id: str) -> str:
    return f"escrow/{request_id}"


def check_account(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidPosting(f"account must be a non-empty string, got {name!r}")
    if name in (EXTERNAL, TREASURY):
        return name
    for p in PREFIXES:
        if name.startswith(p) and len(name) > len(p):
            return name
    raise InvalidPosting(f"unknown account {name!r}")


def posting_key(request_id: str, reason: str, account: str, extra: str = "") -> str:
    key = f"{request_id}|{reason}|{account}"
    return f"{key}|{extra}" if extra else key


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Posting:
    """Move `amount` (> 0) from `src` to `dst`; applied at most once per `key`."""

    key: str
    request_id: str
    reason: str
    src: str
    dst: str
    amount: int

    def __post_init__(self) -> None:
        for name in ("key", "request_id", "reason"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise InvalidPosting(f"posting {name} must be a non-empty string")
        check_account(self.src)
        check_account(self.dst)
        if self.src == self.dst:
            raise InvalidPosting(f"posting {self.key!r} moves {self.src} to itself")
        if not _is_int(self.amount) or not 0 < self.amount <= MAX_AMOUNT:
            raise InvalidPosting(f"posting {self.key!r} amount must be an int in 1..2**63-1")

    def same_movement(self, other: "Posting") -> bool:
        return (self.request_id, self.reason, self.src, self.dst, self.amount) == (
            other.request_id, other.reason, other.src, other.dst, other.amount)


# --- economics -------------------------------------------------------------------
def _frac(x: float) -> Fraction:
    return Fraction(repr(float(x)))


def take(amount: int, fraction: float) -> int:
    """floor(amount * fraction), exact (fraction read as its decimal repr)."""
    return (amount * _frac(fraction)).__floor__()


@dataclass(frozen=True)
class Economics:
    """The money rules of a network; mirrors the `[economics]` config table."""

    price: int  # what a client pays per node execution (smallest units, > 0)
    fee_fraction: float  # treasury's cut of each node payment, 0..1
    collateral: int  # stake each node deposits on admission (> 0)
    min_stake: int  # least collateral a node needs to stay selectable (0..collateral)
    cheat_slash_fraction: float = 1.0  # of current collateral, for cheat / invalid-reveal / withheld
    timeout_slash_fraction: float = 0.1  # of current collateral, for a missed deadline
    referee_fraction: float = 0.1  # share of a slash paid to the dispute's referees
    treasury_slash_fraction: float = 0.0  # share of a slash to treasury; rest to the honest

    def __post_init__(self) -> None:
        for name in ("price", "collateral"):
            v = getattr(self, name)
            if not _is_int(v) or not 0 < v <= MAX_AMOUNT:
                raise ConfigError(f"economics.{name} must be an integer > 0, got {v!r}")
        if not _is_int(self.min_stake) or not 0 <= self.min_stake <= self.collateral:
            raise ConfigError(f"economics.min_stake must be an integer in 0..collateral, got {self.min_stake!r}")
        for name in ("fee_fraction", "cheat_slash_fraction", "timeout_slash_fraction",
                     "referee_fraction", "treasury_slash_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"economics.{name} must be a number in [0, 1], got {v!r}")
        if _frac(self.referee_fraction) + _frac(self.treasury_slash_fraction) > 1:
            raise ConfigError("economics.referee_fraction + treasury_slash_fraction must be <= 1")

    @property
    def fee(self) -> int:
        """Treasury's cut of one node payment."""
        return take(self.price, self.fee_fraction)

    @property
    def node_reward(self) -> int:
        return self.price - self.fee

    def escrow_for(self, n_nodes: int) -> int:
        """What a client must escrow for a round that pays `n_nodes` executions."""
        return self.price * n_nodes

    def slash_fraction(self, reason: str) -> float:
        if reason not in SLASH_REASONS:
            raise InvalidPosting(f"unknown slash reason {reason!r}")
        return self.timeout_slash_fraction if reason == "timeout" else self.cheat_slash_fraction

    def selectable(self, collateral_balance: int) -> bool:
        return collateral_balance >= self.min_stake


# --- settlements ----------------------------------------------------------------
@dataclass(frozen=True)
class Slash:
    node_id: str
    reason: str  # "cheat" | "timeout" | "invalid-reveal" | "withheld" (committed, never revealed)

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise InvalidPosting("slash node_id must be a non-empty string")
        if self.reason not in SLASH_REASONS:
            raise InvalidPosting(f"slash reason must be one of {SLASH_REASONS}, got {self.reason!r}")


def _node_tuple(name: str, v: object) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)):  # (a str, a dict or a number is no list of node ids)
        raise InvalidPosting(f"settlement {name} must be a list of node ids, got {type(v).__name__}")
    t = tuple(v)
    if any(not isinstance(x, str) or not x for x in t) or len(set(t)) != len(t):
        raise InvalidPosting(f"settlement {name} must be distinct non-empty node ids")
    return t


@dataclass(frozen=True)
class Settlement:
    """How one round ends: who is paid, who is slashed, who shares the slashes."""

    request_id: str
    client_id: str
    escrowed: int  # what the client escrowed for this request
    paid_nodes: tuple[str, ...] = ()
    slashes: tuple[Slash, ...] = ()
    beneficiaries: tuple[str, ...] = ()  # honest quorum members sharing slashed stake
    referees: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("request_id", "client_id"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InvalidPosting(f"settlement {name} must be a non-empty string")
        if not _is_int(self.escrowed) or not 0 <= self.escrowed <= MAX_AMOUNT:
            raise InvalidPosting("settlement escrowed must be an int >= 0")
        for name in ("paid_nodes", "beneficiaries", "referees"):
            object.__setattr__(self, name, _node_tuple(name, getattr(self, name)))
        if not isinstance(self.slashes, (list, tuple)):
            raise InvalidPosting("settlement slashes must be a list of Slash values")
        slashes = tuple(self.slashes)
        if any(not isinstance(s, Slash) for s in slashes):
            raise InvalidPosting("settlement slashes must be Slash values")
        if len({s.node_id for s in slashes}) != len(slashes):
            raise InvalidPosting("settlement slashes a node twice")
        object.__setattr__(self, "slashes", slashes)

    def to_wire(self) -> dict:
        """Canonical form; order of the node lists does not change the outcome."""
        return {
            "request_id": self.request_id, "client_id": self.client_id,
            "escrowed": self.escrowed, "paid_nodes": sorted(self.paid_nodes),
            "slashes": sorted([s.node_id, s.reason] for s in self.slashes),
            "beneficiaries": sorted(self.beneficiaries), "referees": sorted(self.referees),
        }


def split_slash(amount: int, econ: Economics, referees: tuple[str, ...],
                beneficiaries: tuple[str, ...]) -> dict[str, int]:
    """Recipient account -> share of a slashed `amount`; shares sum to `amount`."""
    out: dict[str, int] = {}

    def give(account: str, n: int) -> None:
        if n > 0:
            out[account] = out.get(account, 0) + n

    ref_total = take(amount, econ.referee_fraction)
    to_treasury = take(amount, econ.treasury_slash_fraction)
    honest_total = amount - ref_total - to_treasury
    if referees:
        each = ref_total // len(referees)
        for r in sorted(referees):
            give(rewards_account(r), each)
        to_treasury += ref_total - each * len(referees)
    else:
        honest_total += ref_total
    if beneficiaries:
        each = honest_total // len(beneficiaries)
        for b in sorted(beneficiaries):
            give(rewards_account(b), each)
        to_treasury += honest_total - each * len(beneficiaries)
    else:
        to_treasury += honest_total
    give(TREASURY, to_treasury)
    return out


def deposit_postings(account: str, amount: int, key: str, request_id: str | None = None) -> list[Posting]:
    """external -> account. Posting key is `key|deposit|account`."""
    return [Posting(posting_key(key, "deposit", account), request_id or key, "deposit", EXTERNAL, account, amount)]


def withdraw_postings(account: str, amount: int, key: str, request_id: str | None = None) -> list[Posting]:
    """account -> external. Posting key is `key|withdraw|account`."""
    return [Posting(posting_key(key, "withdraw", account), request_id or key, "withdraw", account, EXTERNAL, amount)]


def escrow_postings(request_id: str, client_id: str, amount: int) -> list[Posting]:
    """client/<c> -> escrow/<rid>; once per request."""
    dst = escrow_account(request_id)
    return [Posting(posting_key(request_id, "escrow", dst), request_id, "escrow",
                    client_account(client_id), dst, amount)]


def settlement_postings(s: Settlement, balances: Mapping[str, int], econ: Economics) -> list[Posting]:
    """Postings that end round `s`, given balances read at apply time.

    Paid nodes get `price - fee` each from the escrow, fees go to the treasury in
    one posting, the rest of the escrow (at most `escrowed`) is refunded. Each slash
    moves `fraction * collateral` into the request's escrow (entry reason
    `slash-<reason>`), then out to referees, treasury and honest beneficiaries
    (reason `slash-share`), so an auditor sees one entry per slash.
    """
    rid, esc = s.request_id, escrow_account(s.request_id)
    available = min(s.escrowed, balances.get(esc, 0))
    owed = econ.price * len(s.paid_nodes)
    if owed > available:
        raise InsufficientFunds(f"{esc} holds {available} for this request, paying {len(s.paid_nodes)} nodes needs {owed}")
    out: list[Posting] = []
    if econ.node_reward > 0:
        for n in sorted(s.paid_nodes):
            dst = rewards_account(n)
            out.append(Posting(posting_key(rid, "reward", dst), rid, "reward", esc, dst, econ.node_reward))
    if econ.fee * len(s.paid_nodes) > 0:
        out.append(Posting(posting_key(rid, "fee", TREASURY), rid, "fee", esc, TREASURY,
                           econ.fee * len(s.paid_nodes)))
    if available - owed > 0:
        dst = client_account(s.client_id)
        out.append(Posting(posting_key(rid, "refund", dst), rid, "refund", esc, dst, available - owed))
    for sl in sorted(s.slashes, key=lambda x: x.node_id):
        src = collateral_account(sl.node_id)
        amount = take(balances.get(src, 0), econ.slash_fraction(sl.reason))
        if amount <= 0:
            continue
        reason = f"slash-{sl.reason}"
        out.append(Posting(posting_key(rid, reason, src), rid, reason, src, esc, amount))
        for dst, share in sorted(split_slash(amount, econ, s.referees, s.beneficiaries).items()):
            out.append(Posting(posting_key(rid, "slash-share", dst, sl.node_id), rid,
                               "slash-share", esc, dst, share))
    return out


# --- application and invariants ----------------------------------------------------
def apply_postings(balances: Mapping[str, int], postings: Iterable[Posting]) -> dict[str, int]:
    """New balances after `postings`, in order; the input is not mutated.

    Raises InsufficientFunds naming the account if any account but `external`
    would go below zero at any point.
    """
    out = dict(balances)
    for p in postings:
        src_after = out.get(p.src, 0) - p.amount
        if src_after < 0 and p.src != EXTERNAL:
            raise InsufficientFunds(f"{p.src} has {out.get(p.src, 0)}, posting {p.key!r} needs {p.amount}")
        dst_after = out.get(p.dst, 0) + p.amount
        if dst_after > MAX_AMOUNT or src_after < -MAX_AMOUNT:
            raise InvalidPosting(f"posting {p.key!r} overflows an account")
        out[p.src], out[p.dst] = src_after, dst_after
    return out


def check_conservation(balances: Mapping[str, int]) -> None:
    """Sum over all accounts incl. `external` must be 0 (money is only moved)."""
    total = sum(balances.values())
    if total != 0:
        raise ConservationViolation(
            f"accounts sum to {total}, not 0 (real accounts {total - balances.get(EXTERNAL, 0)}, "
            f"net deposits {-balances.get(EXTERNAL, 0)})")


# --- hash chain -----------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One applied posting, chained to its predecessor by `prev_hash`."""

    seq: int
    key: str
    request_id: str
    reason: str
    src: str
    dst: str
    amount: int
    at: float
    prev_hash: bytes
    hash: bytes


def entry_hash(prev_hash: bytes, seq: int, key: str, request_id: str, reason: str,
               src: str, dst: str, amount: int, at: float) -> bytes:
    return sha256(prev_hash, pack([seq, key, request_id, reason, src, dst, amount, float(at)]))


def make_entry(prev_hash: bytes, seq: int, p: Posting, at: float) -> Entry:
    h = entry_hash(prev_hash, seq, p.key, p.request_id, p.reason, p.src, p.dst, p.amount, at)
    return Entry(seq, p.key, p.request_id, p.reason, p.src, p.dst, p.amount, float(at), prev_hash, h)


def verify_chain(entries: Iterable[Entry], prev_hash: bytes = GENESIS, start_seq: int = 1) -> bytes:
    """Check seqs are consecutive from `start_seq`, links and hashes; return the head.

    ChainFault.kind: "seq" (missing/reordered entry), "link" (prev_hash is not the
    predecessor's hash) or "hash" (an entry's fields were altered).
    """
    head, expect = prev_hash, start_seq
    for e in entries:
        if e.seq != expect:
            raise ChainFault(e.seq, "seq", f"expected seq {expect}")
        if e.prev_hash != head:
            raise ChainFault(e.seq, "link", "prev_hash is not the previous entry's hash")
        if entry_hash(e.prev_hash, e.seq, e.key, e.request_id, e.reason, e.src, e.dst,
                      e.amount, e.at) != e.hash:
            raise ChainFault(e.seq, "hash", "entry contents do not match its hash")
        head, expect = e.hash, expect + 1
    return head


def replay(entries: Iterable[Entry]) -> dict[str, int]:
    """Balances the entries add up to (touched accounts, zeros included)."""
    out: dict[str, int] = {}
    for e in entries:
        out[e.src] = out.get(e.src, 0) - e.amount
        out[e.dst] = out.get(e.dst, 0) + e.amount
    return out
