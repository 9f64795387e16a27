"""The Sampling Consensus round as a state machine: events in, actions out.

A round moves through two stages, each a commit-reveal among a set of members:

  quorum  : N nodes run the request. The first commitment triggers FirstOutput
            (the client already has that node's output). When every current
            member has committed, reveals are requested. All reveals open their
            commits and agree -> Finalize("final"). Anything else -> dispute.
  referee : a fresh, larger set of nodes of the same class re-executes. Their
            majority commitment is the truth: every quorum member and referee
            whose commitment differs (or whose reveal does not open its
            commit) is slashed; the honest quorum members are paid and share
            the slashed collateral -> Finalize("resolved").

Cross Validation (mode "cross-validation"): the quorum starts with one
executor. Its commitment triggers FlipCoin; only then is the selector's
pre-committed coin revealed (protocols.crossval). Unchecked -> the executor
reveals and the round is final on its own. Checked -> N verifiers are drawn
(Dispatch.verify_of names whose output they check, by prefill where the engine
can), the quorum becomes 1 + N, and everything proceeds as in sampling mode.

Tolerant rounds (`tolerant=True`, members drawn across a tolerance group of
mixed hardware, dtype or batching): commitments still compare exactly, so
members that made the same tokens agree and the round is final. A dispute's
referees re-execute as usual and also check every revealed quorum claim with
the model's tolerant check (one prefill: token margins and the activation
fingerprint the claim's commit sealed); `on_result` takes the claims each
referee's signed verdicts accept, and the decision pays (never slashes) a claim a
majority of answering referees accepted (protocols.decision).

A member that misses its deadline (commit or reveal) is slashed for timeout and
a replacement is drawn, so the stage still reaches its size. If no replacement
exists the stage continues with fewer members and the outcome says `degraded`.
When every member of the stage is late at once, the fault is not provably
theirs (a stalled network, a deadline too short): they are `excused`, nobody is
slashed, and the round ends unresolved (refunded).

Every outcome comes from protocols.decision.decide over the members' final
states — the same function a receipt verifier runs on the receipt's evidence.

No clocks inside: `now` comes with every event, and the aggregator calls
`on_tick(now)` at `next_deadline()`. Reveals are checked here (`opens`), so a
copied commit hash can never be opened by the copier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import decision
from .commitments import opens
from .decision import (COMMITTED, EXCUSED, INVALID, QUORUM, REFEREE, REVEALED, RUNNING, TIMED_OUT, MemberFact,
                       Outcome)
from .errors import UnknownSender, MessageError

SAMPLING, CROSS_VALIDATION = "sampling", "cross-validation"
GONE = decision.GONE


# ---- actions ------------------------------------------------------------------
@dataclass(frozen=True)
class Dispatch:
    node_ids: tuple[str, ...]
    role: str
    verify_of: str | None = None  # cross-validation: the executor whose output these nodes check


@dataclass(frozen=True)
class FlipCoin:
    """Cross-validation: the executor has committed; reveal the selector's coin now."""

    node_id: str
    commit_hash: bytes


@dataclass(frozen=True)
class DrawVerifiers:
    count: int
    exclude: tuple[str, ...]


@dataclass(frozen=True)
class FirstOutput:
    node_id: str


@dataclass(frozen=True)
class RequestReveals:
    node_ids: tuple[str, ...]
    role: str


@dataclass(frozen=True)
class DrawReplacements:
    count: int
    role: str
    exclude: tuple[str, ...]


@dataclass(frozen=True)
class DrawReferees:
    count: int
    exclude: tuple[str, ...]


@dataclass(frozen=True)
class Finalize:
    outcome: Outcome


# ---- state --------------------------------------------------------------------
@dataclass
class Member:
    node_id: str
    key: bytes  # public key that signs this member's messages (node key or pseudonym)
    role: str
    deadline: float
    state: str = RUNNING
    commit_hash: bytes | None = None
    commitment: bytes | None = None
    replacement: bool = False  # drawn to replace a member that timed out
    accepts: tuple[str, ...] = ()  # a referee of a tolerant round: the quorum claims its verdicts accept

    def fact(self, accepted_by: tuple[str, ...] = ()) -> MemberFact:
        return MemberFact(self.node_id, self.role, self.state, self.commitment if self.state == REVEALED else None,
                          self.replacement, self.commit_hash is not None, accepted_by)


@dataclass
class Round:
    request_id: str
    n: int
    timeout_s: float
    reveal_timeout_s: float
    referee_n: int
    mode: str = SAMPLING
    verifiers: int = 0  # cross-validation: N, drawn with probability p after the executor commits
    members: dict[str, Member] = field(default_factory=dict)
    stage: str = QUORUM
    done: bool = False
    first_output_sent: bool = False
    reveals_requested: set[str] = field(default_factory=set)
    degraded: bool = False
    outcome: Outcome | None = None
    coin: bool | None = None  # cross-validation: None until flipped
    coin_requested: bool = False
    executor: str | None = None  # cross-validation: whose output verifiers check
    tolerant: bool = False  # drawn across a tolerance group: disputes weigh the referees' tolerant checks
    _target: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n < 1 or self.referee_n < 1:
            raise ValueError("quorum and referee sizes must be >= 1")
        if self.mode not in (SAMPLING, CROSS_VALIDATION):
            raise ValueError(f"unknown mode {self.mode!r}")
        if self.mode == CROSS_VALIDATION and (self.n != 1 or self.verifiers < 1):
            raise ValueError("cross-validation runs one executor and N >= 1 verifiers")
        self._target = {QUORUM: self.n, REFEREE: self.referee_n}

    @property
    def branch(self) -> str:
        if self.mode != CROSS_VALIDATION or self.coin is None:
            return ""  # (a round that ended before its coin was flipped took no branch)
        return "checked" if self.coin else "unchecked"

    # --- views
    def of_role(self, role: str) -> list[Member]:
        return [m for m in self.members.values() if m.role == role]

    def active(self, role: str) -> list[Member]:
        return [m for m in self.of_role(role) if m.state not in GONE]

    @property
    def slashes(self) -> list[tuple[str, str]]:
        """Timeouts so far (the outcome adds cheats)."""
        return [decision.late_reason(m.fact()) for m in self.members.values() if m.state == TIMED_OUT]

    def want(self) -> int:
        """Quorum members the request needs."""
        return 1 + self.verifiers if self.coin else self.n

    def evidence(self, aborted: str = "") -> decision.Evidence:
        refs = [m for m in self.of_role(REFEREE) if m.state == REVEALED]

        def fact(m: Member) -> MemberFact:
            if not self.tolerant or m.role != QUORUM or m.state != REVEALED:
                return m.fact()
            return m.fact(tuple(sorted(r.node_id for r in refs if m.node_id in r.accepts)))
        return decision.Evidence(tuple(fact(m) for m in self.members.values()), self.want(), self.branch, aborted,
                                 self.tolerant)

    def ever_selected(self) -> tuple[str, ...]:
        return tuple(self.members)

    def _waiting_on(self, m: Member) -> bool:
        """The member owes us something now: its result, or a reveal we asked for."""
        return m.state == RUNNING or (m.state == COMMITTED and m.node_id in self.reveals_requested)

    def next_deadline(self) -> float | None:
        pending = [m.deadline for m in self.active(self.stage) if self._waiting_on(m)]
        return min(pending) if pending and not self.done else None

    def member(self, node_id: str, key: bytes | None = None) -> Member:
        m = self.members.get(node_id)
        if m is None or (key is not None and m.key != key):
            raise UnknownSender(f"{node_id!r} is not a member of round {self.request_id}")
        return m

    # --- events
    def start(self, node_ids: list[str], keys: list[bytes], now: float) -> list:
        return self.add_members(node_ids, keys, QUORUM, now)

    def add_members(self, node_ids: list[str], keys: list[bytes], role: str, now: float,
                    replacement: bool = False) -> list:
        for nid, key in zip(node_ids, keys, strict=True):
            if nid in self.members:
                raise ValueError(f"{nid} already served this request")
            self.members[nid] = Member(nid, key, role, now + self.timeout_s, replacement=replacement)
        if role == REFEREE:
            self.stage = REFEREE
            self._target[REFEREE] = len(self.active(REFEREE))
        verify_of = self.executor if (role == QUORUM and self.coin) else None
        return [Dispatch(tuple(node_ids), role, verify_of)]

    def on_result(self, node_id: str, key: bytes, commit: bytes, now: float, accepts=()) -> list:
        """`accepts`: a referee of a tolerant round, the quorum members whose claims its signed
        verdicts accept (protocols.fingerprint.accepted); counted only once it reveals."""
        m = self.member(node_id, key)
        if self.done or m.state != RUNNING or m.role != self.stage:
            raise MessageError(f"unexpected result from {node_id} in state {m.state}")
        if accepts and (not self.tolerant or m.role != REFEREE):
            raise MessageError("only a referee of a tolerant round judges quorum claims")
        m.state, m.commit_hash = COMMITTED, commit
        m.accepts = tuple(accepts)
        actions: list = []
        if m.role == QUORUM and not self.first_output_sent:
            self.first_output_sent = True
            actions.append(FirstOutput(node_id))
        if self.mode == CROSS_VALIDATION and not self.coin_requested:
            # The coin is revealed only now, after the executor is bound to its output.
            self.coin_requested, self.executor = True, node_id
            actions.append(FlipCoin(node_id, commit))
        return actions + self._maybe_request_reveals(now)

    def on_coin(self, checked: bool, now: float) -> list:
        if self.mode != CROSS_VALIDATION or not self.coin_requested or self.coin is not None:
            raise MessageError("no coin flip is pending")
        self.coin = bool(checked)
        if self.coin:
            self._target[QUORUM] = 1 + self.verifiers
            return [DrawVerifiers(self.verifiers, self.ever_selected())]
        return self._maybe_request_reveals(now)

    def on_reveal(self, node_id: str, key: bytes, commitment: bytes, salt: bytes, now: float,
                  fingerprint: bytes = b"") -> list:
        """`fingerprint`: the output's activation fingerprint the commit also sealed ("" = none)."""
        m = self.member(node_id, key)
        if self.done or m.state != COMMITTED or node_id not in self.reveals_requested:
            raise MessageError(f"unexpected reveal from {node_id} in state {m.state}")
        if opens(m.commit_hash, m.key, commitment, salt, fingerprint):
            m.state, m.commitment = REVEALED, commitment
        else:
            m.state = INVALID
        return self._maybe_decide()

    def on_failure(self, node_id: str, now: float) -> list:
        """The node's call errored (crash, refusal): same consequence as a timeout."""
        m = self.member(node_id)
        if self.done or m.state not in (RUNNING, COMMITTED):
            return []
        return self._time_out([m])

    def on_tick(self, now: float) -> list:
        if self.done:
            return []
        act = self.active(self.stage)
        late = [m for m in act if self._waiting_on(m) and m.deadline <= now]
        if not late:
            return []
        if len(late) == len(act):  # the whole stage is late together: not provably anyone's fault
            for m in late:
                m.state = EXCUSED
            return self._decide()
        return self._time_out(late)

    def on_replacements(self, node_ids: list[str], keys: list[bytes], role: str, now: float,
                        asked: int | None = None) -> list:
        """Replacements for timed-out members (asked: how many were wanted)."""
        return self._joined(node_ids, keys, role, now, asked, replacement=True)

    def on_verifiers(self, node_ids: list[str], keys: list[bytes], now: float) -> list:
        """Cross-validation: the verifiers drawn after a checked coin."""
        return self._joined(node_ids, keys, QUORUM, now, self.verifiers, replacement=False)

    def _joined(self, node_ids, keys, role, now, asked, replacement) -> list:
        if not node_ids:
            return self.on_no_replacement(role, now)
        actions = self.add_members(node_ids, keys, role, now, replacement)
        if asked is not None and len(node_ids) < asked:  # fewer than wanted: go on with who is there
            self.degraded = True
            self._target[role] = len(self.active(role))
        return actions

    def on_no_replacement(self, role: str, now: float) -> list:
        """No fresh node could be drawn: continue with who is left."""
        self.degraded = True
        self._target[role] = len(self.active(role))
        if self._target[role] == 0:
            return self._decide()  # failed (no quorum left) or unresolved (no referee left)
        return self._maybe_request_reveals(now) + self._maybe_decide()

    def on_referees(self, node_ids: list[str], keys: list[bytes], now: float) -> list:
        if not node_ids:
            return self._decide()  # unresolved: no eligible referee
        return self.add_members(node_ids, keys, REFEREE, now)

    def abort(self, why: str) -> list:
        """The round cannot go on (e.g. the selector failed): end it unresolved, refunding."""
        return [] if self.done else self._finish(decision.decide(self.evidence(aborted=why)))

    # --- internals
    def _time_out(self, late: list[Member]) -> list:
        for m in late:
            m.state = TIMED_OUT
        role = late[0].role
        return [DrawReplacements(len(late), role, self.ever_selected())]

    def _maybe_request_reveals(self, now: float) -> list:
        if self.mode == CROSS_VALIDATION and self.stage == QUORUM and self.coin is None:
            return []  # reveals wait for the coin (and, if checked, the verifiers)
        act = self.active(self.stage)
        if len(act) < self._target[self.stage] or any(m.state == RUNNING for m in act):
            return []
        ask = tuple(m.node_id for m in act if m.state == COMMITTED and m.node_id not in self.reveals_requested)
        if not ask:
            return []
        for nid in ask:
            self.reveals_requested.add(nid)
            self.members[nid].deadline = now + self.reveal_timeout_s
        return [RequestReveals(ask, self.stage)]

    def _maybe_decide(self) -> list:
        act = self.active(self.stage)
        if self.done or len(act) < self._target[self.stage] or any(m.state in (RUNNING, COMMITTED) for m in act):
            return []
        if self.stage == QUORUM and not decision.quorum_agrees([m.fact() for m in act]):
            return [DrawReferees(max(self.referee_n, len(act) + 1), self.ever_selected())]
        return self._decide()

    def _decide(self) -> list:
        return self._finish(decision.decide(self.evidence()))

    def _finish(self, outcome: Outcome) -> list:
        self.done, self.outcome = True, outcome
        return [Finalize(outcome)]

    # --- public view (what any node may see: never an unopened reveal)
    def public_view(self) -> dict:
        return {
            "stage": self.stage,
            "done": self.done,
            "commits": {nid: m.commit_hash for nid, m in self.members.items() if m.commit_hash is not None},
            "reveals": {nid: m.commitment for nid, m in self.members.items()
                        if self.done and m.commitment is not None},
        }
