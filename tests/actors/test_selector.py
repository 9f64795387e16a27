"""QuorumSelector's registry view: deltas applied in order, a missed delta forces a full pull. No Ray."""

from __future__ import annotations

import asyncio

from actors.selector import QuorumSelector
from protocols.selection import NodeView
from tests.roundsim import VRF_KEY


class Registry:
    """Stands in for the registry actor's `views` call (the only one a draw makes)."""

    def __init__(self, version, views):
        self.version, self.nodes, self.pulls = version, views, 0
        outer = self

        class _Views:
            async def remote(self, model_id):
                outer.pulls += 1
                return outer.version, list(outer.nodes), {v.node_id: b"k" + v.node_id.encode() for v in outer.nodes}, {}

        self.views = _Views()


def view(nid, live=True, stake=10):
    return NodeView(nid, "m", "c", stake, live)


def draw(sel, rid, n=2):
    return asyncio.run(sel._draw_retrying(rid, "m", n, det_class="c", allow_fewer=True))


def test_deltas_keep_the_view_current_and_a_gap_forces_a_full_pull():
    reg = Registry(1, [view("a"), view("b"), view("c")])
    sel = QuorumSelector(reg, min_stake=5, vrf_key=VRF_KEY.export())
    sel._on_registry(1, reg.nodes, {v.node_id: b"k" for v in reg.nodes})
    sel._on_registry_delta({"base": 1, "version": 2, "views": [view("b", live=False)], "removed": ["c"],
                           "keys": {}, "attestations": {}})
    assert draw(sel, "r1", 3)["eligible"] == ["a"] and reg.pulls == 0  # applied without asking
    sel._on_registry_delta({"base": 2, "version": 3, "views": [view("d")], "removed": [],
                           "keys": {"d": b"kd"}, "attestations": {}})
    rec = draw(sel, "r2", 3)
    assert rec["eligible"] == ["a", "d"] and dict(zip(rec["selected"], rec["keys"]))["d"] == b"kd"
    sel._on_registry_delta({"base": 2, "version": 3, "views": [view("a", live=False)], "removed": [],
                           "keys": {}, "attestations": {}})  # a replay of an old version changes nothing
    assert draw(sel, "r3", 3)["eligible"] == ["a", "d"]
    # version 4 never arrived: 5 does not follow 3, so the next draw asks for everything
    reg.version, reg.nodes = 5, [view("a"), view("e", stake=1), view("f")]
    sel._on_registry_delta({"base": 4, "version": 5, "views": [view("f")], "removed": [], "keys": {},
                           "attestations": {}})
    assert draw(sel, "r4", 3)["eligible"] == ["a", "f"] and reg.pulls == 1  # e's stake is below min_stake
