"""Errors in one line, and attestation a user can read (the CLI and the Python clients).

Every bad input - a CLI option, a config field, a Python client argument, or a
request the network itself refuses inside an actor - is reported in one line that
names the field and what is allowed, with exit code 2 from the CLI, and changes
nothing. `verinfer keys network` prints what to pin; `submit --json` says how each
member was attested and under which roots; `verify` says how to pin what is missing.

The CLI runs in-process against the session's `tiny_net`: a TOML naming that
network (its name, the test namespace, its ledger directory, so the operator's key
file is found) lets `connect` find its actors like those of a `verinfer up` network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from cluster import cli
from cluster import config as cfgmod
from protocols.errors import ConfigError, InvalidParams, PromptTooLarge, UnknownModel
from tests.cluster.test_client_core import _core
from tests.conftest import trust_roots

ROOT = Path(__file__).resolve().parents[2]


def run(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "ray::" not in err and "RayTaskError" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def net_toml(tiny_net, tmp_path_factory) -> str:
    ledger_dir = os.path.dirname(os.path.dirname(tiny_net.secret_path))  # <dir>/secrets/<name>.key
    text = (cfgmod.CONFIG_DIR / "tiny.toml").read_text()
    text = text.replace('name = "verinfer-tiny"', f'name = "{tiny_net.config.network.name}"')
    text = text.replace('namespace = "verinfer"', 'namespace = "verinfer-tests"')  # (the session's namespace)
    text = text.replace('ledger_path = "~/.verinfer/tiny-ledger.db"', f'ledger_path = "{ledger_dir}/ledger.db"')
    text = text.replace('"tiny-07" = "substitute"', "")
    path = tmp_path_factory.mktemp("errors") / "net.toml"
    path.write_text(text)
    return str(path)


def _head(net) -> int:
    return ray.get(net.ledger.head.remote())[0]


def _changed_nothing(net, since: int) -> None:
    """No ledger entry since `since` but a new client's faucet credit (each CLI run is a new client)."""
    new = ray.get(net.ledger.entries.remote(since))
    assert all(e.key.startswith("faucet|") and e.dst.startswith("client/") for e in new), new


# --- options argparse refuses: one line naming the option and what is allowed (no Ray) ----------

BAD_OPTIONS = [
    (["submit", "--prompt", "x", "--n", "0"], "--n", ">= 1"),
    (["submit", "--prompt", "x", "--n", "three"], "--n", "integer"),
    (["submit", "--prompt", "x", "--max-tokens", "0"], "--max-tokens", "from 1 to 4096"),
    (["submit", "--prompt", "x", "--temperature", "-1"], "--temperature", "[0, 10]"),
    (["submit", "--prompt", "x", "--temperature", "nan"], "--temperature", "[0, 10]"),
    (["submit", "--prompt", "x", "--p", "1.5"], "--p", "[0, 1]"),
    (["submit", "--prompt", "x", "--mode", "bogus"], "--mode", "choose from"),
    (["submit", "--prompt", "x", "--trust-root", "zz"], "--trust-root", "hex"),
    (["verify", "r.bin", "--aggregator-key", "00"], "--aggregator-key", "32 bytes of hex"),
    (["verify", "r.bin", "--selector-key", "xyz"], "--selector-key", "hex"),
    (["demo", "--max-tokens", "-3"], "--max-tokens", "from 1 to 4096"),
    (["demo", "--port", "70000"], "--port", "from 1 to 65535"),
    (["serve", "--replicas", "0"], "--replicas", "from 1 to 64"),
    (["serve", "--capacity", "0"], "--capacity", ">= 1"),
    (["keys", "create", "--account", "a", "--rpm", "0"], "--rpm", ">= 1"),
    (["keys", "create", "--account", "a", "--concurrent", "x"], "--concurrent", "integer"),
    (["chat", "hi", "--n", "0"], "--n", ">= 1"),
    (["chat", "hi", "--aggregator-key", "abc"], "--aggregator-key", "hex"),
    (["econ", "quorum", "--r", "0.1", "--n", "x"], "--n", "int"),
    (["keys"], "{create,list,revoke,network}", "required"),
    (["node"], "{key,approve,run}", "required"),
]


@pytest.mark.parametrize("argv,option,allowed", BAD_OPTIONS, ids=[" ".join(a) for a, _, _ in BAD_OPTIONS])
def test_a_bad_option_is_one_line_naming_it_and_what_is_allowed(capsys, argv, option, allowed):
    assert run(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert option in line and allowed in line, line


@pytest.mark.parametrize("argv,says", [
    (["node", "run", "--network", "not-a-url", "--key", "k", "--config", "c"], "--network must be"),
    (["node", "approve", "x", "--pubkey", "zz"], "--pubkey must be 64 hex"),
    (["chat", "hi", "--key", "k", "--url", "ftp://x"], "base_url must be an http"),
    (["keys", "create", "--account", "a/b", "--config", "tiny.toml"], "--account"),
], ids=["node-run-url", "node-approve-pubkey", "chat-url", "keys-account"])
def test_bad_values_the_commands_check_are_one_line(capsys, tmp_path, monkeypatch, argv, says):
    monkeypatch.setenv("HOME", str(tmp_path))  # (keys create: a key database of its own)
    assert run(argv) == 2
    assert says in one_line(capsys.readouterr().err)


def test_a_config_field_of_the_wrong_type_is_one_line_naming_the_file_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text((cfgmod.CONFIG_DIR / "tiny.toml").read_text().replace('name = "verinfer-tiny"', "name = 5"))
    for argv in (["submit", "--prompt", "x"], ["status"], ["up"], ["keys", "network"], ["ledger"]):
        assert run([*argv, "--config", str(bad)]) == 2
        line = one_line(capsys.readouterr().err)
        assert line == (f"verinfer: ConfigError: {bad}: network.name must be a non-empty string of at most 128 "
                        "printable characters without '/', got 5"), line


def test_addresses_nothing_answers_at_fail_at_once_in_one_line():
    """A HOST:PORT with nothing there: exit 3 before Ray's minutes of retries; a malformed one: 2."""
    for address, code, says in (("127.0.0.1:1", 3, "nothing answers at 127.0.0.1:1"),
                                ("no-port-here", 2, "--address must be")):
        p = subprocess.run([sys.executable, "-m", "cluster.cli", "status", "--config", "tiny.toml", "--address",
                            address], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == code, p.stderr
        err = "\n".join(x for x in p.stderr.splitlines() if x.startswith("verinfer"))
        assert says in one_line(err)


def test_an_unreachable_gateway_is_one_line_exit_three(capsys):
    pytest.importorskip("httpx")
    assert run(["chat", "hi", "--key", "vi-x", "--url", "http://127.0.0.1:1/v1"]) == 3
    assert "GatewayUnreachable: cannot reach the gateway at http://127.0.0.1:1/v1" in one_line(
        capsys.readouterr().err)


# --- refused inside the network (an actor): unwrapped to its one line, nothing changed ----------

@pytest.mark.parametrize("extra,says", [
    (["--n", "99"], "InvalidParams: n must be in 1..8"),
    (["--mode", "tee", "--n", "3"], "InvalidParams: mode tee runs on 1 node(s): n must be 1"),
    (["--prompt", "x" * 5000], "PromptTooLarge: prompt has 5000 characters, limit 4096"),
    (["--model", "no-such-model"], "UnknownModel: model 'no-such-model' is not served"),
], ids=["n-above-max", "tee-quorum", "prompt-too-long", "unknown-model"])
def test_a_request_the_network_refuses_is_one_line_and_changes_nothing(tiny_net, net_toml, capsys, extra, says):
    before = _head(tiny_net)
    assert run(["submit", "--config", net_toml, "--prompt", "hello", "--max-tokens", "4", *extra]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"verinfer: {says}"), line
    _changed_nothing(tiny_net, before)  # no escrow taken


def test_a_receipt_path_that_cannot_be_written_is_refused_before_anything_is_paid(tiny_net, net_toml, capsys):
    before = _head(tiny_net)
    assert run(["submit", "--config", net_toml, "--prompt", "hello", "--receipt-out", "/nonexistent/dir/r"]) == 2
    assert "--receipt-out must be a file path in a writable directory" in one_line(capsys.readouterr().err)
    assert _head(tiny_net) == before  # refused before connecting: not even a client registered


def test_the_python_client_raises_the_typed_error_not_rays_wrapper(tiny_net, tiny_client):
    before = _head(tiny_net)
    for kw, err, says in ((dict(n=99), InvalidParams, "n must be in 1..8"),
                          (dict(mode="tee", n=3), InvalidParams, "mode tee runs on 1 node(s)")):
        with pytest.raises(err) as ei:
            tiny_client.generate("hello", max_tokens=4, **kw).result()
        assert type(ei.value) is err and says in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(PromptTooLarge) as ei:
        tiny_client.generate("x" * 5000, max_tokens=4)
    assert type(ei.value) is PromptTooLarge
    _changed_nothing(tiny_net, before)


@pytest.mark.parametrize("kw,field", [
    (dict(n=0), "n must be an integer >= 1"), (dict(n="3"), "n must be an integer >= 1"),
    (dict(n=True), "n must be an integer >= 1"), (dict(timeout_s=0), "timeout_s must be a positive number"),
    (dict(timeout_s=float("inf")), "timeout_s must be"), (dict(p=2), "p must be in [0, 1]"),
    (dict(p="often"), "p must be a number in [0, 1]"), (dict(mode="bogus"), "mode must be one of sampling"),
    (dict(max_tokens=0), "max_tokens must be in 1..4096"), (dict(max_tokens="8"), "max_tokens must be an integer"),
    (dict(temperature="hot"), "temperature must be a number in [0, 10]"),
    (dict(require_tee="yes"), "require_tee must be true or false"), (dict(request_id=""), "request_id must be"),
    (dict(model=5), "model must be a model id"),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v!r}" for k, v in v.items()))
def test_a_bad_client_argument_is_refused_before_anything_is_signed(kw, field):
    core = _core()
    with pytest.raises(InvalidParams) as ei:
        core.build_request("hello", **kw)
    assert field in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(InvalidParams, match="prompt must be a string"):
        core.build_request(b"bytes")
    with pytest.raises(UnknownModel):
        core.build_request("hello", model="other")


def test_a_fixed_size_mode_without_n_runs_on_its_size():
    from protocols import messages

    core = _core()
    raw, _ = core.build_request("hello", mode="tee")
    assert messages.open_envelope(raw, "request").body["n"] == 1
    raw, _ = core.build_request("hello")
    assert messages.open_envelope(raw, "request").body["n"] == 3


def test_sdk_arguments_are_checked_in_one_line():
    pytest.importorskip("httpx")
    from cluster.sdk import Verinfer

    for kw, says in ((dict(base_url="localhost:8000"), "base_url must be an http"),
                     (dict(api_key=""), "api_key must be"),
                     (dict(trust_roots="abcd"), "trust_roots must be a list"),
                     (dict(trust_roots=["zz"]), "trust_roots must be a key in hex"),
                     (dict(aggregator_key="00"), "aggregator_key must be 32 bytes"),
                     (dict(default_n=0), "default_n must be an integer >= 1"),
                     (dict(default_mode="fast"), "default_mode must be one of"),
                     (dict(timeout=0), "timeout must be a positive number")):
        args = {"base_url": "http://127.0.0.1:1/v1", "api_key": "vi-x", **kw}
        with pytest.raises(ConfigError) as ei:
            Verinfer(args.pop("base_url"), args.pop("api_key"), **args)
        assert says in str(ei.value) and "\n" not in str(ei.value), str(ei.value)


# --- attestation a user can read ---------------------------------------------------------------

def test_keys_network_prints_what_to_pin(tiny_net, tiny_client, net_toml, capsys):
    roots = [r.hex() for r in trust_roots(tiny_net)]
    assert run(["keys", "network", "--config", net_toml, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["trust_roots"] == roots and got["attestation_provider"] == "simulated"
    assert got["aggregator"] == tiny_client.aggregator_key.hex()
    assert got["selector"] == tiny_client.selector_key.hex() and got["vrf"] == tiny_client.vrf_key.hex()
    assert run(["keys", "--config", net_toml, "network"]) == 0  # --config before the subcommand too
    out = capsys.readouterr().out
    assert f"attestation trust root : {roots[0]}" in out and "SIMULATED" in out
    assert f"verinfer verify RECEIPT --aggregator-key {got['aggregator']} --trust-root {roots[0]}" in out


def test_submit_json_states_each_members_attestation_and_the_roots_it_was_checked_under(tiny_net, net_toml,
                                                                                        tmp_path, capsys):
    roots = [r.hex() for r in trust_roots(tiny_net)]
    receipt = tmp_path / "tee.receipt"
    assert run(["submit", "--config", net_toml, "--prompt", "in an enclave", "--n", "2", "--max-tokens", "4",
                "--require-tee", "--json", "--receipt-out", str(receipt)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res["attestation"]) == set(res["receipt"]["members"]) and len(res["attestation"]) == 2
    assert set(res["attestation"].values()) == {"simulated"} and res["attestation_checked_under"] == roots
    assert res["trust_roots_pinned"] is False  # the roots the network reported
    assert "as the network reported them" in res["attestation_note"]
    # pinned by the caller: said so, with the roots it pinned; a plain request: nobody attested
    assert run(["submit", "--config", net_toml, "--prompt", "pinned", "--n", "2", "--max-tokens", "4", "--json",
                "--trust-root", roots[0], "--require-tee"]) == 0
    pinned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pinned["trust_roots_pinned"] is True and pinned["attestation_checked_under"] == roots
    assert "which you pinned" in pinned["attestation_note"]
    assert run(["submit", "--config", net_toml, "--prompt", "plain", "--n", "2", "--max-tokens", "4", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(plain["attestation"].values()) == {"none"} and plain["attestation_checked_under"] == []
    assert plain["attestation_note"].startswith("no member was attested")

    # verify: unpinned, it says exactly how to pin; pinned, it says what the evidence proves
    assert run(["verify", str(receipt)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VALID") and "unverified" in out
    for flag in ("--aggregator-key HEX", "--trust-root HEX", "--selector-key HEX"):
        assert f"run `verinfer keys network` on the operator's side and pass {flag}" in out, out
    assert run(["verify", str(receipt), "--aggregator-key", res["receipt"]["aggregator"], "--trust-root", roots[0],
                "--selector-key", tiny_net_vrf(tiny_net)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VALID") and "simulated (a test root of trust" in out and "not pinned" not in out
    assert "attestation unverified" not in out


def tiny_net_vrf(net) -> str:
    return ray.get(net.selector.vrf_public.remote()).hex()


def test_submit_says_in_plain_words_how_members_were_attested_and_how_to_check(net_toml, tmp_path, capsys):
    receipt = tmp_path / "r.bin"
    assert run(["submit", "--config", net_toml, "--prompt", "sealed", "--mode", "tee", "--max-tokens", "4",
                "--receipt-out", str(receipt)]) == 0
    out = capsys.readouterr().out
    assert "attestation : " in out and "simulated (a test root of trust signed the evidence: not a real TEE)" in out
    assert "as the network reported them" in out
    assert f"check it    : verinfer verify {receipt} --trust-root " in out
