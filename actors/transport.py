"""Member transports: how the aggregator reaches the members of a round.

The aggregator's core is the same for every mode; what differs is how members
are drawn, reached and paid, and that is all here, behind one interface:

    draw(live, count, label, role, exclude, ...) -> {det_class, selected, keys}
    release(live)                      after escrow: let the drawn members start
    dispatch(live, act)                send a Dispatch of the round
    request_reveals(live, member_ids)  ask members to open their commitments
    settle(live, outcome) -> (seqs, Effects)   money, with unblinding inside
    selection(live) -> dict            the draw record a receipt carries
    close(live)                        the round is over: stop waiting on members

`Direct`: members are nodes; the aggregator calls their executors and reads
their answers from the calls. `Obfuscated`: members are pseudonyms; the
selector hands out sealed tickets and relays reveal requests, members push
their messages (see Aggregator.obf_*), only slashed pseudonyms are unblinded
(checked against the mapping commitment), and the ledger resolves payments
through the selector's bindings, checked against the same commitment.

What a settlement means (accounts, registry effects) is protocols.settlement's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from actors.background import spawn
from actors.outbox import Outbox
from protocols import obfuscation, settlement
from protocols.errors import UnknownSender
from protocols.sampling import QUORUM


class Direct:
    pseudonymous = False

    def __init__(self, agg: Any):
        self.agg = agg
        self._reveal_boxes: dict[str, Outbox] = {}

    def _reveals_to(self, nid: str) -> Outbox:
        box = self._reveal_boxes.get(nid)
        if box is None:
            async def send(rids, nid=nid):
                return await (await self.agg.handle(nid)).reveal_many.remote(rids)
            box = self._reveal_boxes[nid] = Outbox(send, self.agg.limits.max_batch_calls)
        return box

    def stats(self) -> dict:
        calls = sum(b.calls for b in self._reveal_boxes.values())
        batches = sum(b.batches for b in self._reveal_boxes.values())
        return {"reveal": {"calls": calls, "batches": batches,
                           "per_batch": round(calls / batches, 2) if batches else 0.0}}

    async def draw(self, live, count: int, label: str, role: str, exclude: tuple, allow_fewer: bool = False,
                   coin: bool = False, attested: bool = False, hold: bool = False) -> dict:
        a = self.agg
        d = await a.outbox["draw"].call(dict(  # with the other draws of this tick, in one call
            request_id=live.round.request_id, model_id=live.model_id, n=count, label=label, exclude=exclude,
            det_class=live.det_class or None, allow_fewer=allow_fewer, coin=coin, tolerant=live.tolerance is not None,
            require_attested=attested or live.require_tee, within=live.recipients, owner=self.agg.shard))
        live.draws.append(d)
        return d

    async def release(self, live) -> None:
        return None

    async def dispatch(self, live, act) -> None:
        # verifiers check the claim by prefill, unless it is sealed to the client: then they regenerate
        claimed = live.outputs[act.verify_of].get("token_ids") if act.verify_of else None
        live.msgs["dispatch"] += len(act.node_ids)
        stream = live.stream and claimed is None and act.role == QUORUM
        # a tolerant round's referees also check each revealed quorum claim (tolerant check)
        judge = {"claims": self.agg.claims(live), "tolerance": live.tolerance} \
            if act.role != QUORUM and live.tolerance is not None else {}
        # (one call per member: a streaming execute_many, answering each request as it
        # finished, measured no faster here, since Ray reports each yielded item like a return)
        for nid in act.node_ids:
            ref = (await self.agg.handle(nid)).execute.remote(live.request.raw, live.prompt, act.role, claimed,
                                                              live.round.members[nid].key, stream, self.agg.shard,
                                                              **judge)
            live.calls[nid] = ref
            spawn(self.agg._tasks, self._await_result(live, nid, ref))

    async def request_reveals(self, live, member_ids) -> None:
        for nid in member_ids:  # one call per node per tick carries every reveal it owes
            spawn(self.agg._tasks, self._await_reveal(live, nid, self._reveals_to(nid).call(live.round.request_id)))

    async def _await_result(self, live, nid: str, ref) -> None:
        try:
            res = await ref
        except asyncio.CancelledError:
            return
        except Exception as exc:  # an error counts as no answer
            if _process_died(exc):  # not drawn again until it is back under proven keys
                spawn(self.agg._tasks, self.agg._take_out(nid))
            await self.agg.member_failed(live, nid)
            return
        if isinstance(res, dict) and "refusal" in res:
            await self.agg.accept_refusal(live, nid, res["refusal"])
        else:
            await self.agg.accept_result(live, nid, res)

    async def _await_reveal(self, live, nid: str, ref) -> None:
        try:
            raw = await ref
        except asyncio.CancelledError:
            return
        except Exception:
            await self.agg.member_failed(live, nid)
            return
        await self.agg.accept_reveal(live, nid, raw)

    def drop(self, live, member_ids) -> None:
        """Calls of timed-out members will never be used."""
        for nid in member_ids:
            if nid in live.calls:
                _cancel(live.calls.pop(nid))

    async def settle(self, live, outcome) -> tuple[list[int], settlement.Effects]:
        s = settlement.settlement_of(outcome, live.round.request_id, live.client_id, live.escrowed)
        result = await self.agg.outbox["settle"].call(s)
        return list(result.seqs), settlement.effects(outcome, result.balances)

    async def selection(self, live) -> dict:
        return {"vrf_key": await self.agg.vrf_public(), "draws": live.draws,
                "coin_commit": live.draws[0].get("coin_commit") if live.draws else None}

    def close(self, live) -> None:
        for ref in live.calls.values():
            _cancel(ref)


class Obfuscated(Direct):
    pseudonymous = True

    def __init__(self, agg: Any):
        super().__init__(agg)
        self._joined = asyncio.Condition()  # wakes pushes that arrive before their member is known

    async def draw(self, live, count: int, label: str, role: str, exclude: tuple, allow_fewer: bool = False,
                   coin: bool = False, attested: bool = False, hold: bool = False) -> dict:
        # the selector excludes nodes that already served this request itself (it alone knows them)
        d = await self.agg.selector.draw_obfuscated.remote(
            live.round.request_id, live.model_id, count, role, label, live.request.raw, live.prompt,
            live.det_class or None, allow_fewer, not hold, attested or live.require_tee, live.recipients,
            self.agg.shard)
        live.mapping.update(d["mapping"])
        live.msgs["dispatch"] += len(d["pseudonyms"])
        return {"det_class": d["det_class"], "selected": d["pseudonyms"], "keys": d["keys"]}

    async def release(self, live) -> None:  # tickets go out only once the work is paid for
        await self.agg.selector.dispatch_tickets.remote(live.round.request_id)

    async def dispatch(self, live, act) -> None:  # the selector already handed out the tickets
        async with self._joined:
            self._joined.notify_all()

    async def request_reveals(self, live, member_ids) -> None:
        await self.agg.selector.request_reveals.remote(live.round.request_id, list(member_ids))

    def drop(self, live, member_ids) -> None:
        return None

    async def member_of(self, rounds: dict, request_id: str, pseudonym: str, wait_s: float = 30.0):
        """The round a pushed message belongs to, once its member is known (tickets go
        out before the draw returns to the aggregator). Raises UnknownSender otherwise."""
        try:
            async with self._joined:
                await asyncio.wait_for(self._joined.wait_for(lambda: (
                    request_id in rounds and pseudonym in rounds[request_id].round.members)), wait_s)
        except asyncio.TimeoutError:
            raise UnknownSender(f"{pseudonym} is not a member of {request_id}") from None
        live = rounds[request_id]
        if live.transport is not self:
            raise UnknownSender("pushed messages are only for obfuscated rounds")
        return live

    async def settle(self, live, outcome) -> tuple[list[int], settlement.Effects]:
        rnd = live.round
        slashed = [p for p, _ in outcome.slashes]
        if slashed:  # unblind only whom we must slash, and hold the selector to its commitment
            answer = await self.agg.selector.unblind.remote(rnd.request_id, slashed)
            for pid in slashed:
                node_id, salt, digest, evidence = answer[pid]
                obfuscation.check_unblinding(live.mapping, rnd.members[pid].key, node_id, salt, digest)
                live.unblinded[pid] = [node_id, salt, digest, evidence] if digest else [node_id, salt]
        s = settlement.settlement_of(outcome, rnd.request_id, live.client_id, live.escrowed)
        result = await self.agg.ledger.settle_members.remote(s, live.mapping)
        node_of = {pid: u[0] for pid, u in live.unblinded.items()}
        return list(result.seqs), settlement.effects(outcome, result.balances, node_of)

    async def selection(self, live) -> dict:
        # the draws stay secret: the selector's signed pseudonym record stands in
        return {"vrf_key": b"", "draws": [],
                "obfuscated": await self.agg.selector.mapping_record.remote(live.round.request_id)}

    def close(self, live) -> None:
        return None


def _process_died(exc: BaseException) -> bool:
    import ray

    return isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError))


def _cancel(ref) -> None:
    try:
        import ray

        ray.cancel(ref)
    except Exception:
        pass
