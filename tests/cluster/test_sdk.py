"""cluster.sdk against the gateway: non-custodial signing, local sealing, receipts checked by the caller."""

from __future__ import annotations

import pytest

pytest.importorskip("httpx")

import ray  # noqa: E402

from protocols import messages  # noqa: E402
from protocols.crypto import SigningKey  # noqa: E402
from tests.cluster.test_gateway import gateway  # noqa: E402,F401  (the shared gateway fixture)
from tests.conftest import trust_roots  # noqa: E402


def _sdk(gw, net, **kw):
    from cluster.sdk import Verinfer

    return Verinfer(gw["url"] + "/v1", gw["key"], trust_roots=trust_roots(net), allow_simulated=True, **kw)


def test_requests_are_signed_by_the_callers_own_key_and_verified_by_the_caller(gateway, tiny_net):
    seed = b"\x42" * 32
    res = _sdk(gateway, tiny_net, key_seed=seed).chat([{"role": "user", "content": "sign it myself"}], n=3,
                                                      max_tokens=5)
    assert res.status == "final" and res.summary.n == 3 and res.token_ids is not None
    body = messages.open_envelope(res.receipt, "receipt").body
    req = messages.open_envelope(body["request"], "request")
    assert req.sender == SigningKey(seed).public  # not the gateway's custodial key


def test_a_tee_prompt_is_sealed_on_the_callers_machine(gateway, tiny_net, tiny_client):
    secret = "my medical question nobody may read"
    res = _sdk(gateway, tiny_net).complete(secret, mode="tee", max_tokens=5)
    assert res.status == "final" and res.summary.attested
    state = ray.get(tiny_net.aggregator.debug_state.remote(res.request_id))
    assert secret.encode() not in state  # the control plane held only ciphertext
    body = messages.open_envelope(res.receipt, "receipt").body
    assert body["decision"]["status"] == "final"


def test_a_pinned_aggregator_key_that_the_gateway_does_not_use_is_refused(gateway, tiny_net):
    from protocols.errors import ReceiptInvalid

    with pytest.raises(ReceiptInvalid):
        _sdk(gateway, tiny_net, aggregator_key=SigningKey(b"\x13" * 32).public).chat(
            [{"role": "user", "content": "x"}], max_tokens=2)


def test_nothing_is_sealed_to_nodes_whose_evidence_does_not_chain_to_my_roots(gateway, tiny_net):
    from cluster.sdk import Verinfer
    from protocols.attestation import AttestationError

    before = ray.get(tiny_net.ledger.head.remote())
    vi = Verinfer(gateway["url"] + "/v1", gateway["key"], trust_roots=[b"\x01" * 32], allow_simulated=True)
    with pytest.raises(AttestationError):
        vi.complete("for enclaves only", mode="tee", max_tokens=2)
    assert ray.get(tiny_net.ledger.head.remote()) == before  # nothing was sent
