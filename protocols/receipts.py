"""Receipts: the aggregator's signed, self-contained account of one request.

A receipt carries the client's signed request (no prompt, only its hash), every
draw the selector made (beacon, seed, eligible set, selection) and every
member's signed result and reveal. `verify_receipt` re-checks all of it offline:
signatures, that each draw is the one the beacon dictates, that every reveal
opens its commit, and that the decision (final / resolved, who is paid, who is
slashed) is the one the evidence forces. Given the output tokens, it also
checks they are the ones the accepted commitment binds.

What a receipt cannot prove offline: that the eligible set was the registry's
true state at draw time, and that a member marked timed-out really was late.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from . import commitments, crossval, messages, obfuscation, selection
from .canonical import pack, sha256
from .crypto import verify as verify_sig
from .errors import BadSignature
from .crypto import SigningKey
from .errors import MessageError, ReceiptInvalid

QUORUM, REFEREE = "quorum", "referee"


def build(request_id: str, request_raw: bytes, selection_record: dict, results: Sequence[bytes],
          reveals: Sequence[bytes], decision: dict, ledger: dict, issued_at: float, key: SigningKey) -> bytes:
    body = {
        "request_id": request_id,
        "request": request_raw,
        "selection": {
            "obfuscated": selection_record.get("obfuscated"),
            "coin_commit": selection_record.get("coin_commit"),
            "beacon": selection_record["beacon"],
            "draws": [{k: d.get(k) for k in ("label", "det_class", "seed", "eligible", "exclude", "selected", "keys",
                                             "require_attested", "attestations")}
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
    """
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
    require_tee = rb["mode"] == "tee" or bool(rb.get("require_tee"))
    attested: dict[str, str] = {}  # node id -> "simulated" | "hardware"
    keys: dict[str, bytes] = {}
    roles: dict[str, str] = {}
    beacon = sel.get("beacon")
    obf = sel.get("obfuscated")
    if (rb["mode"] == "obfuscated") != bool(obf):
        _fail("obfuscated requests need the selector's pseudonym record, and only they")
    check = _EvidenceCheck(trusted_roots, attestation_policy, rb["model_hash"], float(body["issued_at"]))
    if obf:
        if trusted_selectors is not None and obf.get("selector") not in set(trusted_selectors):
            _fail("pseudonym record is not signed by a trusted selector")
        keys, roles = _pseudonyms(obf, rid)
        for pid, m in obf["members"].items():  # the selector vouches for each member's attestation
            kind = m.get("attested", "")
            if kind not in ("", "simulated", "hardware"):
                _fail(f"pseudonym {pid}: unknown attestation kind {kind!r}")
            if kind:
                attested[pid] = kind if trusted_selectors is not None else "unverified"
            elif require_tee:
                _fail(f"pseudonym {pid} was drawn for a TEE request without attestation")
    for d in sel.get("draws", []):
        if d["seed"] != selection.draw_seed(beacon, rid, d["label"]):
            _fail(f"draw {d['label']!r}: seed is not H(beacon, request, label)")
        if set(d["exclude"]) & set(d["eligible"]):
            _fail(f"draw {d['label']!r}: an excluded node was eligible")
        if d["selected"] and not selection.verify_draw(d["eligible"], len(d["selected"]), d["seed"], d["selected"]):
            _fail(f"draw {d['label']!r}: selection does not follow from the beacon")
        role = REFEREE if d["label"].startswith("referee") else QUORUM  # "quorum" and "verify" draws
        tee_draw = bool(d.get("require_attested")) or require_tee
        for nid, key in zip(d["selected"], d["keys"]):
            if tee_draw:
                attested[nid] = _check_attestation((d.get("attestations") or {}).get(nid), key, nid, check)
        if d["label"].startswith("replace"):
            role = d["label"].split(":")[1]
        for nid, key in zip(d["selected"], d["keys"], strict=True):
            if nid in keys:
                _fail(f"{nid} drawn twice for one request")
            keys[nid], roles[nid] = key, role

    # --- evidence
    commits: dict[str, bytes] = {}
    for raw_result in body["results"]:
        r = _member_msg(raw_result, "result", rid, keys, roles)
        commits[r.body["node_id"]] = r.body["commit_hash"]
    revealed: dict[str, bytes | None] = {}  # None = reveal does not open the commit
    for raw_reveal in body["reveals"]:
        r = _member_msg(raw_reveal, "reveal", rid, keys, roles)
        nid = r.body["node_id"]
        if nid not in commits:
            _fail(f"reveal from {nid} without a result")
        ok = commitments.opens(commits[nid], keys[nid], r.body["commitment"], r.body["salt"])
        revealed[nid] = r.body["commitment"] if ok else None

    # --- decision
    dec = body["decision"]
    status, truth = dec["status"], dec.get("commitment")
    paid, slashed = tuple(dec.get("paid", ())), tuple(tuple(s) for s in dec.get("slashes", ()))
    quorum = [nid for nid in revealed if roles[nid] == QUORUM]
    refs = [nid for nid in revealed if roles[nid] == REFEREE]
    want_n = rb["n"]
    if rb["mode"] == "cross-validation":
        coin = dec.get("coin")
        if not isinstance(coin, dict):
            _fail("cross-validation receipt without its coin")
        if commits.get(coin["node_id"]) != coin["commit_hash"] or roles.get(coin["node_id"]) != QUORUM:
            _fail("the coin was not flipped on the executor's commitment")
        if sel.get("coin_commit") != coin["commit"] or not crossval.verify_coin(
                coin["commit"], coin["seed"], rid, coin["commit_hash"], float(coin["p"]), coin["checked"]):
            _fail("coin does not open its commitment or does not give the claimed branch")
        if rb["p"] is not None and float(coin["p"]) != float(rb["p"]):
            _fail("coin used another p than the request asked for")
        if dec.get("branch") != ("checked" if coin["checked"] else "unchecked"):
            _fail("branch does not match the coin")
        want_n = 1 + rb["n"] if coin["checked"] else 1
    if status == "final":
        if not quorum or any(revealed[q] != truth for q in quorum):
            _fail("final decision but quorum reveals do not all equal the commitment")
        if sorted(paid) != sorted(quorum):
            _fail("final decision pays someone other than the agreeing quorum")
        if len(quorum) < want_n and not dec.get("degraded"):
            _fail(f"final with {len(quorum)} agreeing nodes, the request needs {want_n}")
    elif status == "resolved":
        votes = Counter(revealed[r] for r in refs if revealed[r] is not None)
        if not votes:
            _fail("resolved decision without a valid referee reveal")
        top, count = votes.most_common(1)[0]
        if top != truth or count * 2 <= len(refs):
            _fail("resolved commitment is not the referees' majority")
        want_paid = sorted(q for q in quorum if revealed[q] == truth)
        if sorted(paid) != want_paid:
            _fail("resolved decision pays someone other than the honest quorum members")
        slashed_ids = {s[0] for s in slashed if s[1] != "timeout"}
        must = {nid for nid in quorum + refs if revealed[nid] != truth}
        if slashed_ids != must:
            _fail("resolved decision does not slash exactly the members that disagree with the referees")
    elif status in ("unresolved", "failed"):
        if paid:
            _fail(f"{status} decision pays nodes")
    else:
        _fail(f"unknown decision status {status!r}")
    for nid, _reason in slashed:
        if nid not in keys:
            _fail(f"slashed node {nid} was never drawn")
    if obf:
        unblinded = dec.get("unblinded") or {}
        if set(unblinded) != {nid for nid, _ in slashed}:
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

    checked = False
    if output_token_ids is not None:
        mine = commitments.output_commitment(rid, rb["model_hash"], rb["prompt_hash"], rb["params"], output_token_ids)
        if mine != truth:
            _fail("output tokens do not match the accepted commitment")
        checked = True
    return ReceiptSummary(rid, status, truth, rb["n"], roles, paid, slashed, env.sender,
                          tuple(body["ledger"].get("entries", ())), checked, rb["mode"], dec.get("branch", ""),
                          attested)


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


def _pseudonyms(obf: dict, rid: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """Members of an obfuscated round, from the selector's signed record."""
    body = {"members": obf["members"], "mapping": obf["mapping"]}
    try:
        verify_sig(obf["selector"], obfuscation.MAPPING_DOMAIN + pack([rid, body]), obf["sig"])
    except (BadSignature, MessageError):
        _fail("pseudonym record is not signed by the selector it names")
    keys, roles = {}, {}
    for pid, m in obf["members"].items():
        if obfuscation.pseudonym_id(m["key"]) != pid or pid not in obf["mapping"]:
            _fail(f"pseudonym {pid} is not its key's id or has no mapping entry")
        keys[pid], roles[pid] = m["key"], m["role"]
    return keys, roles


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
