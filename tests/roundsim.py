"""A pure (no Ray) run of one real Round, with signed node messages, VRF draws and
the receipt the aggregator would sign: what the receipt tests tamper with.

Nodes behave as told: "honest", "cheat" (another output), "silent" (never
answers), "no-reveal" (commits, then never reveals), "bad-reveal" (a salt that
does not open its commit). The selector draws from `pool` with its VRF key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from protocols import commitments, crossval, messages, obfuscation, receipts, selection, vrf
from protocols.canonical import pack
from protocols.crypto import SigningKey
from protocols.params import SamplingParams
from protocols.sampling import (CROSS_VALIDATION, SAMPLING, Dispatch, DrawReferees, DrawReplacements,
                                DrawVerifiers, Finalize, FlipCoin, RequestReveals, Round)

MODEL_HASH = "ab" * 32
HONEST, CHEAT = [1, 2, 3, 4], [9, 9, 9]
VRF_KEY = vrf.VrfKey()  # one per test session: RSA key generation is the slow part
SELECTOR_KEY = SigningKey(b"s" * 32)
AGGREGATOR_KEY = SigningKey(b"a" * 32)


@dataclass
class Sim:
    mode: str = "sampling"  # sampling | cross-validation | obfuscated
    n: int = 3
    pool: list[str] = field(default_factory=lambda: [f"n{i}" for i in range(8)])
    behaviour: dict[str, str] = field(default_factory=dict)
    p: float | None = None
    referee_extra: int = 2
    timeout_s: float = 10.0
    vrf_key: vrf.VrfKey = VRF_KEY

    def __post_init__(self):
        self.client = SigningKey(os.urandom(32))
        self.keys = {nid: SigningKey(nid.encode().ljust(32, b"k")) for nid in self.pool}
        self.rid = os.urandom(8).hex()
        params = SamplingParams(8).with_seed_for(self.rid)
        body = {"request_id": self.rid, "client_id": messages.client_id_of(self.client.public),
                "model_id": "m", "model_hash": MODEL_HASH, "prompt_hash": commitments.prompt_hash("hi", b"n"),
                "prompt_len": 2, "params": params.to_wire(), "mode": self.mode, "n": self.n,
                "timeout_s": self.timeout_s, "nonce": os.urandom(16), "created_at": 0.0, "p": self.p,
                "require_tee": False}
        self.request = messages.seal("request", body, self.client)
        self.params = params.to_wire()
        self.draws: list[dict] = []
        self.results: dict[str, bytes] = {}
        self.reveals: dict[str, bytes] = {}
        self.salts: dict[str, tuple[bytes, bytes]] = {}
        self.members: dict[str, tuple] = {}  # obfuscated: pid -> (node id, salt, key, role, replacement)
        self.signers: dict[str, SigningKey] = {}  # member id -> its signing key
        self.node_of: dict[str, str] = {}
        self.coin = None
        self.now = 0.0

    def commitment(self, tokens) -> bytes:
        b = self.request.body
        return commitments.output_commitment(self.rid, MODEL_HASH, b["prompt_hash"], self.params, tokens)

    # --- the selector
    def draw(self, count: int, label: str, role: str, exclude=(), allow_fewer=True):
        served = set(self.node_of.values())
        ex = sorted(set(exclude) | served) if self.mode == "obfuscated" else sorted(set(exclude))
        eligible = [x for x in sorted(self.pool) if x not in ex]
        asked = count
        count = min(count, len(eligible)) if allow_fewer else count
        seed, proof = selection.draw_randomness(self.vrf_key, self.rid, label)
        chosen = selection.draw(eligible, count, seed) if count else []
        self.draws.append({"label": label, "det_class": "c", "seed": seed, "proof": proof, "asked": asked,
                           "eligible": eligible,
                           "exclude": ex, "selected": chosen, "keys": [self.keys[c].public for c in chosen],
                           "require_attested": False, "attestations": {}})
        if self.mode != "obfuscated":
            for c in chosen:
                self.signers[c], self.node_of[c] = self.keys[c], c
            return chosen, [self.keys[c].public for c in chosen]
        pids, pubs = [], []
        for c in chosen:
            one = SigningKey(os.urandom(32))
            pid = obfuscation.pseudonym_id(one.public)
            self.members[pid] = (c, os.urandom(32), one.public, role, label.startswith("replace"))
            self.signers[pid], self.node_of[pid] = one, c
            pids.append(pid)
            pubs.append(one.public)
        return pids, pubs

    def mapping_record(self) -> dict:
        body = {"members": {pid: {"key": pub, "role": role, "attested": "", "replacement": repl}
                            for pid, (_, _, pub, role, repl) in self.members.items()},
                "mapping": {pid: obfuscation.mapping_entry(pub, nid, salt, "")
                            for pid, (nid, salt, pub, _, _) in self.members.items()}}
        return {**body, "selector": SELECTOR_KEY.public,
                "sig": SELECTOR_KEY.sign(obfuscation.MAPPING_DOMAIN + pack([self.rid, body]))}

    # --- nodes
    def _act(self, member: str) -> str:
        return self.behaviour.get(self.node_of[member], "honest")

    def result(self, member: str, role: str, rnd: Round) -> list:
        if self._act(member) == "silent":
            return []
        tokens = CHEAT if self._act(member) == "cheat" else HONEST
        c, salt = self.commitment(tokens), os.urandom(16)
        key = self.signers[member]
        commit = commitments.commit_hash(key.public, c, salt)
        self.salts[member] = (c, salt)
        env = messages.seal("result", {"request_id": self.rid, "node_id": member, "role": role,
                                       "commit_hash": commit, "output_digest": b"d" * 32, "engine_seconds": 0.1,
                                       "nonce": os.urandom(16)}, key)
        self.results[member] = env.raw
        return rnd.on_result(member, key.public, commit, self.now)

    def reveal(self, member: str, role: str, rnd: Round) -> list:
        if self._act(member) == "no-reveal":
            return []
        c, salt = self.salts[member]
        if self._act(member) == "bad-reveal":
            salt = os.urandom(16)
        key = self.signers[member]
        env = messages.seal("reveal", {"request_id": self.rid, "node_id": member, "role": role, "commitment": c,
                                       "salt": salt, "nonce": os.urandom(16)}, key)
        self.reveals[member] = env.raw
        return rnd.on_reveal(member, key.public, c, salt, self.now)

    # --- the aggregator's loop
    def run(self, coin_checked: bool | None = None, abort: str = ""):
        cv, obf = self.mode == "cross-validation", self.mode == "obfuscated"
        size = self.n + 1 if obf else (1 if cv else self.n)
        rnd = Round(self.rid, size, self.timeout_s, self.timeout_s, size + self.referee_extra,
                    mode=CROSS_VALIDATION if cv else SAMPLING, verifiers=self.n if cv else 0)
        ids, keys = self.draw(size, "quorum", "quorum", allow_fewer=False)
        queue = list(rnd.start(ids, keys, self.now))
        if cv:
            beta, pi = self.vrf_key.output(vrf.draw_alpha(self.rid, "coin"))
            self.draws[0]["coin_commit"] = crossval.coin_commit(beta)
        self.outcome = None
        while self.outcome is None:
            if not queue:
                if abort:
                    queue += rnd.abort(abort)
                    continue
                self.now = rnd.next_deadline() + 0.001
                queue += rnd.on_tick(self.now)
                continue
            act = queue.pop(0)
            if isinstance(act, Dispatch):
                for m in act.node_ids:
                    queue += self.result(m, act.role, rnd)
            elif isinstance(act, FlipCoin):
                p = 0.5 if self.p is None else self.p
                checked = crossval.flip(beta, self.rid, act.commit_hash, p)
                if coin_checked is not None:  # hunt for a request whose coin lands as the test needs
                    if checked != coin_checked:
                        raise _Reroll()
                self.coin = {"commit": self.draws[0]["coin_commit"], "seed": beta, "proof": pi, "p": repr(float(p)),
                             "node_id": act.node_id, "commit_hash": act.commit_hash, "checked": checked}
                queue += rnd.on_coin(checked, self.now)
            elif isinstance(act, DrawVerifiers):
                queue += rnd.on_verifiers(*self.draw(act.count, "verify", "quorum", act.exclude), self.now)
            elif isinstance(act, DrawReferees):
                queue += rnd.on_referees(*self.draw(act.count, "referee", "referee", act.exclude), self.now)
            elif isinstance(act, DrawReplacements):
                k = sum(1 for m in rnd.members.values() if m.role == act.role)
                got = self.draw(act.count, f"replace:{act.role}:{k}", act.role, act.exclude)
                queue += rnd.on_replacements(*got, act.role, self.now, act.count)
            elif isinstance(act, RequestReveals):
                for m in act.node_ids:
                    queue += self.reveal(m, act.role, rnd)
            elif isinstance(act, Finalize):
                self.outcome = act.outcome
        self.round = rnd
        return self

    def receipt(self, key: SigningKey = AGGREGATOR_KEY, decision: dict | None = None, selection_record=None,
                results=None, reveals=None) -> bytes:
        o = self.outcome
        unblinded = {}
        if self.mode == "obfuscated":
            for pid, _ in o.slashes:
                nid, salt, _, _, _ = self.members[pid]
                unblinded[pid] = [nid, salt]
        dec = decision if decision is not None else dict(o.record(), mode=self.mode, coin=self.coin,
                                                         unblinded=unblinded, tolerance=None)
        if selection_record is None:
            selection_record = ({"vrf_key": b"", "draws": [], "obfuscated": self.mapping_record()}
                                if self.mode == "obfuscated" else
                                {"vrf_key": self.vrf_key.public, "draws": self.draws,
                                 "coin_commit": self.draws[0].get("coin_commit")})
        committed = [m for m in self.round.members if m in self.results]
        res = results if results is not None else [self.results[m] for m in committed]
        rev = reveals if reveals is not None else [self.reveals[m] for m in committed if m in self.reveals]
        return receipts.build(self.rid, self.request.raw, selection_record, res, rev, dec, {"entries": [1, 2]},
                              1.0, key)


class _Reroll(Exception):
    pass


def run_until(make, check=lambda s: True, tries: int = 200, **run_kw) -> Sim:
    """Run fresh requests until one comes out as the test needs (coin branch, who was drawn)."""
    for _ in range(tries):
        sim = make()
        try:
            sim.run(**run_kw)
        except _Reroll:
            continue
        if check(sim):
            return sim
    raise AssertionError("no request came out as needed")
