"""protocols.quota: per-key limits with honest Retry-After, and fair turns when the network is full."""

from __future__ import annotations

import pytest

from protocols.quota import FairQueue, Meter, Quota, QuotaExceeded


def test_requests_per_minute_and_the_retry_after_it_gives():
    m, q = Meter(), Quota(rpm=2, tpm=1000, concurrent=10)
    m.check(q, 10, 0.0); m.charge(10, 0.0)
    m.check(q, 10, 5.0); m.charge(10, 5.0)
    with pytest.raises(QuotaExceeded) as exc:
        m.check(q, 10, 6.0)
    assert exc.value.retry_after == pytest.approx(54.0)  # the first request leaves the window at t = 60
    m.check(q, 10, 60.5)  # and then it fits


def test_tokens_per_minute_count_max_tokens_up_front():
    m, q = Meter(), Quota(rpm=100, tpm=100, concurrent=10)
    m.charge(60, 0.0)
    m.charge(30, 10.0)
    with pytest.raises(QuotaExceeded) as exc:
        m.check(q, 20, 20.0)
    assert exc.value.retry_after == pytest.approx(40.0)  # once the 60 tokens of t = 0 slide out
    with pytest.raises(QuotaExceeded):
        m.check(q, 101, 20.0)  # more than the key may ever spend in a minute
    m.check(q, 10, 20.0)


def test_in_flight_requests_are_capped_until_one_ends():
    m, q = Meter(), Quota(concurrent=1)
    m.check(q, 1, 0.0); m.charge(1, 0.0)
    with pytest.raises(QuotaExceeded):
        m.check(q, 1, 0.1)
    m.done()
    m.check(q, 1, 0.2)


def test_a_flooding_key_gets_one_turn_in_k():
    fq = FairQueue()
    for i in range(100):
        fq.push("flood", f"f{i}")
    fq.push("a", "a0"); fq.push("b", "b0"); fq.push("a", "a1")
    served = [fq.pop()[0] for _ in range(6)]
    assert served[:3] == ["flood", "a", "b"] and served[3:] == ["flood", "a", "flood"]
    assert len(fq) == 97 and fq.waiting("a") == 0


def test_a_waiter_that_gave_up_leaves_the_queue():
    fq = FairQueue()
    fq.push("a", "x"); fq.push("a", "y")
    assert fq.remove("a", "x") and not fq.remove("a", "x")
    assert fq.pop() == ("a", "y") and fq.pop() is None


@pytest.mark.parametrize("bad", [dict(rpm=0), dict(tpm=-1), dict(concurrent=True), dict(queue=1.5)])
def test_quotas_are_positive_integers(bad):
    with pytest.raises(ValueError):
        Quota(**bad)
