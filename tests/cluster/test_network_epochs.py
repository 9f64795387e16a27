"""Attestation epochs: the network itself rotates node keys and re-attests them,
without a node ever leaving the TEE class and without breaking requests in flight."""

from __future__ import annotations

import threading
import time

import pytest
import ray

from cluster.network import teardown
from protocols import messages, receipts
from tests.conftest import deploy_tiny, set_tcb, trust_roots

EPOCH_S = 3.0


@pytest.fixture(autouse=True)
def _conserved(conserved):
    yield


@pytest.fixture(scope="module")
def epoch_net(ray_cluster, tmp_path_factory):
    # renew 1.5 s before each 3 s epoch ends
    net = deploy_tiny(tmp_path_factory, "t-epoch", 4, epoch_s=EPOCH_S, renew_fraction=0.5)
    yield net
    teardown(net)


def nodes(net) -> dict[str, dict]:
    return {n["node_id"]: n for n in ray.get(net.registry.list_nodes.remote())}


def test_keys_rotate_every_epoch_while_tee_requests_keep_finalizing(epoch_net):
    client = epoch_net.client()
    before = nodes(epoch_net)
    seen = {nid: {n["epoch"]: n["pubkey"]} for nid, n in before.items()}  # node -> epoch -> key
    results = []
    give_up = time.time() + 60 * EPOCH_S  # only a guard against a hang: we wait for events, not a clock
    holders = [epoch_net.registry, epoch_net.selector, epoch_net.epochs, *epoch_net.aggregator.handles]
    control_before = [ray.get(h.control_key.remote())["key"] for h in holders]

    def renewed_twice() -> bool:
        now = nodes(epoch_net)
        return all(now[n]["epoch"] >= before[n]["epoch"] + 2 for n in now) and \
            all(ray.get(h.control_key.remote())["key"] != k for h, k in zip(holders, control_before))

    done = threading.Event()

    def watch() -> None:  # every key each node holds, however slow the requests are under load
        while not done.is_set():
            for nid, n in nodes(epoch_net).items():
                seen[nid][n["epoch"]] = n["pubkey"]
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        while not renewed_twice():  # requests in flight across the switches, four at a time
            assert time.time() < give_up, "nodes were not renewed twice"
            handles = client.generate_many([f"epoch {i}" for i in range(4)], n=3, max_tokens=6, require_tee=True)
            results += client.results(handles)
            for nid, n in nodes(epoch_net).items():
                assert n["attested"], f"{nid} fell out of the TEE class during a renewal"
    finally:
        done.set()
        watcher.join()
    after = nodes(epoch_net)
    assert all(after[n]["epoch"] >= before[n]["epoch"] + 2 for n in after)  # renewed, every epoch
    for nid, n in after.items():
        seen[nid][n["epoch"]] = n["pubkey"]
    # with a fresh key each time: no key serves two epochs (a poll may miss an epoch under load,
    # so the claim is about every epoch observed, the first and the last at least)
    for nid, keys in seen.items():
        assert len(keys) >= 2 and len(set(keys.values())) == len(keys), (nid, keys)
    assert all(after[n]["attestation"]["reason"] == "ok" for n in after)
    odd = [(r.request_id, r.status, r.summary.slashed, messages.open_envelope(r.receipt, "receipt").body.get("decision"))
           for r in results if r.status != "final" or r.summary.slashed]
    assert results and not odd, odd
    # the control plane's own signing keys rotated with the epochs too, and every call kept passing
    assert all(ray.get(h.control_key.remote())["key"] != k for h, k in zip(holders, control_before))
    roots = trust_roots(epoch_net)
    for r in results[-4:]:  # each receipt carries the evidence for the keys its members signed with
        s = receipts.verify_receipt(r.receipt, [client.aggregator_key], r.token_ids, trusted_roots=roots)
        assert set(s.attested) == set(s.paid)


def test_a_node_that_fails_renewal_leaves_the_tee_class_at_once_but_keeps_serving(epoch_net):
    client = epoch_net.client()
    victim = "tiny-03"
    ray.get(epoch_net.epochs.stop.remote())
    try:
        old_key = nodes(epoch_net)[victim]["pubkey"]
        set_tcb(epoch_net, victim, 0)  # downgraded below the policy's minimum
        [res] = ray.get(epoch_net.epochs.renew.remote([victim]))
        assert not res["ok"] and res["reason"] == "tcb-too-old"
        now = nodes(epoch_net)[victim]
        assert not now["attested"] and now["pubkey"] == old_key  # out of the class, old keys kept
        for _ in range(6):
            assert victim not in client.generate("tee", mode="tee", n=1, max_tokens=2).result().summary.paid
        out = client.generate("plain", n=4, max_tokens=2).result()  # non-TEE service still uses it
        assert out.status == "final" and victim in out.summary.paid
        set_tcb(epoch_net, victim, 3)
        [res] = ray.get(epoch_net.epochs.renew.remote([victim]))
        assert res["ok"] and nodes(epoch_net)[victim]["attested"]  # fixed firmware: back in the class
    finally:
        set_tcb(epoch_net, victim, 3)
        ray.get(epoch_net.epochs.start.remote())
