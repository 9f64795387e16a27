"""Aggregator: runs every open round — dispatch, collect, compare, decide.

Why over 400 lines: it still holds both member transports (direct calls and the
obfuscated push path) and settlement; issue 12 item 3 moves those behind one
transport interface and the settlement effects into protocols/, which is what
splits this file. Its rules already live in protocols/ (decision, modes,
deadlines, sampling).

A thin async shell around protocols.sampling.Round: it turns signed node
messages into round events, performs the round's actions (dispatch, reveal
requests, replacement and referee draws, settlement), drives deadlines, and
signs the receipt. It never decides anything the round did not.

Client-facing calls: `submit` (validate, escrow, draw, dispatch), `first_output`
(the first node's signed output, provisional), `final` (receipt + answer).

In mode "obfuscated" the aggregator never learns who the members are: the
selector draws N+1 nodes and dispatches sealed tickets, members push their
results and reveals signed by one-time keys (`obf_result`, `obf_reveal`), and
only pseudonyms that must be slashed are unblinded — checked against the
mapping commitment the selector published at draw time.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from dataclasses import dataclass, field
from typing import Any

from collections import Counter

from actors.background import spawn
from protocols import commitments, crossval, deadlines, messages, modes, obfuscation, receipts, sealing
from protocols.crypto import SigningKey
from protocols.errors import (InvalidParams, MessageError, PromptTooLarge, SelectorMisbehaved, UnknownRequest,
                              UnknownSender, VerinferError, ModelHashMismatch)
from protocols.decision import LATE_REASONS
from protocols.ledger import Settlement, Slash
from protocols.params import SamplingParams
from protocols.sampling import (CROSS_VALIDATION, QUORUM, REFEREE, RUNNING, SAMPLING, Dispatch, DrawReferees, DrawReplacements,
                                DrawVerifiers, Finalize, FirstOutput, FlipCoin, RequestReveals, Round)

MODES = modes.MODES  # (kept for importers; the specs live in protocols.modes)


@dataclass
class Limits:
    max_prompt_chars: int = 16384
    max_n: int = 16
    max_tokens: int = 512
    timeout_s: float = 30.0  # the network's base deadline per member; clients may ask for longer, never shorter
    timeout_per_token_s: float = 0.0  # added per requested token (models may override both)
    reveal_timeout_s: float = 10.0
    referee_extra: int = 2  # referees = N + referee_extra
    client_credit: int = 10**9  # faucet deposit for a new client (dev networks)
    default_p: float = 0.1  # cross-validation check probability when a request names none
    retain_rounds: int = 10000  # finished rounds kept for `final`/`status`; older ones are evicted
    liveness_interval_s: float = 5.0  # how often a node taken out for lateness is challenged to come back


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
    obfuscated: bool = False
    mapping: dict[str, bytes] = field(default_factory=dict)  # obfuscated: pseudonym -> committed entry
    unblinded: dict[str, list] = field(default_factory=dict)  # slashed pseudonym -> [node, salt(, digest, evidence)]
    msgs: Counter = field(default_factory=Counter)  # protocol messages this round exchanged
    draws: list = field(default_factory=list)  # the selector's draw records, for the receipt
    require_tee: bool = False  # every member must hold valid attestation
    recipients: tuple[str, ...] | None = None  # sealed prompt: the only nodes that can serve it


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
        self._vrf_key: bytes | None = None
        self._reviving: dict[str, asyncio.Task] = {}  # node -> its liveness challenge loop
        self._tasks: set[asyncio.Task] = set()  # background tasks, referenced until done
        self._finished: collections.deque = collections.deque()  # eviction order of finished rounds
        self._joined = asyncio.Condition()  # obfuscated: wakes pushes that arrive before their member is known
        self.counters = {"submitted": 0, "final": 0, "resolved": 0, "unresolved": 0, "failed": 0, "messages": 0}

    def pubkey(self) -> bytes:
        return self.key.public

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

    async def _validate(self, request_raw: bytes, prompt: str) -> tuple[messages.Envelope, tuple[str, ...] | None,
                                                                         float]:
        """The request, for a sealed prompt the nodes it is sealed to, and each member's deadline."""
        req = messages.open_envelope(request_raw, "request")
        b = req.body
        if messages.client_id_of(req.sender) != b["client_id"]:
            raise UnknownSender("request is not signed by the client it names")
        if b["request_id"] in self.rounds or self.guard.seen_request(b["request_id"]) \
                or b["request_id"] in self.guard.spent:
            raise messages.ReplayedMessage(f"request {b['request_id']} was already submitted")
        if b["prompt_len"] > self.limits.max_prompt_chars:
            raise PromptTooLarge(f"prompt has {b['prompt_len']} characters, limit {self.limits.max_prompt_chars}")
        if b["sealed"]:  # we only ever hold the ciphertext; executors check the hash after opening it
            if not isinstance(prompt, bytes) or len(prompt) > 8 * self.limits.max_prompt_chars + 64 * 1024:
                raise PromptTooLarge("sealed prompt is not bytes or is too large")
            if not modes.spec(b["mode"]).sealed(b["require_tee"]):
                raise InvalidParams("sealed prompts go only to attested nodes: set require_tee")
            try:
                recipients = tuple(sorted(sealing.prompt_recipients(prompt)))
            except sealing.SealError as exc:
                raise InvalidParams(str(exc)) from None
        else:
            recipients = None
            if not isinstance(prompt, str):
                raise InvalidParams("prompt must be a string")
            if len(prompt) > self.limits.max_prompt_chars:
                raise PromptTooLarge(f"prompt has {len(prompt)} characters, limit {self.limits.max_prompt_chars}")
            if commitments.prompt_hash(prompt, b["nonce"]) != b["prompt_hash"] or b["prompt_len"] != len(prompt):
                raise MessageError("prompt does not match the signed prompt hash")
        mode = modes.spec(b["mode"])
        mode.check_n(b["n"], self.limits.max_n)
        if mode.round_kind == CROSS_VALIDATION:
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
        return req, recipients, self._deadline_rule(model).member_deadline(params.max_tokens, b["timeout_s"])

    def _deadline_rule(self, model: dict) -> deadlines.DeadlineRule:
        base = model.get("timeout_s") or self.limits.timeout_s
        per = model.get("timeout_per_token_s")
        return deadlines.DeadlineRule(float(base), float(self.limits.timeout_per_token_s if per is None else per))

    async def submit(self, request_raw: bytes, prompt: str) -> dict:
        """Validate, escrow and dispatch. Raises a typed error and changes nothing on bad input."""
        t0 = time.time()
        req, recipients, deadline = await self._validate(request_raw, prompt)
        b = req.body
        rid = b["request_id"]
        self.guard.record(req)
        mode = modes.spec(b["mode"])
        cv, obf = mode.round_kind == CROSS_VALIDATION, mode.pseudonymous
        tee = mode.attested or b["require_tee"]
        size = mode.members(b["n"])  # obfuscated: N+1 in parallel
        amount = self.econ.price * mode.escrowed_runs(b["n"])  # cross-validation: the worst case, rest refunded
        loop = asyncio.get_running_loop()
        try:  # build and draw first: a request that cannot be served never touches the ledger
            rnd = Round(rid, size, deadline, self.limits.reveal_timeout_s,
                        size + self.limits.referee_extra, mode=CROSS_VALIDATION if cv else SAMPLING,
                        verifiers=b["n"] if cv else 0)
            live = Live(req, prompt, rnd, "", amount, t0, first=loop.create_future(), final=loop.create_future(),
                        p=float(self.limits.default_p if b["p"] is None else b["p"]) if cv else 0.0,
                        obfuscated=obf, require_tee=tee,
                        recipients=recipients)
            draw = await self._draw(live, size, "quorum", QUORUM, (), coin=cv, dispatch=False)
            _raise_group_error(await self.ledger.escrow.remote(rid, b["client_id"], amount))
        except BaseException:
            self.guard.forget(rid)
            self.selector.forget.remote(rid)
            raise
        self.rounds[rid] = live
        if obf:  # tickets go out only once the work is paid for
            await self.selector.dispatch_tickets.remote(rid)
        live.det_class = draw["det_class"]
        self.counters["submitted"] += 1
        await self._run(live, rnd.start(draw["selected"], draw["keys"], time.time()))
        spawn(self._tasks, self._clock(live))
        # (returning the executors' ObjectRefs here would let the client race them directly,
        # but handing out borrowed refs costs ~4 ms per submit here: the aggregator's
        # first_output is the faster path)
        return {"request_id": rid, "quorum_size": len(draw["selected"]), "det_class": draw["det_class"],
                "deadline_s": deadline}

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
                live.msgs["reveal_request"] += len(act.node_ids)
                if live.obfuscated:
                    await self.selector.request_reveals.remote(live.round.request_id, list(act.node_ids))
                else:
                    for nid in act.node_ids:
                        ref = (await self._handle(nid)).reveal.remote(live.round.request_id)
                        spawn(self._tasks, self._await_reveal(live, nid, ref))
            elif isinstance(act, (DrawReplacements, DrawReferees, DrawVerifiers, FlipCoin)):
                spawn(self._tasks, self._background(live, act))
            elif isinstance(act, Finalize):
                await self._finalize(live, act.outcome)
        live.wake.set()

    async def _background(self, live: Live, act) -> None:
        try:
            await self._background_step(live, act)
        except Exception as exc:  # never leave a client waiting on a round that cannot proceed
            rnd = live.round
            if rnd.done:
                return
            if isinstance(act, (DrawReplacements, DrawReferees, DrawVerifiers)):
                # a draw that fails is a draw that found nobody: the decision rule takes it from there
                got = (rnd.on_referees([], [], time.time()) if isinstance(act, DrawReferees) else
                       rnd.on_no_replacement(act.role if isinstance(act, DrawReplacements) else QUORUM, time.time()))
                await self._run(live, got)
            else:
                await self._run(live, rnd.abort(f"{type(act).__name__} failed: {type(exc).__name__}: {exc}"))

    async def _background_step(self, live: Live, act) -> None:
        rnd, now = live.round, time.time
        if isinstance(act, FlipCoin):
            seed, proof = await self.selector.reveal_coin.remote(rnd.request_id)
            checked = crossval.flip(seed, rnd.request_id, act.commit_hash, live.p)
            live.coin = {"commit": live.draws[0]["coin_commit"], "seed": seed, "proof": proof,
                         "p": repr(float(live.p)),
                         "node_id": act.node_id, "commit_hash": act.commit_hash, "checked": checked}
            await self._run(live, rnd.on_coin(checked, now()))
        elif isinstance(act, DrawVerifiers):
            d = await self._draw(live, act.count, "verify", QUORUM, act.exclude, allow_fewer=True)
            await self._run(live, rnd.on_verifiers(d["selected"], d["keys"], now()))
        elif isinstance(act, DrawReferees):  # attested referees settle disputes wherever they exist
            d = await self._draw(live, act.count, "referee", REFEREE, act.exclude, allow_fewer=True, attested=True)
            if not d["selected"] and not live.require_tee:
                d = await self._draw(live, act.count, "referee:any", REFEREE, act.exclude, allow_fewer=True)
            await self._run(live, rnd.on_referees(d["selected"], d["keys"], now()))
        else:
            k = sum(1 for m in rnd.members.values() if m.role == act.role)
            d = await self._draw(live, act.count, f"replace:{act.role}:{k}", act.role, act.exclude, allow_fewer=True)
            for nid in act.exclude:  # calls of timed-out members will never be used
                if nid in live.calls and rnd.members[nid].state == "timed-out":
                    _cancel(live.calls.pop(nid))
            await self._run(live, rnd.on_replacements(d["selected"], d["keys"], act.role, now(), act.count))

    async def _draw(self, live: Live, count: int, label: str, role: str, exclude: tuple,
                    allow_fewer: bool = False, coin: bool = False, dispatch: bool = True,
                    attested: bool = False) -> dict:
        """Ask the selector for members: node ids, or pseudonyms in obfuscated mode."""
        b, rid = live.request.body, live.round.request_id
        det = live.det_class or None
        within = live.recipients  # a sealed prompt can be served only by the nodes it is sealed to
        if not live.obfuscated:
            d = await self.selector.draw.remote(rid, b["model_id"], count, label=label, exclude=exclude,
                                                det_class=det, allow_fewer=allow_fewer, coin=coin,
                                                require_attested=attested or live.require_tee, within=within)
            live.draws.append(d)
            return d
        d = await self.selector.draw_obfuscated.remote(rid, b["model_id"], count, role, label, live.request.raw,
                                                       live.prompt, det, allow_fewer, dispatch,
                                                       attested or live.require_tee, within)
        live.mapping.update(d["mapping"])
        live.msgs["dispatch"] += len(d["pseudonyms"])
        return {"det_class": d["det_class"], "selected": d["pseudonyms"], "keys": d["keys"]}

    async def _handle(self, node_id: str):
        if node_id not in self._handles:
            self._handles.update(await self.registry.handles.remote())
        return self._handles[node_id]

    async def _dispatch(self, live: Live, act: Dispatch) -> None:
        if live.obfuscated:  # the selector already handed out the tickets
            async with self._joined:
                self._joined.notify_all()
            return
        # verifiers check the claim by prefill, unless it is sealed to the client: then they regenerate
        claimed = live.outputs[act.verify_of].get("token_ids") if act.verify_of else None
        live.msgs["dispatch"] += len(act.node_ids)
        for nid in act.node_ids:
            ref = (await self._handle(nid)).execute.remote(live.request.raw, live.prompt, act.role, claimed,
                                                           live.round.members[nid].key)
            live.calls[nid] = ref
            spawn(self._tasks, self._await_result(live, nid, ref))

    def _signed_output(self, live: Live, node_id: str) -> dict:
        m = live.round.members[node_id]
        return {"node_id": node_id, "pubkey": m.key, "envelope": live.results[node_id],
                "output": live.outputs[node_id]}

    # --- incoming results and reveals (returned by calls, or pushed in obfuscated mode)
    async def _await_result(self, live: Live, nid: str, ref) -> None:
        try:
            res = await ref
        except asyncio.CancelledError:
            return
        except Exception:  # an error counts as no answer
            await self._run(live, live.round.on_failure(nid, time.time()))
            return
        if isinstance(res, dict) and "refusal" in res:
            await self._accept_refusal(live, nid, res["refusal"])
            return
        await self._accept_result(live, nid, res)

    async def _accept_refusal(self, live: Live, nid: str, raw: bytes, pushed: bool = False) -> None:
        """A member says the client's sealed prompt does not open for it. Only a sealed
        request can be refused, and only attested members serve those, so the refusal
        ends the round unresolved (escrow refunded) and nobody is slashed for it."""
        if pushed:
            self._authentic(live, nid, raw, "refusal")
        try:
            env = messages.open_envelope(raw, "refusal")
            self._check_member_msg(live, env, nid)
            if not live.request.body["sealed"]:
                raise MessageError("only a sealed prompt can be refused")
            if live.round.members[nid].state != RUNNING:  # refusing after committing is not a refusal
                raise MessageError("a member that committed cannot refuse")
            self.guard.check_and_record(env)
        except Exception:
            await self._run(live, live.round.on_failure(nid, time.time()))
            return
        live.msgs["refusal"] += 1
        await self._run(live, live.round.abort(f"{nid} refused the client's sealed prompt: {env.body['reason']}"))

    async def _accept_result(self, live: Live, nid: str, res: Any, pushed: bool = False) -> None:
        rnd = live.round
        if pushed:  # anyone can push: only the member's own fresh message may count against it
            env = self._authentic(live, nid, res["envelope"], "result")
        try:
            env = messages.open_envelope(res["envelope"], "result")
            self._check_member_msg(live, env, nid)
            out = res["output"]
            if "sealed" not in out and \
                    commitments.output_digest(out["token_ids"], out["text"]) != env.body["output_digest"]:
                raise MessageError("output does not match the signed digest")
            self.guard.check_and_record(env)
        except Exception:  # a forged or malformed answer counts as no answer
            await self._run(live, rnd.on_failure(nid, time.time()))
            return
        live.msgs["result"] += 1
        self.counters["messages"] += 1
        try:
            actions = rnd.on_result(nid, env.sender, env.body["commit_hash"], time.time())
        except MessageError:
            return  # late (already timed out) or out of stage: ignored, and kept out of the receipt
        live.results[nid], live.outputs[nid] = env.raw, out
        live.methods[nid] = res.get("method", "generate")
        await self._run(live, actions)

    async def _await_reveal(self, live: Live, nid: str, ref) -> None:
        try:
            raw = await ref
        except asyncio.CancelledError:
            return
        except Exception:
            await self._run(live, live.round.on_failure(nid, time.time()))
            return
        await self._accept_reveal(live, nid, raw)

    async def _accept_reveal(self, live: Live, nid: str, raw: bytes, pushed: bool = False) -> None:
        rnd = live.round
        if pushed:
            self._authentic(live, nid, raw, "reveal")
        try:
            env = messages.open_envelope(raw, "reveal")
            self._check_member_msg(live, env, nid)
            self.guard.check_and_record(env)
        except Exception:
            await self._run(live, rnd.on_failure(nid, time.time()))
            return
        live.msgs["reveal"] += 1
        self.counters["messages"] += 1
        try:
            actions = rnd.on_reveal(nid, env.sender, env.body["commitment"], env.body["salt"], time.time())
        except MessageError:
            return  # late: the member already timed out; its reveal is not evidence of this round
        live.reveals[nid] = env.raw
        await self._run(live, actions)

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

    async def _pushed(self, request_id: str, pseudonym: str) -> Live:
        """The round a pushed message belongs to, once its member is known (tickets
        go out before the draw returns here). Raises UnknownSender otherwise."""
        try:
            async with self._joined:
                await asyncio.wait_for(self._joined.wait_for(lambda: (
                    request_id in self.rounds and pseudonym in self.rounds[request_id].round.members)), 30.0)
        except asyncio.TimeoutError:
            raise UnknownSender(f"{pseudonym} is not a member of {request_id}") from None
        live = self.rounds[request_id]
        if not live.obfuscated:
            raise UnknownSender("pushed messages are only for obfuscated rounds")
        return live

    async def obf_result(self, res: dict) -> None:
        env = messages.open_envelope(res["envelope"], "result")
        live = await self._pushed(env.request_id, env.body["node_id"])
        await self._accept_result(live, env.body["node_id"], res, pushed=True)

    async def obf_reveal(self, raw: bytes) -> None:
        env = messages.open_envelope(raw, "reveal")
        live = await self._pushed(env.request_id, env.body["node_id"])
        await self._accept_reveal(live, env.body["node_id"], raw, pushed=True)

    async def obf_refusal(self, raw: bytes) -> None:
        env = messages.open_envelope(raw, "refusal")
        live = await self._pushed(env.request_id, env.body["node_id"])
        await self._accept_refusal(live, env.body["node_id"], raw, pushed=True)

    async def obf_failure(self, request_id: str, pseudonym: str) -> None:
        live = await self._pushed(request_id, pseudonym)
        await self._run(live, live.round.on_failure(pseudonym, time.time()))

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
    async def _settle(self, live: Live, outcome) -> list[int]:
        rnd, b = live.round, live.request.body
        if live.obfuscated:
            slashed = [p for p, _ in outcome.slashes]
            if slashed:  # unblind only whom we must slash, and hold the selector to its commitment
                answer = await self.selector.unblind.remote(rnd.request_id, slashed)
                for pid in slashed:
                    node_id, salt, digest, evidence = answer[pid]
                    obfuscation.check_unblinding(live.mapping, rnd.members[pid].key, node_id, salt, digest)
                    live.unblinded[pid] = [node_id, salt, digest, evidence] if digest else [node_id, salt]
            res = await self.selector.settle_obfuscated.remote(
                rnd.request_id, b["client_id"], live.escrowed, list(outcome.paid), list(outcome.slashes),
                list(outcome.beneficiaries), list(outcome.referees))
            return res["seqs"]
        settlement = Settlement(
            request_id=rnd.request_id, client_id=b["client_id"], escrowed=live.escrowed,
            paid_nodes=tuple(outcome.paid), slashes=tuple(Slash(n, r) for n, r in outcome.slashes),
            beneficiaries=tuple(outcome.beneficiaries), referees=tuple(outcome.referees))
        result = await self.ledger.settle.remote(settlement)
        _raise_group_error(result)
        if outcome.slashes:
            stakes = {a.split("/", 1)[1]: v for a, v in result.balances.items() if a.startswith("collateral/")}
            await self.registry.set_stakes.remote(stakes)
            for nid, reason in outcome.slashes:
                if reason in LATE_REASONS:  # an unresponsive node stops being drawn until it answers a challenge
                    await self.registry.set_live.remote(nid, False)
                    await self.revive(nid)
        return list(result.seqs)

    async def revive(self, node_id: str) -> None:
        """Challenge a node taken out for lateness until it answers (then it is drawn again)."""
        if node_id not in self._reviving:
            self._reviving[node_id] = spawn(self._tasks, self._revive(node_id))

    async def _revive(self, node_id: str) -> None:
        try:
            while True:
                await asyncio.sleep(self.limits.liveness_interval_s)
                try:
                    nonce = await self.registry.liveness_challenge.remote(node_id)
                    sig = await asyncio.wait_for(
                        (await self._handle(node_id)).answer_liveness.remote(nonce), self.limits.reveal_timeout_s)
                    if await self.registry.answer_liveness.remote(node_id, sig):
                        return
                except Exception:  # still stalled (or gone): try again next interval
                    continue
        finally:
            self._reviving.pop(node_id, None)

    async def _finalize(self, live: Live, outcome) -> None:
        rnd = live.round
        live.timings["decided"] = time.time()
        try:
            seqs = await self._settle(live, outcome)
        except obfuscation.UnblindingRejected as exc:  # the selector lied: slash nobody on its word
            await self._refuse_lying_selector(live, exc)
            return
        if live.obfuscated:  # the draws stay secret: the selector's signed pseudonym record stands in
            selection = {"vrf_key": b"", "draws": [],
                         "obfuscated": await self.selector.mapping_record.remote(rnd.request_id)}
        else:
            if self._vrf_key is None:
                self._vrf_key = await self.selector.vrf_public.remote()
            selection = {"vrf_key": self._vrf_key, "draws": live.draws,
                         "coin_commit": live.draws[0].get("coin_commit") if live.draws else None}
        decision = dict(outcome.record(), mode=live.request.body["mode"], coin=live.coin, unblinded=live.unblinded)
        committed = [nid for nid in rnd.members if nid in live.results]
        receipt = receipts.build(rnd.request_id, live.request.raw, selection, [live.results[n] for n in committed],
                                 [live.reveals[n] for n in committed if n in live.reveals], decision,
                                 {"entries": seqs}, time.time(), self.key)
        self.counters[outcome.status] += 1
        answer = live.outputs.get(outcome.output_node) if outcome.output_node else None
        # sealed outputs cannot be checked here: hand over every paid member's, so one
        # garbled ciphertext cannot cost the client an answer the quorum agreed on
        alternates = {n: live.outputs[n] for n in outcome.paid if n in live.outputs and n != outcome.output_node} \
            if answer is not None and "sealed" in answer else {}
        if not live.first.done():  # nobody answered: unblock waiters with the outcome
            live.first.set_result(None)
        live.final.set_result({"receipt": receipt, "output": answer, "alternates": alternates, "status": outcome.status,
                               "branch": outcome.branch, "methods": dict(live.methods), "messages": dict(live.msgs),
                               "timings": dict(live.timings, submitted=live.submitted_at)})
        for ref in live.calls.values():
            _cancel(ref)
        self._finished.append(rnd.request_id)
        while len(self._finished) > self.limits.retain_rounds:  # bounded memory; ids stay spent
            old = self._finished.popleft()
            self.rounds.pop(old, None)
            self.guard.forget_messages(old)
            self.selector.forget.remote(old)

    async def _refuse_lying_selector(self, live: Live, exc: Exception) -> None:
        rnd, b = live.round, live.request.body
        refund = Settlement(request_id=rnd.request_id, client_id=b["client_id"], escrowed=live.escrowed,
                            paid_nodes=(), slashes=(), beneficiaries=(), referees=())
        _raise_group_error(await self.ledger.settle.remote(refund))
        self.counters["failed"] += 1
        err = SelectorMisbehaved(f"request {rnd.request_id}: {exc}; nobody was slashed, the escrow was refunded")
        if not live.first.done():
            live.first.set_result(None)
        live.final.set_exception(err)
        self._finished.append(rnd.request_id)

    def debug_state(self, request_id: str) -> bytes:
        """Everything this actor holds about a round, pickled (privacy audits, tests)."""
        import pickle

        live = self._live(request_id)
        state = {k: v for k, v in vars(live).items() if k not in ("first", "final", "wake", "calls")}
        return pickle.dumps(state)


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
