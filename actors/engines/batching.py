"""Batch-invariant step-wise batching: many requests on one engine, the same tokens as alone.

An engine that batches offers three calls (see `Batchable`):
  * ``begin(prompt, params) -> Seq``: check the prompt and run its prefill on its
    own (the shapes depend on this request only); ``seq.logits`` predict its first
    token;
  * ``decode(seqs, tokens) -> logits``: one decode step for up to ``rows``
    sequences at once, each fed its own next token;
  * ``finish(seq) -> Generation``.

Why the tokens cannot depend on the batch: ``decode`` always runs the
position-wise layers (embeddings, norms, projections, MLP, LM head) on exactly
``rows`` rows, padding the empty ones with token 0, and runs attention per
sequence over that sequence's own keys. A matrix product never mixes rows, and
with one fixed shape the kernel (and its reduction order) is the same whichever
slot a request sits in and whoever shares the batch, so a request run alone (a
batch of one plus padding) and a request run beside seven others compute the
same bits. That is the batching policy recorded in the determinism class
(`policy(rows)`); `benchmarks/batch_soak.py` checks it token for token.

`Batcher` is the loop an executor runs on its one engine thread: requests join
between decode steps (their prefill runs then), leave as soon as they stop, and
anything else the engine must do (load, verify) runs between steps too.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from protocols import fingerprint as fingerprints

from . import decoding
from .base import Generation

DEFAULT_ROWS = 8


def policy(rows: int) -> str:
    """The determinism-class label of the batching policy."""
    return f"fixed-rows-{int(rows)}"


@dataclass
class Seq:
    """One request in flight: what its engine keeps, and what decoding needs."""

    params: Any
    prompt_ids: list[int]
    budget: int  # tokens it may still produce at most (max_tokens, or what the context allows)
    stop_ids: frozenset
    cache: Any = None  # the engine's per-sequence state (keys and values)
    logits: Any = None  # predict the next token
    out: list[int] = field(default_factory=list)
    gen: Any = None
    on_tokens: Callable | None = None
    t0: float = field(default_factory=time.perf_counter)
    done: bool = False
    error: BaseException | None = None  # what ended this request alone (its neighbours go on)
    hidden: Any = None  # the final hidden state `logits` came from (engines that expose it)
    states: list = field(default_factory=list)  # hidden states that chose each chunk's last token
    last_state: Any = None  # the one that chose the latest token

    @property
    def position(self) -> int:
        """The position of the next token fed in."""
        return len(self.prompt_ids) + len(self.out) - 1


class Batchable(Protocol):
    rows: int

    def begin(self, prompt: str, params) -> Seq: ...

    def decode(self, seqs: list[Seq], tokens: list[int]): ...

    def finish(self, seq: Seq) -> Generation: ...


def start(engine: Batchable, prompt: str, params, on_tokens=None) -> Seq:
    seq = engine.begin(prompt, params)
    seq.gen = decoding.generator_for(params)
    seq.on_tokens = on_tokens
    if seq.budget <= 0:
        seq.done = True
    return seq


def step(engine: Batchable, active: list[Seq]) -> None:
    """Pick each sequence's next token, then one batched decode for those that go on."""
    going, tokens = [], []
    for s in active:
        try:  # one request's sampling or stream failing must not end its neighbours
            tid = decoding.pick(s.logits, s.params, s.gen)
            if tid not in s.stop_ids:
                s.out.append(tid)
                s.last_state = s.hidden
                if s.hidden is not None and len(s.out) % fingerprints.CHUNK == 0:
                    s.states.append(s.hidden)
                if s.on_tokens is not None:
                    s.on_tokens(s.out)
        except Exception as exc:
            s.error, s.done = exc, True
            continue
        if tid in s.stop_ids:
            s.done = True
            continue
        if len(s.out) >= s.budget:
            s.done = True
            continue
        going.append(s)
        tokens.append(tid)
    for i in range(0, len(going), engine.rows):
        got = engine.decode(going[i:i + engine.rows], tokens[i:i + engine.rows])
        rows, hidden = got if isinstance(got, tuple) else (got, None)  # (logits, hidden states)
        for j, s in enumerate(going[i:i + engine.rows]):
            s.logits = rows[j]
            s.hidden = hidden[j] if hidden is not None else None


def fingerprint_of(seq: Seq) -> bytes:
    """protocols.fingerprint of a finished sequence ("" when its engine exposes no states)."""
    states = list(seq.states)
    if seq.out and len(seq.out) % fingerprints.CHUNK:
        states.append(seq.last_state)
    if any(st is None for st in states) or (seq.out and not states):
        return b""
    return fingerprints.encode([st.float().tolist() for st in states])


def generate_alone(engine: Batchable, prompt: str, params, on_tokens=None) -> Generation:
    """A batch of one (the same arithmetic as any batch)."""
    seq = start(engine, prompt, params, on_tokens)
    while not seq.done:
        step(engine, [seq])
    if seq.error is not None:
        raise seq.error
    return engine.finish(seq)


class Batcher:
    """The engine loop of one executor: a thread that owns the engine.

    `generate` queues a request and returns a concurrent Future of its Generation;
    `call` runs any other engine work on the same thread between decode steps.
    Engines without `begin` (no batching) run each request whole, one at a time.
    """

    def __init__(self, name: str = "engine"):
        self.engine = None
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self.steps = 0  # decode steps run
        self.rows_used = 0  # sequences summed over those steps
        self.peak = 0

    def call(self, fn: Callable, *args, **kw) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put(("call", fut, (fn, args, kw)))
        return fut

    def generate(self, prompt: str, params, on_tokens=None) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put(("gen", fut, (prompt, params, on_tokens)))
        return fut

    def stats(self) -> dict:
        return {"steps": self.steps, "mean_rows": self.rows_used / self.steps if self.steps else 0.0,
                "peak_rows": self.peak}

    def _batched(self) -> bool:
        return hasattr(self.engine, "begin")

    def _take(self, job, active: list) -> None:
        kind, fut, args = job
        if not fut.set_running_or_notify_cancel():
            return
        try:
            if kind == "call":
                fn, a, kw = args
                fut.set_result(fn(*a, **kw))
            elif not self._batched():
                prompt, params, on_tokens = args
                fut.set_result(self.engine.generate(prompt, params, on_tokens=on_tokens))
            else:
                seq = start(self.engine, *args)
                active.append((seq, fut))
        except BaseException as exc:  # the one request fails, the loop goes on
            fut.set_exception(exc)

    def _loop(self) -> None:
        active: list[tuple[Seq, concurrent.futures.Future]] = []
        while True:
            rows = getattr(self.engine, "rows", DEFAULT_ROWS)
            if not active:
                self._take(self._jobs.get(), active)  # idle: wait for work
            while len(active) < rows:  # join between steps, up to one batch
                try:
                    self._take(self._jobs.get_nowait(), active)
                except queue.Empty:
                    break
            self._finish_done(active)
            if not active:
                continue
            self.steps += 1
            self.rows_used += len(active)
            self.peak = max(self.peak, len(active))
            try:
                step(self.engine, [s for s, _ in active])
            except BaseException as exc:  # a failed step fails everyone in it
                for _, fut in active:
                    fut.set_exception(exc)
                active.clear()
            self._finish_done(active)

    def _finish_done(self, active: list) -> None:
        for pair in [p for p in active if p[0].done]:
            active.remove(pair)
            seq, fut = pair
            if seq.error is not None:
                fut.set_exception(seq.error)
                continue
            try:
                fut.set_result(self.engine.finish(seq))
            except BaseException as exc:
                fut.set_exception(exc)
