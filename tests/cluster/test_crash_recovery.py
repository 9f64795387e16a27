"""Kill -9 any one actor mid-round: the round completes or refunds, money is conserved,
and the network serves the next request without operator action.

One small network of its own (6 tiny nodes, 2 aggregator shards): these tests kill
its actors, so the shared session network is left alone.
"""

from __future__ import annotations

import os
import time

import pytest
import ray

from protocols import messages, receipts
from protocols.errors import ReplayedMessage
from protocols.ledger import check_conservation

from ..conftest import check_books, deploy_tiny, request_id_drawing


@pytest.fixture(scope="module")
def net(ray_cluster, tmp_path_factory):
    from cluster.network import teardown

    network = deploy_tiny(tmp_path_factory, "t-crash", 6)
    network.config.limits.timeout_s = 6.0
    yield network
    teardown(network)


@pytest.fixture(scope="module")
def client(net):
    return net.client()


def _pid(handle) -> int:
    return ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=60)


def _kill(handle) -> None:
    os.kill(_pid(handle), 9)


def _slow(net, seconds: float) -> None:
    for e in net.executors.values():
        try:
            ray.get(e.set_delay.remote(seconds), timeout=60)
        except ray.exceptions.RayActorError:
            pass  # a node being restarted starts without delay anyway


def _in_flight(net, client, k: int = 4, delay_s: float = 1.5, drawing: str | None = None) -> list:
    """k requests whose rounds are open (every node answers `delay_s` late); with `drawing`,
    the first one's quorum has that node in it."""
    _slow(net, delay_s)
    ids = [request_id_drawing(net, {drawing}, 3) if drawing and i == 0 else None for i in range(k)]
    hs = [client.generate(f"crash {i}", n=3, max_tokens=6, request_id=ids[i]) for i in range(k)]
    time.sleep(0.4)
    return hs


def _serves_next(client) -> None:
    assert client.generate("and the next one", n=3, max_tokens=6).result(timeout=60).status == "final"


def _refunded(net, rid: str) -> bool:
    entries = ray.get(net.ledger.entries_for.remote(rid))
    escrowed = sum(e.amount for e in entries if e.reason == "escrow")
    back = sum(e.amount for e in entries if e.reason == "refund")
    return escrowed == back and not any(e.reason == "reward" for e in entries)


def test_a_shard_killed_mid_round_ends_its_rounds_unresolved_refunded_the_other_shard_finishes(net, client):
    victim = 0
    handle = net.aggregator.handles[victim]
    pid = _pid(handle)
    for _ in range(3):  # under load the rounds may all end before the kill: then again
        hs = _in_flight(net, client, k=6, delay_s=3.0)
        on_victim = [h for h in hs if net.aggregator.order(h.request_id)[0] == victim]
        before = ray.get(net.aggregator.handles[1 - victim].stats.remote())
        # which of its rounds are open when it dies (under load a round may already have ended)
        open_at_kill = {h.request_id for h in on_victim if not ray.get(handle.status.remote(h.request_id))["done"]}
        if open_at_kill:
            break
        assert all(h.result(timeout=90).status == "final" for h in hs)
    os.kill(pid, 9)
    assert open_at_kill, "every round on the shard had ended before the kill, three times"
    _slow(net, 0.0)
    for h in hs:
        res = h.result(timeout=90)  # the handle keeps working: it fetches the final answer by request id
        if h.request_id in open_at_kill:
            assert res.status == "unresolved"
            assert _refunded(net, h.request_id)
            s = receipts.verify_receipt(res.receipt, [client.aggregator_key])  # a receipt says so, signed
            assert s.status == "unresolved" and s.paid == () and s.slashed == ()
        else:
            assert res.status == "final"
    assert ray.get(net.aggregator.handles[victim].stats.remote())["recovered"] >= len(open_at_kill)
    assert ray.get(net.aggregator.handles[1 - victim].stats.remote())["final"] > before["final"]
    check_books(net)
    _serves_next(client)


@pytest.mark.parametrize("role", ["registry", "selector", "ledger", "epochs"])
def test_a_control_plane_actor_killed_mid_round_loses_no_round(net, client, role):
    hs = _in_flight(net, client)
    _kill(getattr(net, role))
    _slow(net, 0.0)
    assert [h.result(timeout=90).status for h in hs] == ["final"] * len(hs)
    check_books(net)
    _serves_next(client)
    nodes = ray.get(net.registry.list_nodes.remote())
    assert all(n["live"] for n in nodes)  # nobody was taken out for the control plane's crash


def test_the_registry_comes_back_with_every_node_record_and_key(net):
    before = ray.get(net.registry.list_nodes.remote())
    _kill(net.registry)
    after = ray.get(net.registry.list_nodes.remote(), timeout=60)
    assert [(n["node_id"], n["pubkey"], n["stake"], n["live"], n["attested"], n["epoch"]) for n in after] == \
        [(n["node_id"], n["pubkey"], n["stake"], n["live"], n["attested"], n["epoch"]) for n in before]
    assert sorted(ray.get(net.registry.handles.remote())) == sorted(net.executors)


def test_a_killed_executor_is_drawn_again_only_after_proving_fresh_keys(net, client):
    nid = sorted(net.executors)[2]
    old = next(n for n in ray.get(net.registry.list_nodes.remote()) if n["node_id"] == nid)
    hs = _in_flight(net, client, drawing=nid)  # a round it is in notices its death at once
    _kill(net.executors[nid])
    _slow(net, 0.0)
    assert {h.result(timeout=90).status for h in hs} <= {"final"}  # replacements were drawn for it
    deadline = time.time() + 60
    while True:
        rec = next(n for n in ray.get(net.registry.list_nodes.remote()) if n["node_id"] == nid)
        if rec["live"] and not rec["rejoining"] and rec["pubkey"] != old["pubkey"]:
            break
        assert time.time() < deadline, f"{nid} never rejoined: {rec}"
        time.sleep(0.2)
    assert rec["pubkey"] != old["pubkey"] and rec["epoch"] > old["epoch"]  # fresh keys, proven
    assert rec["attested"]  # this network attests: the new keys came with fresh evidence
    mine = ray.get(net.executors[nid].ready.remote())
    assert mine["pubkey"] == rec["pubkey"] and mine["kem_pub"] == rec["kem_pub"]
    check_books(net)
    _serves_next(client)


def test_a_request_cannot_be_replayed_across_a_restart(net, client):
    raw, rid = client.build_request("once only", n=3, max_tokens=4)
    h = client.submit_raw(raw, "once only")
    assert h.result(timeout=60).status == "final"
    shard = net.aggregator.order(rid)[0]
    _kill(net.aggregator.handles[shard])
    balances = ray.get(net.ledger.balances.remote())
    # the very same signed request (what Ray retries after a crash) is answered, not run again
    again = ray.get(net.aggregator.handles[shard].submit.remote(raw, "once only"), timeout=60)
    assert again == {"request_id": rid, "resubmitted": True, "shard": shard}
    assert ray.get(net.ledger.balances.remote()) == balances
    # another request under the spent id is a replay, before and after the restart
    body = dict(messages.open_envelope(raw, "request").body, max_tokens=5)
    forged = messages.seal("request", body, client.key).raw
    with pytest.raises(ReplayedMessage):
        ray.get(net.aggregator.handles[shard].submit.remote(forged, "once only"))
    assert ray.get(net.ledger.balances.remote()) == balances
    assert ray.get(net.aggregator.final.remote(rid))["status"] == "final"  # still answered from the journal


def test_obfuscated_rounds_survive_a_selector_restart_and_its_file_unblinds_nobody(net, client):
    _slow(net, 1.5)
    hs = [client.generate(f"hidden {i}", mode="obfuscated", n=3, max_tokens=4) for i in range(3)]
    time.sleep(0.4)
    _kill(net.selector)
    _slow(net, 0.0)
    assert [h.result(timeout=90).status for h in hs] == ["final"] * 3
    path = ray.get(net.selector.__ray_call__.remote(lambda s: s.store.path))
    data = b"".join(open(p, "rb").read() for p in (path, path + "-wal") if os.path.exists(p))
    assert data and not any(nid.encode() in data for nid in net.executors)
    check_books(net)


def test_a_shard_that_is_gone_is_routed_around_and_a_repair_brings_it_back(net, client):
    from cluster.network import deploy, status

    from actors.authority import bare

    ray.kill(bare(net.aggregator.handles[1]), no_restart=True)
    deadline = time.time() + 30
    while status(net.config, None)["actors"]["aggregator/1"] != "missing" and time.time() < deadline:
        time.sleep(0.2)
    assert status(net.config, None)["actors"]["aggregator/1"] == "missing"
    res = client.results([client.generate(f"around {i}", n=3, max_tokens=4) for i in range(6)])
    assert [r.status for r in res] == ["final"] * 6  # all on the live shard
    repaired = deploy(net.config, ledger_path=_ledger_path(net), repair=True)
    st = status(net.config, None)
    assert st["healthy"] and st["nodes"]["live"] == 6 and st["escrow_held"] == 0
    net.aggregator.handles[1] = repaired.aggregator.handles[1]
    net.aggregator._dead.clear()
    _serves_next(repaired.client())
    balances = ray.get(net.ledger.balances.remote())
    check_conservation(balances)


def _ledger_path(net) -> str:
    return ray.get(net.ledger.__ray_call__.remote(lambda s: s._store.path))
