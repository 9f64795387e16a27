"""The `verinfer` CLI (cluster/cli.py): help, offline verify, and submit/ledger/down
against a detached network, with the documented exit codes:

    0 success; 1 a check failed; 2 bad usage / config / input; 3 no network reachable.

`cluster.cli.main` is called in-process: `_init_ray` is a no-op once the session's
Ray cluster is up, so the commands talk to networks deployed by these fixtures.
Networks here run next to the session `tiny_net` (cluster.placement shares the
*free* CPUs among a new network's executors); `verify` checks a receipt of the
session network.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cluster import cli
from cluster import config as cfgmod
from cluster.network import connect, deploy, teardown
from protocols import receipts
from protocols.errors import VerinferError

SUBCOMMANDS = ["demo", "up", "down", "submit", "verify", "ledger"]
N_NODES = 3


def run(argv) -> int:
    """main() returns an exit code; argparse exits via SystemExit. Normalize both."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code


# --- help and usage (no Ray) ----------------------------------------------------------------


def test_top_level_help_lists_subcommands_and_exit_codes(capsys):
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: verinfer")
    for sub in SUBCOMMANDS:
        assert sub in out
    assert "exit codes" in out


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_subcommand_help_exits_zero(capsys, sub):
    assert run([sub, "--help"]) == 0
    assert f"usage: verinfer {sub}" in capsys.readouterr().out


def test_module_entry_point_help_in_subprocess():
    p = subprocess.run([sys.executable, "-m", "cluster.cli", "--help"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert p.returncode == 0, p.stderr
    assert "usage: verinfer" in p.stdout


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["verify"], ["submit", "--n", "3"]],
                         ids=["no-command", "unknown-command", "verify-no-file", "submit-no-prompt"])
def test_bad_usage_exits_two(capsys, argv):
    assert run(argv) == 2
    assert "usage:" in capsys.readouterr().err


# --- verify (offline) -------------------------------------------------------------------------


def test_verify_missing_file_exits_two(tmp_path, capsys):
    assert run(["verify", str(tmp_path / "nope.receipt")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("data", [b"", b"not a receipt at all", bytes(range(256)), b"\x93garbage"],
                         ids=["empty", "text", "bytes", "msgpack-ish"])
def test_verify_garbage_exits_one_invalid(tmp_path, capsys, data):
    p = tmp_path / "garbage.receipt"
    p.write_bytes(data)
    assert run(["verify", str(p)]) == 1
    assert capsys.readouterr().out.startswith("INVALID")


@pytest.fixture(scope="module")
def receipt(tiny_client, tmp_path_factory):
    """A real receipt of the session network, saved to a file as a user would."""
    res = tiny_client.generate("hi", n=3, max_tokens=6).result()
    assert res.status == "final"
    path = tmp_path_factory.mktemp("receipts") / "ok.receipt"
    path.write_bytes(res.receipt)
    return {"path": path, "raw": res.receipt, "key": tiny_client.aggregator_key, "request_id": res.request_id}


def test_verify_real_receipt_exits_zero(receipt, capsys):
    assert run(["verify", str(receipt["path"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VALID") and receipt["request_id"] in out and "final" in out
    assert "key not pinned" in out  # no --aggregator-key: says so


@pytest.mark.parametrize("how", ["flip-middle-byte", "truncate"])
def test_verify_tampered_receipt_exits_one(receipt, tmp_path, capsys, how):
    data = bytearray(receipt["raw"])
    if how == "flip-middle-byte":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[:-1]
    p = tmp_path / "tampered.receipt"
    p.write_bytes(bytes(data))
    assert run(["verify", str(p)]) == 1
    assert capsys.readouterr().out.startswith("INVALID")


def test_verify_with_pinned_aggregator_key(receipt, capsys):
    path = str(receipt["path"])
    right, wrong = receipt["key"].hex(), bytes(32).hex()
    assert run(["verify", path, "--aggregator-key", wrong]) == 1
    out = capsys.readouterr().out
    assert out.startswith("INVALID") and "trusted aggregator" in out
    assert run(["verify", path, "--aggregator-key", right]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VALID") and "key not pinned" not in out
    assert run(["verify", path, "--aggregator-key", wrong, "--aggregator-key", right]) == 0  # any of them


def test_verify_non_hex_aggregator_key_is_bad_usage(receipt, capsys):
    assert run(["verify", str(receipt["path"]), "--aggregator-key", "not-hex"]) == 2


# --- submit / ledger / down against a detached network ----------------------------------------


def _toml_for(name: str, namespace: str, ledger: Path) -> str:
    text = (cfgmod.CONFIG_DIR / "tiny.toml").read_text()
    text = text.replace('name = "verinfer-tiny"', f'name = "{name}"')
    text = text.replace('namespace = "verinfer"', f'namespace = "{namespace}"')
    text = text.replace('ledger_path = "~/.verinfer/tiny-ledger.db"', f'ledger_path = "{ledger}"')
    text = text.replace("count = 8", f"count = {N_NODES}")
    text = text.replace('"tiny-07" = "substitute"', "")  # an honest network
    return text


@pytest.fixture(scope="module")
def detached(ray_cluster, tmp_path_factory, receipt):  # after `receipt`: one network at a time
    d = tmp_path_factory.mktemp("detached")
    tag = uuid.uuid4().hex[:6]
    path = d / "net.toml"
    path.write_text(_toml_for(f"t-cli-det-{tag}", f"t-cli-ns-{tag}", d / "ledger.db"))
    cfg = cfgmod.load(path)
    assert cfg.network.name == f"t-cli-det-{tag}" and cfg.malicious == {}
    assert cfg.ledger_file() == str(d / "ledger.db")
    deploy(cfg, detached=True)
    yield {"config": str(path), "cfg": cfg, "dir": d}
    try:  # normally `down` already removed it
        teardown(connect(cfg))
    except VerinferError:
        pass


def _last_json(out: str):
    return json.loads(out.strip().splitlines()[-1])


def test_up_on_running_network_is_idempotent(detached, capsys):
    assert run(["up", "--config", detached["config"]]) == 0
    assert "already up" in capsys.readouterr().out


def test_submit_json_and_receipt_out(detached, capsys):
    out_file = detached["dir"] / "submit.receipt"
    code = run(["submit", "--config", detached["config"], "--prompt", "hello", "--n", "3", "--max-tokens", "6",
                "--json", "--receipt-out", str(out_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    res = _last_json(out)
    assert res["status"] == "final"
    assert 0 < len(res["token_ids"]) <= 6
    assert res["receipt"]["n"] == 3 and len(res["receipt"]["paid"]) == 3 and res["receipt"]["slashed"] == []
    assert res["receipt"]["output_checked"] is True
    # the receipt file is the one the JSON summarizes, and verifies offline via the CLI
    s = receipts.verify_receipt(out_file.read_bytes(), None, res["token_ids"])
    assert s.request_id == res["request_id"] and s.commitment.hex() == res["receipt"]["commitment"]
    assert run(["verify", str(out_file), "--aggregator-key", res["receipt"]["aggregator"]]) == 0
    assert capsys.readouterr().out.startswith("VALID")
    detached["paid"] = res["receipt"]["paid"]


def test_submit_human_output(detached, capsys):
    assert run(["submit", "--config", detached["config"], "--prompt", "hello", "--n", "1",
                "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "first output" in out and "answer" in out and "status: final" in out


@pytest.mark.parametrize("extra", [["--n", "99"], ["--max-tokens", "0"], ["--model", "no-such-model"]],
                         ids=["n-above-max", "zero-tokens", "unknown-model"])
def test_submit_bad_input_exits_two(detached, capsys, extra):
    assert run(["submit", "--config", detached["config"], "--prompt", "hello", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("verinfer") and len(err.strip().splitlines()) == 1, err  # one line, no traceback


def test_ledger_json(detached, capsys):
    assert run(["ledger", "--config", detached["config"], "--json"]) == 0
    data = _last_json_block(capsys.readouterr().out)
    assert set(data) == {"balances", "recent_slashes"}
    bal = data["balances"]
    econ = detached["cfg"].economics
    for i in range(N_NODES):
        assert bal[f"collateral/tiny-{i:02d}"] == econ.collateral  # honest network: nobody slashed
    assert data["recent_slashes"] == []
    for nid in detached.get("paid", []):
        assert bal.get(f"rewards/{nid}", 0) >= econ.node_reward
    assert sum(v for k, v in bal.items() if k.startswith("rewards/")) > 0


def test_ledger_human_output(detached, capsys):
    assert run(["ledger", "--config", detached["config"]]) == 0
    out = capsys.readouterr().out
    assert "ledger balances:" in out and "collateral/tiny-00" in out


def _last_json_block(out: str):
    start = out.index("{")
    return json.loads(out[start:])


def test_status_then_up_repairs_a_network_whose_aggregator_was_killed(detached, capsys):
    import time

    import ray

    cfgpath, cfg = detached["config"], detached["cfg"]
    assert run(["status", "--config", cfgpath]) == 0
    out = capsys.readouterr().out
    assert "healthy" in out and f"{N_NODES} live, 0 dead" in out and "escrow held: 0" in out
    ns = cfg.network.namespace
    ledger = ray.get_actor(f"{cfg.network.name}/ledger", namespace=ns)
    entries = ray.get(ledger.head.remote())[0]
    ray.kill(ray.get_actor(f"{cfg.network.name}/aggregator/0", namespace=ns), no_restart=True)
    deadline = time.time() + 30
    while run(["status", "--config", cfgpath]) != cli.EXIT_NOT_HEALTHY:
        assert time.time() < deadline
        time.sleep(0.2)
    out = capsys.readouterr().out
    assert "aggregator/0" in out and "missing" in out and "verinfer up" in out
    assert run(["up", "--config", cfgpath]) == 0
    out = capsys.readouterr().out
    assert "recreating aggregator/0" in out
    assert "s] reconnecting to the control plane" in out  # it says what it is doing, step by step
    assert run(["status", "--config", cfgpath, "--json"]) == 0
    st = _last_json_block(capsys.readouterr().out)
    assert st["healthy"] and st["nodes"]["live"] == N_NODES and st["open_rounds"] == 0
    assert ray.get(ledger.head.remote())[0] >= entries  # the same ledger, kept
    assert run(["submit", "--config", cfgpath, "--prompt", "after the repair", "--n", "3", "--max-tokens", "4",
                "--json"]) == 0
    assert _last_json(capsys.readouterr().out)["status"] == "final"


def test_down_then_commands_report_no_network(detached, capsys):
    cfgpath = detached["config"]
    assert run(["down", "--config", cfgpath]) == 0
    assert "removed" in capsys.readouterr().out
    assert run(["submit", "--config", cfgpath, "--prompt", "hello", "--n", "3", "--max-tokens", "6"]) == 3
    assert "no verinfer network" in capsys.readouterr().err
    assert run(["ledger", "--config", cfgpath, "--json"]) == 3
    assert run(["down", "--config", cfgpath]) == 3


def test_submit_to_never_deployed_network_exits_three(ray_cluster, tmp_path, capsys):
    path = tmp_path / "ghost.toml"
    path.write_text(_toml_for(f"t-cli-ghost-{uuid.uuid4().hex[:6]}", "t-cli-ghost-ns", tmp_path / "l.db"))
    assert run(["submit", "--config", str(path), "--prompt", "hello"]) == 3


@pytest.mark.parametrize("cmd", [["submit", "--prompt", "x"], ["ledger"], ["down"], ["up"]])
def test_config_with_error_exits_two(tmp_path, capsys, cmd):
    bad = tmp_path / "bad.toml"
    bad.write_text(_toml_for("t-cli-bad", "t-cli-bad-ns", tmp_path / "l.db").replace(
        "default_n = 3", "default_n = 3\ncolour = \"red\""))
    assert run([cmd[0], "--config", str(bad), *cmd[1:]]) == 2
    err = capsys.readouterr().err
    assert "config" in err and "colour" in err


def test_missing_config_file_exits_two(tmp_path, capsys):
    assert run(["ledger", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_invalid_toml_config_exits_two(tmp_path, capsys):
    bad = tmp_path / "broken.toml"
    bad.write_text("[network\nname = ")
    assert run(["submit", "--config", str(bad), "--prompt", "x"]) == 2
    assert "not valid TOML" in capsys.readouterr().err
