"""Aggregator: runs every open round — dispatch, collect, compare, decide.

A thin async shell around protocols.sampling.Round: it turns signed node
messages into round events, performs the round's actions (dispatch, reveal
requests, replacement and referee draws, settlement), drives deadlines, and
signs the receipt. It never decides anything the round did not.

Client-facing calls: `submit` (validate, escrow, draw, dispatch), `first_output`
(the first node's signed output, provisional), `final` (receipt + answer).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from protocols import commitments, crossval, messages, receipts
from protocols.crypto import SigningKey
from protocols.errors import (InvalidParams, MessageError, PromptTooLarge, UnknownModel, UnknownRequest,
                              UnknownSender, VerinferError, ModelHashMismatch)
from protocols.ledger import Settlement, Slash
from protocols.params import SamplingParams
from protocols.sampling import (CROSS_VALIDATION, QUORUM, SAMPLING, Dispatch, DrawReferees, DrawReplacements,
                                DrawVerifiers, Finalize, FirstOutput, FlipCoin, RequestReveals, Round)

MODES = (SAMPLING, CROSS_VALIDATION)


@dataclass
class Limits:
    max_prompt_chars: int = 16384
    max_n: int = 16
    max_tokens: int = 512
    timeout_s: float = 30.0
    reveal_timeout_s: float = 10.0
    referee_extra: int = 2  # referees = N + referee_extra
    client_credit: int = 10**9  # faucet deposit for a new client (dev networks)
    default_p: float = 0.1  # cross-validation check probability when a request names none


@dataclass
class Live:
    """Aggregator-side state of one request (the Round holds the protocol state)."""

    request: messages.Envelope
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
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    timings: dict[str, float] = field(default_factory=dict)
    p: float = 0.0  # cross-validation check probability
    coin: dict | None = None  # cross-validation: the opened coin, for the receipt
    methods: dict[str, str] = field(default_factory=dict)  # node -> generate | prefill | ...


class Aggregator:
    def __init__(self, registry: Any, selector: Any, ledger: Any, econ: Any, limits: Limits | dict | None = None,
                 key_seed: bytes | None = None):
        self.registry, self.selector, self.ledger = registry, selector, ledger
        self.econ = econ
        self.limits = limits if isinstance(limits, Limits) else Limits(**(limits or {}))
        self.key = SigningKey(key_seed or os.urandom(32))
        self.rounds: dict[str, Live] = {}
        self.guard = messages.ReplayGuard()
        self._handles: dict[str, Any] = {}
        self._models: dict[str, dict] = {}
        self._clients: set[str] = set()
        self.counters = {"submitted": 0, "final": 0, "resolved": 0, "unresolved": 0, "failed": 0, "messages": 0}

    def pubkey(self) -> bytes:
        return self.key.public

    async def register_client(self, public: bytes) -> str:
        cid = messages.client_id_of(public)
        if cid not in self._clients:
            await self.ledger.deposit.remote(f"client/{cid}", self.limits.client_credit, f"faucet|{cid}")
            self._clients.add(cid)
        return cid

    # --- submission
    async def _model(self, model_id: str) -> dict:
        if model_id not in self._models:
            self._models[model_id] = await self.registry.model.remote(model_id)
        return self._models[model_id]

    async def _validate(self, request_raw: bytes, prompt: str) -> tuple[messages.Envelope, SamplingParams]:
        req = messages.open_envelope(request_raw, "request")
        b = req.body
        if messages.client_id_of(req.sender) != b["client_id"]:
            raise UnknownSender("request is not signed by the client it names")
        if b["request_id"] in self.rounds or self.guard.seen_request(b["request_id"]):
            raise messages.ReplayedMessage(f"request {b['request_id']} was already submitted")
        if not isinstance(prompt, str):
            raise InvalidParams("prompt must be a string")
        if len(prompt) > self.limits.max_prompt_chars:
            raise PromptTooLarge(f"prompt has {len(prompt)} characters, limit {self.limits.max_prompt_chars}")
        if commitments.prompt_hash(prompt) != b["prompt_hash"] or b["prompt_len"] != len(prompt):
            raise MessageError("prompt does not match the signed prompt hash")
        if b["mode"] not in MODES:
            raise InvalidParams(f"mode {b['mode']!r} is not served; choose from {MODES}")
        if not 1 <= b["n"] <= self.limits.max_n:
            raise InvalidParams(f"n must be in 1..{self.limits.max_n}")
        if not 0 < float(b["timeout_s"]) <= 3600:
            raise InvalidParams("timeout_s must be in (0, 3600]")
        if b["mode"] == CROSS_VALIDATION:
            crossval.check_probability(self.limits.default_p if b["p"] is None else b["p"])
        params = SamplingParams.from_wire(b["params"])
        if params.max_tokens > self.limits.max_tokens:
            raise InvalidParams(f"max_tokens exceeds the network limit of {self.limits.max_tokens}")
        if params.seed != SamplingParams().with_seed_for(b["request_id"]).seed:
            raise InvalidParams("params.seed must be derived from the request id")
        model = await self._model(b["model_id"])
        if b["model_hash"] != model["model_hash"]:
            raise ModelHashMismatch(f"request names hash {b['model_hash'][:16]}…, model {b['model_id']!r} "
                                    f"is {model['model_hash'][:16]}…")
        return req, params

    async def submit(self, request_raw: bytes, prompt: str) -> dict:
        """Validate, escrow and dispatch. Raises a typed error and changes nothing on bad input."""
        t0 = time.time()
        req, _params = await self._validate(request_raw, prompt)
        b = req.body
        rid = b["request_id"]
        self.guard.record(req)
        cv = b["mode"] == CROSS_VALIDATION
        runs = 1 + b["n"] if cv else b["n"]  # cross-validation escrows for the worst case, refunds the rest
        amount = self.econ.price * runs
        try:  # build and draw first: a request that cannot be served never touches the ledger
            rnd = Round(rid, 1 if cv else b["n"], float(b["timeout_s"]), self.limits.reveal_timeout_s,
                        b["n"] + self.limits.referee_extra, mode=b["mode"], verifiers=b["n"] if cv else 0)
            draw = await self.selector.draw.remote(rid, b["model_id"], 1 if cv else b["n"], coin=cv)
            _raise_group_error(await self.ledger.escrow.remote(rid, b["client_id"], amount))
        except BaseException:
            self.guard.forget(rid)
            self.selector.forget.remote(rid)
            raise
        loop = asyncio.get_running_loop()
        live = Live(req, prompt, rnd, draw["det_class"], amount, t0, first=loop.create_future(),
                    final=loop.create_future(),
                    p=float(self.limits.default_p if b["p"] is None else b["p"]) if cv else 0.0)
        self.rounds[rid] = live
        self.counters["submitted"] += 1
        await self._run(live, rnd.start(draw["selected"], draw["keys"], time.time()))
        asyncio.ensure_future(self._clock(live))
        return {"request_id": rid, "quorum_size": len(draw["selected"]), "det_class": draw["det_class"],
                "calls": [live.calls[n] for n in draw["selected"]]}

    # --- client waits
    async def first_output(self, request_id: str) -> dict:
        return await asyncio.shield(self._live(request_id).first)

    async def final(self, request_id: str) -> dict:
        return await asyncio.shield(self._live(request_id).final)

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
        return dict(self.counters, open=sum(1 for l in self.rounds.values() if not l.round.done))

    # --- the loop: perform the round's actions
    async def _run(self, live: Live, actions: list) -> None:
        for act in actions:
            if isinstance(act, Dispatch):
                await self._dispatch(live, act)
            elif isinstance(act, FirstOutput):
                if not live.first.done():
                    live.timings["first_output"] = time.time()
                    live.first.set_result(self._signed_output(live, act.node_id))
            elif isinstance(act, RequestReveals):
                for nid in act.node_ids:
                    ref = (await self._handle(nid)).reveal.remote(live.round.request_id)
                    asyncio.ensure_future(self._on_reveal(live, nid, ref))
            elif isinstance(act, DrawReplacements):
                asyncio.ensure_future(self._replace(live, act))
            elif isinstance(act, DrawReferees):
                asyncio.ensure_future(self._referees(live, act))
            elif isinstance(act, FlipCoin):
                asyncio.ensure_future(self._flip(live, act))
            elif isinstance(act, DrawVerifiers):
                asyncio.ensure_future(self._verifiers(live, act))
            elif isinstance(act, Finalize):
                await self._finalize(live, act.outcome)
        live.wake.set()

    async def _handle(self, node_id: str):
        if node_id not in self._handles:
            self._handles.update(await self.registry.handles.remote())
        return self._handles[node_id]

    async def _dispatch(self, live: Live, act: Dispatch) -> None:
        claimed = live.outputs[act.verify_of]["token_ids"] if act.verify_of else None
        for nid in act.node_ids:
            ref = (await self._handle(nid)).execute.remote(live.request.raw, live.prompt, act.role, claimed)
            live.calls[nid] = ref
            asyncio.ensure_future(self._on_result(live, nid, ref))

    def _signed_output(self, live: Live, node_id: str) -> dict:
        m = live.round.members[node_id]
        return {"node_id": node_id, "pubkey": m.key, "envelope": live.results[node_id],
                "output": live.outputs[node_id]}

    async def _on_result(self, live: Live, nid: str, ref) -> None:
        rnd = live.round
        try:
            res = await ref
            env = messages.open_envelope(res["envelope"], "result")
            self._check_member_msg(live, env, nid)
            out = res["output"]
            if commitments.output_digest(out["token_ids"], out["text"]) != env.body["output_digest"]:
                raise MessageError("output does not match the signed digest")
            self.guard.check_and_record(env)
        except asyncio.CancelledError:
            return
        except Exception:  # an error or a forged answer counts as no answer
            await self._run(live, rnd.on_failure(nid, time.time()))
            return
        self.counters["messages"] += 1
        live.results[nid], live.outputs[nid] = env.raw, out
        live.methods[nid] = res.get("method", "generate")
        try:
            actions = rnd.on_result(nid, env.sender, env.body["commit_hash"], time.time())
        except MessageError:
            return  # late (already timed out) or out of stage: ignored
        await self._run(live, actions)

    async def _on_reveal(self, live: Live, nid: str, ref) -> None:
        rnd = live.round
        try:
            env = messages.open_envelope(await ref, "reveal")
            self._check_member_msg(live, env, nid)
            self.guard.check_and_record(env)
        except asyncio.CancelledError:
            return
        except Exception:
            await self._run(live, rnd.on_failure(nid, time.time()))
            return
        self.counters["messages"] += 1
        live.reveals[nid] = env.raw
        try:
            actions = rnd.on_reveal(nid, env.sender, env.body["commitment"], env.body["salt"], time.time())
        except MessageError:
            return
        await self._run(live, actions)

    def _check_member_msg(self, live: Live, env: messages.Envelope, nid: str) -> None:
        m = live.round.member(nid, env.sender)
        if env.body["node_id"] != nid or env.body["request_id"] != live.round.request_id or env.body["role"] != m.role:
            raise MessageError("message fields do not match the member it came from")

    async def _replace(self, live: Live, act: DrawReplacements) -> None:
        rnd = live.round
        k = sum(1 for m in rnd.members.values() if m.role == act.role)
        b = live.request.body
        draw = await self.selector.draw.remote(rnd.request_id, b["model_id"], act.count, label=f"replace:{act.role}:{k}",
                                               exclude=act.exclude, det_class=live.det_class, allow_fewer=True)
        for nid in act.exclude:  # calls of timed-out members will never be used
            m = rnd.members.get(nid)
            if m is not None and m.state == "timed-out" and nid in live.calls:
                _cancel(live.calls.pop(nid))
        await self._run(live, rnd.on_replacements(draw["selected"], draw["keys"], act.role, time.time()))

    async def _referees(self, live: Live, act: DrawReferees) -> None:
        b = live.request.body
        draw = await self.selector.draw.remote(live.round.request_id, b["model_id"], act.count, label="referee",
                                               exclude=act.exclude, det_class=live.det_class, allow_fewer=True)
        await self._run(live, live.round.on_referees(draw["selected"], draw["keys"], time.time()))

    async def _flip(self, live: Live, act: FlipCoin) -> None:
        seed = await self.selector.reveal_coin.remote(live.round.request_id)
        checked = crossval.flip(seed, live.round.request_id, act.commit_hash, live.p)
        sel = await self.selector.record.remote(live.round.request_id)
        live.coin = {"commit": sel["coin_commit"], "seed": seed, "p": repr(float(live.p)), "node_id": act.node_id,
                     "commit_hash": act.commit_hash, "checked": checked}
        await self._run(live, live.round.on_coin(checked, time.time()))

    async def _verifiers(self, live: Live, act: DrawVerifiers) -> None:
        b = live.request.body
        draw = await self.selector.draw.remote(live.round.request_id, b["model_id"], act.count, label="verify",
                                               exclude=act.exclude, det_class=live.det_class, allow_fewer=True)
        await self._run(live, live.round.on_replacements(draw["selected"], draw["keys"], QUORUM, time.time()))

    async def _clock(self, live: Live) -> None:
        rnd = live.round
        while not rnd.done:
            live.wake.clear()
            deadline = rnd.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            try:
                await asyncio.wait_for(live.wake.wait(), timeout)
            except asyncio.TimeoutError:
                await self._run(live, rnd.on_tick(time.time()))

    # --- the end: settle, sign, answer
    async def _finalize(self, live: Live, outcome) -> None:
        rnd = live.round
        b = live.request.body
        live.timings["decided"] = time.time()
        settlement = Settlement(
            request_id=rnd.request_id, client_id=b["client_id"], escrowed=live.escrowed,
            paid_nodes=tuple(outcome.paid), slashes=tuple(Slash(n, r) for n, r in outcome.slashes),
            beneficiaries=tuple(outcome.beneficiaries), referees=tuple(outcome.referees))
        result = await self.ledger.settle.remote(settlement)
        _raise_group_error(result)
        stakes = {acct.split("/", 1)[1]: bal for acct, bal in result.balances.items() if acct.startswith("collateral/")}
        if outcome.slashes:
            await self.registry.set_stakes.remote(stakes)
            for nid, reason in outcome.slashes:
                if reason == "timeout":  # an unresponsive node stops being drawn until it re-announces
                    await self.registry.set_live.remote(nid, False)
        selection = await self.selector.record.remote(rnd.request_id)
        decision = {
            "status": outcome.status, "commitment": outcome.commitment, "paid": list(outcome.paid),
            "slashes": [list(s) for s in outcome.slashes], "beneficiaries": list(outcome.beneficiaries),
            "referees": list(outcome.referees), "disputed": outcome.disputed, "degraded": outcome.degraded,
            "detail": outcome.detail, "output_node": outcome.output_node, "mode": rnd.mode,
            "branch": outcome.branch, "coin": live.coin,
        }
        committed = [nid for nid in rnd.members if nid in live.results]
        receipt = receipts.build(live.request.raw, selection, [live.results[n] for n in committed],
                                 [live.reveals[n] for n in committed if n in live.reveals], decision,
                                 {"entries": list(result.seqs)}, time.time(), self.key)
        self.counters[outcome.status] += 1
        answer = live.outputs.get(outcome.output_node) if outcome.output_node else None
        if not live.first.done():  # nobody answered: unblock waiters with the outcome
            live.first.set_result(None)
        live.final.set_result({"receipt": receipt, "output": answer, "status": outcome.status,
                               "branch": outcome.branch, "methods": dict(live.methods),
                               "timings": dict(live.timings, submitted=live.submitted_at)})
        for ref in live.calls.values():
            _cancel(ref)


def _cancel(ref) -> None:
    try:
        import ray

        ray.cancel(ref)
    except Exception:
        pass


def _raise_group_error(result) -> None:
    err = getattr(result, "error", None)
    if err is not None:
        raise err if isinstance(err, BaseException) else VerinferError(str(err))
