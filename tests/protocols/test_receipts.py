"""Receipts prove the whole decision: built from real Round runs (no Ray), every
single-field change of the decision record is rejected — re-signed with the
aggregator's own key or with another — while the untouched receipt re-signed by
another (unpinned) key still verifies."""

from __future__ import annotations

import copy

import pytest

from protocols import decision, messages, receipts
from protocols.crypto import SigningKey
from protocols.errors import ReceiptInvalid
from tests.roundsim import AGGREGATOR_KEY, SELECTOR_KEY, VRF_KEY, Sim, run_until

OTHER_KEY = SigningKey(b"o" * 32)


def _in_quorum(nid):
    return lambda s: nid in s.draws[0]["selected"] or nid in [s.node_of.get(m) for m in s.members
                                                                if s.members[m][3] == "quorum"]


SCENARIOS = {
    "final": lambda: Sim().run(),
    "resolved": lambda: run_until(lambda: Sim(behaviour={"n0": "cheat"}), _in_quorum("n0")),
    "bad-reveal": lambda: run_until(lambda: Sim(behaviour={"n0": "bad-reveal"}), _in_quorum("n0")),
    "timeout-replaced": lambda: run_until(lambda: Sim(behaviour={"n0": "silent"}), _in_quorum("n0")),
    "reveal-missed": lambda: run_until(lambda: Sim(behaviour={"n0": "no-reveal"}), _in_quorum("n0")),
    "degraded": lambda: Sim(pool=["n0", "n1", "n2"], behaviour={"n0": "silent"}).run(),
    "all-late-excused": lambda: Sim(behaviour={f"n{i}": "silent" for i in range(8)}).run(),
    "no-referee": lambda: Sim(pool=["n0", "n1", "n2"], behaviour={"n0": "cheat"}).run(),
    "aborted": lambda: Sim(behaviour={f"n{i}": "silent" for i in range(8)}).run(abort="n1 refused the prompt"),
    "cv-unchecked": lambda: run_until(lambda: Sim(mode="cross-validation", n=2, p=0.5), coin_checked=False),
    "cv-checked": lambda: run_until(lambda: Sim(mode="cross-validation", n=2, p=0.5), coin_checked=True),
    "cv-checked-cheater": lambda: run_until(lambda: Sim(mode="cross-validation", n=2, p=0.5,
                                                        behaviour={"n0": "cheat"}),
                                            lambda s: s.draws[0]["selected"] == ["n0"], tries=2000,
                                            coin_checked=True),
    "cv-executor-excused": lambda: Sim(mode="cross-validation", n=2, p=0.5,
                                       behaviour={f"n{i}": "silent" for i in range(8)}).run(),
    "obfuscated-final": lambda: Sim(mode="obfuscated", n=2).run(),
    "obfuscated-slashed": lambda: run_until(lambda: Sim(mode="obfuscated", n=2, behaviour={"n0": "cheat"}),
                                            _in_quorum("n0")),
}
EXPECT = {"final": "final", "resolved": "resolved", "bad-reveal": "resolved", "timeout-replaced": "final",
          "reveal-missed": "final", "degraded": "final", "all-late-excused": "unresolved",
          "no-referee": "unresolved", "aborted": "unresolved", "cv-unchecked": "final", "cv-checked": "final",
          "cv-checked-cheater": "resolved", "cv-executor-excused": "unresolved", "obfuscated-final": "final", "obfuscated-slashed": "resolved"}


@pytest.fixture(scope="module")
def sims():
    return {name: make() for name, make in SCENARIOS.items()}


def _verify(raw, **kw):
    return receipts.verify_receipt(raw, trusted_selectors=[SELECTOR_KEY.public, VRF_KEY.public], **kw)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_real_round_receipt_verifies_and_says_what_happened(sims, name):
    sim = sims[name]
    s = _verify(sim.receipt(), trusted_aggregators=[AGGREGATOR_KEY.public])
    assert s.status == EXPECT[name] == sim.outcome.status
    assert set(s.paid) == set(sim.outcome.paid) and set(s.slashed) == set(sim.outcome.slashes)
    if name == "degraded":
        assert sim.outcome.degraded and len(s.paid) == 2
    if name == "timeout-replaced":
        assert [x for x in s.slashed if x[1] == "timeout"] and len(s.paid) == 3
    if name == "all-late-excused":
        assert s.slashed == () and len(sim.outcome.excused) == 3
    if name.startswith("cv-"):
        assert s.branch == {"unchecked": "unchecked", "checked": "checked"}.get(name.split("-")[1], "")
    # another unpinned key may re-sign an untouched receipt: that is not forgery of the decision
    body = messages.open_envelope(sim.receipt(), "receipt").body
    assert _verify(messages.seal("receipt", body, OTHER_KEY).raw).status == s.status


def _alternatives(field: str, value, sim: Sim):
    members = list(sim.round.members)
    other = next((m for m in members if m != value), "n7" if value != "n7" else "n6")
    if field == "status":
        return [s for s in ("final", "resolved", "unresolved", "failed") if s != value]
    if field == "commitment":
        return [None if value else b"c" * 32, (value or b"")[::-1] + b"x"]
    if field == "output_node":
        return [None if value else other, other if value != other else members[-1]]
    if field in ("paid", "beneficiaries", "referees", "excused"):
        return [value[:-1] if value else [other], value + [m for m in members if m not in value][:1]]
    if field == "slashes":
        return [value[:-1] if value else [[other, "cheat"]], value + [[m, "cheat"] for m in members
                                                                      if m not in {s[0] for s in value}][:1],
                [[s[0], "timeout" if s[1] != "timeout" else "cheat"] for s in value] or [[other, "timeout"]]]
    if field in ("disputed", "degraded"):
        return [not value]
    if field == "detail":
        return ["x", decision.NO_MAJORITY if value != decision.NO_MAJORITY else ""]
    if field == "branch":
        return [b for b in ("", "checked", "unchecked") if b != value]
    if field == "mode":
        return [m for m in ("sampling", "cross-validation", "obfuscated", "tee") if m != value]
    if field == "coin":
        if value is None:
            return [{"checked": True}]
        return [None, dict(value, checked=not value["checked"])]
    if field == "unblinded":
        return [{}] if value else [{members[0]: ["n0", b"s" * 32]}]
    if field == "tolerance":  # a round of exact classes cannot claim it was judged tolerantly, nor the reverse
        return [{"token_margin": 0.05}] if value is None else [None, dict(value, token_margin=1.0)]
    raise AssertionError(field)


def _forgeries(sim: Sim):
    raw = sim.receipt()
    body = messages.open_envelope(raw, "receipt").body
    for field_, value in body["decision"].items():
        if field_ == "detail" and value not in decision.DERIVED:
            continue  # why an aborted round could not go on is the aggregator's word (see protocols.decision)
        for alt in _alternatives(field_, value, sim):
            if alt == value:
                continue
            forged = copy.deepcopy(body)
            forged["decision"][field_] = alt
            yield field_, alt, forged


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_any_single_field_change_of_the_decision_is_rejected(sims, name):
    sim = sims[name]
    tried = 0
    for field_, alt, forged in _forgeries(sim):
        for key in (AGGREGATOR_KEY, OTHER_KEY):
            with pytest.raises(ReceiptInvalid):
                _verify(messages.seal("receipt", forged, key).raw)
            tried += 1
    assert tried >= 2 * len(receipts.DECISION_FIELDS)


def test_the_issue_examples_are_rejected(sims):
    """Paid member also slashed; beneficiaries dropped; dispute flag flipped; output node
    changed; a reveal twice; a result twice; a member that never was."""
    sim = sims["resolved"]
    body = messages.open_envelope(sim.receipt(), "receipt").body
    d = body["decision"]
    cases = []
    f = copy.deepcopy(body); f["decision"]["slashes"].append([d["paid"][0], "cheat"]); cases.append(f)
    f = copy.deepcopy(body); f["decision"]["beneficiaries"] = []; cases.append(f)
    f = copy.deepcopy(body); f["decision"]["disputed"] = False; cases.append(f)
    f = copy.deepcopy(body); f["decision"]["output_node"] = d["paid"][-1] if d["output_node"] != d["paid"][-1] \
        else d["paid"][0]; cases.append(f)
    f = copy.deepcopy(body); f["reveals"].append(f["reveals"][0]); cases.append(f)
    f = copy.deepcopy(body); f["results"].append(f["results"][0]); cases.append(f)
    f = copy.deepcopy(body); f["selection"]["draws"].append(copy.deepcopy(f["selection"]["draws"][0])); cases.append(f)
    stranger = SigningKey(b"z" * 32)
    f = copy.deepcopy(body)
    f["results"].append(messages.seal("result", dict(messages.open_envelope(f["results"][0], "result").body,
                                                     node_id="stranger"), stranger).raw)
    cases.append(f)
    for forged in cases:
        for key in (AGGREGATOR_KEY, OTHER_KEY):
            with pytest.raises(ReceiptInvalid):
                _verify(messages.seal("receipt", forged, key).raw)


def test_dropping_evidence_changes_what_the_decision_must_be(sims):
    """A receipt without a member's reveal no longer supports its decision."""
    sim = sims["final"]
    body = messages.open_envelope(sim.receipt(), "receipt").body
    body["reveals"] = body["reveals"][1:]
    with pytest.raises(ReceiptInvalid):
        _verify(messages.seal("receipt", body, AGGREGATOR_KEY).raw)


def test_an_abort_cannot_undo_a_decided_round(sims):
    sim = sims["final"]
    body = messages.open_envelope(sim.receipt(), "receipt").body
    body["decision"].update(status="unresolved", commitment=None, output_node=None, paid=[], beneficiaries=[],
                            disputed=True, degraded=True, detail="the selector failed")
    with pytest.raises(ReceiptInvalid, match="abort"):
        _verify(messages.seal("receipt", body, AGGREGATOR_KEY).raw)


def test_draws_must_carry_the_selectors_vrf_proof(sims):
    from protocols import vrf

    sim = sims["final"]
    body = messages.open_envelope(sim.receipt(), "receipt").body
    other = vrf.VrfKey()
    # a signer that makes up its own VRF key passes only while the selector key is unpinned ...
    rigged = Sim(vrf_key=other)
    rigged.rid, rigged.request = sim.rid, sim.request
    rigged.run()
    raw = rigged.receipt(OTHER_KEY)
    receipts.verify_receipt(raw)
    with pytest.raises(ReceiptInvalid, match="trusted selector"):
        _verify(raw)
    # ... and a seed that is not the VRF output is rejected either way
    f = copy.deepcopy(body)
    f["selection"]["draws"][0]["seed"] = bytes(32)
    with pytest.raises(ReceiptInvalid, match="VRF"):
        receipts.verify_receipt(messages.seal("receipt", f, AGGREGATOR_KEY).raw)


def test_verinfer_verify_rejects_a_re_signed_forged_decision(sims, tmp_path, capsys):
    from cluster import cli

    sim = sims["resolved"]
    body = messages.open_envelope(sim.receipt(), "receipt").body
    good = tmp_path / "good.receipt"
    good.write_bytes(sim.receipt())
    assert cli.main(["verify", str(good)]) == 0
    forged = copy.deepcopy(body)
    forged["decision"]["slashes"] = []  # the cheater walks away
    bad = tmp_path / "forged.receipt"
    bad.write_bytes(messages.seal("receipt", forged, OTHER_KEY).raw)
    assert cli.main(["verify", str(bad)]) == 1
    assert "INVALID" in capsys.readouterr().out
    pinned = ["--selector-key", VRF_KEY.public.hex(), "--aggregator-key", AGGREGATOR_KEY.public.hex()]
    assert cli.main(["verify", str(good), *pinned]) == 0


def test_a_cheater_cannot_dodge_the_cheat_slash_by_withholding_its_reveal():
    """Attack: commit a wrong answer, then keep the reveal back so the round times you out.
    Withholding after committing is slashed 'withheld' (the cheat fraction), not 'timeout'."""
    from protocols.ledger import Economics

    sim = run_until(lambda: Sim(behaviour={"n0": "no-reveal"}), _in_quorum("n0"))
    assert ("n0", "withheld") in sim.outcome.slashes and sim.outcome.status == "final"
    econ = Economics(price=100, fee_fraction=0.1, collateral=1000, min_stake=500)
    assert econ.slash_fraction("withheld") == econ.slash_fraction("cheat") > econ.slash_fraction("timeout")
    body = messages.open_envelope(sim.receipt(), "receipt").body
    body["decision"]["slashes"] = [["n0", "timeout"]]  # an aggregator going easy on it is caught
    with pytest.raises(ReceiptInvalid):
        _verify(messages.seal("receipt", body, AGGREGATOR_KEY).raw)
