"""Draws nobody can steer or predict: a colluding client grinding request ids, and an
outsider predicting an obfuscated quorum, both from everything public — against the
selector's real draw rule (no Ray). The same attacker wins every time against a
public-seed rule, which is what these tests would catch if the draws went public again."""

from __future__ import annotations

import random

from benchmarks.draw_grinding import grinding, prediction
from protocols import vrf

KEY = vrf.VrfKey()
BEACON = b"published beacon".ljust(32, b"\0")
POOL = [f"node-{i:02d}" for i in range(8)]
FRIENDS = {"node-00", "node-01"}


def test_grinding_request_ids_gives_a_colluding_client_no_better_than_chance():
    g = grinding(KEY, BEACON, POOL, 2, FRIENDS, budget=200, trials=300, rng=random.Random(1))
    assert g["public"]["hits"] >= 290  # against a public seed, grinding picks the quorum at will
    # against the VRF seed: chance is 1/28 (~10.7 of 300, sd ~3.2); 30 is six sd above it
    assert g["vrf"]["hits"] < 30, g


def test_an_outsider_predicts_an_obfuscated_quorum_no_better_than_chance():
    p = prediction(KEY, BEACON, POOL, 3, trials=300, rng=random.Random(2))
    assert p["public"]["exact"] == 300  # a public seed names every obfuscated quorum
    assert p["vrf"]["exact"] < 20, p  # chance 1/56 (~5.4 of 300)
    assert abs(p["vrf"]["members_named_mean"] - p["chance_members_named"]) < 0.35  # 9/8 by chance


def test_the_selector_cannot_choose_among_outputs():
    """A VRF output is unique: the same (key, request, label) always gives the same proof."""
    alpha = vrf.draw_alpha("r", "quorum")
    assert KEY.output(alpha) == KEY.output(alpha)
    assert vrf.VrfKey(KEY.export()).output(alpha) == KEY.output(alpha)
