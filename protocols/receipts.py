"""Receipts: the aggregator's signed, self-contained account of one request.

A receipt carries the client's signed request (no prompt, only its hash), every
draw the selector made (VRF proof, seed, eligible set, selection) and every
member's signed result and reveal. `verify_receipt` re-checks all of it offline:
signatures; that each draw's seed is the selector's VRF output for this request
and label, and the selection follows from it; that every reveal opens its
commit; and it recomputes the whole decision record with protocols.decision —
the function the round itself decided with — and rejects the receipt unless
every field matches (status, commitment, output node, paid, slashes and their
reasons, beneficiaries, referees, excused, disputed, degraded, detail, branch,
coin, unblinded, tolerance).

Tolerance groups: a receipt whose draws name a tolerance group carries the
model's calibrated tolerance (the group id hashes it with the model hash, so it
must be the one the draws were made under). Each referee's signed result holds
its verdicts on the disputed quorum claims (the commitment and fingerprint it
checked, the measured margins); the verifier re-judges every verdict under that
tolerance (protocols.fingerprint.accepted) and feeds what they accept into the
decision. It re-checks the verdict logic, not the prefills themselves. Duplicate or unknown results, reveals and draws are rejected.
Given the output tokens, it also checks they are the ones the accepted
commitment binds.

What a receipt cannot prove offline: that the eligible set was the registry's
true state at draw time; that a member marked timed-out (or excused) really was
late, or that an aborted round really could not go on (those are the
aggregator's claims, checked only for consistency: a member that revealed was
never late, an abort cannot undo a decided round); and, unless the selector's
VRF key is pinned (`trusted_selectors`), that the draws came from the network's
selector rather than a key the signer made up. A client that submits many
requests can still show only the receipts it likes: each draw is random, not
each receipt a third party is shown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from . import commitments, crossval, decision, determinism, fingerprint, messages, modes, obfuscation, selection, vrf
from .canonical import pack, sha256
from .crypto import verify as verify_sig
from .errors import BadSignature
from .crypto import SigningKey
from .errors import InvalidParams, MessageError, ReceiptInvalid, VerinferError

QUORUM, REFEREE = "quorum", "referee"
COIN_LABEL = "coin"  # the VRF label of the cross-validation coin
COIN_FIELDS = frozenset({"commit", "seed", "proof", "p", "node_id", "commit_hash", "checked"})
DECISION_FIELDS = frozenset(decision.RECORD_FIELDS) | {"mode", "coin", "unblinded", "tolerance"}


def build(request_id: str, request_raw: bytes, selection_record: dict, results: Sequence[bytes],
          reveals: Sequence[bytes], decision: dict, ledger: dict, issued_at: float, key: SigningKey) -> bytes:
    body = {
        "request_id": request_id,
        "request": request_raw,
        "selection": {
            "obfuscated": selection_record.get("obfuscated"),
            "coin_commit": selection_record.get("coin_commit"),
            "vrf_key": selection_record["vrf_key"],
            "draws": [{k: d.get(k) for k in ("label", "det_class", "seed", "proof", "asked", "eligible", "exclude",
                                             "selected",
                                             "keys", "require_attested", "attestations")}
                      for d in selection_record["draws"]],
        },
        "results": list(results),
        "reveals": list(reveals),
        "decision": decision,
        "ledger": ledger,
        "issued_at": float(issued_at),
    }
    return messages.seal("receipt", body, key).raw


@dataclass(frozen=True)
class ReceiptSummary:
    request_id: str
    status: str
    commitment: bytes | None
    n: int
    members: dict[str, str]  # node id -> role
    paid: tuple[str, ...]
    slashed: tuple[tuple[str, str], ...]
    aggregator: bytes
    ledger_entries: tuple[int, ...]
    output_checked: bool
    mode: str = "sampling"
    branch: str = ""  # cross-validation: checked | unchecked
    attested: dict | None = None  # node id -> "simulated" | "hardware" for attested members
    # tolerance groups: the tolerance disputes were judged by, and per revealed quorum member the
    # referees whose verdicts accepted its claim (a dispute's benign members are the majority-accepted)
    tolerance: dict | None = None
    accepted_by: dict | None = None


def _fail(msg: str) -> None:
    raise ReceiptInvalid(msg)


def verify_receipt(raw: bytes, trusted_aggregators: Sequence[bytes] | None = None,
                   output_token_ids: Sequence[int] | None = None,
                   trusted_roots: Sequence[bytes] | None = None, attestation_policy: Any = None,
                   trusted_selectors: Sequence[bytes] | None = None) -> ReceiptSummary:
    """Check a receipt offline; raise ReceiptInvalid with the reason, else summarize.

    trusted_roots: attestation root keys. When given, every attested member's
    evidence must verify against them under `attestation_policy` (default: any
    code, simulated allowed) at the receipt's time, with the request's model hash,
    and members are labelled by what the evidence proves ("simulated" | "hardware").
    Without roots nothing about attestation is verified: members are labelled
    "unverified". trusted_selectors pins the selector key of obfuscated receipts.

    Fails closed: a signed body of the wrong shape (a missing key, a field of another
    type, a list of the wrong length) is ReceiptInvalid too, whoever signed it.
    """
    try:
        return _verify_receipt(raw, trusted_aggregators, output_token_ids, trusted_roots, attestation_policy,
                               trusted_selectors)
    except ReceiptInvalid:
        raise
    except (VerinferError, KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise ReceiptInvalid(f"receipt is malformed: {type(exc).__name__}: {exc}") from None


def _verify_receipt(raw: bytes, trusted_aggregators: Sequence[bytes] | None,
                    output_token_ids: Sequence[int] | None, trusted_roots: Sequence[bytes] | None,
                    attestation_policy: Any, trusted_selectors: Sequence[bytes] | None) -> ReceiptSummary:
    try:
        env = messages.open_envelope(raw, "receipt")
    except MessageError as exc:
        raise ReceiptInvalid(f"receipt envelope: {exc}") from None
    if trusted_aggregators is not None and env.sender not in set(trusted_aggregators):
        _fail("receipt is not signed by a trusted aggregator key")
    body = env.body
    rid = body["request_id"]
    try:
        req = messages.open_envelope(body["request"], "request")
    except MessageError as exc:
        raise ReceiptInvalid(f"request: {exc}") from None
    rb = req.body
    if rb["request_id"] != rid:
        _fail("request id in receipt and request differ")
    if messages.client_id_of(req.sender) != rb["client_id"]:
        _fail("request is not signed by the client it names")

    # --- draws (or, obfuscated, the selector's signed pseudonym set)
    sel = body["selection"]
    mode = rb["mode"]
    try:
        spec = modes.spec(mode)
    except InvalidParams as exc:
        raise ReceiptInvalid(str(exc)) from None
    require_tee = spec.attested or bool(rb.get("require_tee"))
    attested: dict[str, str] = {}  # node id -> "simulated" | "hardware"
    keys: dict[str, bytes] = {}
    roles: dict[str, str] = {}
    replacement: dict[str, bool] = {}
    obf = sel.get("obfuscated")
    if spec.pseudonymous != bool(obf):
        _fail("obfuscated requests need the selector's pseudonym record, and only they")
    check = _EvidenceCheck(trusted_roots, attestation_policy, rb["model_hash"], float(body["issued_at"]))
    if obf:
        if sel.get("draws"):
            _fail("an obfuscated receipt must not carry draws")
        if trusted_selectors is not None and obf.get("selector") not in set(trusted_selectors):
            _fail("pseudonym record is not signed by a trusted selector")
        keys, roles, replacement = _pseudonyms(obf, rid)
        for pid, m in obf["members"].items():  # the selector vouches for each member's attestation
            kind = m.get("attested", "")
            if kind not in ("", "simulated", "hardware"):
                _fail(f"pseudonym {pid}: unknown attestation kind {kind!r}")
            if kind:
                attested[pid] = kind if trusted_selectors is not None else "unverified"
            elif require_tee:
                _fail(f"pseudonym {pid} was drawn for a TEE request without attestation")
    else:
        vrf_key = sel.get("vrf_key")
        if trusted_selectors is not None and vrf_key not in set(trusted_selectors):
            _fail("draws are not made with a trusted selector's VRF key")
    labels: set[str] = set()
    replacing: dict[str, int] = {}  # role -> replacements asked for (each follows a timeout)
    for d in sel.get("draws", []):
        label = d["label"]
        if label in labels:
            _fail(f"draw {label!r} appears twice")
        labels.add(label)
        try:
            selection.verify_seed(sel.get("vrf_key"), rid, label, d["seed"], d.get("proof"))
        except vrf.VrfInvalid as exc:
            _fail(f"draw {label!r}: {exc}")
        if set(d["exclude"]) & set(d["eligible"]):
            _fail(f"draw {label!r}: an excluded node was eligible")
        if d["selected"] and not selection.verify_draw(d["eligible"], len(d["selected"]), d["seed"], d["selected"]):
            _fail(f"draw {label!r}: selection does not follow from the seed")
        if not isinstance(d.get("asked"), int) or d["asked"] < len(d["selected"]) \
                or (len(d["selected"]) < d["asked"] and len(d["selected"]) < len(d["eligible"])):
            _fail(f"draw {label!r}: selected neither what was asked nor every eligible node")
        if label.startswith("replace:"):
            role = label.split(":")[1]
            replacing[role] = replacing.get(role, 0) + d["asked"]
        else:
            role = REFEREE if label.startswith("referee") else QUORUM  # "quorum" and "verify" draws
        tee_draw = bool(d.get("require_attested")) or require_tee
        for nid, key in zip(d["selected"], d["keys"], strict=True):
            if nid in keys:
                _fail(f"{nid} drawn twice for one request")
            if tee_draw:
                attested[nid] = _check_attestation((d.get("attestations") or {}).get(nid), key, nid, check)
            keys[nid], roles[nid], replacement[nid] = key, role, label.startswith("replace:")

    # --- the tolerance disputes were judged by (tolerance groups only)
    dec = body["decision"]
    if not isinstance(dec, dict) or set(dec) != DECISION_FIELDS:
        _fail("decision record has missing or unknown fields")
    tol = None
    if dec["tolerance"] is not None:
        tol = fingerprint.Tolerance.of(dec["tolerance"])
        group = determinism.group_id(rb["model_hash"], tol.to_wire())
        if obf or not sel.get("draws") or any(d.get("det_class") != group for d in sel["draws"]):
            _fail("a tolerance is carried only by a round drawn from that tolerance group of the model")
    elif any(determinism.is_group(d.get("det_class")) for d in sel.get("draws", [])):
        _fail("a round drawn from a tolerance group must carry the tolerance its disputes were judged by")

    # --- evidence
    commits: dict[str, bytes] = {}
    verdicts: dict[str, list] = {}
    for raw_result in body["results"]:
        r = _member_msg(raw_result, "result", rid, keys, roles)
        if r.body["node_id"] in commits:
            _fail(f"two results from {r.body['node_id']}")
        commits[r.body["node_id"]] = r.body["commit_hash"]
        if r.body["verdicts"]:
            if tol is None or roles[r.body["node_id"]] != REFEREE:
                _fail(f"{r.body['node_id']}: only a referee of a tolerance group judges quorum claims")
            verdicts[r.body["node_id"]] = fingerprint.check_verdicts(r.body["verdicts"])
    fp_hashes: dict[str, bytes] = {}
    revealed: dict[str, bytes | None] = {}  # None = reveal does not open the commit
    for raw_reveal in body["reveals"]:
        r = _member_msg(raw_reveal, "reveal", rid, keys, roles)
        nid = r.body["node_id"]
        if nid not in commits:
            _fail(f"reveal from {nid} without a result")
        if nid in revealed:
            _fail(f"two reveals from {nid}")
        ok = commitments.opens(commits[nid], keys[nid], r.body["commitment"], r.body["salt"], r.body["fingerprint"])
        revealed[nid] = r.body["commitment"] if ok else None
        fp_hashes[nid] = fingerprint.fingerprint_hash(r.body["fingerprint"])
    accepted_by: dict[str, tuple[str, ...]] = {}
    if tol is not None:
        claims = {nid: (c, fp_hashes[nid]) for nid, c in revealed.items() if c is not None and roles[nid] == QUORUM}
        judges = {ref: fingerprint.accepted(vs, claims, tol) for ref, vs in verdicts.items()
                  if revealed.get(ref) is not None}
        for nid in claims:
            accepted_by[nid] = tuple(sorted(ref for ref, ok in judges.items() if nid in ok))

    # --- the decision: recomputed from the evidence with the round's own rule
    if dec["mode"] != mode:
        _fail("decision names another mode than the request")
    branch = ""
    cv = spec.round_kind == modes.CROSS_VALIDATION
    want = spec.members(rb["n"])
    coin = dec["coin"] if cv else None
    if cv and coin is None:
        want = 1  # the round ended before the executor committed: no coin, no branch
    elif cv:
        if not isinstance(coin, dict) or set(coin) != COIN_FIELDS:
            _fail("cross-validation receipt with a malformed coin")
        if commits.get(coin["node_id"]) != coin["commit_hash"] or roles.get(coin["node_id"]) != QUORUM:
            _fail("the coin was not flipped on the executor's commitment")
        try:
            beta = vrf.verify(sel.get("vrf_key"), vrf.draw_alpha(rid, COIN_LABEL), coin.get("proof"))
        except vrf.VrfInvalid as exc:
            raise ReceiptInvalid(f"coin: {exc}") from None
        if beta != coin["seed"] or sel.get("coin_commit") != coin["commit"] or not crossval.verify_coin(
                coin["commit"], coin["seed"], rid, coin["commit_hash"], float(coin["p"]), coin["checked"]):
            _fail("coin does not open its commitment or does not give the claimed branch")
        if rb["p"] is not None and float(coin["p"]) != float(rb["p"]):
            _fail("coin used another p than the request asked for")
        branch = "checked" if coin["checked"] else "unchecked"
        want = 1 + rb["n"] if coin["checked"] else 1
    elif dec["coin"] is not None:
        _fail("only cross-validation receipts carry a coin")
    if not isinstance(dec["slashes"], list) or not all(isinstance(x, (list, tuple)) and len(x) == 2
                                                          for x in dec["slashes"]):
        _fail("slashes are malformed")
    claimed_late = {s[0] for s in dec["slashes"] if s[1] in decision.LATE_REASONS}
    excused = set(dec["excused"]) if isinstance(dec["excused"], list) else None
    if excused is None or (claimed_late | excused) - set(keys):
        _fail("a member named late was never drawn")
    if not obf:  # every timeout makes the round ask for a replacement, and the draws show it
        for role in (QUORUM, REFEREE):
            late = sum(1 for nid in claimed_late if roles[nid] == role)
            if late > replacing.get(role, 0):
                _fail(f"{late} {role} member(s) named late, but only {replacing.get(role, 0)} replacement(s) drawn")
    facts = []
    for nid in keys:
        if nid in revealed:
            state = decision.REVEALED if revealed[nid] is not None else decision.INVALID
        elif nid in excused:
            state = decision.EXCUSED
        elif nid in claimed_late:
            state = decision.TIMED_OUT
        else:
            state = decision.COMMITTED if nid in commits else decision.RUNNING
        facts.append(decision.MemberFact(nid, roles[nid], state, revealed.get(nid), replacement[nid], nid in commits,
                                         accepted_by.get(nid, ())))
    aborted = dec["detail"] if dec["status"] == decision.UNRESOLVED and dec["detail"] not in decision.DERIVED else ""
    try:
        outcome = decision.decide(decision.Evidence(tuple(facts), want, branch, aborted, tol is not None))
    except decision.EvidenceInvalid as exc:
        raise ReceiptInvalid(f"no round decides on this evidence: {exc}") from None
    for k, v in outcome.record().items():
        if dec[k] != v:
            _fail(f"decision field {k!r} is not what the evidence forces")
    if cv and dec["coin"] is None and outcome.status in (decision.FINAL, decision.RESOLVED):
        _fail("a cross-validation answer is accepted only after its coin")
    status, truth = outcome.status, outcome.commitment
    paid, slashed = outcome.paid, outcome.slashes
    if obf:
        unblinded = dec["unblinded"]
        if not isinstance(unblinded, dict) or set(unblinded) != {nid for nid, _ in slashed}:
            _fail("exactly the slashed pseudonyms, and only they, must be unblinded")
        for pid, opened in unblinded.items():
            if not isinstance(opened, (list, tuple)) or len(opened) not in (2, 4):
                _fail(f"unblinding of {pid} is malformed")
            node_id, salt, digest, evidence = (list(opened) + ["", b""])[:4]
            try:
                obfuscation.check_unblinding(obf["mapping"], keys[pid], node_id, salt, digest)
            except obfuscation.UnblindingRejected as exc:
                raise ReceiptInvalid(str(exc)) from None
            if digest:  # a slashed attested member: its evidence is now public, and must verify
                check(evidence, digest, node_id)
    elif dec["unblinded"] != {}:
        _fail("only obfuscated receipts unblind anyone")

    checked = False
    if output_token_ids is not None:
        mine = commitments.output_commitment(rid, rb["model_hash"], rb["prompt_hash"], rb["params"], output_token_ids)
        if mine != truth:
            _fail("output tokens do not match the accepted commitment")
        checked = True
    return ReceiptSummary(rid, status, truth, rb["n"], roles, paid, slashed, env.sender,
                          tuple(body["ledger"].get("entries", ())), checked, mode, branch, attested,
                          tol.to_wire() if tol is not None else None, accepted_by if tol is not None else None)


def _check_attestation(entry: Any, key: bytes, nid: str, check: "_EvidenceCheck") -> str:
    """An attested member: its evidence hashes to the digest and binds its signing key."""
    if not isinstance(entry, dict) or not isinstance(entry.get("evidence"), bytes):
        _fail(f"{nid} was drawn for a TEE request without attestation evidence")
    report, kind = check(entry["evidence"], entry.get("digest"), nid)
    if report["signing_pub"] != key:
        _fail(f"{nid}: attestation evidence does not bind the member's key")
    return kind


@dataclass(frozen=True)
class _EvidenceCheck:
    roots: Sequence[bytes] | None
    policy: Any
    model_hash: str
    at: float

    def __call__(self, ev: Any, digest: Any, nid: str) -> tuple[dict, str]:
        """Evidence hashes to its digest and parses; given roots, it verifies under the
        policy at receipt time for this model. Returns (report, what it proves)."""
        import dataclasses

        from . import attestation

        if not isinstance(ev, bytes) or sha256(ev).hex() != digest:
            _fail(f"{nid}: attestation digest does not match its evidence")
        try:
            report = attestation.evidence_report(ev)
        except Exception:
            _fail(f"{nid}: attestation evidence is malformed")
        if self.roots is None:
            return report, "unverified"
        policy = dataclasses.replace(self.policy or attestation.standing_policy(), model_hash=self.model_hash)
        binding = attestation.ExpectedBinding(report["signing_pub"], report["kem_pub"], report["nonce"])
        res = attestation.verify(ev, binding, policy, list(self.roots), self.at)
        if not res.ok:
            _fail(f"{nid}: attestation does not verify: {res.reason}")
        return report, "simulated" if res.simulated else "hardware"


def _pseudonyms(obf: dict, rid: str) -> tuple[dict[str, bytes], dict[str, str], dict[str, bool]]:
    """Members of an obfuscated round, from the selector's signed record."""
    body = {"members": obf["members"], "mapping": obf["mapping"]}
    try:
        verify_sig(obf["selector"], obfuscation.MAPPING_DOMAIN + pack([rid, body]), obf["sig"])
    except (BadSignature, MessageError):
        _fail("pseudonym record is not signed by the selector it names")
    keys, roles, replacement = {}, {}, {}
    for pid, m in obf["members"].items():
        if obfuscation.pseudonym_id(m["key"]) != pid or pid not in obf["mapping"]:
            _fail(f"pseudonym {pid} is not its key's id or has no mapping entry")
        if m["role"] not in (QUORUM, REFEREE):
            _fail(f"pseudonym {pid} has an unknown role")
        keys[pid], roles[pid], replacement[pid] = m["key"], m["role"], bool(m.get("replacement"))
    return keys, roles, replacement


def _member_msg(raw: Any, type_: str, rid: str, keys: dict[str, bytes], roles: dict[str, str]):
    try:
        m = messages.open_envelope(raw, type_)
    except MessageError as exc:
        raise ReceiptInvalid(f"{type_}: {exc}") from None
    nid = m.body["node_id"]
    if m.body["request_id"] != rid:
        _fail(f"{type_} from {nid} is for another request")
    if nid not in keys or keys[nid] != m.sender:
        _fail(f"{type_} from {nid} is not signed by a drawn member's key")
    if m.body["role"] != roles[nid]:
        _fail(f"{type_} from {nid} claims role {m.body['role']!r}")
    return m
