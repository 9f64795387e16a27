"""Which streamed chunks a round passes on, and in what order. Pure.

A streamed round follows one member: the first to send its chunk 0. Its chunks
are passed on in `seq` order; one that arrives early (calls into an async actor
may be reordered) waits for those before it. Chunks of any other member, a
repeated seq, or a seq out of range are dropped. Chunks are provisional: the
round's commitment decides what is accepted.
"""

from __future__ import annotations

MAX_SEQ = 1 << 16


class ChunkOrder:
    def __init__(self) -> None:
        self.member: str | None = None  # the member streamed
        self.next_seq = 0
        self._held: dict[str, dict[int, object]] = {}  # member -> early chunks (one member once chosen)

    def follow(self, member: str) -> bool:
        """Stream `member` if nobody is streamed yet (e.g. the first output, when nobody streamed)."""
        if self.member is None:
            self.member = member
            self._held = {member: self._held.get(member, {})}
            return True
        return False

    def pending(self) -> int:
        """Chunks held back (bounded: once a member is followed, only its own are kept)."""
        return sum(len(h) for h in self._held.values())

    def accept(self, member: str, seq: int, item) -> list:
        """The items now ready to pass on, in order (possibly none)."""
        if not isinstance(seq, int) or isinstance(seq, bool) or not self.next_seq <= seq < MAX_SEQ:
            return []
        if self.member is not None and member != self.member:
            return []
        self._held.setdefault(member, {}).setdefault(seq, item)  # (a member's early chunks wait, too)
        if self.member is None and seq == 0:
            self.follow(member)
        if self.member is None:
            return []
        held, ready = self._held[self.member], []
        while self.next_seq in held:
            ready.append(held.pop(self.next_seq))
            self.next_seq += 1
        return ready
