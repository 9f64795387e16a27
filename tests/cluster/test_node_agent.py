"""A node that runs outside the cluster (issue 17): `verinfer node run` in its own process.

The agent process never joins the network's Ray cluster: it loads the tiny model
itself, joins through the gateway's node endpoint under the key the operator
approved, attests (simulated root), and then serves beside the in-cluster executors:
drawn into quorums, paid, slashed when it cheats, and timed out when it is killed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid

import pytest
import ray

from tests.conftest import check_books, request_id_drawing, start_gateway, track

EXT = "ext-01"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start_agent(url: str, key: str, conf: str, log: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-m", "cluster.cli", "node", "run", "--network", url, "--key", key,
                             "--config", conf], cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _node(net) -> dict | None:
    nodes = {n["node_id"]: n for n in ray.get(net.registry.list_nodes.remote())}
    return nodes.get(EXT)


def _wait(pred, what: str, timeout: float = 180.0, log: str | None = None) -> None:
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            tail = open(log).read()[-3000:] if log and os.path.exists(log) else ""
            raise AssertionError(f"{what}\n--- agent log ---\n{tail}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def outside(ray_cluster, tmp_path_factory):
    from cluster import agent, config as cfgmod, gateway as gw
    from cluster.network import deploy, teardown

    d = tmp_path_factory.mktemp("outside")
    cfg = cfgmod.load("tiny.toml")
    cfg.network.name = f"out-{uuid.uuid4().hex[:6]}"
    cfg.malicious = {}
    cfg.models[0].options = {}  # weights in the clear: the outside node loads its own copy
    cfg.nodes[0].count = 4
    cfg.nodes[0].cpus = 0.05
    cfg.limits.timeout_s = 8.0
    cfg.limits.reveal_timeout_s = 8.0
    net = track(deploy(cfg, ledger_path=str(d / "ledger.db")))
    url = start_gateway(net, str(d / "keys.db"))
    key = str(d / "ext.key")
    agent.read_key(key, create=True)  # the node operator makes a key; the network operator approves it
    stake = cfg.economics.collateral
    ray.get(net.ledger.deposit.remote(f"collateral/{EXT}", stake, f"stake|{EXT}"))
    ray.get(net.registry.approve.remote(EXT, bytes.fromhex(agent.public_key(key)), "tiny", stake))
    with open(net.secret_path, "rb") as f:  # the simulated root of trust (tests only: real TEEs need none)
        root = hashlib.sha256(b"verinfer/simulated-root|" + f.read()).hexdigest()
    conf = d / "node.toml"
    conf.write_text(f'[node]\nid = "{EXT}"\nmodel = "tiny"\nengine = "tiny"\nthreads = 1\n\n'
                    f'[attestation]\nprovider = "simulated"\nroot_seed = "{root}"\ntcb_version = 3\n\n'
                    f'[network]\noperator_key = "{net.operator.public.hex()}"\n')
    log = str(d / "agent.log")
    proc = _start_agent(url, key, str(conf), log)
    _wait(lambda: (_node(net) or {}).get("attested"), "the outside node never joined attested", log=log)
    yield {"net": net, "proc": proc, "url": url, "log": log, "key": key, "conf": str(conf)}
    proc.kill()
    gw.stop(shutdown=True)
    teardown(net)


def _collateral(net) -> int:
    return ray.get(net.ledger.balances.remote(f"collateral/{EXT}")).get(f"collateral/{EXT}", 0)


def test_an_outside_node_joins_attested_and_serves_beside_in_cluster_nodes(outside):
    net = outside["net"]
    rec = _node(net)
    assert rec["live"] and rec["attested"] and rec["attestation"]["simulated"]
    assert rec["det_class"] == ray.get(net.registry.list_nodes.remote())[0]["det_class"]  # one class with the rest
    client = net.client()
    for _ in range(2):
        res = client.generate("hello from outside", n=3, max_tokens=8,
                              request_id=request_id_drawing(net, {EXT}, 3)).result(timeout=120)
        assert res.status == "final" and EXT in res.summary.paid, res.summary
    res = client.generate("sealed to an outside node", n=3, max_tokens=6, require_tee=True,
                          request_id=request_id_drawing(net, {EXT}, 3)).result(timeout=120)
    assert res.status == "final" and EXT in res.summary.paid  # its attested key opened the sealed prompt
    proxy = ray.get(net.registry.handles.remote([EXT]))[EXT]
    st = ray.get(proxy.connected.remote())
    assert st["forwarded"] > 0 and time.time() - st["last_poll"] < 60
    pid = ray.get(proxy.ready.remote())["pid"]  # answered by the agent: its own process, outside Ray
    assert pid == outside["proc"].pid
    check_books(net)


def test_an_outside_node_cannot_be_steered_by_unsigned_calls(outside):
    """Its stand-in forwards anything, but the agent checks every call like an executor."""
    proxy = ray.get(outside["net"].registry.handles.remote([EXT]))[EXT]
    from protocols.authority import Unauthorized

    with pytest.raises(Unauthorized):
        ray.get(proxy.set_behaviour.remote("silent"), timeout=60)
    with pytest.raises(Unauthorized):
        ray.get(proxy.reveal_many.remote(["any"]), timeout=60)


def test_the_node_endpoint_takes_only_a_nodes_own_fresh_signed_requests(outside):
    """Tried from outside, over HTTP: no signature, a stranger's key, another node's name, a
    captured request replayed (as it was, or with another body), a relay for another node."""
    import httpx

    from actors.remote_node import unwire, wire
    from cluster import agent
    from cluster.node_endpoint import AUTH_HEADER, auth_header
    from protocols import authority as au
    from protocols.crypto import SigningKey

    url, net = outside["url"], outside["net"]
    own = au.Signer(agent.read_key(outside["key"]), au.NODE, EXT, net.config.network.name)
    stranger = au.Signer(SigningKey(os.urandom(32)), au.NODE, EXT, net.config.network.name)

    def post(node, action, body, signer=None, header=None):
        data = wire(body)
        if header is None and signer is not None:
            header = auth_header(signer, action, node, data, time.time(), os.urandom(16))
        r = httpx.post(f"{url}/v1/nodes/{node}/{action}", content=data, timeout=60,
                       headers={AUTH_HEADER: header} if header else {})
        return r.status_code, unwire(r.content), header

    poll = {"wait_s": 0.0}
    assert post(EXT, "poll", poll)[0] == 401  # no signature
    assert post(EXT, "poll", poll, stranger)[0] == 401  # a key that is not the node's
    assert post("tiny-01", "poll", poll, au.Signer(own.key, au.NODE, "tiny-01", own.network))[0] in (401, 404)
    status, _, header = post(EXT, "relay", {"to": "registry", "method": "rejoin", "args": [EXT], "kwargs": {}}, own)
    assert status == 200  # its own, fresh and signed: relayed (rejoin asks the node itself; nothing changes)
    assert post(EXT, "relay", {"to": "registry", "method": "rejoin", "args": [EXT], "kwargs": {}},
                header=header)[0] == 400  # the same request again: a replay
    assert post(EXT, "relay", {"to": "registry", "method": "rejoin", "args": ["tiny-02"], "kwargs": {}},
                header=header)[0] == 401  # its signature over another body
    for body in ({"to": "registry", "method": "rejoin", "args": ["tiny-02"], "kwargs": {}},  # another node's
                 {"to": "registry", "method": "set_live", "args": [EXT, True], "kwargs": {}},  # not relayable
                 {"to": "ledger", "method": "deposit", "args": [f"collateral/{EXT}", 1, "x"], "kwargs": {}}):
        status, err, _ = post(EXT, "relay", body, own)
        assert status == 401 and type(err).__name__ == "Unauthorized", (body, err)
    assert _node(net)["live"]


def test_an_outside_node_configured_to_cheat_is_slashed(outside):
    from cluster import control

    net = outside["net"]
    proxy = ray.get(net.registry.handles.remote([EXT]))[EXT]
    node = control.signed(proxy, net.operator, "executor", EXT)
    ray.get(node.set_behaviour.remote("substitute"), timeout=120)  # the operator's experiment switch
    before = _collateral(net)
    try:
        res = net.client().generate("cheat from outside", n=3, max_tokens=8,
                                    request_id=request_id_drawing(net, {EXT}, 3)).result(timeout=120)
        assert res.status == "resolved" and (EXT, "cheat") in res.summary.slashed, res.summary
        assert _collateral(net) < before
    finally:
        ray.get(node.set_behaviour.remote("honest"), timeout=120)
        econ = net.config.economics
        ray.get(net.ledger.deposit.remote(f"collateral/{EXT}", econ.collateral - _collateral(net),
                                          f"restake|{EXT}|{uuid.uuid4().hex}"))
        ray.get(net.registry.set_stakes.remote({EXT: econ.collateral}))
        ray.get(net.registry.set_live.remote(EXT, True))
    check_books(net)


def test_killing_the_agent_is_a_timeout_like_any_node(outside):
    net = outside["net"]
    outside["proc"].kill()
    outside["proc"].wait(timeout=30)
    res = net.client().generate("is anyone out there", n=3, max_tokens=6,
                                request_id=request_id_drawing(net, {EXT}, 3)).result(timeout=180)
    assert (EXT, "timeout") in res.summary.slashed, res.summary
    assert res.status in ("final", "resolved") and EXT not in res.summary.paid  # a replacement served
    assert not _node(net)["live"]  # taken out until it answers a liveness challenge again
    check_books(net)
