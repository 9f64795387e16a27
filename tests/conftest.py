"""Shared fixtures: one local Ray cluster for the whole session (ray.init ~5 s)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# tests may look inside actors with Ray's __ray_call__; networks refuse it unless deployed so
# (test_compromised_node deploys one that refuses it)
os.environ.setdefault("VERINFER_DEBUG_CALLS", "1")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never join a cluster left running by `verinfer up` or a stale session file
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            namespace="verinfer-tests",
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_net(ray_cluster, tmp_path_factory):
    """One 8-node tiny-engine network shared by the network tests (honest by default)."""
    import uuid

    from cluster import config as cfgmod
    from cluster.network import deploy, teardown

    cfg = cfgmod.load("tiny.toml")
    cfg.network.name = f"t-net-{uuid.uuid4().hex[:6]}"
    cfg.malicious = {}
    cfg.nodes[0].cpus = 0.05  # leave CPUs free for the other networks tests deploy next to it
    # the network's member deadline: generous for an honest tiny node on a loaded 2-core machine
    # (a client may not shorten it), short enough that silent-node tests stay quick
    cfg.limits.timeout_s = 6.0
    cfg.limits.reveal_timeout_s = 6.0
    cfg.limits.liveness_interval_s = 0.2
    network = track(deploy(cfg, ledger_path=str(tmp_path_factory.mktemp("ledger") / "ledger.db")))
    yield network
    teardown(network)


@pytest.fixture(scope="session")
def tiny_client(tiny_net):
    return tiny_net.client()


@pytest.fixture
def behave(tiny_net):
    """Set node behaviours for one test; restore honesty, liveness and stake after it."""
    import ray

    changed = []

    def set_(node_id, behaviour):
        ray.get(tiny_net.executors[node_id].set_behaviour.remote(behaviour))
        changed.append(node_id)

    yield set_
    ray.get([tiny_net.executors[n].set_behaviour.remote("honest") for n in changed])
    ray.get([tiny_net.registry.set_live.remote(n, True) for n in changed])
    econ = tiny_net.config.economics
    for n in changed:  # top slashed collateral back up so later tests see a full network
        bal = ray.get(tiny_net.ledger.balances.remote(f"collateral/{n}")).get(f"collateral/{n}", 0)
        if bal < econ.collateral:
            ray.get(tiny_net.ledger.deposit.remote(f"collateral/{n}", econ.collateral - bal,
                                                   f"test-restake|{n}|{bal}|{uuid_hex()}"))
    stakes = ray.get(tiny_net.ledger.balances.remote("collateral/"))
    ray.get(tiny_net.registry.set_stakes.remote({k.split("/", 1)[1]: v for k, v in stakes.items()}))


def uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex


NETWORKS: list = []  # every network a test deployed; the books of each are checked after every test


def track(net):
    NETWORKS.append(net)
    return net


def check_books(net, settle_s: float = 120.0) -> None:
    """Once no round is open: money conserved, no escrow left locked, hash chain intact."""
    import time

    import ray

    from protocols.ledger import check_conservation

    deadline = time.time() + settle_s
    while net.aggregator.totals().get("open"):  # rounds still running settle first
        assert time.time() < deadline, "rounds still open long after the test"
        time.sleep(0.05)
    balances = ray.get(net.ledger.balances.remote())
    check_conservation(balances)
    locked = {k: v for k, v in balances.items() if k.startswith("escrow/") and v}
    assert not locked, f"escrow left locked: {locked}"
    ray.get(net.ledger.verify.remote())


@pytest.fixture
def conserved():
    """After the test: the books of every network still up balance (see check_books)."""
    yield
    import ray

    for net in list(NETWORKS):
        try:
            ray.get(net.ledger.balances.remote(), timeout=30)
        except Exception:  # torn down
            NETWORKS.remove(net)
            continue
        check_books(net)


def request_id_drawing(net, want: set, n: int, avoid: set = frozenset()) -> str:
    """A fresh request id whose first draw contains `want` and none of `avoid`.
    Only the selector's secret VRF key can preview a draw: tests, like the demo,
    use it as the network's operator (no client can)."""
    import ray

    from cluster.demo import operator_vrf_key, steer

    if not hasattr(net, "_vrf"):
        net._vrf = operator_vrf_key(net)
    nodes = ray.get(net.registry.list_nodes.remote())
    pool = sorted(x["node_id"] for x in nodes if x["live"] and x["stake"] >= net.config.economics.min_stake)
    return steer(net._vrf, pool, n, set(want), set(avoid))


def trust_roots(net) -> list[bytes]:
    """The network's attestation root keys, as a client would configure them."""
    import ray

    return list(ray.get(net.registry.__ray_call__.remote(lambda self: self.trust_anchors)))


def deploy_tiny(tmp_path_factory, prefix: str, count: int, **attestation):
    """A small tiny-engine network of its own next to the session one (honest, 0.05 CPU a node)."""
    import uuid

    from cluster import config as cfgmod
    from cluster.network import deploy

    cfg = cfgmod.load("tiny.toml")
    cfg.network.name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cfg.malicious = {}
    cfg.nodes[0].count = count
    cfg.nodes[0].cpus = 0.05
    for k, v in attestation.items():
        setattr(cfg.attestation, k, v)
    return track(deploy(cfg, ledger_path=str(tmp_path_factory.mktemp(prefix) / "ledger.db")))


def set_tcb(net, node_id: str, version: int) -> None:
    """The node's firmware changes (simulated provider: the TCB version it reports)."""
    import ray

    ray.get(net.executors[node_id].__ray_call__.remote(
        lambda ex: ex.attestation_spec.__setitem__("tcb_version", version)))


def start_gateway(net, keys_file: str) -> str:
    """The HTTP gateway for `net` on a free local port, answering; returns its URL
    (stop it with `cluster.gateway.stop(shutdown=True)`)."""
    import socket

    from cluster import gateway

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = gateway.start(net, "127.0.0.1", port, keys_file=keys_file, capacity=8)
    gateway.wait_ready(url)
    return url
