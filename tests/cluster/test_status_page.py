"""The status page in a real browser (Debian's chromium driven by Playwright), /status.json,
the decoded receipt view and /metrics, on the shared tiny network behind the gateway."""

from __future__ import annotations

import os
import shutil
import time

import pytest

httpx = pytest.importorskip("httpx")

import ray  # noqa: E402

from tests.conftest import request_id_drawing, start_gateway  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def site(tiny_net, tmp_path_factory):
    from cluster import gateway as gw
    from cluster.keys import KeyStore

    path = str(tmp_path_factory.mktemp("status") / "keys.db")
    url = start_gateway(tiny_net, path)
    secret, key = KeyStore(path).create("carol", "status page")
    yield {"url": url, "key": secret, "key_id": key.key_id}
    gw.stop(shutdown=True)


@pytest.fixture(scope="module")
def browser(site):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make setup installs it with apt-get; it could not here)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def _chat(site, text: str) -> str:
    r = httpx.post(f"{site['url']}/v1/chat/completions", timeout=120,
                   headers={"authorization": f"Bearer {site['key']}"},
                   json={"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 6})
    assert r.status_code == 200, r.text
    return r.headers["x-verinfer-request-id"]


def test_status_json_lists_nodes_rounds_and_keys(site, tiny_net):
    rid = _chat(site, "status json")
    s = httpx.get(f"{site['url']}/status.json", timeout=60).json()
    nodes = {n["node_id"]: n for n in s["nodes"]}
    assert set(nodes) == set(tiny_net.executors)
    assert all(n["attested"] == "simulated" and n["stake"] > 0 for n in nodes.values())
    deadline = time.time() + 30
    while rid not in {r["request_id"] for r in s["rounds"]} and time.time() < deadline:
        time.sleep(1.1)  # (the page's data is gathered at most once a second)
        s = httpx.get(f"{site['url']}/status.json", timeout=60).json()
    row = next(r for r in s["rounds"] if r["request_id"] == rid)
    assert row["status"] == "final" and row["finality_s"] > 0 and row["receipt"] == f"/receipts/{rid}"
    assert any(k["key_id"] == site["key_id"] and k["admitted"] >= 1 for k in s["keys"])


def test_receipt_view_decodes_and_verifies(site):
    rid = _chat(site, "decode me")
    d = httpx.get(f"{site['url']}/status/receipts/{rid}", timeout=60).json()
    assert d["verification"]["valid"] and d["verification"]["status"] == "final"
    assert d["verification"]["checked_under"]["trust_roots"]  # the roots the attestation was checked under
    assert {m["role"] for m in d["members"]} == {"quorum"} and all(m["commitment"] for m in d["members"])
    assert d["draws"] and d["ledger"] and d["decision"]["status"] == "final"
    assert httpx.get(f"{site['url']}/status/receipts/nope", timeout=60).status_code == 404


def test_responses_say_how_members_were_attested(site):
    r = httpx.post(f"{site['url']}/v1/chat/completions", timeout=120,
                   headers={"authorization": f"Bearer {site['key']}"},
                   json={"model": "tiny", "messages": [{"role": "user", "content": "attested?"}], "max_tokens": 4,
                         "verinfer": {"require_tee": True}})
    vi = r.json()["verinfer"]
    assert set(vi["attestation"].values()) == {"simulated"} and vi["attestation_checked_under"]
    assert "SIMULATED" in vi["attestation_note"] and "verinfer verify" in vi["attestation_note"]


def test_metrics_are_prometheus_text(site):
    _chat(site, "count me")
    text = httpx.get(f"{site['url']}/metrics", timeout=60).text
    for name in ("verinfer_requests_total", "verinfer_time_to_first_output_seconds_bucket",
                 "verinfer_finality_seconds_count", "verinfer_disputes_total", "verinfer_queue_depth",
                 "verinfer_ledger_commit_seconds_bucket", "verinfer_nodes", "verinfer_attestation_renewals_total"):
        assert name in text, name
    final = [ln for ln in text.splitlines() if ln.startswith('verinfer_requests_total{mode="sampling",status="final"}')]
    assert final and float(final[0].split()[-1]) >= 1


def test_the_page_shows_the_network_at_work_in_a_browser(site, tiny_net, tiny_client, browser, behave, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(site["url"] + "/")
    page.wait_for_selector("#nodes tbody tr[data-node]")
    assert page.locator("#nodes tbody tr[data-node]").count() == len(tiny_net.executors)
    for nid in tiny_net.executors:  # every node with its attestation label
        assert page.locator(f'#nodes tr[data-node="{nid}"] td.attested').inner_text() == "simulated"
    rid = _chat(site, "watch me finalize")
    row = page.locator(f'#rounds tr[data-request="{rid}"]')
    row.wait_for(timeout=30_000)  # the page updates itself
    assert row.locator("td.status").inner_text() == "final"
    cheater = "tiny-06"
    behave(cheater, "substitute")
    res = tiny_client.generate("a cheater is drawn", n=3, max_tokens=8,
                               request_id=request_id_drawing(tiny_net, {cheater}, 3)).result(timeout=120)
    assert (cheater, "cheat") in res.summary.slashed
    page.locator(f'#slashes tr[data-node="{cheater}"]').first.wait_for(timeout=30_000)
    assert page.locator(f'#rounds tr[data-request="{res.request_id}"] td.status').inner_text() == "resolved"
    shot = os.environ.get("VERINFER_SCREENSHOT") or str(tmp_path / "status.png")
    page.screenshot(path=shot, full_page=True)
    assert os.path.getsize(shot) > 10_000
    row.locator("a").click()  # the round's receipt, decoded
    page.wait_for_selector("#verdict")
    assert page.locator("#verdict").inner_text() == "VALID"
    assert page.locator("#members table tbody tr").count() == 3
    page.close()
