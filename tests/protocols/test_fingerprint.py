"""Activation fingerprints (protocols.fingerprint): encoding, size, and what passes."""

from __future__ import annotations

import math
import random

import pytest

from protocols import fingerprint as fp
from protocols.errors import MalformedMessage


def state(seed: int, dim: int = 576) -> list[float]:
    r = random.Random(seed)
    return [r.gauss(0, 1) * (8.0 if i % 97 == 0 else 1.0) for i in range(dim)]


def noisy(st: list[float], rel: float, seed: int = 0) -> list[float]:
    r = random.Random(seed)
    return [x * (1 + r.uniform(-rel, rel)) for x in st]


def test_positions_are_each_chunks_last_token():
    assert fp.positions(0) == []
    assert fp.positions(1) == [0]
    assert fp.positions(32) == [31]
    assert fp.positions(33) == [31, 32]
    assert fp.positions(128) == [31, 63, 95, 127]


def test_fingerprint_is_within_toploc_budget_per_32_tokens():
    assert fp.size(32) <= 258 + 4 and fp.size(128) == 4 + 4 * 256
    blob = fp.encode([state(i) for i in range(4)])
    assert len(blob) == fp.size(128)
    assert (len(blob) - 4) / 4 == 256  # bytes per 32 tokens


def test_roundtrip_keeps_the_top_coordinates_to_bfloat16():
    st = state(1)
    k, chunks = fp.decode(fp.encode([st]))
    idx, vals = chunks[0]
    assert k == fp.TOP_K and len(idx) == fp.TOP_K
    assert [abs(st[i]) for i in idx] == sorted((abs(st[i]) for i in idx), reverse=True)
    assert set(idx) == set(sorted(range(len(st)), key=lambda i: -abs(st[i]))[:fp.TOP_K])
    assert all(abs(v - st[i]) <= abs(st[i]) * 2 ** -8 for i, v in zip(idx, vals))  # bf16: 8 bits of mantissa


def test_the_same_states_match_and_benign_noise_passes():
    sts = [state(i) for i in range(3)]
    blob = fp.encode(sts)
    m = fp.compare(blob, sts, fp.Thresholds())
    assert m.ok and m.overlap == 1.0 and m.mean_err < 0.01
    assert fp.compare(blob, [noisy(s, 0.002, i) for i, s in enumerate(sts)], fp.Thresholds()).ok


def test_other_states_fail_and_the_reason_is_named():
    blob = fp.encode([state(1), state(2)])
    m = fp.compare(blob, [state(1), state(99)], fp.Thresholds())  # one chunk from another computation
    assert not m.ok and m.overlap < 0.5 and m.reason == "top-k overlap"
    scaled = fp.compare(blob, [[2 * x for x in state(1)], [2 * x for x in state(2)]], fp.Thresholds())
    assert not scaled.ok and scaled.reason == "values" and scaled.overlap == 1.0  # same shape, wrong values


def test_chunk_count_must_match_the_output():
    blob = fp.encode([state(1)])
    m = fp.compare(blob, [state(1), state(2)], fp.Thresholds())
    assert not m.ok and "chunks" in m.reason


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x02\x40\x01\x00" + b"\x00" * 256, b"\x01\x40\x01\x00" + b"\x00" * 10,
                                  "text", None])
def test_malformed_fingerprints_never_match(blob):
    with pytest.raises(MalformedMessage):
        fp.decode(blob)
    assert not fp.compare(blob, [state(1)], fp.Thresholds()).ok


def test_an_index_beyond_the_hidden_size_fails():
    blob = fp.encode([state(1, dim=576)])
    assert not fp.compare(blob, [state(1, dim=64)], fp.Thresholds()).ok


def test_nan_values_never_pass():
    st = state(1)
    blob = fp.encode([st])
    bad = list(st)
    for i in fp.decode(blob)[1][0][0][:3]:
        bad[i] = math.nan
    assert not fp.compare(blob, [bad], fp.Thresholds()).ok


def test_thresholds_are_checked_when_read_from_config_or_wire():
    th = fp.Thresholds.of({"min_overlap": 0.8, "max_mean_err": 0.02, "max_err": 0.3})
    assert th.to_wire() == {"min_overlap": 0.8, "max_mean_err": 0.02, "max_err": 0.3}
    for bad in ({"min_overlap": "x"}, {"other": 1}, {"max_err": -1}, {"max_err": math.nan}, [1], {"min_overlap": True}):
        with pytest.raises(MalformedMessage):
            fp.Thresholds.of(bad)
