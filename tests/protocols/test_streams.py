"""protocols.streams: one member's chunks pass, in order; everything else is dropped. No Ray."""

from protocols.streams import ChunkOrder


def test_the_first_member_to_send_chunk_zero_is_streamed_in_order():
    o = ChunkOrder()
    assert o.accept("b", 1, "b1") == []  # nobody streamed yet, and not a chunk 0
    assert o.accept("a", 2, "a2") == [] and o.accept("a", 0, "a0") == ["a0"]  # a is followed now
    # (a's chunk 2 came before anyone was followed: it waited too)
    assert o.accept("b", 0, "b0") == [] and o.accept("b", 5, "b5") == []  # another member: dropped,
    assert o.pending() == 1  # and not even held (only a's early chunk 2 is)
    assert o.accept("a", 1, "a1") == ["a1", "a2"]  # the early chunk waited for its predecessor
    assert o.accept("a", 1, "forged") == [] and o.accept("a", -1, "x") == [] and o.accept("a", 1 << 20, "x") == []
    assert not o.follow("b") and o.member == "a"


def test_the_first_output_is_followed_when_nobody_streamed():
    o = ChunkOrder()
    assert o.follow("c") and o.accept("c", 0, "c0") == ["c0"] and o.accept("d", 0, "d0") == []
