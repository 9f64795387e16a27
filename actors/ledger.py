"""SlashingLedger: durable accounts on SQLite, one writer, group commit.

Why over 400 lines: the store and its actor shell share one transaction
discipline (every group, settlement and pseudonym binding applies inside the
same commit, in the writer thread); the money rules themselves live in
protocols/ledger.py and protocols/settlement.py.

`LedgerStore` is the plain-Python store (WAL, synchronous=FULL): it applies
groups of postings in one transaction and returns only after COMMIT, so every
acknowledged result survives kill -9. `SlashingLedger` is the async actor shell
around it: callers enqueue groups, one writer task commits whatever queued up
while the previous commit was in flight (group commit), then resolves them.

At-least-once calls: the actor is created with max_restarts=-1 and
max_task_retries=-1, so Ray may run a call again after a crash. Every call is
idempotent: postings carry keys applied at most once (a re-run reports them as
`duplicate` with their original seqs), and `settle` records each request in the
`settlements` table in the same transaction, so a re-run settle returns the
original result instead of slashing the (already reduced) collateral again.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import msgpack

from actors.authority import Controlled, Gatekeeper, guarded
from actors.observe import Histogram
from actors.outbox import answer_each
from protocols import settlement as settle_rules
from protocols.canonical import digest, pack
from protocols.errors import ConfigError, LedgerError, VerinferError
from protocols.ledger import (
    GENESIS, BalanceMismatch, Economics, Entry, InvalidPosting, KeyConflict, Posting,
    Settlement, SettlementConflict, apply_postings, check_conservation, deposit_postings,
    escrow_postings, make_entry, replay, settlement_postings, verify_chain, withdraw_postings,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, request_id TEXT NOT NULL,
    reason TEXT NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL, amount INTEGER NOT NULL,
    at REAL NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS entries_request ON entries(request_id);
CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, amount INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS settlements (
    request_id TEXT PRIMARY KEY, digest BLOB NOT NULL, result BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    request_id TEXT NOT NULL, member TEXT NOT NULL, node_id TEXT NOT NULL, salt BLOB NOT NULL,
    pubkey BLOB NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (request_id, member));
"""
_COLS = "seq, key, request_id, reason, src, dst, amount, at, prev_hash, hash"


@dataclass(frozen=True)
class GroupResult:
    """Outcome of one atomic group of postings, returned only once durable.

    `seqs[i]` is the entry seq of `keys[i]` (new, or the existing one when
    `duplicate[i]`); `balances` are the touched accounts after the group. When
    `error` is set nothing of the group was written and seqs are empty.
    """

    keys: tuple[str, ...]
    seqs: tuple[int, ...] = ()
    duplicate: tuple[bool, ...] = ()
    balances: Mapping[str, int] = field(default_factory=dict)
    error: LedgerError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def applied(self) -> int:
        """How many postings this call newly applied (0 for a pure retry)."""
        return sum(1 for d in self.duplicate if not d)

    def raise_for_error(self) -> "GroupResult":
        if self.error is not None:
            raise self.error
        return self


@dataclass(frozen=True)
class SettleJob:
    """A settlement whose postings are computed inside the commit, from the
    balances at apply time (slash amounts depend on current collateral)."""

    settlement: Settlement
    econ: Economics
    # pseudonymous: the settlement names pseudonyms, resolved through the bound members
    # and checked against this mapping commitment (pseudonym -> entry)
    commitment: Mapping[str, bytes] | None = None

    def __post_init__(self) -> None:  # a malformed job must fail alone, not roll back its batch
        if not isinstance(self.settlement, Settlement) or not isinstance(self.econ, Economics):
            raise InvalidPosting("a settle job is a Settlement and the Economics to apply it with")
        if self.commitment is not None and not (isinstance(self.commitment, Mapping) and all(
                isinstance(k, str) and isinstance(v, bytes) for k, v in self.commitment.items())):
            raise InvalidPosting("a mapping commitment maps pseudonyms to bytes")


@dataclass(frozen=True)
class BindJob:
    """The selector binds an obfuscated request's pseudonyms to node accounts (first write wins)."""

    request_id: str
    members: Mapping[str, settle_rules.Binding]

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not self.request_id or not isinstance(self.members, Mapping) \
                or not all(isinstance(k, str) and isinstance(v, settle_rules.Binding) for k, v in self.members.items()):
            raise InvalidPosting("a binding job maps pseudonyms of one request to Bindings")


@dataclass(frozen=True)
class EscrowJob:
    """A client's escrow for one request: refused once the request is settled (a
    recovering aggregator refunds rounds it lost; an escrow still in flight from
    before the crash must not land after that refund and stay locked)."""

    request_id: str
    postings: tuple

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not self.postings \
                or not all(isinstance(p, Posting) for p in self.postings):
            raise InvalidPosting("an escrow job is a request id and its postings")


class MemberConflict(LedgerError):
    """A pseudonym was already bound to another node."""


Group = Sequence[Posting] | SettleJob | BindJob | EscrowJob


class LedgerStore:
    """SQLite-backed ledger; use from one thread at a time.

    Balances, last seq and head hash are cached in memory (one writer is the
    design); each transaction starts by checking the on-disk head under the write
    lock and reloads the cache if another writer moved it, so a stale twin can
    never write a forked chain. Reads are served from the cache / this connection.
    """

    def __init__(self, path: str, verify: bool = True) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._load()
        self.commits = 0
        self.groups = 0
        if verify:
            self.verify()

    def _disk_head(self) -> tuple[int, bytes]:
        row = self._db.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], bytes(row[1])) if row else (0, GENESIS)

    def _load(self) -> None:
        self._bal: dict[str, int] = dict(self._db.execute("SELECT account, amount FROM balances"))
        self._seq, self._head = self._disk_head()

    def close(self) -> None:
        self._db.close()

    # --- reads ----------------------------------------------------------------
    def head(self) -> tuple[int, bytes]:
        """(last seq, its hash); (0, GENESIS) when empty."""
        return self._seq, self._head

    def balances(self, prefix: str = "") -> dict[str, int]:
        return {a: v for a, v in self._bal.items() if a.startswith(prefix)}

    def _select(self, where: str, args: tuple) -> list[Entry]:
        rows = self._db.execute(f"SELECT {_COLS} FROM entries {where}", args).fetchall()
        return [Entry(*r[:8], bytes(r[8]), bytes(r[9])) for r in rows]

    def entries(self, since_seq: int = 0, limit: int = 10_000) -> list[Entry]:
        """Entries with seq > since_seq, oldest first."""
        return self._select("WHERE seq > ? ORDER BY seq LIMIT ?", (since_seq, limit))

    def entries_for(self, request_id: str) -> list[Entry]:
        return self._select("WHERE request_id = ? ORDER BY seq", (request_id,))

    def node_summary(self) -> dict[str, dict]:
        """Per node: rewards (count, amount) and slashes by reason (count, amount) — the
        status page's "served" and "slashed" columns."""
        out: dict[str, dict] = {}
        for dst, n, total in self._db.execute(
                "SELECT dst, COUNT(*), SUM(amount) FROM entries WHERE reason = 'reward' GROUP BY dst"):
            if dst.startswith("rewards/"):
                out.setdefault(dst.split("/", 1)[1], {"served": 0, "earned": 0, "slashed": {}}).update(
                    served=int(n), earned=int(total))
        for src, reason, n, total in self._db.execute(
                "SELECT src, reason, COUNT(*), SUM(amount) FROM entries WHERE reason LIKE 'slash-%' "
                "AND reason != 'slash-share' GROUP BY src, reason"):
            if src.startswith("collateral/"):
                node = out.setdefault(src.split("/", 1)[1], {"served": 0, "earned": 0, "slashed": {}})
                node["slashed"][reason[len("slash-"):]] = [int(n), int(total)]
        return out

    def recent(self, reason_prefix: str = "", limit: int = 20) -> list[Entry]:
        """Newest entries whose reason starts with `reason_prefix`, newest first."""
        return self._select("WHERE substr(reason, 1, ?) = ? ORDER BY seq DESC LIMIT ?",
                            (len(reason_prefix), reason_prefix, limit))

    def _iter_entries(self):
        for r in self._db.execute(f"SELECT {_COLS} FROM entries ORDER BY seq"):
            yield Entry(*r[:8], bytes(r[8]), bytes(r[9]))

    def verify(self) -> bytes:
        """Replay the whole chain: hashes, balances table, conservation. Returns head."""
        head = verify_chain(self._iter_entries())
        if head != self._head:
            raise BalanceMismatch("head hash differs from the last entry")
        replayed = {a: v for a, v in replay(self._iter_entries()).items() if v}
        stored = {a: v for a, v in dict(self._db.execute("SELECT account, amount FROM balances")).items() if v}
        if replayed != stored:
            diff = sorted(a for a in replayed.keys() | stored.keys() if replayed.get(a) != stored.get(a))
            raise BalanceMismatch(f"balances table differs from replayed entries on {diff[:5]}")
        check_conservation(stored)
        return head

    # --- writes ---------------------------------------------------------------
    def commit_groups(self, groups: Sequence[tuple[Group, float]]) -> list[GroupResult]:
        """Apply `groups` in one transaction; each group is all-or-nothing.

        A group that would overdraw (or conflicts) gets a result carrying the error
        and writes nothing; the others still commit. Returns after COMMIT.
        """
        undo: dict[str, int | None] = {}
        seq0, head0 = self._seq, self._head
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self._disk_head() != (self._seq, self._head):
                # another writer used this file (a stale twin of a restarted actor?):
                # we hold the write lock now, so re-read the state instead of clobbering it
                self._load()
                seq0, head0 = self._seq, self._head
            results = [self._apply_group(g, at, undo) for g, at in groups]
            dirty = [(a, self._bal[a]) for a in undo]
            self._db.executemany(
                "INSERT INTO balances(account, amount) VALUES (?, ?) "
                "ON CONFLICT(account) DO UPDATE SET amount = excluded.amount", dirty)
            self._db.execute("COMMIT")
        except BaseException:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:  # a failed COMMIT may have rolled back already;
                pass  # the head check at the next BEGIN reloads if disk and cache differ
            for a, v in undo.items():
                if v is None:
                    self._bal.pop(a, None)
                else:
                    self._bal[a] = v
            self._seq, self._head = seq0, head0
            raise
        self.commits += 1
        self.groups += len(groups)
        return results

    def _apply_group(self, group: Group, at: float, undo: dict) -> GroupResult:
        if isinstance(group, SettleJob):
            return self._apply_settlement(group, at, undo)
        if isinstance(group, BindJob):
            return self._apply_binding(group)
        if isinstance(group, EscrowJob):
            if self.settled(group.request_id) and not self._known(group.postings):
                return GroupResult(keys=tuple(p.key for p in group.postings), error=SettlementConflict(
                    f"request {group.request_id!r} is already settled: no escrow for it any more"))
            group = group.postings
        postings = list(group)
        try:
            return self._apply_postings(postings, at, undo)
        except VerinferError as exc:
            return GroupResult(keys=tuple(p.key for p in postings), error=exc)

    def _apply_postings(self, postings: list[Posting], at: float, undo: dict) -> GroupResult:
        known: dict[str, tuple[int, Posting]] = {}
        keys = [p.key for p in postings]
        for i in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[i:i + 500]
            rows = self._db.execute(
                f"SELECT seq, key, request_id, reason, src, dst, amount FROM entries "
                f"WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            for seq, *f in rows:
                known[f[0]] = (seq, Posting(*f))
        fresh: list[Posting] = []
        for p in postings:
            if p.key in known:
                if not known[p.key][1].same_movement(p):
                    raise KeyConflict(f"key {p.key!r} was already used for a different posting")
            else:
                known[p.key] = (0, p)
                fresh.append(p)
        touched = {a for p in postings for a in (p.src, p.dst)}
        new_bal = apply_postings({a: self._bal.get(a, 0) for a in touched}, fresh)
        # validated: from here on only writes, which either all land or abort the batch
        seq_of: dict[str, int] = {}
        rows = []
        for p in fresh:
            self._seq += 1
            e = make_entry(self._head, self._seq, p, at)
            self._head = e.hash
            seq_of[p.key] = e.seq
            rows.append((e.seq, e.key, e.request_id, e.reason, e.src, e.dst, e.amount, e.at,
                         e.prev_hash, e.hash))
        self._db.executemany(f"INSERT INTO entries({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        for a, v in new_bal.items():
            undo.setdefault(a, self._bal.get(a))
            self._bal[a] = v
        return GroupResult(
            keys=tuple(keys),
            seqs=tuple(seq_of.get(k) or known[k][0] for k in keys),
            duplicate=tuple(k not in seq_of for k in keys),
            balances=new_bal,
        )

    def settled(self, request_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM settlements WHERE request_id = ?", (request_id,)).fetchone() is not None

    def settlement(self, request_id: str) -> dict | None:
        """What a request's settlement returned (keys, seqs, balances), or None."""
        row = self._db.execute("SELECT result FROM settlements WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else msgpack.unpackb(bytes(row[0]), raw=False)

    def _known(self, postings) -> bool:
        keys = [p.key for p in postings]
        got = self._db.execute(f"SELECT COUNT(*) FROM entries WHERE key IN ({','.join('?' * len(keys))})",
                               keys).fetchone()[0]
        return got == len(keys)

    def bindings(self, request_id: str) -> dict[str, settle_rules.Binding]:
        rows = self._db.execute("SELECT member, node_id, salt, pubkey, digest FROM members WHERE request_id = ?",
                                (request_id,)).fetchall()
        return {m: settle_rules.Binding(n, bytes(salt), bytes(pub), d) for m, n, salt, pub, d in rows}

    def _apply_binding(self, job: BindJob) -> GroupResult:
        known = self.bindings(job.request_id)
        for pid, b in job.members.items():
            if pid in known and known[pid] != b:
                return GroupResult(keys=(), error=MemberConflict(f"{pid} of {job.request_id} is already bound"))
        self._db.executemany("INSERT OR IGNORE INTO members VALUES (?, ?, ?, ?, ?, ?)", [
            (job.request_id, pid, b.node_id, b.salt, b.key, b.digest) for pid, b in job.members.items()])
        return GroupResult(keys=())

    def _apply_settlement(self, job: SettleJob, at: float, undo: dict) -> GroupResult:
        s = job.settlement
        if job.commitment is not None:
            try:
                s = settle_rules.resolve(s, self.bindings(s.request_id), job.commitment)
            except VerinferError as exc:
                return GroupResult(keys=(), error=exc)
        d = digest(s.to_wire())
        row = self._db.execute("SELECT digest, result FROM settlements WHERE request_id = ?",
                               (s.request_id,)).fetchone()
        if row is not None:
            if bytes(row[0]) != d:
                return GroupResult(keys=(), error=SettlementConflict(
                    f"request {s.request_id!r} was already settled differently"))
            stored = msgpack.unpackb(bytes(row[1]), raw=False)
            return GroupResult(keys=tuple(stored["keys"]), seqs=tuple(stored["seqs"]),
                               duplicate=(True,) * len(stored["keys"]), balances=stored["balances"])
        try:
            postings = settlement_postings(s, self._bal, job.econ)
            res = self._apply_postings(postings, at, undo)
        except VerinferError as exc:
            return GroupResult(keys=(), error=exc)
        self._db.execute("INSERT INTO settlements(request_id, digest, result) VALUES (?, ?, ?)", (
            s.request_id, d,
            pack({"keys": list(res.keys), "seqs": list(res.seqs), "balances": dict(res.balances)})))
        return res


class SlashingLedger(Controlled):
    """Async actor shell over LedgerStore. Create with `SlashingLedgerActor.remote(path)`.

    Every method that moves money takes a signed call (actors.authority): escrow and
    settlement from an aggregator shard, bindings from the selector, deposits and
    withdrawals from the operator (a gateway or the aggregator only into client accounts).

    `econ` is the default Economics for `settle`; a settle call may pass its own.
    Methods that move money raise the group's typed error (InsufficientFunds, ...)
    and return its GroupResult otherwise; `submit` returns the result with the
    error inside instead.
    """

    def __init__(self, path: str, econ: Economics | None = None, max_batch: int = 4096,
                 verify_on_open: bool = True, control: dict | None = None) -> None:
        self.gate = Gatekeeper("ledger", control)
        self._store = LedgerStore(path, verify=verify_on_open)
        self._econ = econ
        self._max_batch = max_batch
        self._pending: list[tuple[Group, float, asyncio.Future]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None
        self._max_groups_per_commit = 0
        self._commit_latency = Histogram()  # one group commit (durable), for /metrics

    async def _enqueue(self, group: Group, at: float | None) -> GroupResult:
        loop = asyncio.get_running_loop()
        if self._writer is None:
            self._wakeup = asyncio.Event()
            self._writer = loop.create_task(self._write_loop())
        fut = loop.create_future()
        self._pending.append((group, time.time() if at is None else at, fut))
        self._wakeup.set()
        return await fut

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[:self._max_batch]
                del self._pending[:self._max_batch]
                self._max_groups_per_commit = max(self._max_groups_per_commit, len(batch))
                try:
                    t0 = time.perf_counter()
                    results = await loop.run_in_executor(
                        self._executor, self._store.commit_groups, [(g, at) for g, at, _ in batch])
                    self._commit_latency.add(time.perf_counter() - t0)
                except Exception as exc:  # the whole transaction rolled back
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (*_, fut), res in zip(batch, results):
                    if not fut.done():
                        fut.set_result(res)

    async def _read(self, fn, *args):
        # reads go through the writer thread too: the store is single-threaded
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- money ----------------------------------------------------------------
    @guarded("ledger")
    async def submit(self, postings: Sequence[Posting], at: float | None = None) -> GroupResult:
        """Apply one atomic group; returns once durable, error carried in the result."""
        postings = list(postings)
        if not postings or not all(isinstance(p, Posting) for p in postings):  # fails alone, before the batch
            raise InvalidPosting("a group is a non-empty list of Postings")
        return await self._enqueue(postings, at)

    @guarded("ledger")
    async def deposit(self, account: str, amount: int, key: str) -> GroupResult:
        return (await self._enqueue(_built(deposit_postings, account, amount, key), None)).raise_for_error()

    @guarded("ledger")
    async def withdraw(self, account: str, amount: int, key: str) -> GroupResult:
        return (await self._enqueue(_built(withdraw_postings, account, amount, key), None)).raise_for_error()

    @guarded("ledger")
    async def escrow(self, request_id: str, client_id: str, amount: int) -> GroupResult:
        """Lock a client's payment for a request (once; refused after the request settled)."""
        return await self._escrow(request_id, client_id, amount)

    async def _escrow(self, request_id: str, client_id: str, amount: int) -> GroupResult:
        job = _built(lambda: EscrowJob(request_id, tuple(escrow_postings(request_id, client_id, amount))))
        return (await self._enqueue(job, None)).raise_for_error()

    @guarded("ledger")
    async def settle(self, settlement: Settlement, econ: Economics | None = None) -> GroupResult:
        """Pay, refund and slash for one request, once; a repeat returns the original
        result (all `duplicate`), a different settlement of the same request raises
        SettlementConflict."""
        return await self._settle(settlement, econ)

    async def _settle(self, settlement: Settlement, econ: Economics | None = None) -> GroupResult:
        econ = econ or self._econ
        if econ is None:
            raise ConfigError("economics missing: pass econ= to settle or to SlashingLedger(path, econ)")
        return (await self._enqueue(_built(SettleJob, settlement, econ), None)).raise_for_error()

    @guarded("ledger")
    async def escrow_many(self, items: Sequence[tuple]) -> list:
        """`escrow(request_id, client_id, amount)` for each item, committed as one group
        commit; one entry per item: its result, or Failed(error) for that item alone."""
        return await answer_each(self._escrow, items)

    @guarded("ledger")
    async def settle_many(self, settlements: Sequence[Settlement]) -> list:
        """`settle` for each settlement (one group commit); Failed(error) for one that fails alone."""
        return await answer_each(self._settle, [(s,) for s in settlements])

    @guarded("ledger")
    async def bind_members(self, request_id: str, members: Mapping[str, settle_rules.Binding]) -> None:
        """Obfuscated rounds: the selector says which node each pseudonym pays (durable
        before the pseudonyms are handed out). A pseudonym binds once."""
        (await self._enqueue(_built(lambda: BindJob(request_id, dict(members))), None)).raise_for_error()

    @guarded("ledger")
    async def settle_members(self, settlement: Settlement, commitment: Mapping[str, bytes]) -> GroupResult:
        """Settle a round whose settlement names pseudonyms. Each is resolved through its
        binding, which must open `commitment` (the mapping the aggregator holds), else
        UnblindingRejected and nothing moves. The result names no account of a node
        that was not slashed: only the slashed nodes' collateral is returned."""
        if self._econ is None:
            raise ConfigError("economics missing: SlashingLedger(path, econ)")
        res = (await self._enqueue(_built(lambda: SettleJob(settlement, self._econ, dict(commitment))),
                                   None)).raise_for_error()
        slashed = await self._read(lambda: settle_rules.resolve(
            Settlement(settlement.request_id, settlement.client_id, settlement.escrowed,
                       slashes=settlement.slashes), self._store.bindings(settlement.request_id), commitment))
        keep = {settle_rules.collateral_account(sl.node_id) for sl in slashed.slashes}
        # the caller learns its receipt's entry seqs and the slashed collateral, nothing else
        return GroupResult(keys=(), seqs=res.seqs, duplicate=res.duplicate,
                           balances={a: v for a, v in res.balances.items() if a in keep})

    # --- reads ----------------------------------------------------------------
    async def balances(self, prefix: str = "") -> dict[str, int]:
        return await self._read(self._store.balances, prefix)

    async def entries(self, since_seq: int = 0, limit: int = 10_000) -> list[Entry]:
        return await self._read(self._store.entries, since_seq, limit)

    async def entries_for(self, request_id: str) -> list[Entry]:
        return await self._read(self._store.entries_for, request_id)

    async def recent(self, reason_prefix: str = "slash", limit: int = 20) -> list[Entry]:
        return await self._read(self._store.recent, reason_prefix, limit)

    async def node_summary(self) -> dict[str, dict]:
        return await self._read(self._store.node_summary)

    async def settlement(self, request_id: str) -> dict | None:
        return await self._read(self._store.settlement, request_id)

    async def head(self) -> tuple[int, bytes]:
        return await self._read(self._store.head)

    async def verify(self) -> bytes:
        """Replay the chain, check balances and conservation; returns the head hash."""
        return await self._read(self._store.verify)

    async def stats(self) -> dict:
        st = self._store
        return {"entries": st.head()[0], "commits": st.commits, "groups": st.groups,
                "groups_per_commit": st.groups / st.commits if st.commits else 0.0,
                "max_groups_per_commit": self._max_groups_per_commit,
                "pending": len(self._pending), "commit_seconds": self._commit_latency.to_wire()}

    async def pid(self) -> int:
        return os.getpid()


def _built(make, *args):
    """A group or job built from a caller's arguments; anything malformed is a typed error
    here, before it reaches the batch (where it would roll back everyone's groups)."""
    try:
        return make(*args)
    except VerinferError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise InvalidPosting(f"malformed ledger call: {type(exc).__name__}: {exc}") from None


def _make_actor():
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(SlashingLedger)


SlashingLedgerActor = _make_actor()
