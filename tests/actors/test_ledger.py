"""SlashingLedger: SQLite store, group commit, idempotent settles, kill -9 survival."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from actors.ledger import LedgerStore, SlashingLedgerActor
from tests.authority import AnyRole
from protocols.errors import ChainBroken, InsufficientFunds
from protocols.ledger import (
    EXTERNAL, TREASURY, BalanceMismatch, Economics, Posting, Settlement, SettlementConflict, Slash,
    check_conservation, collateral_account, deposit_postings, escrow_postings, rewards_account,
    verify_chain, withdraw_postings,
)

ECON = Economics(price=100, fee_fraction=0.1, collateral=1000, min_stake=500)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dep(i: int, account: str = "client/c", amount: int = 1) -> tuple[list[Posting], float]:
    return deposit_postings(account, amount, f"k{i}"), float(i)


# --- LedgerStore (no Ray) ---------------------------------------------------------
def test_store_group_commit_rejects_only_the_overdrawing_group(tmp_path):
    st = LedgerStore(str(tmp_path / "l.db"))
    bad = withdraw_postings("client/c", 5, "too-much")
    mixed = deposit_postings("client/d", 3, "mixed") + withdraw_postings("client/c", 99, "w99")
    res = st.commit_groups([dep(1, amount=2), (bad, 2.0), dep(3, amount=2), (mixed, 4.0), dep(5)])
    assert st.commits == 1 and st.groups == 5
    assert [r.ok for r in res] == [True, False, True, False, True]
    assert isinstance(res[1].error, InsufficientFunds) and "client/c" in str(res[1].error)
    assert res[1].seqs == () and res[3].seqs == ()
    assert st.balances() == {EXTERNAL: -5, "client/c": 5}  # nothing of the rejected groups
    assert [r.seqs for r in res if r.ok] == [(1,), (2,), (3,)]
    assert res[4].balances == {EXTERNAL: -5, "client/c": 5}
    # a retry of applied groups is reported as duplicate with the original seqs
    again = st.commit_groups([dep(1, amount=2), dep(6)])
    assert again[0].duplicate == (True,) and again[0].seqs == (1,)
    assert again[1].duplicate == (False,) and again[1].seqs == (4,)
    st.close()
    st2 = LedgerStore(str(tmp_path / "l.db"), verify=True)
    assert st2.head()[0] == 4 and st2.balances("client/") == {"client/c": 6}


def test_store_key_reuse_with_other_contents_is_rejected(tmp_path):
    st = LedgerStore(str(tmp_path / "l.db"))
    st.commit_groups([dep(1, amount=2)])
    [r] = st.commit_groups([dep(1, amount=3)])
    assert r.error is not None and "k1" in str(r.error)
    assert st.balances()["client/c"] == 2


def test_store_settle_records_result_and_replays_it(tmp_path):
    from actors.ledger import SettleJob

    st = LedgerStore(str(tmp_path / "l.db"))
    setup = (deposit_postings("client/u", 1000, "u") + deposit_postings(collateral_account("bad"), 1000, "sb")
             + escrow_postings("r1", "u", 300))
    s = Settlement("r1", "u", 300, paid_nodes=("a", "b"), slashes=(Slash("bad", "timeout"),), beneficiaries=("a", "b"))
    r0, r1, r2 = st.commit_groups([(setup, 1.0), (SettleJob(s, ECON), 2.0), (SettleJob(s, ECON), 2.0)])
    assert r0.ok and r1.ok and r2.ok
    assert r1.applied == len(r1.keys) and r2.applied == 0 and r2.seqs == r1.seqs
    assert st.balances()[collateral_account("bad")] == 900  # slashed once, not 900 -> 810
    [r3] = st.commit_groups([(SettleJob(s, ECON), 3.0)])  # in a later transaction too
    assert r3.seqs == r1.seqs and r3.applied == 0
    other = Settlement("r1", "u", 300, paid_nodes=("a",))
    [r4] = st.commit_groups([(SettleJob(other, ECON), 4.0)])
    assert isinstance(r4.error, SettlementConflict)
    st.verify()


def test_store_pays_pseudonyms_through_bindings_checked_against_the_commitment(tmp_path):
    from actors.ledger import BindJob, MemberConflict, SettleJob
    from protocols import obfuscation
    from protocols.errors import UnknownRequest
    from protocols.settlement import Binding

    st = LedgerStore(str(tmp_path / "l.db"))
    keys = {n: bytes([i]) * 32 for i, n in enumerate(("honest", "cheat"), 1)}
    b = {obfuscation.pseudonym_id(k): Binding(n, b"s" * 32, k) for n, k in keys.items()}
    commitment = {p: obfuscation.mapping_entry(x.key, x.node_id, x.salt) for p, x in b.items()}
    ph, pc = (obfuscation.pseudonym_id(keys[n]) for n in ("honest", "cheat"))
    setup = (deposit_postings("client/u", 1000, "u") + deposit_postings(collateral_account("cheat"), 1000, "sc")
             + escrow_postings("r1", "u", 200))
    [r0, rb] = st.commit_groups([(setup, 1.0), (BindJob("r1", b), 1.0)])
    assert r0.ok and rb.ok
    # a pseudonym binds once: rebinding it to another node (to redirect its pay) is refused
    [again] = st.commit_groups([(BindJob("r1", {ph: Binding("cheat", b"s" * 32, keys["honest"])}), 1.5)])
    assert isinstance(again.error, MemberConflict)
    s = Settlement("r1", "u", 200, paid_nodes=(ph,), slashes=(Slash(pc, "cheat"),), beneficiaries=(ph,))
    # a binding that does not open the aggregator's commitment moves nothing
    [bad] = st.commit_groups([(SettleJob(s, ECON, {ph: commitment[pc], pc: commitment[pc]}), 2.0)])
    assert bad.error is not None and st.balances()[collateral_account("cheat")] == 1000
    [unknown] = st.commit_groups([(SettleJob(Settlement("r2", "u", 0, paid_nodes=(ph,)), ECON, commitment), 2.0)])
    assert isinstance(unknown.error, UnknownRequest)
    [ok] = st.commit_groups([(SettleJob(s, ECON, commitment), 3.0)])
    from protocols.ledger import take

    assert ok.ok and st.balances()[collateral_account("cheat")] == 1000 - take(1000, ECON.slash_fraction("cheat"))
    assert st.balances()[rewards_account("honest")] > 0  # paid to the node the pseudonym is bound to
    assert not any(ph in a or pc in a for a in st.balances())  # no account is named by a pseudonym
    st.close()
    st2 = LedgerStore(str(tmp_path / "l.db"))  # bindings are durable, and so is the settle's idempotency
    [replay] = st2.commit_groups([(SettleJob(s, ECON, commitment), 4.0)])
    assert replay.seqs == ok.seqs and replay.applied == 0


def test_store_second_writer_on_same_file_is_not_clobbered(tmp_path):
    path = str(tmp_path / "l.db")
    one, two = LedgerStore(path), LedgerStore(path)
    one.commit_groups([dep(1), dep(2)])
    two.commit_groups([dep(3)])  # notices one's entries at BEGIN and reloads first
    one.commit_groups([dep(4)])
    assert one.balances() == LedgerStore(path).balances() == {EXTERNAL: -4, "client/c": 4}
    assert [e.seq for e in one.entries()] == [1, 2, 3, 4]
    LedgerStore(path).verify()


def test_store_detects_tampering_on_open(tmp_path):
    path = str(tmp_path / "l.db")
    st = LedgerStore(path)
    st.commit_groups([dep(i) for i in range(1, 6)])
    st.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE entries SET amount = 100 WHERE seq = 3")
    db.execute("UPDATE balances SET amount = amount + 99 WHERE account = 'client/c'")
    db.execute("UPDATE balances SET amount = amount - 99 WHERE account = 'external'")
    db.commit()
    with pytest.raises(ChainBroken) as err:
        LedgerStore(path, verify=True)
    assert err.value.seq == 3 and err.value.kind == "hash"
    db.execute("UPDATE entries SET amount = 1 WHERE seq = 3")
    db.commit()
    with pytest.raises(BalanceMismatch):  # entries fine again, balances table forged
        LedgerStore(path, verify=True)
    db.execute("DELETE FROM entries WHERE seq = 2")
    db.commit()
    with pytest.raises(ChainBroken):
        LedgerStore(path, verify=True)
    db.close()


def test_sigkill_writer_loses_no_acknowledged_group(tmp_path):
    path = str(tmp_path / "crash.db")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "actors", "ledger_crash_writer.py"), path, "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    acked: list[str] = []
    deadline = time.time() + 60
    try:
        while len(acked) < 600 and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(line.strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(acked) >= 600, proc.stderr.read()
    st = LedgerStore(path, verify=True)  # chain, balances table and conservation
    have = {e.key for e in st.entries(limit=10**9)}
    assert set(acked) <= have
    bal = st.balances()
    check_conservation(bal)
    n_groups = st.head()[0] // 2
    assert bal[EXTERNAL] == -10 * n_groups and sum(v for a, v in bal.items() if a.startswith("escrow/")) == 7 * n_groups


# --- the Ray actor ------------------------------------------------------------------
@pytest.fixture
def ledger(ray_cluster, tmp_path):
    auth = AnyRole()  # each call signed by a holder of its right (the aggregator escrows and settles)
    actor = SlashingLedgerActor.remote(str(tmp_path / "ledger.db"), ECON, control=auth.spec())
    yield auth.wrap(actor, "ledger")
    ray_cluster.kill(actor)


def test_actor_deposit_escrow_settle_pays_once(ray_cluster, ledger):
    ray = ray_cluster
    ray.get([ledger.deposit.remote("client/u", 1000, "u-topup")]
            + [ledger.deposit.remote(collateral_account(n), 1000, f"stake-{n}") for n in ("a", "b", "bad")])
    ray.get(ledger.escrow.remote("r1", "u", 300))
    with pytest.raises(InsufficientFunds):
        ray.get(ledger.escrow.remote("r2", "u", 10_000))
    s = Settlement("r1", "u", 300, paid_nodes=("a", "b"), slashes=(Slash("bad", "cheat"),),
                   beneficiaries=("a", "b"), referees=("z",))
    first = ray.get(ledger.settle.remote(s))
    retry = ray.get(ledger.settle.remote(s))  # what a Ray task retry looks like
    assert first.applied == len(first.keys) > 0 and retry.applied == 0 and retry.seqs == first.seqs
    bal = ray.get(ledger.balances.remote())
    assert bal[rewards_account("a")] == bal[rewards_account("b")] == 90 + 450
    assert bal[rewards_account("z")] == 100 and bal[TREASURY] == 20
    assert bal["client/u"] == 800 and bal[collateral_account("bad")] == 0 and bal["escrow/r1"] == 0
    check_conservation(bal)
    assert [e.reason for e in ray.get(ledger.recent.remote("slash-cheat"))] == ["slash-cheat"]
    assert len(ray.get(ledger.entries_for.remote("r1"))) == 1 + len(first.keys)
    with pytest.raises(SettlementConflict):
        ray.get(ledger.settle.remote(Settlement("r1", "u", 300, paid_nodes=("a",))))
    ray.get(ledger.verify.remote())


def test_actor_concurrent_identical_settles_pay_once(ray_cluster, ledger):
    ray = ray_cluster
    ray.get([ledger.deposit.remote("client/u", 500, "u"), ledger.deposit.remote(collateral_account("slow"), 1000, "s")])
    ray.get(ledger.escrow.remote("r9", "u", 200))
    s = Settlement("r9", "u", 200, paid_nodes=("a",), slashes=(Slash("slow", "timeout"),), beneficiaries=("a",))
    results = ray.get([ledger.settle.remote(s) for _ in range(8)])
    assert sorted(r.applied for r in results) == [0] * 7 + [len(results[0].keys)]
    assert len({r.seqs for r in results}) == 1
    bal = ray.get(ledger.balances.remote())
    assert bal[collateral_account("slow")] == 900 and bal[rewards_account("a")] == 90 + 100
    assert bal["client/u"] == 500 - 200 + 100


def test_actor_group_commit_batches_many_submissions(ray_cluster, ledger):
    """Submissions that arrive while a commit is in flight share the next commit.

    Event-driven, not timed: a hook in the actor holds the first commit inside the
    writer thread until every later submission is queued, so the outcome does not
    depend on how fast Ray delivers calls: exactly two commits, the second carrying
    every queued group. Without group commit it would be one commit per group."""
    ray = ray_cluster

    def hold_first_commit(actor):  # runs inside the actor process
        import threading

        commit = actor._store.commit_groups
        entered, release = threading.Event(), threading.Event()

        def gated(groups):
            if not release.is_set():
                entered.set()
                release.wait(120)
            return commit(groups)

        actor._store.commit_groups = gated
        actor._test_gate = (entered, release)

    def wait_until(check, what):
        deadline = time.time() + 60
        while not check():
            assert time.time() < deadline, what
            time.sleep(0.01)

    ray.get(ledger.__ray_call__.remote(hold_first_commit))
    first = ledger.submit.remote(*dep(0))
    wait_until(lambda: ray.get(ledger.__ray_call__.remote(lambda a: a._test_gate[0].is_set())),
               "the first commit never started")
    n = 500
    refs = [ledger.submit.remote(*dep(i)) for i in range(1, n + 1)]
    overdraw = ledger.submit.remote(withdraw_postings("client/c", 10**6, "drain"))
    more = [ledger.submit.remote(*dep(i)) for i in range(n + 1, n + 51)]
    queued = n + 51
    wait_until(lambda: ray.get(ledger.stats.remote())["pending"] == queued,
               "submissions never queued behind the held commit")
    held = ray.get(ledger.stats.remote())
    assert held["commits"] == 0 and not ray.wait([first], timeout=0)[0]  # nothing acked before durable
    ray.get(ledger.__ray_call__.remote(lambda a: a._test_gate[1].set()))

    results = ray.get([first] + refs + more)
    bad = ray.get(overdraw)
    # every submission acknowledged once, durable, with its own entry
    assert all(r.ok and r.applied == 1 and r.duplicate == (False,) for r in results)
    assert sorted(r.seqs[0] for r in results) == list(range(1, n + 52))
    assert isinstance(bad.error, InsufficientFunds) and bad.seqs == ()  # rejected alone, inside the batch
    entries = ray.get(ledger.entries.remote())
    assert sorted(e.key for e in entries) == sorted(p.key for i in range(n + 51) for p in dep(i)[0])
    assert verify_chain(entries) == ray.get(ledger.head.remote())[1]
    ray.get(ledger.verify.remote())
    assert ray.get(ledger.balances.remote())["client/c"] == n + 51
    st = ray.get(ledger.stats.remote())
    assert st["groups"] == n + 52 and st["entries"] == n + 51 and st["pending"] == 0
    # group commit: the held commit, then one commit of everything queued behind it
    assert st["commits"] == 2 and st["max_groups_per_commit"] == queued, st
    assert st["commits"] < st["groups"]


def test_actor_survives_sigkill_with_submissions_in_flight(ray_cluster, tmp_path):
    ray = ray_cluster
    auth = AnyRole()
    bare = SlashingLedgerActor.remote(str(tmp_path / "kill.db"), ECON, control=auth.spec())
    actor = auth.wrap(bare, "ledger")
    try:
        pid = ray.get(actor.pid.remote())
        n = 600
        refs = [actor.deposit.remote(f"client/c{i % 5}", i + 1, f"kill-{i}") for i in range(n)]
        done, _ = ray.wait(refs, num_returns=50, timeout=30)
        acked = {refs.index(r): res for r, res in zip(done, ray.get(done))}
        os.kill(pid, signal.SIGKILL)
        results = ray.get(refs, timeout=120)  # Ray restarts the actor and retries the rest
        assert ray.get(actor.pid.remote()) != pid
        for i, res in acked.items():
            assert results[i].seqs == res.seqs  # acknowledged before the crash, still there
        ray.get(actor.verify.remote())
        st = ray.get(actor.stats.remote())
        assert st["entries"] == n  # retried calls did not apply twice
        bal = ray.get(actor.balances.remote("client/"))
        assert sum(bal.values()) == n * (n + 1) // 2
        for i in range(5):
            assert bal[f"client/c{i}"] == sum(j + 1 for j in range(i, n, 5))
        again = ray.get([actor.deposit.remote(f"client/c{i % 5}", i + 1, f"kill-{i}") for i in range(n)])
        assert all(r.applied == 0 for r in again) and ray.get(actor.stats.remote())["entries"] == n
    finally:
        ray.kill(bare)


def test_store_escrow_after_its_request_settled_is_refused_so_it_cannot_stay_locked(tmp_path):
    """A shard that crashed mid-submit refunds the round on restart; an escrow of the dead
    shard still in flight must not land after that refund (it would stay locked forever)."""
    from actors.ledger import EscrowJob, SettleJob

    st = LedgerStore(str(tmp_path / "l.db"))
    st.commit_groups([dep(1, amount=500)])
    refund = SettleJob(Settlement("r1", "c", 300), ECON)
    [r] = st.commit_groups([(refund, 2.0)])  # nothing was escrowed yet: nothing comes back
    assert r.ok and st.balances("escrow/") == {}
    [late] = st.commit_groups([(EscrowJob("r1", tuple(escrow_postings("r1", "c", 300))), 3.0)])
    assert isinstance(late.error, SettlementConflict)
    assert st.balances("client/") == {"client/c": 500} and not st.balances("escrow/")
    # an escrow that landed before the settlement is refunded by it, and its retry is a duplicate
    job = EscrowJob("r2", tuple(escrow_postings("r2", "c", 200)))
    st.commit_groups([(job, 4.0)])
    st.commit_groups([(SettleJob(Settlement("r2", "c", 200), ECON), 5.0)])
    [again] = st.commit_groups([(job, 6.0)])
    assert again.ok and again.duplicate == (True,)
    assert st.balances("client/") == {"client/c": 500} and not any(st.balances("escrow/").values())
    check_conservation(st.balances())
