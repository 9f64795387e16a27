"""The one decision rule: what a round's evidence forces.

The round (protocols.sampling.Round) decides with `decide`, and
`protocols.receipts.verify_receipt` calls the same `decide` on the evidence a
receipt carries and rejects the receipt unless the recomputed record equals the
carried one in every field — the light client checks with consensus's own code.

Evidence is, per member in draw order: its role, whether it was drawn as a
replacement, and its final state:

  revealed   its reveal opened its commit (commitment known)
  invalid    its reveal did not open its commit
  timed-out  it missed a deadline or its call failed: slashed "timeout", or
             "withheld" if it had committed (a member that commits and then keeps
             its reveal back pays like a cheat: otherwise a cheater that sees it
             would lose could dodge the cheat slash for the timeout fraction)
  excused    it was late together with every other member of its stage: the
             fault is not provably its own, so nobody is slashed
  committed  it committed and was not asked to reveal (only in an aborted round)
  running    no result yet (only in an aborted round)

Lateness itself cannot be proven offline: `timed-out` and `excused` are the
aggregator's claims, and so is `aborted` (why a round could not go on). A
receipt can show them consistent with everything else (a member that revealed
was never late; excused members end the round unresolved), no more.

Decision fields (all recomputed): status, commitment, output_node, paid,
slashes (node, reason), beneficiaries, referees, excused, disputed, degraded,
detail, branch. Lists are sorted, so the record does not depend on the order in
which messages happened to arrive.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from .errors import MessageError

QUORUM, REFEREE = "quorum", "referee"
REVEALED, INVALID, TIMED_OUT, EXCUSED = "revealed", "invalid", "timed-out", "excused"
COMMITTED, RUNNING = "committed", "running"
STATES = (REVEALED, INVALID, TIMED_OUT, EXCUSED, COMMITTED, RUNNING)
GONE = (TIMED_OUT, EXCUSED)  # no longer counted in its stage

FINAL, RESOLVED, UNRESOLVED, FAILED = "final", "resolved", "unresolved", "failed"

NO_ANSWER = "no node answered and no replacement was available"
ALL_LATE = "every member of the stage missed its deadline: nobody is slashed"
NO_REFEREE = "no eligible referee"
NO_REFEREE_ANSWER = "no referee answered"
NO_REFEREE_REVEAL = "no referee revealed a valid commitment"
NO_MAJORITY = "referees reached no majority"
BENIGN_ANSWER = "referees reached no majority; the answer is the first claim they accepted as benign"
DERIVED = frozenset({"", NO_ANSWER, ALL_LATE, NO_REFEREE, NO_REFEREE_ANSWER, NO_REFEREE_REVEAL, NO_MAJORITY,
                     BENIGN_ANSWER})


class EvidenceInvalid(MessageError):
    """The evidence is not one a round could have decided on."""


@dataclass(frozen=True)
class MemberFact:
    node_id: str
    role: str  # quorum | referee
    state: str
    commitment: bytes | None = None
    replacement: bool = False  # drawn to replace a member that timed out
    committed: bool = False  # its result (commit hash) is in
    # tolerant rounds: the referees whose tolerant check (one prefill, the model's calibrated
    # tolerance) accepted this quorum member's claim as one the model could have made
    accepted_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evidence:
    members: tuple[MemberFact, ...]  # draw order
    want: int  # quorum members the request needs (cross-validation: 1, or 1 + N when checked)
    branch: str = ""  # cross-validation: checked | unchecked
    aborted: str = ""  # the round could not go on (selector failure, a refused sealed prompt)
    tolerant: bool = False  # members span a tolerance group: disputes weigh the referees' tolerant checks


@dataclass(frozen=True)
class Outcome:
    status: str  # final | resolved | unresolved | failed
    commitment: bytes | None  # the accepted output commitment
    output_node: str | None  # a member whose output is the answer
    paid: tuple[str, ...]  # quorum members paid for correct work
    slashes: tuple[tuple[str, str], ...]  # (node id, reason)
    beneficiaries: tuple[str, ...]  # who shares slashed collateral
    referees: tuple[str, ...]  # referees agreeing with the verdict
    disputed: bool
    degraded: bool
    detail: str = ""
    branch: str = ""
    excused: tuple[str, ...] = field(default=())  # late with their whole stage: not slashed

    def record(self) -> dict:
        """The wire form receipts carry (lists, not tuples)."""
        d = asdict(self)
        for k in ("paid", "beneficiaries", "referees", "excused"):
            d[k] = list(d[k])
        d["slashes"] = [list(s) for s in self.slashes]
        return d


RECORD_FIELDS = tuple(Outcome.__dataclass_fields__)


LATE_REASONS = ("timeout", "withheld")


def late_reason(m: MemberFact) -> tuple[str, str]:
    """A late member's slash: "withheld" once it had committed, else "timeout"."""
    return (m.node_id, "withheld" if m.committed else "timeout")


def quorum_agrees(members: list[MemberFact]) -> bool:
    """Every active quorum member revealed, and all to one commitment."""
    return bool(members) and all(m.state == REVEALED for m in members) \
        and len({m.commitment for m in members}) == 1


def _check(ev: Evidence) -> None:
    seen = set()
    for m in ev.members:
        if m.node_id in seen:
            raise EvidenceInvalid(f"{m.node_id} appears twice")
        seen.add(m.node_id)
        if m.role not in (QUORUM, REFEREE) or m.state not in STATES:
            raise EvidenceInvalid(f"{m.node_id}: unknown role {m.role!r} or state {m.state!r}")
        if (m.state == REVEALED) != isinstance(m.commitment, bytes):
            raise EvidenceInvalid(f"{m.node_id}: a commitment comes with a valid reveal, and only then")
        if m.accepted_by and (not ev.tolerant or m.role != QUORUM or m.state != REVEALED):
            raise EvidenceInvalid(f"{m.node_id}: only a revealed quorum member of a tolerant round is checked")
    referees = {m.node_id for m in ev.members if m.role == REFEREE and m.state == REVEALED}
    for m in ev.members:
        if not set(m.accepted_by) <= referees or len(set(m.accepted_by)) != len(m.accepted_by):
            raise EvidenceInvalid(f"{m.node_id}: accepted by someone who is not a revealed referee of the round")
    if ev.want < 1:
        raise EvidenceInvalid("a round needs at least one quorum member")


def decide(ev: Evidence) -> Outcome:
    """The outcome the evidence forces. Raises EvidenceInvalid if no round could end so."""
    _check(ev)
    quorum = [m for m in ev.members if m.role == QUORUM]
    refs = [m for m in ev.members if m.role == REFEREE]
    timeouts = [late_reason(m) for m in ev.members if m.state == TIMED_OUT]
    excused = tuple(sorted(m.node_id for m in ev.members if m.state == EXCUSED))
    aq = [m for m in quorum if m.state not in GONE]
    ar = [m for m in refs if m.state not in GONE]
    if ev.aborted:
        if ev.aborted in DERIVED:
            raise EvidenceInvalid("an abort names its own reason")
        if excused:
            raise EvidenceInvalid("a round whose stage was late together ended there: it was not aborted")
        try:
            would = decide(Evidence(ev.members, ev.want, ev.branch)).status
        except EvidenceInvalid:
            would = ""  # members still owed something: the round could only have gone on, or aborted
        if would:  # a failed draw is decided as "nobody could be drawn", not aborted
            raise EvidenceInvalid(f"an abort cannot undo a round the evidence decides ({would})")
        return _unresolved(timeouts, ev.aborted, ev.branch, excused)
    pending = [m.node_id for m in ev.members if m.state in (RUNNING, COMMITTED)]
    if pending:
        raise EvidenceInvalid(f"members still owe a result or reveal ({', '.join(pending)}) in a decided round")
    if excused:
        stage = refs if refs else quorum
        if any(m.state not in GONE for m in stage) or any(m.state == EXCUSED for m in (quorum if refs else ())):
            raise EvidenceInvalid("excused members must be the whole last stage, all late together")
        return _unresolved(timeouts, ALL_LATE, ev.branch, excused)
    if not refs:
        if not aq:
            return Outcome(FAILED, None, None, (), _sorted(timeouts), (), (), False, True, NO_ANSWER, ev.branch)
        if quorum_agrees(aq):
            ids = tuple(sorted(m.node_id for m in aq))
            return Outcome(FINAL, aq[0].commitment, ids[0], ids, _sorted(timeouts), ids, (), False,
                           len(aq) < ev.want, "", ev.branch)
        return _unresolved(timeouts, NO_REFEREE, ev.branch)
    if quorum_agrees(aq):
        raise EvidenceInvalid("referees were drawn for a quorum that agreed")
    if not ar:
        return _unresolved(timeouts, NO_REFEREE_ANSWER, ev.branch)
    votes = Counter(m.commitment for m in ar if m.state == REVEALED)
    if not votes:
        return _unresolved(timeouts, NO_REFEREE_REVEAL, ev.branch)
    ranked = votes.most_common()
    truth, count = ranked[0]
    if ev.tolerant:
        return _tolerant(ev, aq, ar, refs, truth if count * 2 > len(ar) else None, timeouts)
    if count * 2 <= len(ar):
        return _unresolved(timeouts, NO_MAJORITY, ev.branch)
    honest = tuple(sorted(m.node_id for m in aq if m.state == REVEALED and m.commitment == truth))
    agreeing = tuple(sorted(m.node_id for m in ar if m.state == REVEALED and m.commitment == truth))
    slashes = list(timeouts)
    for m in aq + ar:
        if m.state == INVALID:
            slashes.append((m.node_id, "invalid-reveal"))
        elif m.commitment != truth:
            slashes.append((m.node_id, "cheat"))
    referee_want = sum(1 for m in refs if not m.replacement)
    degraded = len(aq) < ev.want or len(ar) < referee_want
    return Outcome(RESOLVED, truth, agreeing[0], honest, _sorted(slashes), honest or agreeing, agreeing, True,
                   degraded, "", ev.branch)


def _tolerant(ev: Evidence, aq: list, ar: list, refs: list, majority: bytes | None, timeouts: list) -> Outcome:
    """A dispute in a tolerance group: a quorum member whose claim a majority of the
    answering referees accepted by the tolerant check is benign (paid, never slashed),
    whatever its commitment, and so is any member that committed the same tokens; the answer is the referees' majority commitment, or else
    the first benign claim in draw order. Only a claim that matches neither and that
    no majority accepted is a cheat. Referees are not slashed for a benign divergence
    among themselves (nobody checked their outputs); they are credited when they
    match the answer."""
    benign = {m.node_id for m in aq if m.state == REVEALED and len(m.accepted_by) * 2 > len(ar)}
    # the same tokens as a benign claim are benign too (a commitment binds the tokens): a
    # cross-validation verifier that accepted the executor's output by prefill commits it
    # without a fingerprint of its own, and is not slashed for the referees' other answer
    same = {m.commitment for m in aq if m.node_id in benign}
    benign |= {m.node_id for m in aq if m.state == REVEALED and m.commitment in same}
    truth = majority
    if truth is None:
        first = next((m for m in aq if m.node_id in benign), None)
        if first is None:
            return _unresolved(timeouts, NO_MAJORITY, ev.branch)
        truth = first.commitment
    paid = tuple(sorted(m.node_id for m in aq if m.state == REVEALED and (m.commitment == truth or m.node_id in benign)))
    agreeing = tuple(sorted(m.node_id for m in ar if m.state == REVEALED and m.commitment == truth))
    slashes = list(timeouts)
    for m in aq:
        if m.state == INVALID:
            slashes.append((m.node_id, "invalid-reveal"))
        elif m.commitment != truth and m.node_id not in benign:
            slashes.append((m.node_id, "cheat"))
    for m in ar:
        if m.state == INVALID:
            slashes.append((m.node_id, "invalid-reveal"))
    output = next((m.node_id for m in aq if m.state == REVEALED and m.commitment == truth), None) \
        or (agreeing[0] if agreeing else None)
    referee_want = sum(1 for m in refs if not m.replacement)
    degraded = len(aq) < ev.want or len(ar) < referee_want
    return Outcome(RESOLVED, truth, output, paid, _sorted(slashes), paid or agreeing, agreeing, True, degraded,
                   "" if majority is not None else BENIGN_ANSWER, ev.branch)


def _sorted(slashes: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(slashes))


def _unresolved(timeouts, why: str, branch: str, excused: tuple[str, ...] = ()) -> Outcome:
    # Nobody is slashed for disagreeing when the truth is unknown; timeouts stand.
    return Outcome(UNRESOLVED, None, None, (), _sorted(timeouts), (), (), True, True, why, branch, excused)
