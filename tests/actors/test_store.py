"""The control plane's durable store and the aggregator's journal (no Ray)."""

from __future__ import annotations

import pytest

from actors.journal import SEALED, Journal
from actors.store import Store, StoreError
from protocols.sampling import Round


def test_values_survive_reopening_and_sealed_tables_hold_no_plaintext(tmp_path):
    path = str(tmp_path / "s.sqlite")
    st = Store(path, b"k" * 32, sealed=("secret",))
    st.put("plain", "a", {"x": 1, "b": b"bytes"})
    st.put("secret", "m", {"node": "tiny-03", "salt": b"\x01" * 32})
    st.close()
    again = Store(path, b"k" * 32, sealed=("secret",))
    assert again.get("plain", "a") == {"x": 1, "b": b"bytes"}
    assert again.get("secret", "m") == {"node": "tiny-03", "salt": b"\x01" * 32}
    raw = open(path, "rb").read() + (open(path + "-wal", "rb").read() if (tmp_path / "s.sqlite-wal").exists() else b"")
    assert b"tiny-03" not in raw  # the file alone unblinds nobody


def test_a_sealed_value_opens_only_under_its_key_and_in_its_own_row(tmp_path):
    path = str(tmp_path / "s.sqlite")
    st = Store(path, b"k" * 32, sealed=("secret",))
    st.put("secret", "a", "for a")
    st.put("secret", "b", "for b")
    with pytest.raises(StoreError):
        Store(path, b"x" * 32, sealed=("secret",)).get("secret", "a")
    # moving ciphertext to another row does not make it that row's value
    blob = st._db.execute("SELECT v FROM kv WHERE tbl='secret' AND k='a'").fetchone()[0]
    st._db.execute("UPDATE kv SET v=? WHERE tbl='secret' AND k='b'", (blob,))
    with pytest.raises(StoreError):
        st.get("secret", "b")
    with pytest.raises(StoreError):
        Store(str(tmp_path / "t.sqlite"), None, sealed=("secret",))


def test_put_many_is_one_transaction(tmp_path):
    st = Store(str(tmp_path / "s.sqlite"))
    st.put_many([("t", "1", 1), ("t", "2", 2)])
    with pytest.raises(Exception):
        st.put_many([("t", "3", 3), ("t", "4", object())])  # the second row cannot be encoded
    assert dict(st.items("t")) == {"1": 1, "2": 2}
    st.put_many([("t", "5", 5)], deletes=[("t", "1")])
    assert dict(st.items("t")) == {"2": 2, "5": 5} and st.keys("t") == ["2", "5"]


def _journal(tmp_path, retain=100):
    return Journal(Store(str(tmp_path / "j.sqlite"), b"s" * 32, sealed=SEALED), retain)


def test_replaying_a_journaled_round_rebuilds_its_state_exactly(tmp_path):
    """The journal keeps the round's inputs; the round is a pure function of them."""
    j = _journal(tmp_path)
    rnd = Round("r1", 3, 10.0, 5.0, 5)
    j.open("r1", {"round": "params"})
    calls = [("start", ["a", "b", "c"], [b"ka", b"kb", b"kc"], 100.0),
             ("on_result", "a", b"ka", b"h" * 32, 101.0), ("on_result", "b", b"kb", b"h" * 32, 101.5),
             ("on_failure", "c", 102.0)]
    for name, *args in calls:
        j.event("r1", "rnd", name, *args)
        getattr(rnd, name)(*args)
    j.flush()
    meta, events = _journal(tmp_path).open_rounds()["r1"]
    assert meta == {"round": "params"}
    again = Round("r1", 3, 10.0, 5.0, 5)
    for kind, args in events:
        assert kind == "rnd"
        getattr(again, args[0])(*args[1:])
    assert again.public_view() == rnd.public_view() and again.stage == rnd.stage
    assert {n: m.state for n, m in again.members.items()} == {n: m.state for n, m in rnd.members.items()}


def test_a_closed_round_keeps_its_answer_drops_its_events_and_its_id_stays_spent(tmp_path):
    j = _journal(tmp_path, retain=1)
    j.open("r1", {"m": 1})
    j.event("r1", "rnd", "start", [], [], 0.0)
    j.close("r1", {"status": "final"})
    assert j.open_rounds() == {} and j.final("r1") == {"status": "final"} and j.spent("r1")
    assert j.store.count("events") == 0
    for i in range(70):  # older finals are pruned past `retain`; their ids stay spent
        j.open(f"x{i}", {})
        j.close(f"x{i}", {"status": "final"})
    assert j.store.count("final") <= 64 and j.spent("r1") and j.spent("x0")


def test_a_round_decided_before_the_crash_replays_to_the_same_decision(tmp_path):
    """What a restarted shard settles again must be what the round decided (the ledger
    returns the first settlement only for an identical one)."""
    from protocols.commitments import commit_hash
    from protocols.sampling import Finalize

    j = _journal(tmp_path)
    j.open("r2", {})
    rnd = Round("r2", 3, 10.0, 5.0, 5)
    nodes, keys, c, salt = ["a", "b", "c"], [b"ka", b"kb", b"kc"], b"c" * 32, b"s" * 32
    calls = [("start", nodes, keys, 1.0)]
    calls += [("on_result", n, k, commit_hash(k, c, salt), 2.0) for n, k in zip(nodes, keys)]
    calls += [("on_reveal", n, k, c, salt, 3.0) for n, k in zip(nodes, keys)]
    decided = None
    for name, *args in calls:
        j.event("r2", "rnd", name, *args)
        decided = next((a.outcome for a in getattr(rnd, name)(*args) if isinstance(a, Finalize)), decided)
    j.flush()
    assert rnd.done and decided.status == "final"
    again, replayed = Round("r2", 3, 10.0, 5.0, 5), None
    for _, args in _journal(tmp_path).open_rounds()["r2"][1]:
        replayed = next((a.outcome for a in getattr(again, args[0])(*args[1:]) if isinstance(a, Finalize)), replayed)
    assert again.done and replayed.record() == decided.record() and replayed.paid == decided.paid
