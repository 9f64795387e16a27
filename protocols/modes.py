"""The security levels a request may ask for: one spec per mode.

Every module takes modes from here — how many members a request of size N
draws, how many runs its escrow covers, whether it needs attested nodes,
whether its prompt is sealed, and which round kind decides it. Adding a mode is
one spec here plus its round logic.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidParams

SAMPLING, CROSS_VALIDATION, OBFUSCATED, TEE = "sampling", "cross-validation", "obfuscated", "tee"


@dataclass(frozen=True)
class ModeSpec:
    name: str
    round_kind: str  # protocols.sampling round mode: sampling | cross-validation
    extra_members: int = 0  # drawn at once beyond N (obfuscated: N + 1)
    attested: bool = False  # every member must hold valid attestation
    fixed_n: int | None = None  # the only N the mode accepts
    pseudonymous: bool = False  # members act under one-time keys (obfuscated)
    summary: str = ""

    def members(self, n: int) -> int:
        """Nodes drawn when the request starts."""
        return 1 if self.round_kind == CROSS_VALIDATION else n + self.extra_members

    def escrowed_runs(self, n: int) -> int:
        """Runs the client's escrow covers: the worst case (cross-validation refunds the rest)."""
        return 1 + n if self.round_kind == CROSS_VALIDATION else self.members(n)

    def sealed(self, require_tee: bool) -> bool:
        """Prompt and output travel sealed (only attested nodes can open them)."""
        return self.attested or require_tee

    def check_n(self, n: int, max_n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_n:
            raise InvalidParams(f"n must be in 1..{max_n}")
        if self.fixed_n is not None and n != self.fixed_n:
            raise InvalidParams(f"mode {self.name} runs on {self.fixed_n} node(s): n must be {self.fixed_n}"
                                + (" (use --require-tee for quorums)" if self.attested else ""))


SPECS: dict[str, ModeSpec] = {s.name: s for s in (
    ModeSpec(SAMPLING, SAMPLING, summary="N nodes agree"),
    ModeSpec(CROSS_VALIDATION, CROSS_VALIDATION,
             summary="one node runs; with probability p, N verifiers re-check it"),
    ModeSpec(OBFUSCATED, SAMPLING, extra_members=1, pseudonymous=True,
             summary="N+1 nodes, each knowing only its own selection"),
    ModeSpec(TEE, SAMPLING, attested=True, fixed_n=1, summary="one attested node; prompt and output sealed"),
)}
MODES = tuple(SPECS)


def spec(mode: str) -> ModeSpec:
    if mode not in SPECS:
        raise InvalidParams(f"mode {mode!r} is not served; choose from {MODES}")
    return SPECS[mode]
