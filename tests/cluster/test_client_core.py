"""cluster.client_core: the client's rules without Ray (shared by the Ray clients and the gateway)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from protocols import messages
from protocols.crypto import SigningKey
from protocols.errors import UnknownModel

ROOT = Path(__file__).resolve().parents[2]


def test_client_core_imports_no_ray():
    code = "import sys, cluster.client_core; assert 'ray' not in sys.modules, 'ray was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def _core():
    from cluster.client_core import ClientCore, NetworkKeys

    cfg = SimpleNamespace(default_model="m", network=SimpleNamespace(default_mode="sampling", default_n=3),
                          limits=SimpleNamespace(timeout_s=30.0))
    keys = NetworkKeys(SigningKey(b"\x01" * 32).public, SigningKey(b"\x02" * 32).public, b"vrf", (),
                       {"m": "ab" * 32})
    return ClientCore(cfg, keys, key_seed=b"\x03" * 32)


def test_requests_are_signed_by_the_client_and_bind_the_prompt():
    core = _core()
    raw, rid = core.build_request("hello", max_tokens=4)
    env = messages.open_envelope(raw, "request")
    assert env.sender == core.key.public and env.body["client_id"] == core.client_id
    assert env.body["model_hash"] == "ab" * 32 and env.body["n"] == 3 and not env.body["sealed"]
    from protocols import admission

    admission.admit_at_node(raw, "hello", "ab" * 32)  # a node accepts it for exactly this prompt
    with pytest.raises(Exception):
        admission.admit_at_node(raw, "hellO", "ab" * 32)
    with pytest.raises(UnknownModel):
        core.build_request("hello", model="other")
    sealed_raw, _ = core.build_request("hello", mode="tee", n=1)
    assert messages.open_envelope(sealed_raw, "request").body["client_kem"] == core.kem.public


def test_first_outputs_that_do_not_match_their_signed_digest_are_dropped():
    from protocols import commitments

    core = _core()
    node = SigningKey(b"\x09" * 32)
    out = {"token_ids": [1, 2], "text": "hi"}
    env = messages.seal("result", {"request_id": "r1", "node_id": "n1", "role": "quorum",
                                   "commit_hash": b"\x00" * 32,
                                   "output_digest": commitments.output_digest([1, 2], "hi"),
                                   "engine_seconds": 0.1, "nonce": os.urandom(16)}, node)
    got = {"node_id": "n1", "pubkey": node.public, "envelope": env.raw, "output": out}
    assert core.check_first(got, "r1", 0.0).text == "hi"
    assert core.check_first(dict(got, output={"token_ids": [1, 3], "text": "hi"}), "r1", 0.0) is None
    assert core.check_first(dict(got, pubkey=b"\x00" * 32), "r1", 0.0) is None
    assert core.check_first(got, "r2", 0.0) is None  # another request's output
    assert core.check_first(None, "r1", 0.0) is None


def test_complete_returns_the_receipts_answer_and_refuses_forged_or_foreign_receipts():
    from cluster.client_core import ClientCore, NetworkKeys
    from protocols.errors import ReceiptInvalid
    from tests.roundsim import AGGREGATOR_KEY, HONEST, SELECTOR_KEY, VRF_KEY, Sim

    sim = Sim().run()
    cfg = SimpleNamespace(default_model="m", network=SimpleNamespace(default_mode="sampling", default_n=3),
                          limits=SimpleNamespace(timeout_s=30.0))
    core = ClientCore(cfg, NetworkKeys(AGGREGATOR_KEY.public, SELECTOR_KEY.public, VRF_KEY.public, (), {}))
    fin = {"output": {"token_ids": HONEST, "text": ""}, "status": sim.outcome.status, "receipt": sim.receipt(),
           "timings": {}}
    res = core.complete(fin, sim.rid, 0.0)
    assert res.status == "final" and res.token_ids == HONEST and res.summary.request_id == sim.rid
    with pytest.raises(ReceiptInvalid):  # other tokens than the accepted commitment binds
        core.complete(dict(fin, output={"token_ids": HONEST[:-1], "text": ""}), sim.rid, 0.0)
    with pytest.raises(ReceiptInvalid):  # signed by an aggregator this client does not pin
        core.complete(dict(fin, receipt=sim.receipt(key=SigningKey(b"\x66" * 32))), sim.rid, 0.0)
    with pytest.raises(ReceiptInvalid):  # a valid receipt, for another request
        core.complete(fin, "another-request", 0.0)
