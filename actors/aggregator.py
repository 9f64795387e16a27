"""Aggregator: runs every open round — dispatch, collect, compare, decide.

A thin async shell around protocols.sampling.Round, the same for every mode: it
admits requests (protocols.admission), turns signed member messages into round
events, performs the round's actions through the round's member transport
(actors.transport: direct calls, or the obfuscated push path), drives
deadlines, applies the settlement's effects (protocols.settlement) and signs
the receipt. It never decides anything the round did not.

Client-facing calls: `submit` (admit, draw, escrow, dispatch), `first_output`
(the first node's signed output, provisional), `final` (receipt + answer).

In mode "obfuscated" the aggregator never learns who the members are: members
push their results and reveals signed by one-time keys (`obf_result`,
`obf_reveal`, `obf_refusal`), and only pseudonyms that must be slashed are
unblinded — checked against the mapping commitment the selector published at
draw time.

Crashes: with a store, every round is journaled (actors.journal) and a shard
Ray restarts rebuilds each open round from its journal, then finishes it if it
had been decided (the ledger's settlement is idempotent) or ends it unresolved
with the escrow refunded. `final` / `stream` / a retried `submit` of such a
request answer from the journal; request ids stay spent across restarts.

Why over 400 lines: it is the one place that turns every kind of member message
(results, reveals, refusals, stream chunks; returned or pushed) into round
events and every round action into calls, and those directions share the
per-round state (Live) and its futures. Transports (actors/transport.py),
liveness (actors/liveness.py) and every rule (protocols/: admission, decision,
settlement, streams, ...) already live elsewhere; what is left is that glue,
plus recovery (rebuilding open rounds from the journal), which has to create the
same per-round state and feed it to the same `_run` / `_finalize`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from actors import transport
from actors.background import spawn
from actors.clock import Clock
from actors.authority import Controlled, Gatekeeper, Signed, guarded
from actors.journal import SEALED as JOURNAL_SEALED, Journal
from actors.liveness import Reviver
from actors.observe import Observer
from actors.outbox import Outbox, answer_each
from actors.store import open_store
from protocols import (admission, commitments, crossval, fingerprint, messages, modes, obfuscation, receipts,
                       settlement, streams)
from protocols.admission import Limits
from protocols.crypto import SigningKey
from protocols.errors import MessageError, SelectorMisbehaved, UnknownRequest, VerinferError

RESTARTED = "the aggregator shard restarted before the round ended; the escrow was refunded"
from protocols.sampling import (CROSS_VALIDATION, QUORUM, REFEREE, RUNNING, SAMPLING, Dispatch, DrawReferees,
                                DrawReplacements, DrawVerifiers, Finalize, FirstOutput, FlipCoin, RequestReveals,
                                Round)

MODES = modes.MODES  # (kept for importers; the specs live in protocols.modes)
__all__ = ["Aggregator", "Limits", "MODES"]


@dataclass
class Live:
    """Aggregator-side state of one request (the Round holds the protocol state)."""

    request: admission.Request
    prompt: str
    round: Round
    det_class: str
    escrowed: int
    submitted_at: float
    outputs: dict[str, dict] = field(default_factory=dict)
    results: dict[str, bytes] = field(default_factory=dict)
    reveals: dict[str, bytes] = field(default_factory=dict)
    calls: dict[str, Any] = field(default_factory=dict)
    first: asyncio.Future = None
    final: asyncio.Future = None
    timings: dict[str, float] = field(default_factory=dict)
    p: float = 0.0  # cross-validation check probability
    coin: dict | None = None  # cross-validation: the opened coin, for the receipt
    methods: dict[str, str] = field(default_factory=dict)  # node -> generate | prefill | ...
    transport: Any = None  # actors.transport: Direct, or Obfuscated (members are pseudonyms)
    mapping: dict[str, bytes] = field(default_factory=dict)  # obfuscated: pseudonym -> committed entry
    unblinded: dict[str, list] = field(default_factory=dict)  # slashed pseudonym -> [node, salt(, digest, evidence)]
    msgs: Counter = field(default_factory=Counter)  # protocol messages this round exchanged
    draws: list = field(default_factory=list)  # the selector's draw records, for the receipt
    require_tee: bool = False  # every member must hold valid attestation
    recipients: tuple[str, ...] | None = None  # sealed prompt: the only nodes that can serve it
    stream: bool = False  # quorum members push chunks of tokens as they make them
    order: streams.ChunkOrder = field(default_factory=streams.ChunkOrder)  # which chunks pass, in order
    chunks: list = field(default_factory=list)  # what `stream` yields, in order
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)  # a chunk came, or the end
    replacing: asyncio.Lock = field(default_factory=asyncio.Lock)  # replacement draws, one at a time
    tolerance: dict | None = None  # a tolerant round: the model's calibrated tolerance (wire form)
    fingerprints: dict[str, bytes] = field(default_factory=dict)  # member -> the fingerprint its reveal opened

    @property
    def client_id(self) -> str:
        return self.request.client_id

    @property
    def model_id(self) -> str:
        return self.request.model_id


class Aggregator(Controlled):
    """One aggregator shard. Its calls to the ledger, registry, selector and executors are
    signed with its control key (actors.authority); `key` signs receipts."""

    def __init__(self, registry: Any, selector: Any, ledger: Any, econ: Any, limits: Limits | dict | None = None,
                 key_seed: bytes | None = None, store: dict | None = None, shard: int = 0,
                 control: dict | None = None):
        self.gate = Gatekeeper("aggregator", control)
        self.registry, self.selector, self.ledger = (Signed(registry, self.gate, "registry"),
                                                     Signed(selector, self.gate, "selector"),
                                                     Signed(ledger, self.gate, "ledger"))
        self.econ = econ
        self.limits = Limits.of(limits)
        self.key = SigningKey(key_seed or os.urandom(32))
        self.rounds: dict[str, Live] = {}
        self.guard = messages.ReplayGuard()
        self._handles: dict[str, Any] = {}
        self._models: dict[str, dict] = {}
        self._clients: set[str] = set()
        self._vrf_key: bytes | None = None
        self._tasks: set[asyncio.Task] = set()  # background tasks, referenced until done
        self._reviver = Reviver(self.registry, self.handle, self.limits.liveness_interval_s,
                                self.limits.reveal_timeout_s, self._tasks)
        self._finished: collections.deque = collections.deque()  # eviction order of finished rounds
        self._direct, self._obfuscated = transport.Direct(self), transport.Obfuscated(self)
        # batch-shaped calls: what this shard sends the ledger or the selector in one tick is one call
        most = self.limits.max_batch_calls
        self.outbox = {"escrow": Outbox(lambda items: self.ledger.escrow_many.remote(items), most),
                       "settle": Outbox(lambda items: self.ledger.settle_many.remote(items), most),
                       "draw": Outbox(lambda items: self.selector.draw_many.remote(items), most)}
        self.deadlines = Clock(self._tick)  # one deadline heap for every open round
        self.counters = {"submitted": 0, "final": 0, "resolved": 0, "unresolved": 0, "failed": 0, "messages": 0,
                         "recovered": 0}
        self.observer = Observer()  # the status page's recent rounds and /metrics (memory only)
        self.shard = int(shard)
        st = open_store(store, sealed=JOURNAL_SEALED)
        self.journal = Journal(st, self.limits.retain_rounds) if st is not None else None
        self._recovery = None
        if self.journal is not None:
            self.counters.update(st.get("meta", "counters", {}))
            self._recovery = spawn(self._tasks, self._recover())

    # --- after a restart
    async def _recover(self) -> None:
        """Rebuild every journaled open round and end it; bring back nodes taken out."""
        for rid, (meta, events) in self.journal.open_rounds().items():
            try:
                live, outcome = self._rebuild(rid, meta, events)
                self.rounds[rid] = live
                self.journal.adopt(rid, len(events))
                self.counters["recovered"] += 1
                if outcome is not None:
                    await self._finalize(live, outcome)
                else:
                    await self._run(live, self._end_rebuilt(live))
            except Exception as exc:  # never leave escrow behind: refund at least
                await self._refund_lost(rid, meta, exc)
        try:
            for n in await self.registry.list_nodes.remote():
                if not n["live"] and not n.get("rejoining"):
                    self._reviver.revive(n["node_id"])
        except Exception:
            pass

    def _rebuild(self, rid: str, meta: dict, events: list):
        req = admission.Request.parse(meta["request"])
        ra = meta["round"]
        rnd = Round(rid, ra["members"], ra["deadline_s"], ra["reveal_timeout_s"], ra["referees"], mode=ra["mode"],
                    verifiers=ra["verifiers"], tolerant=ra.get("tolerance") is not None)
        loop = asyncio.get_running_loop()
        live = Live(req, "", rnd, meta.get("det_class", ""), meta["amount"], meta["t0"], first=loop.create_future(),
                    final=loop.create_future(), p=meta["p"],
                    transport=self._obfuscated if req.mode.pseudonymous else self._direct,
                    require_tee=meta["require_tee"], recipients=tuple(meta["recipients"]) if meta["recipients"]
                    else None, stream=meta["stream"], tolerance=ra.get("tolerance"))
        live.draws.extend(meta.get("draws", []))  # the quorum's draw, made before the round was journaled
        live.mapping.update(meta.get("mapping", {}))
        outcome = None
        for kind, args in events:
            if kind == "rnd":
                try:
                    acts = getattr(rnd, args[0])(*args[1:])
                except VerinferError:  # refused then too (late, out of stage): the same now
                    continue
                for a in acts:
                    if isinstance(a, Finalize):
                        outcome = a.outcome
            elif kind == "drawn":
                live.draws.extend(args[0])
                live.mapping.update(args[1])
                live.det_class = live.det_class or args[2]
            elif kind == "result":
                nid, raw, out, method = args
                live.results[nid], live.outputs[nid], live.methods[nid] = raw, out, method
            elif kind == "reveal":
                live.reveals[args[0]] = args[1]
                live.fingerprints[args[0]] = messages.open_envelope(args[1], "reveal").body["fingerprint"]
            elif kind == "coin":
                live.coin = args[0]
        return live, (outcome if rnd.done else None)

    def _end_rebuilt(self, live: Live) -> list:
        """End a rebuilt round now: unresolved, refunded. (A round whose whole stage was
        gone, waiting for a draw, cannot be aborted: the evidence decides it. Then the
        recovery refunds it without a receipt, see `_refund_lost`.)"""
        return self._step(live, "abort", RESTARTED)

    async def _refund_lost(self, rid: str, meta: dict, exc: Exception) -> None:
        req = admission.Request.parse(meta["request"])
        try:
            await self.ledger.settle.remote(settlement.refund(rid, req.client_id, meta["amount"]))
        except Exception:
            pass  # already settled (by the round itself): nothing is held for it
        self.journal.close(rid, {"error": f"{RESTARTED} ({type(exc).__name__}: {exc})",
                                 "error_type": "VerinferError", "request": meta["request"]})
        live = self.rounds.pop(rid, None)
        if live is not None and not live.final.done():
            live.final.set_exception(VerinferError(f"{RESTARTED} ({type(exc).__name__}: {exc})"))

    def _step(self, live: Live, name: str, *args) -> list:
        """A call into the round, journaled first (a rebuilt round replays exactly these)."""
        if self.journal is not None:
            self.journal.event(live.round.request_id, "rnd", name, *args)
        return getattr(live.round, name)(*args)

    def _note(self, live: Live, kind: str, *args) -> None:
        if self.journal is not None:
            self.journal.event(live.round.request_id, kind, *args)

    async def _draw(self, live: Live, *args, **kw) -> dict:
        n0, m0 = len(live.draws), set(live.mapping)
        d = await live.transport.draw(live, *args, **kw)
        self._note(live, "drawn", live.draws[n0:], {k: v for k, v in live.mapping.items() if k not in m0},
                   d["det_class"])
        return d

    async def _journaled(self, request_id: str):
        """A request this shard no longer holds in memory: its final answer from the
        journal (after any recovery in progress), or UnknownRequest."""
        if self._recovery is not None and not self._recovery.done():
            await asyncio.shield(self._recovery)
        if request_id in self.rounds:
            return self.rounds[request_id]
        fin = self.journal.final(request_id) if self.journal is not None else None
        if fin is None:
            raise UnknownRequest(f"no round {request_id}")
        return fin

    def pubkey(self) -> bytes:
        return self.key.public

    @guarded("aggregator")
    async def register_client(self, public: bytes) -> str:
        cid = messages.client_id_of(public)
        if cid not in self._clients and self.limits.client_credit > 0:
            await self.ledger.deposit.remote(f"client/{cid}", self.limits.client_credit, f"faucet|{cid}")
            self._clients.add(cid)
        return cid

    # --- submission
    async def _model(self, model_id: str) -> dict:
        if model_id not in self._models:
            self._models[model_id] = await self.registry.model.remote(model_id)
        return self._models[model_id]

    async def _admit(self, request_raw: bytes, prompt) -> admission.Admitted:
        """protocols.admission's rules, plus what needs this actor's state: replays, the model record."""
        req = admission.Request.parse(request_raw)
        if req.request_id in self.rounds or self.guard.seen_request(req.request_id) \
                or req.request_id in self.guard.spent or (self.journal is not None and self.journal.spent(req.request_id)):
            raise messages.ReplayedMessage(f"request {req.request_id} was already submitted")
        return admission.admit(request_raw, prompt, self.limits, await self._model(req.model_id))

    async def submit(self, request_raw: bytes, prompt: str, stream: bool = False) -> dict:
        """Admit, draw, escrow and dispatch. Raises a typed error and changes nothing on bad input.
        stream=True: members push their tokens as they make them; read them with `stream`."""
        t0 = time.time()
        again = await self._resubmitted(request_raw)
        if again is not None:
            return again
        adm = await self._admit(request_raw, prompt)
        req, rid = adm.request, adm.request_id
        self.guard.record(req)
        cv = req.cross_validation
        amount = self.econ.price * adm.escrowed_runs  # cross-validation: the worst case, rest refunded
        loop = asyncio.get_running_loop()
        # a model with a calibrated tolerant check draws across its tolerance group, unless the
        # aggregator cannot read the claims its referees would check (sealed, obfuscated)
        tolerance = (await self._model(req.model_id)).get("tolerance")
        if req.sealed or req.mode.pseudonymous:
            tolerance = None
        try:  # build and draw first: a request that cannot be served never touches the ledger
            rnd = Round(rid, adm.members, adm.deadline_s, self.limits.reveal_timeout_s,
                        adm.members + self.limits.referee_extra, mode=CROSS_VALIDATION if cv else SAMPLING,
                        verifiers=req.n if cv else 0, tolerant=tolerance is not None)
            live = Live(req, prompt, rnd, "", amount, t0, first=loop.create_future(), final=loop.create_future(),
                        p=adm.p, transport=self._obfuscated if req.mode.pseudonymous else self._direct,
                        require_tee=req.attested, recipients=adm.recipients, stream=bool(stream),
                        tolerance=tolerance)
            draw = await self._draw(live, adm.members, "quorum", QUORUM, (), coin=cv, hold=True)
            if self.journal is not None:  # durable before any money moves for it
                self.journal.open(rid, {"request": req.raw, "amount": amount, "p": adm.p, "t0": t0,
                                        "require_tee": req.attested, "recipients": list(adm.recipients or []),
                                        "stream": bool(stream), "det_class": draw["det_class"],
                                        "draws": list(live.draws), "mapping": dict(live.mapping),
                                        "round": {"members": adm.members, "deadline_s": adm.deadline_s,
                                                  "reveal_timeout_s": self.limits.reveal_timeout_s,
                                                  "referees": adm.members + self.limits.referee_extra,
                                                  "mode": CROSS_VALIDATION if cv else SAMPLING,
                                                  "verifiers": req.n if cv else 0, "tolerance": tolerance}})
                self.journal.flush()
            try:
                _raise_group_error(await self.outbox["escrow"].call((rid, req.client_id, amount)))
            except BaseException:
                if self.journal is not None:  # nothing was escrowed: the round never existed
                    self.journal.close(rid, {"error": "escrow refused", "error_type": "VerinferError",
                                             "request": req.raw})
                raise
        except BaseException as exc:
            self.guard.forget(rid)
            if not isinstance(exc, messages.ReplayedMessage):  # a replay's draws belong to the original
                self.selector.forget.remote(rid)
            raise
        self.rounds[rid] = live
        await live.transport.release(live)
        live.det_class = draw["det_class"]
        self.counters["submitted"] += 1
        await self._run(live, self._step(live, "start", draw["selected"], draw["keys"], time.time()))
        # (returning the executors' ObjectRefs here would let the client race them directly,
        # but handing out borrowed refs costs ~4 ms per submit here: the aggregator's
        # first_output is the faster path)
        return {"request_id": rid, "quorum_size": len(draw["selected"]), "det_class": draw["det_class"],
                "deadline_s": adm.deadline_s, "shard": self.shard}

    async def submit_many(self, items: list) -> list:
        """`submit(request_raw, prompt)` for each item, in one call (a client's batch): one
        entry per item, in order: what `submit` returns, or Failed(its error) alone."""
        return await answer_each(self.submit, [tuple(item) for item in items])

    async def final_many(self, request_ids: list) -> list:
        """`final` for each request, in one call; Failed(error) for one that has none."""
        return await answer_each(self.final, [(rid,) for rid in request_ids])

    async def _resubmitted(self, request_raw: bytes) -> dict | None:
        """The same signed request again, submitted to an earlier life of this shard (Ray
        retries a call whose shard died under it): answer as the first submit did instead
        of refusing it as a replay. Within one life a second submit is a replay."""
        try:
            rid = messages.open_envelope(request_raw, "request").request_id
        except Exception:
            return None  # admission says what is wrong with it
        if self.guard.seen_request(rid) or rid in self.guard.spent:
            return None
        live = self.rounds.get(rid)
        if live is not None:
            same = live.request.raw == request_raw
        elif self.journal is not None and self.journal.spent(rid):
            await self._journaled(rid) if self._recovery is not None and not self._recovery.done() else None
            got = self.rounds.get(rid)
            meta = self.journal.opened(rid)
            same = (got is not None and got.request.raw == request_raw) or (
                meta is not None and meta["request"] == request_raw) or self._final_request(rid) == request_raw
        else:
            return None
        if not same:
            return None  # another request under a spent id: admission refuses it as a replay
        return {"request_id": rid, "resubmitted": True, "shard": self.shard}

    def _final_request(self, rid: str) -> bytes | None:
        fin = self.journal.final(rid) if self.journal is not None else None
        return (fin or {}).get("request")

    # --- client waits
    async def first_output(self, request_id: str) -> dict:
        if request_id not in self.rounds:
            got = await self._journaled(request_id)
            if not isinstance(got, Live):
                return None  # the round ended in an earlier life of this shard: see `final`
        return await asyncio.shield(self._live(request_id).first)

    async def final(self, request_id: str) -> dict:
        if request_id not in self.rounds:
            got = await self._journaled(request_id)
            if not isinstance(got, Live):
                return _answer(got)
        return await asyncio.shield(self._live(request_id).final)

    async def stream(self, request_id: str):
        """The round as it happens (call with num_returns="streaming"): chunks of the first
        streaming member's tokens, {"type": "chunk", "node_id", "token_ids", "text"}, then
        {"type": "final", ...what `final` returns}. Chunks are provisional; the final item
        is what the round accepted."""
        if request_id not in self.rounds:
            got = await self._journaled(request_id)
            if not isinstance(got, Live):
                yield dict(_answer(got), type="final")
                return
        live, sent = self._live(request_id), 0
        while True:
            async with live.changed:
                await live.changed.wait_for(lambda: len(live.chunks) > sent or live.final.done())
            while sent < len(live.chunks):
                yield live.chunks[sent]
                sent += 1
            if live.final.done():
                break
        yield dict(await asyncio.shield(live.final), type="final")

    async def on_chunk(self, raw: bytes) -> None:
        """A member's signed chunk of tokens (streamed rounds). Only the member's own, in
        order, from the member streamed; anything else is dropped and changes nothing."""
        env = messages.open_envelope(raw, "chunk")
        live, nid = self._live(env.request_id), env.body["node_id"]
        if not live.stream or live.round.done:
            return
        self._check_member_msg(live, env, nid)
        for tokens, text in live.order.accept(nid, env.body["seq"], (list(env.body["token_ids"]), env.body["text"])):
            await self._push_chunk(live, nid, tokens, text)

    async def _push_chunk(self, live: Live, nid: str, token_ids: list, text: str) -> None:
        live.chunks.append({"type": "chunk", "node_id": nid, "token_ids": token_ids, "text": text})
        async with live.changed:
            live.changed.notify_all()

    async def _ended(self, live: Live) -> None:
        async with live.changed:
            live.changed.notify_all()

    def _live(self, request_id: str) -> Live:
        if request_id not in self.rounds:
            raise UnknownRequest(f"no round {request_id}")
        return self.rounds[request_id]

    def public_view(self, request_id: str) -> dict:
        return self._live(request_id).round.public_view()

    def status(self, request_id: str) -> dict:
        live = self._live(request_id)
        r = live.round
        return {"stage": r.stage, "done": r.done,
                "members": {m.node_id: {"role": m.role, "state": m.state} for m in r.members.values()}}

    def stats(self) -> dict:
        return dict(self.counters, open=sum(1 for l in self.rounds.values() if not l.round.done), shard=self.shard,
                    escrow_open=sum(l.escrowed for l in self.rounds.values() if not l.round.done),
                    recovering=self._recovery is not None and not self._recovery.done(),
                    batched=dict({k: box.stats() for k, box in self.outbox.items()}, **self._direct.stats()),
                    deadlines={"pending": self.deadlines.pending(), "fired": self.deadlines.fired})

    def observed(self) -> dict:
        """Public: counters, histograms and the last rounds in brief (the status page, /metrics)."""
        return dict(self.observer.snapshot(), shard=self.shard,
                    open=sum(1 for l in self.rounds.values() if not l.round.done))

    async def health(self) -> dict:
        """Alive, recovered, and how much it holds (verinfer status)."""
        if self._recovery is not None and not self._recovery.done():
            await asyncio.shield(self._recovery)
        return dict(self.stats(), pid=os.getpid())

    # --- peers
    async def handle(self, node_id: str):
        """An executor's handle, cached (refreshed from the registry on a miss)."""
        if node_id not in self._handles:
            self._handles.update({n: Signed(h, self.gate, "executor", n)
                                  for n, h in (await self.registry.handles.remote()).items()})
        return self._handles[node_id]

    async def vrf_public(self) -> bytes:
        if self._vrf_key is None:
            self._vrf_key = await self.selector.vrf_public.remote()
        return self._vrf_key

    # --- the loop: perform the round's actions
    async def _run(self, live: Live, actions: list) -> None:
        for act in actions:
            if isinstance(act, Dispatch):
                await live.transport.dispatch(live, act)
            elif isinstance(act, FirstOutput):
                if not live.first.done():
                    live.timings["first_output"] = time.time()
                    live.first.set_result(self._signed_output(live, act.node_id))
                    out = live.outputs[act.node_id]
                    if live.stream and "sealed" not in out and live.order.follow(act.node_id):  # nobody streamed
                        await self._push_chunk(live, act.node_id, list(out["token_ids"]), out["text"])
            elif isinstance(act, RequestReveals):
                live.msgs["reveal_request"] += len(act.node_ids)
                await live.transport.request_reveals(live, act.node_ids)
            elif isinstance(act, (DrawReplacements, DrawReferees, DrawVerifiers, FlipCoin)):
                spawn(self._tasks, self._background(live, act))
            elif isinstance(act, Finalize):
                await self._finalize(live, act.outcome)
        self.deadlines.schedule(live.round.request_id, None if live.round.done else live.round.next_deadline())

    async def _background(self, live: Live, act) -> None:
        try:
            await self._background_step(live, act)
        except Exception as exc:  # never leave a client waiting on a round that cannot proceed
            rnd = live.round
            if rnd.done:
                return
            if isinstance(act, (DrawReplacements, DrawReferees, DrawVerifiers)):
                # a draw that fails is a draw that found nobody: the decision rule takes it from there
                got = (self._step(live, "on_referees", [], [], time.time()) if isinstance(act, DrawReferees) else
                       self._step(live, "on_no_replacement", act.role if isinstance(act, DrawReplacements)
                                  else QUORUM, time.time()))
                await self._run(live, got)
            else:
                await self._run(live, self._step(live, "abort",
                                                 f"{type(act).__name__} failed: {type(exc).__name__}: {exc}"))

    async def _background_step(self, live: Live, act) -> None:
        rnd, now = live.round, time.time

        async def draw(live_, *a, **kw):
            return await self._draw(live_, *a, **kw)
        if isinstance(act, FlipCoin):
            seed, proof = await self.selector.reveal_coin.remote(rnd.request_id)
            checked = crossval.flip(seed, rnd.request_id, act.commit_hash, live.p)
            live.coin = {"commit": live.draws[0]["coin_commit"], "seed": seed, "proof": proof,
                         "p": repr(float(live.p)),
                         "node_id": act.node_id, "commit_hash": act.commit_hash, "checked": checked}
            self._note(live, "coin", live.coin)
            await self._run(live, self._step(live, "on_coin", checked, now()))
        elif isinstance(act, DrawVerifiers):
            d = await draw(live, act.count, "verify", QUORUM, act.exclude, allow_fewer=True)
            await self._run(live, self._step(live, "on_verifiers", d["selected"], d["keys"], now()))
        elif isinstance(act, DrawReferees):  # attested referees settle disputes wherever they exist
            d = await draw(live, act.count, "referee", REFEREE, act.exclude, allow_fewer=True, attested=True)
            if not d["selected"] and not live.require_tee:
                d = await draw(live, act.count, "referee:any", REFEREE, act.exclude, allow_fewer=True)
            await self._run(live, self._step(live, "on_referees", d["selected"], d["keys"], now()))
        else:
            # one replacement draw of a round at a time: two members late together would otherwise
            # draw under one label (one seed, the same nodes) and the receipt would not verify
            async with live.replacing:
                k = sum(1 for m in rnd.members.values() if m.role == act.role)
                d = await draw(live, act.count, f"replace:{act.role}:{k}", act.role, rnd.ever_selected(),
                               allow_fewer=True)
                live.transport.drop(live, [n for n in act.exclude if n in rnd.members
                                           and rnd.members[n].state == "timed-out"])
                actions = self._step(live, "on_replacements", d["selected"], d["keys"], act.role, now(), act.count)
            await self._run(live, actions)

    def _signed_output(self, live: Live, node_id: str) -> dict:
        m = live.round.members[node_id]
        return {"node_id": node_id, "pubkey": m.key, "envelope": live.results[node_id],
                "output": live.outputs[node_id]}

    # --- incoming results and reveals (returned by calls, or pushed in obfuscated mode)
    async def member_failed(self, live: Live, nid: str) -> None:
        if not live.round.done:
            await self._run(live, self._step(live, "on_failure", nid, time.time()))

    async def accept_refusal(self, live: Live, nid: str, raw: bytes, pushed: bool = False) -> None:
        """A member says the client's sealed prompt does not open for it. Only a sealed
        request can be refused, and only attested members serve those, so the refusal
        ends the round unresolved (escrow refunded) and nobody is slashed for it."""
        if pushed:
            self._authentic(live, nid, raw, "refusal")
        try:
            env = messages.open_envelope(raw, "refusal")
            self._check_member_msg(live, env, nid)
            if not live.request.sealed:
                raise MessageError("only a sealed prompt can be refused")
            if live.round.members[nid].state != RUNNING:  # refusing after committing is not a refusal
                raise MessageError("a member that committed cannot refuse")
            self.guard.check_and_record(env)
        except Exception:
            await self.member_failed(live, nid)
            return
        live.msgs["refusal"] += 1
        await self._run(live, self._step(live, "abort", f"{nid} refused the client's sealed prompt: {env.body['reason']}"))

    async def accept_result(self, live: Live, nid: str, res: Any, pushed: bool = False) -> None:
        rnd = live.round
        if pushed:  # anyone can push: only the member's own fresh message may count against it
            self._authentic(live, nid, res["envelope"], "result")
        try:
            env = messages.open_envelope(res["envelope"], "result")
            self._check_member_msg(live, env, nid)
            out = res["output"]
            if "sealed" not in out and \
                    commitments.output_digest(out["token_ids"], out["text"]) != env.body["output_digest"]:
                raise MessageError("output does not match the signed digest")
            accepts = self._judged(live, nid, env.body["verdicts"])
            self.guard.check_and_record(env)
        except Exception:  # a forged or malformed answer counts as no answer
            await self.member_failed(live, nid)
            return
        live.msgs["result"] += 1
        self.counters["messages"] += 1
        try:
            actions = self._step(live, "on_result", nid, env.sender, env.body["commit_hash"], time.time(),
                                 list(accepts))
        except MessageError:
            return  # late (already timed out) or out of stage: ignored, and kept out of the receipt
        live.results[nid], live.outputs[nid] = env.raw, out
        live.methods[nid] = res.get("method", "generate")
        self._note(live, "result", nid, env.raw, out, live.methods[nid])
        await self._run(live, actions)

    async def accept_reveal(self, live: Live, nid: str, raw: bytes, pushed: bool = False) -> None:
        rnd = live.round
        if pushed:
            self._authentic(live, nid, raw, "reveal")
        try:
            env = messages.open_envelope(raw, "reveal")
            self._check_member_msg(live, env, nid)
            self.guard.check_and_record(env)
        except Exception:
            await self.member_failed(live, nid)
            return
        live.msgs["reveal"] += 1
        self.counters["messages"] += 1
        try:
            actions = self._step(live, "on_reveal", nid, env.sender, env.body["commitment"], env.body["salt"],
                                 time.time(), env.body["fingerprint"])
        except MessageError:
            return  # late: the member already timed out; its reveal is not evidence of this round
        live.reveals[nid] = env.raw
        live.fingerprints[nid] = env.body["fingerprint"]
        self._note(live, "reveal", nid, env.raw)
        await self._run(live, actions)

    # --- tolerant rounds: what referees check, and what their verdicts accept
    def claims(self, live: Live) -> list[dict]:
        """The revealed quorum claims a tolerant round's referees check: tokens (the output
        the member handed over, if it hashes to its revealed commitment) and the fingerprint
        its commit sealed."""
        rnd, body, out = live.round, live.request.body, []
        for m in rnd.of_role(QUORUM):
            tokens = (live.outputs.get(m.node_id) or {}).get("token_ids")
            if m.commitment is None or tokens is None or commitments.output_commitment(
                    rnd.request_id, body["model_hash"], body["prompt_hash"], body["params"], tokens) != m.commitment:
                continue
            out.append({"node_id": m.node_id, "token_ids": list(tokens),
                        "fingerprint": live.fingerprints.get(m.node_id, b"")})
        return out

    def _judged(self, live: Live, nid: str, verdicts: list) -> tuple[str, ...]:
        """The quorum claims a referee's signed verdicts accept under the model's tolerance
        (the rule receipts re-run: protocols.fingerprint.accepted). Verdicts from anyone
        but a referee of a tolerant round are malformed."""
        if not verdicts:
            return ()
        if live.tolerance is None or live.round.members[nid].role != REFEREE:
            raise MessageError("only a referee of a tolerant round judges quorum claims")
        rnd = live.round
        claims = {m.node_id: (m.commitment, fingerprint.fingerprint_hash(live.fingerprints.get(m.node_id, b"")))
                  for m in rnd.of_role(QUORUM) if m.commitment is not None}
        return fingerprint.accepted(fingerprint.check_verdicts(verdicts), claims,
                                    fingerprint.Tolerance.of(live.tolerance))

    def _authentic(self, live: Live, nid: str, raw: bytes, type_: str) -> messages.Envelope:
        """A pushed message that is not the member's own, or not fresh, changes nothing:
        raise instead of counting it as the member's failure."""
        env = messages.open_envelope(raw, type_)
        self._check_member_msg(live, env, nid)
        self.guard.check(env)
        return env

    def _check_member_msg(self, live: Live, env: messages.Envelope, nid: str) -> None:
        m = live.round.member(nid, env.sender)
        if env.body["node_id"] != nid or env.body["request_id"] != live.round.request_id or env.body["role"] != m.role:
            raise MessageError("message fields do not match the member it came from")

    # --- the obfuscated transport's push path (members act under one-time keys)
    async def _pushed(self, request_id: str, pseudonym: str) -> Live:
        return await self._obfuscated.member_of(self.rounds, request_id, pseudonym)

    async def obf_result(self, res: dict) -> None:
        env = messages.open_envelope(res["envelope"], "result")
        live = await self._pushed(env.request_id, env.body["node_id"])
        await self.accept_result(live, env.body["node_id"], res, pushed=True)

    async def obf_reveal(self, raw: bytes) -> None:
        env = messages.open_envelope(raw, "reveal")
        live = await self._pushed(env.request_id, env.body["node_id"])
        await self.accept_reveal(live, env.body["node_id"], raw, pushed=True)

    async def obf_refusal(self, raw: bytes) -> None:
        env = messages.open_envelope(raw, "refusal")
        live = await self._pushed(env.request_id, env.body["node_id"])
        await self.accept_refusal(live, env.body["node_id"], raw, pushed=True)

    @guarded("aggregator")
    async def obf_failure(self, request_id: str, pseudonym: str) -> None:
        live = await self._pushed(request_id, pseudonym)
        await self.member_failed(live, pseudonym)

    async def _tick(self, rid: str) -> None:
        """A round's deadline came (the deadline heap calls this)."""
        live = self.rounds.get(rid)
        if live is not None and not live.round.done:
            await self._run(live, self._step(live, "on_tick", time.time()))

    # --- the end: settle, apply its effects, sign, answer
    async def _apply(self, effects: settlement.Effects) -> None:
        if effects.stakes:
            await self.registry.set_stakes.remote(effects.stakes)
        for nid in effects.take_out:  # an unresponsive node stops being drawn until it answers a challenge
            await self.registry.set_live.remote(nid, False)
            await self._revive(nid)

    @guarded("aggregator")
    async def take_out(self, node_id: str) -> None:
        """A member's process died under a call: stop drawing it now (it comes back by
        rejoining with fresh keys, or by answering a liveness challenge)."""
        await self._take_out(node_id)

    async def _take_out(self, node_id: str) -> None:
        try:
            await self.registry.set_live.remote(node_id, False)
        except Exception:
            return
        await self._revive(node_id)

    @guarded("aggregator")
    async def revive(self, node_id: str) -> None:
        """Challenge a node taken out for lateness until it answers (then it is drawn again)."""
        await self._revive(node_id)

    async def _revive(self, node_id: str) -> None:
        self._reviver.revive(node_id)

    async def _finalize(self, live: Live, outcome) -> None:
        rnd = live.round
        live.timings["decided"] = time.time()
        if self.journal is not None:  # what is settled can be rebuilt: durable before the ledger moves
            self.journal.flush()
        try:
            seqs, effects = await live.transport.settle(live, outcome)
        except obfuscation.UnblindingRejected as exc:  # the selector lied: slash nobody on its word
            await self._refuse_lying_selector(live, exc)
            return
        await self._apply(effects)
        selection = await live.transport.selection(live)
        decision = dict(outcome.record(), mode=live.request.mode.name, coin=live.coin, unblinded=live.unblinded,
                        tolerance=live.tolerance)
        committed = [nid for nid in rnd.members if nid in live.results]
        receipt = receipts.build(rnd.request_id, live.request.raw, selection, [live.results[n] for n in committed],
                                 [live.reveals[n] for n in committed if n in live.reveals], decision,
                                 {"entries": seqs}, time.time(), self.key)
        self.counters[outcome.status] += 1
        self.observer.ended(rnd.request_id, live.request.mode.name, live.request.body["n"], outcome,
                            live.submitted_at, live.timings.get("first_output"), outcome.paid, outcome.slashes)
        answer = live.outputs.get(outcome.output_node) if outcome.output_node else None
        # sealed outputs cannot be checked here: hand over every paid member's, so one
        # garbled ciphertext cannot cost the client an answer the quorum agreed on
        alternates = {n: live.outputs[n] for n in outcome.paid if n in live.outputs and n != outcome.output_node} \
            if answer is not None and "sealed" in answer else {}
        if not live.first.done():  # nobody answered: unblock waiters with the outcome
            live.first.set_result(None)
        fin = {"receipt": receipt, "output": answer, "alternates": alternates, "status": outcome.status,
               "branch": outcome.branch, "methods": dict(live.methods), "messages": dict(live.msgs),
               "timings": dict(live.timings, submitted=live.submitted_at)}
        if self.journal is not None:
            self.journal.close(rnd.request_id, dict(fin, request=live.request.raw), counters=self.counters)
        live.final.set_result(fin)
        await self._ended(live)
        live.transport.close(live)
        self._retire(rnd.request_id)

    def _retire(self, request_id: str) -> None:
        self._finished.append(request_id)
        while len(self._finished) > self.limits.retain_rounds:  # bounded memory; ids stay spent
            old = self._finished.popleft()
            self.rounds.pop(old, None)
            self.guard.forget_messages(old)
            self.selector.forget.remote(old)

    async def _refuse_lying_selector(self, live: Live, exc: Exception) -> None:
        rnd = live.round
        _raise_group_error(await self.ledger.settle.remote(
            settlement.refund(rnd.request_id, live.client_id, live.escrowed)))
        self.counters["failed"] += 1
        err = SelectorMisbehaved(f"request {rnd.request_id}: {exc}; nobody was slashed, the escrow was refunded")
        if self.journal is not None:
            self.journal.close(rnd.request_id, {"error": str(err), "error_type": "SelectorMisbehaved",
                                                "request": live.request.raw})
        if not live.first.done():
            live.first.set_result(None)
        live.final.set_exception(err)
        await self._ended(live)
        self._retire(rnd.request_id)

    def debug_state(self, request_id: str) -> bytes:
        """Everything this actor holds about a round, pickled (privacy audits, tests)."""
        import pickle

        live = self._live(request_id)
        state = {k: v for k, v in vars(live).items() if k not in ("first", "final", "wake", "calls", "transport",
                                                                   "changed")}
        return pickle.dumps(state)


def _answer(fin: dict) -> dict:
    """A journaled final answer as `final` returns it (or the error the round ended with)."""
    if "error" in fin:
        raise (SelectorMisbehaved if fin.get("error_type") == "SelectorMisbehaved" else VerinferError)(fin["error"])
    return {k: v for k, v in fin.items() if k != "request"}


def _raise_group_error(result) -> None:
    err = getattr(result, "error", None)
    if err is not None:
        raise err if isinstance(err, BaseException) else VerinferError(str(err))
