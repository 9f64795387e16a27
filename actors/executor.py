"""NodeExecutor: one engine, one node key; runs requests, commits, then reveals.

The executor checks every request itself (client signature, prompt hash, model
hash, size) before spending compute, runs its requests together on one engine
loop (engines.batching: requests join and leave between decode steps, and the
tokens are the same as alone), hands each output back with a signed commitment,
and opens the commitment only when the aggregator asks for the reveal.

`behaviour` makes a node misbehave for experiments; see BEHAVIOURS.

Why over 400 lines: one actor holds one node's keys (current, next, recently
retired) and every way work reaches it — direct calls, sealed tickets, streamed
chunks, liveness and attestation challenges, rejoining after a restart — and
all of them sign with those keys; the rules they follow are in protocols/.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import random
import time
from typing import Any

from actors.authority import Gatekeeper, Guarded, guarded, node_call
from actors.engines.batching import Batcher
from actors.outbox import answer_each
from protocols import admission, commitments, messages, obfuscation, sealing
from protocols.canonical import pack
from protocols.crypto import SigningKey
from protocols.sealing import KemKey
from protocols.determinism import class_id
from protocols.errors import MessageError, ModelHashMismatch, NodeError, SealedPromptRejected, UnknownRequest
from protocols.params import SamplingParams

BEHAVIOURS = {
    "honest": "runs the registered model faithfully",
    "substitute": "runs a different, smaller model but claims the registered one",
    "requantize": "runs the registered weights rounded to lower precision",
    "random": "returns random tokens without running the model",
    "truncate": "runs the model faithfully, then claims only the first half of its output",
    "alter-prompt": "runs the model on another prompt (the request's with words added) and claims this one's",
    "alter-params": "runs the model with other sampling parameters (greedy for sampled, sampled for greedy)",
    "copy": "runs nothing; copies another node's commit hash from the public board",
    "silent": "accepts requests and never answers",
    "no-reveal": "commits like an honest node, then never reveals",
}

RETIRED_HOLD_S = 600.0  # a retired key signs for rounds drawn under it this long (a round's whole life)
RETIRED_KEYS = 64  # and no more of them (epochs of seconds in tests; hours in a real network)

# behaviours that run some model and claim the registered one (the rest claim without running it)
_CLAIMS_MODEL = ("honest", "substitute", "requantize", "truncate", "alter-prompt", "alter-params")


class NodeExecutor(Guarded):
    """One node. Only an aggregator shard may make it run or reveal, only the selector hand it
    tickets, only the epoch keeper rotate its keys, only the operator change its behaviour
    (actors.authority); its own calls to the registry are signed with its node key.
    `control`: the network's roster (deploy gives it), to know those keys."""

    def __init__(self, node_id: str, engine_spec: dict, behaviour: str = "honest",
                 aggregator_name: str | None = None, namespace: str | None = None,
                 key_seed: bytes | None = None, attestation: dict | None = None, registry_name: str | None = None,
                 control: dict | None = None):
        self.gate = Gatekeeper("executor", control)
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; choose from {sorted(BEHAVIOURS)}")
        self.node_id = node_id
        self.engine_spec = dict(engine_spec)
        self.behaviour = behaviour
        # one name per aggregator shard; pushes go to the shard that sent the work (`reply_to`)
        self.aggregator_names = [aggregator_name] if isinstance(aggregator_name, str) else list(aggregator_name or [])
        self.namespace = namespace
        self.key = SigningKey(key_seed or os.urandom(32))
        self._engine_loop = Batcher(name=f"engine-{node_id}")  # the one thread the engine runs on
        self.kem = KemKey(os.urandom(32))  # HPKE key: tickets (and sealed prompts) are sealed to it
        # key rotation: the next epoch's keys (attested, not yet in use) and retired ones, kept
        # while a round drawn under them can still be running (short epochs, slow rounds)
        self._next: tuple[SigningKey, KemKey] | None = None
        self._retired: collections.deque = collections.deque(maxlen=RETIRED_KEYS)  # (key, kem, retired at)
        self.attestation_spec = dict(attestation or {})  # {"provider": "simulated"|"nvidia", ...}
        self._weights_key: bytes | None = None  # released by the registry after attestation; memory only
        # (request id, member id) -> (commitment, salt, role, signing key, fingerprint)
        self._pending: dict[tuple[str, str], tuple[bytes, bytes, str, SigningKey, bytes]] = {}
        self._inbox: collections.deque = collections.deque(maxlen=256)
        self._seen = messages.ReplayGuard()
        self._executed = 0
        self._calls: collections.Counter = collections.Counter()  # request id -> protocol calls received
        self._agg_handles: dict[int, Any] = {}
        self._reply_of: dict[str, int] = {}  # request id -> the shard that holds its round
        self.delay_s = 0.0  # experiments only (set_delay)
        self._prompt_tokens: dict[str, int] = {}  # request id -> prompt length in tokens (usage)
        self._rejoin(registry_name)

    def _rejoin(self, registry_name: str | None) -> None:
        """Restarted by Ray: the keys the registry holds for this node died with the old
        process. Ask to rejoin; the registry challenges this actor for the new keys and
        keeps it out of every draw until they are proven (see ModelRegistry.rejoin)."""
        import ray

        if registry_name and ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed:
            ray.get_actor(registry_name, namespace=self.namespace).rejoin.remote(self.node_id)

    # --- lifecycle
    async def ready(self) -> dict:
        """Load the engine (once) and describe this node for admission."""
        if self.engine is None:
            from actors.attestation import code_hash
            from actors.engines import make_engine

            code_hash()  # measured at launch: the code this process runs

            engine = make_engine(self.engine_spec)
            if not self.engine_spec.get("encrypted_path"):
                await self._on_engine(engine.load, self._variant())
            elif hasattr(engine, "prepare"):  # encrypted weights wait for `unlock`; the rest need not
                await self._on_engine(engine.prepare)
            self.engine = engine
        fp = self.engine.fingerprint()
        import ray

        where = {"ray_node": None, "gpu_ids": [], "placement_group": None}  # (a node agent runs without Ray)
        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            where = {"ray_node": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                     "placement_group": ctx.get_placement_group_id()}
        return {"node_id": self.node_id, "pubkey": self.key.public, "kem_pub": self.kem.public, "fingerprint": fp,
                "det_class": class_id(fp), "behaviour": self.behaviour, "pid": os.getpid(),
                "chat_template": self._chat_template(), **where}

    def public_keys(self) -> dict:
        """The keys this process signs and opens with (a restarted node has new ones)."""
        return {"pubkey": self.key.public, "kem_pub": self.kem.public}

    def _chat_template(self) -> str | None:
        """The jinja chat template the engine wraps prompts with (None: prompts go in raw)."""
        if not getattr(self.engine, "chat_template", False):
            return None
        tok = getattr(self.engine, "_tok", None)
        return getattr(tok, "chat_template", None) if tok is not None else None

    def _variant(self) -> str:
        return self.behaviour if self.behaviour in ("substitute", "requantize") else "honest"

    @guarded("executor")
    async def unlock(self, registry) -> None:
        """Encrypted weights: get the key (sealed to our attested HPKE key) and load. The
        registry releases it only to a call signed with this node's registered key that
        answers a fresh challenge of its own."""
        nonce = await registry.challenge.remote(self.node_id, auth=self._call("challenge", self.node_id))
        sealed = await registry.release_weights_key.remote(
            self.node_id, auth=self._call("release_weights_key", self.node_id, nonce=nonce))
        info = sealing.weights_key_info(self.engine.model_id, self.node_id)
        self._weights_key = self._open_sealed(lambda kem: kem.open(sealed, info))
        await self._on_engine(self.engine.load, self._variant(), weights_key=self._weights_key)

    @property
    def engine(self):
        """The loaded engine (None before `describe`); the engine loop is the one place it lives."""
        return self._engine_loop.engine

    @engine.setter
    def engine(self, engine) -> None:
        self._engine_loop.engine = engine

    def _on_engine(self, fn, *args, **kw):
        """Run engine work on the engine loop's thread, between decode steps."""
        return asyncio.wrap_future(self._engine_loop.call(fn, *args, **kw))

    def attest(self, nonce: bytes) -> bytes:
        """Evidence binding this node's current keys and the verifier's nonce."""
        return self._evidence(self.key, self.kem.public, nonce)

    def _evidence(self, signing_key: SigningKey, kem_pub: bytes, nonce: bytes) -> bytes:
        from actors.attestation import NvidiaGpuProvider, SimulatedProvider, code_hash

        spec = self.attestation_spec
        measurements = {"code_hash": code_hash(), "model_hash": self.engine.model_hash(),
                        "engine": self.engine.name}
        if spec.get("provider") == "simulated":
            provider = SimulatedProvider(spec["root_seed"], self.node_id, measurements, spec.get("tcb_version", 1))
        elif spec.get("provider") == "nvidia":
            provider = NvidiaGpuProvider(signing_key, measurements, spec.get("nras_url", ""))
        else:
            raise NotImplementedError(f"node {self.node_id} has no attestation provider")
        return provider.evidence(signing_key.public, kem_pub, nonce)

    # --- key rotation: prepare (attest the new keys) -> registry switches -> commit
    @guarded("executor")
    def prepare_rotation(self, nonce: bytes) -> dict:
        """Fresh keys for the next epoch and evidence binding them; the current keys
        stay in use until `commit_rotation`, and both sign for the draws that name them."""
        self._next = (SigningKey(os.urandom(32)), KemKey(os.urandom(32)))
        key, kem_pub = self._next[0], self._next[1].public
        evidence = self._evidence(key, kem_pub, nonce)
        # the registry switches keys only on this node's word: a call signed with its current
        # key, answering the same challenge the evidence binds
        auth = self._call("renew", self.node_id, key.public, kem_pub, evidence, nonce=nonce)
        return {"pubkey": key.public, "kem_pub": kem_pub, "evidence": evidence, "auth": auth}

    @guarded("executor")
    def commit_rotation(self) -> dict:
        """The registry accepted the new keys: make them current; the old ones stay for the rounds
        drawn under them (RETIRED_HOLD_S, at most RETIRED_KEYS of them)."""
        if self._next is None:
            raise NodeError("no key rotation was prepared")
        self._retired.appendleft((self.key, self.kem, time.time()))
        (self.key, self.kem), self._next = self._next, None
        return {"pubkey": self.key.public, "kem_pub": self.kem.public}

    @guarded("executor")
    def abort_rotation(self) -> None:
        self._next = None

    def _call(self, method: str, *args, nonce: bytes | None = None) -> bytes:
        """This node's signed call to the registry (its registered key, as role "node")."""
        return node_call(self.key, self.node_id, self.gate.roster.network, "registry", method, args, nonce)

    def _keysets(self) -> list[tuple[SigningKey, KemKey]]:
        now = time.time()
        while self._retired and now - self._retired[-1][2] > RETIRED_HOLD_S:
            self._retired.pop()
        return [(self.key, self.kem)] + ([self._next] if self._next else []) + [(k, m) for k, m, _ in self._retired]

    def _signer(self, public: bytes | None) -> SigningKey:
        """The key a draw named for this node (current, next or a recently retired epoch)."""
        if public is None:
            return self.key
        for sk, _ in self._keysets():
            if sk.public == public:
                return sk
        raise NodeError(f"{self.node_id} holds no key {public.hex()[:16]}…: drawn under a retired epoch")

    def _open_sealed(self, open_with):
        """Open something sealed to one of this node's HPKE keys (current first)."""
        err = None
        for _, kem in self._keysets():
            try:
                return open_with(kem)
            except sealing.SealError as exc:
                err = exc
        raise err

    def answer_liveness(self, nonce: bytes) -> bytes:
        """Sign the registry's liveness challenge (a silent node stays silent)."""
        from protocols import liveness

        if self.behaviour == "silent":
            raise NodeError(f"{self.node_id} is not answering")
        return liveness.answer(self.key, self.node_id, nonce)

    @guarded("executor")
    async def set_behaviour(self, behaviour: str) -> None:
        """Experiments only: change how this node answers (engine variants need a reload)."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}")
        if behaviour in ("substitute", "requantize") or self.engine.variant != "honest":
            key = {"weights_key": self._weights_key} if self._weights_key else {}
            await self._on_engine(self.engine.load,
                                  behaviour if behaviour in ("substitute", "requantize") else "honest", **key)
        self.behaviour = behaviour

    @guarded("executor")
    def set_delay(self, seconds: float) -> None:
        """Experiments only: start every request this much later (a slow node)."""
        self.delay_s = max(0.0, float(seconds))

    def stats(self) -> dict:
        return {"node_id": self.node_id, "executed": self._executed, "behaviour": self.behaviour,
                "batching": self._engine_loop.stats()}

    # --- protocol
    def _check_request(self, request_raw: bytes, prompt) -> tuple[admission.Request, str]:
        """protocols.admission's node rules; a sealed prompt is opened, then its hash checked.
        Returns (request, plaintext prompt)."""
        served = self.engine.model_hash() if self.behaviour in _CLAIMS_MODEL else None
        try:
            req = admission.admit_at_node(request_raw, prompt, served)
        except ModelHashMismatch:
            raise ModelHashMismatch("request names a model hash this node does not serve") from None
        if req.sealed:
            sealed, rid = prompt, req.request_id
            try:
                prompt, secret = self._open_sealed(lambda kem: sealing.open_prompt(sealed, rid, self.node_id, kem))
            except (MessageError, TypeError, KeyError) as exc:
                raise SealedPromptRejected(rid, f"sealed prompt does not open for {self.node_id}: {exc}") from None
            try:
                admission.check_prompt_hash(req, prompt, secret)
            except MessageError:
                raise SealedPromptRejected(rid, "sealed prompt does not match the signed prompt hash") from None
        body = req.body
        self._seen.check_and_record(req)
        self._inbox.append((body["request_id"], request_raw, "<sealed>" if body["sealed"] else prompt))
        return req, prompt

    async def _run(self, body: dict, prompt: str, claimed: list[int] | None, stream=None):
        """Produce (token ids, text, method, seconds) as this node's behaviour dictates.
        `stream`: a Streamer the engine feeds tokens to as it makes them."""
        params = SamplingParams.from_wire(body["params"])
        if self.behaviour == "alter-prompt":
            prompt = prompt + " and more"
        elif self.behaviour == "alter-params":
            params = SamplingParams(max_tokens=params.max_tokens) if not params.greedy else \
                SamplingParams(max_tokens=params.max_tokens, temperature=0.9).with_seed_for(body["request_id"] + "x")
        if self.behaviour == "silent":
            await asyncio.Event().wait()  # never answers; the aggregator times it out
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        t0 = time.perf_counter()
        method, fingerprint = "generate", b""  # (a verifier that accepts by prefill made no states of its own)
        if self.behaviour == "random":
            rng = random.Random(os.urandom(16))
            token_ids = [rng.randrange(256) for _ in range(params.max_tokens)]
            text = self._detokenize(token_ids)
        elif self.behaviour == "copy":  # lazy: approves a claim unchecked, or has nothing
            token_ids = list(claimed) if claimed is not None else []
            text = self._detokenize(token_ids)
        else:
            verdict = None
            if claimed is not None and hasattr(self.engine, "verify_prefill"):
                verdict = await self._on_engine(self.engine.verify_prefill, prompt, params, list(claimed))
            if verdict is not None and verdict.accepted:
                token_ids, text, method = list(claimed), self._detokenize(list(claimed)), "prefill"
            else:
                gen = await asyncio.wrap_future(self._engine_loop.generate(prompt, params, stream))
                self._prompt_tokens[body["request_id"]] = len(gen.prompt_token_ids)
                if stream is not None:
                    await stream.close(gen.token_ids)
                token_ids, text, fingerprint = gen.token_ids, gen.text, gen.fingerprint
                if self.behaviour == "truncate" and len(token_ids) > 1:  # (keeps the full output's fingerprint)
                    token_ids = token_ids[:len(token_ids) // 2]
                    text = self._detokenize(token_ids)
                if verdict is not None:
                    method = "prefill-uncertain+generate" if verdict.uncertain else "prefill-reject+generate"
        return token_ids, text, method, time.perf_counter() - t0, fingerprint

    async def _judge(self, body: dict, prompt: str, claims: list, tolerance: dict | None) -> list[dict]:
        """A referee of a tolerance group: the tolerant check (one prefill) of each quorum claim,
        as signed verdicts with the measured margins (protocols.fingerprint.verdict)."""
        from protocols import fingerprint as fingerprints

        if not claims or not hasattr(self.engine, "verify_tolerant") or \
                self.behaviour not in _CLAIMS_MODEL:
            return []
        tol, params = fingerprints.Tolerance.of(tolerance), SamplingParams.from_wire(body["params"])
        out = []
        for c in claims[:fingerprints.MAX_VERDICTS]:
            tokens, blob = [int(t) for t in c["token_ids"]], bytes(c["fingerprint"])
            v = await self._on_engine(self.engine.verify_tolerant, prompt, params, tokens, blob, tol)
            commitment = commitments.output_commitment(body["request_id"], body["model_hash"], body["prompt_hash"],
                                                       body["params"], tokens)
            out.append(fingerprints.verdict(str(c["node_id"]), commitment, blob, v.tokens.worst, v.tokens.mismatch_at,
                                            v.fingerprint))
        return out

    async def _commit(self, body: dict, member_id: str, role: str, signer: SigningKey, token_ids: list[int],
                      text: str, method: str, seconds: float, fingerprint: bytes = b"",
                      verdicts: list | None = None) -> dict:
        rid = body["request_id"]
        commitment = commitments.output_commitment(rid, body["model_hash"], body["prompt_hash"], body["params"],
                                                   token_ids)
        salt = os.urandom(32)
        commit = commitments.commit_hash(signer.public, commitment, salt, fingerprint)
        if self.behaviour == "copy":
            commit = await self._copy_commit(rid, member_id) or commit
        self._pending[(rid, member_id)] = (commitment, salt, role, signer, fingerprint)
        self._executed += 1
        env = messages.seal("result", {
            "request_id": rid, "node_id": member_id, "role": role, "commit_hash": commit,
            "output_digest": commitments.output_digest(token_ids, text),
            "engine_seconds": float(seconds), "nonce": os.urandom(16), "verdicts": list(verdicts or []),
        }, signer)
        output = {"token_ids": token_ids, "text": text}
        prompt_tokens = self._prompt_tokens.pop(rid, None)
        if prompt_tokens is not None:  # (usage figures; not part of what is committed)
            output["prompt_tokens"] = prompt_tokens
        if body["client_kem"]:  # only the client can read it; everyone else sees the signed digest
            output = {"sealed": sealing.seal(body["client_kem"], pack(output), sealing.output_info(rid, member_id))}
        return {"envelope": env.raw, "output": output, "method": method, "engine_seconds": seconds}

    @guarded("executor")
    async def execute(self, request_raw: bytes, prompt: str, role: str, claimed: list[int] | None = None,
                      signer: bytes | None = None, stream: bool = False, reply_to: int = 0,
                      claims: list | None = None, tolerance: dict | None = None) -> dict:
        """Run (or, given `claimed` tokens of another node, verify) one request.

        Verification tries one prefill pass; if the claim is rejected or a near-tie
        makes prefill unsure, the node regenerates and commits to its own output.
        `signer`: the public key the draw named (keys rotate between epochs).
        `stream`: push signed chunks of tokens to the aggregator as they are made
        (never for a sealed request: its output is for the client alone).
        `reply_to`: the aggregator shard holding the round (chunks go there).
        `claims` (a referee of a tolerance group): the revealed quorum claims, {node_id,
        token_ids, fingerprint} each, to check within `tolerance`; the verdicts go into the
        signed result."""
        key = self._signer(signer)
        try:
            req, prompt = self._check_request(request_raw, prompt)
            self._count(req.request_id)
            self._replies(req.request_id, reply_to)
        except SealedPromptRejected as exc:  # a signed refusal, so nobody takes it for a timeout
            return {"refusal": _refusal(self.node_id, role, key, exc)}
        streamer = None
        if stream and not req.sealed and claimed is None and self.behaviour in ("honest", "substitute", "requantize"):
            streamer = Streamer(req.request_id, self.node_id, role, key, self._detokenize,
                                self._aggregator(req.request_id))
        out = await self._run(req.body, prompt, claimed, streamer)
        verdicts = await self._judge(req.body, prompt, claims, tolerance) if role == "referee" and claims else []
        return await self._commit(req.body, self.node_id, role, key, *out, verdicts=verdicts)

    @guarded("executor")
    async def reveal(self, request_id: str, member_id: str | None = None) -> bytes:
        return await self._reveal(request_id, member_id)

    async def _reveal(self, request_id: str, member_id: str | None = None) -> bytes:
        if member_id is None:  # (reveal_ticket counts its own call)
            self._count(request_id)
        if self.behaviour in ("silent", "no-reveal"):
            await asyncio.Event().wait()
        member_id = member_id or self.node_id
        if (request_id, member_id) not in self._pending:
            raise UnknownRequest(f"no commitment pending for {request_id}")
        commitment, salt, role, signer, fingerprint = self._pending.pop((request_id, member_id))
        if self.behaviour == "copy":
            board = await self._board(request_id)
            others = [c for nid, c in board["reveals"].items() if nid != member_id]
            commitment = others[0] if others else os.urandom(32)
        env = messages.seal("reveal", {"request_id": request_id, "node_id": member_id, "role": role,
                                       "commitment": commitment, "salt": salt, "nonce": os.urandom(16),
                                       "fingerprint": fingerprint}, signer)
        return env.raw

    @guarded("executor")
    async def reveal_many(self, request_ids: list) -> list:
        """`reveal` for each request (an aggregator shard sends one tick's reveals together);
        one entry per id, in order: the envelope, or Failed(error) for that id alone."""
        return await answer_each(self._reveal, [(rid,) for rid in request_ids])

    # --- obfuscated mode: act under a one-time key from a sealed ticket
    @guarded("executor")
    async def execute_ticket(self, sealed_ticket: bytes, request_raw: bytes, prompt: str,
                             selector_public: bytes, reply_to: int = 0) -> dict:
        """Open the selector's ticket, run, and push the result (signed with the
        ticket's one-time key) to the aggregator. Nothing here names another member."""
        req = messages.open_envelope(request_raw, "request")
        self._count(req.request_id)
        self._replies(req.request_id, reply_to)
        ticket = self._open_sealed(
            lambda kem: obfuscation.open_ticket(sealed_ticket, req.request_id, kem, selector_public))
        signer = ticket.key
        pid = obfuscation.pseudonym_id(signer.public)
        try:
            req, prompt = self._check_request(request_raw, prompt)
        except SealedPromptRejected as exc:
            await self._aggregator(req.request_id).obf_refusal.remote(_refusal(pid, ticket.role, signer, exc))
            return {"pseudonym": pid}
        body = req.body
        self._inbox.append((body["request_id"], sealed_ticket, ""))
        out = await self._run(body, prompt, None)
        res = await self._commit(body, pid, ticket.role, signer, *out)
        await self._aggregator(body["request_id"]).obf_result.remote(res)
        return {"pseudonym": pid}

    @guarded("executor")
    async def reveal_ticket(self, request_id: str, pseudonym: str, reply_to: int | None = None) -> None:
        self._count(request_id)
        if reply_to is not None:
            self._replies(request_id, reply_to)
        raw = await self._reveal(request_id, pseudonym)
        await self._aggregator(request_id).obf_reveal.remote(raw)

    def _count(self, request_id: str) -> None:
        self._calls[request_id] += 1
        if len(self._calls) > 1024:  # bounded, like the inbox: the oldest requests go first
            del self._calls[next(iter(self._calls))]

    def protocol_calls(self, request_id: str) -> int:
        """How many protocol calls (execute, reveal, and their ticket forms) reached this node."""
        return self._calls[request_id]

    def received(self, request_id: str) -> list:
        """Every input this node received for a request (for privacy audits and tests)."""
        return [(raw, prompt) for rid, raw, prompt in self._inbox if rid == request_id]

    # --- misbehaviour helpers
    def _detokenize(self, token_ids: list[int]) -> str:
        detok = getattr(self.engine, "detokenize", None)
        return detok(token_ids) if detok else ""

    def _replies(self, request_id: str, shard: int) -> None:
        self._reply_of[request_id] = int(shard)
        if len(self._reply_of) > 4096:  # bounded: the oldest requests go first
            del self._reply_of[next(iter(self._reply_of))]

    def _aggregator(self, request_id: str):
        """The handle of the shard holding a request's round, looked up once per shard
        (obfuscated pushes, stream chunks and the public board use it)."""
        k = self._reply_of.get(request_id, 0)
        if k not in self._agg_handles:
            import ray

            self._agg_handles[k] = ray.get_actor(self.aggregator_names[k], namespace=self.namespace)
        return self._agg_handles[k]

    async def _board(self, request_id: str) -> dict:
        return await self._aggregator(request_id).public_view.remote(request_id)

    async def _copy_commit(self, request_id: str, member_id: str, wait_s: float = 2.0) -> bytes | None:
        """Wait for someone else's commit hash on the public board and reuse it."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                board = await self._board(request_id)
            except Exception:  # board not reachable: fall back to an own (bogus) commit
                return None
            others = [c for nid, c in board["commits"].items() if nid != member_id]
            if others:
                return others[0]
            await asyncio.sleep(0.02)
        return None


class Streamer:
    """Turns an engine's token callbacks into signed chunks pushed to the aggregator,
    at most one every `interval_s` (and the rest at the end). Runs on the engine thread."""

    def __init__(self, request_id: str, member_id: str, role: str, signer: SigningKey, detokenize, aggregator,
                 interval_s: float = 0.02):
        self.request_id, self.member_id, self.role, self.signer = request_id, member_id, role, signer
        self._detok, self._agg, self.interval_s = detokenize, aggregator, interval_s
        self._sent, self._text, self._seq, self._last = 0, "", 0, 0.0
        self._refs: list = []

    def __call__(self, tokens: list[int]) -> None:
        if time.monotonic() - self._last >= self.interval_s:
            self._push(list(tokens))

    async def close(self, tokens: list[int]) -> None:
        """The last chunk, then wait until the aggregator has every chunk: the result (and with
        it finality) never overtakes the stream."""
        if len(tokens) > self._sent or self._detok(list(tokens)) != self._text:  # (a held-back tail too)
            self._push(list(tokens), final=True)
        try:  # (Ray's refs are awaitable; a node agent's pushes are futures of its own loop's tasks)
            refs = [asyncio.wrap_future(r) if isinstance(r, concurrent.futures.Future) else r for r in self._refs]
            await asyncio.wait_for(asyncio.gather(*refs), timeout=10)
        except Exception:  # a lost chunk only makes the stream say it did not hold
            pass

    def _push(self, tokens: list[int], final: bool = False) -> None:
        text = self._detok(tokens)
        if not final:  # a character still being built (half a UTF-8 sequence) waits for its rest
            text = text.rstrip("\ufffd")
        delta = text[len(self._text):] if text.startswith(self._text) else ""  # (the final answer corrects)
        text = text if text.startswith(self._text) else self._text
        env = messages.seal("chunk", {"request_id": self.request_id, "node_id": self.member_id, "role": self.role,
                                      "seq": self._seq, "token_ids": tokens[self._sent:], "text": delta},
                            self.signer)
        self._refs.append(self._agg.on_chunk.remote(env.raw))
        self._sent, self._text, self._seq, self._last = len(tokens), text, self._seq + 1, time.monotonic()


def _refusal(member_id: str, role: str, signer: SigningKey, why: SealedPromptRejected) -> bytes:
    return messages.seal("refusal", {"request_id": why.request_id, "node_id": member_id, "role": role,
                                     "reason": str(why), "nonce": os.urandom(16)}, signer).raw
