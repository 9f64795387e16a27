"""Network config (cluster/config.py): shipped configs load; bad configs fail early.

Pure Python, no Ray. Every bad config must raise ConfigError (never a bare
TypeError/KeyError) and the message must name the offending field, so a user
can fix the file before anything is deployed.
"""

from __future__ import annotations

import copy

import pytest

from actors.executor import BEHAVIOURS
from cluster import config
from protocols.errors import ConfigError

# --- shipped configs ----------------------------------------------------------------------


def test_default_config_loads_and_validates():
    cfg = config.load(None)  # None = the repo's default network
    assert cfg.source.endswith("default.toml")
    assert [m.id for m in cfg.models] == ["smollm2-135m-instruct"]
    assert cfg.models[0].engine == "smollm2"
    assert cfg.default_model == "smollm2-135m-instruct"
    ids = [nid for g in cfg.nodes for nid in g.node_ids()]
    assert ids == [f"smollm2-{i:02d}" for i in range(5)]
    assert cfg.malicious == {"smollm2-04": "substitute"}
    assert set(cfg.malicious) <= set(ids)
    assert cfg.network.default_n <= cfg.limits.max_n
    assert 0 <= cfg.economics.min_stake <= cfg.economics.collateral
    assert cfg.model("smollm2-135m-instruct") is cfg.models[0]


def test_tiny_config_loads_by_bare_name_and_validates():
    cfg = config.load("tiny.toml")  # a bare name resolves inside cluster/configs
    assert cfg.source.endswith("tiny.toml")
    assert cfg.network.name == "verinfer-tiny"
    assert [(m.id, m.engine) for m in cfg.models] == [("tiny", "tiny")]
    ids = [nid for g in cfg.nodes for nid in g.node_ids()]
    assert ids == [f"tiny-{i:02d}" for i in range(8)]  # prefix defaults to the model id
    assert cfg.malicious == {"tiny-07": "substitute"}
    assert all(b in BEHAVIOURS for b in cfg.malicious.values())
    assert cfg.limits.max_n == 8 and cfg.limits.referee_extra == 2
    assert cfg.limits.timeout_s > 0 and cfg.limits.reveal_timeout_s > 0


def test_shipped_config_file_path_and_ledger_path_expansion():
    cfg = config.load(config.CONFIG_DIR / "tiny.toml")
    assert "~" not in cfg.ledger_file() and cfg.ledger_file().endswith("tiny-ledger.db")


def test_unknown_model_lookup_is_config_error():
    with pytest.raises(ConfigError, match="nope"):
        config.load("tiny.toml").model("nope")


# --- from_dict: a small valid base, mutated per case --------------------------------------

BASE = {
    "network": {"name": "t-net", "namespace": "t-ns", "ledger_path": "/tmp/x.db", "default_n": 3},
    "economics": {"price": 1000, "fee_fraction": 0.1, "collateral": 100000, "min_stake": 50000},
    "limits": {"timeout_s": 5.0, "reveal_timeout_s": 5.0, "max_n": 5, "max_tokens": 64},
    "models": [{"id": "m", "engine": "tiny", "options": {}}],
    "nodes": [{"model": "m", "count": 4, "threads": 1}],
    "malicious": {"m-03": "substitute"},
}


def base() -> dict:
    return copy.deepcopy(BASE)


def test_base_dict_is_valid():
    cfg = config.from_dict(base())
    assert [nid for g in cfg.nodes for nid in g.node_ids()] == ["m-00", "m-01", "m-02", "m-03"]
    assert cfg.malicious == {"m-03": "substitute"}
    assert cfg.limits.max_n == 5 and cfg.economics.price == 1000
    assert cfg.source == "<dict>"


def test_every_served_mode_is_accepted_as_default():
    from protocols.modes import MODES, SPECS

    assert "sampling" in MODES
    for mode in MODES:
        d = base()
        d["network"]["default_mode"] = mode
        if SPECS[mode].attested:  # (a TEE default needs nodes that can attest)
            d["attestation"] = {"provider": "simulated", "allow_simulated": True}
        assert config.from_dict(d).network.default_mode == mode


def test_every_known_behaviour_is_accepted():
    for beh in BEHAVIOURS:
        d = base()
        d["malicious"] = {"m-00": beh}
        assert config.from_dict(d).malicious == {"m-00": beh}


def test_sections_are_optional_where_defaults_exist():
    d = base()
    del d["network"], d["limits"], d["malicious"]
    cfg = config.from_dict(d)
    assert cfg.network.name == "verinfer" and cfg.malicious == {}


def _set(path, value):
    """Mutation that sets d[path...] = value (ints index lists)."""
    def mut(d):
        obj = d
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return mut


def _delete(path):
    def mut(d):
        obj = d
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]
    return mut


def _add_group(**group):
    def mut(d):
        d["nodes"].append(group)
    return mut


BAD = [
    # id, mutation, regex the message must match (names the field)
    ("unknown-top-level-section", _set(["bogus"], {}), r"bogus"),
    ("unknown-key-network", _set(["network", "colour"], "red"), r"\[network\].*colour"),
    ("unknown-key-economics", _set(["economics", "tip"], 5), r"\[economics\].*tip"),
    ("unknown-key-limits", _set(["limits", "max_tokenz"], 5), r"\[limits\].*max_tokenz"),
    ("unknown-key-models", _set(["models", 0, "weights"], "x"), r"\[models\].*weights"),
    ("unknown-key-nodes", _set(["nodes", 0, "gpu"], 1), r"\[nodes\].*gpu"),
    ("unknown-engine", _set(["models", 0, "engine"], "gpt9"), r"engine.*gpt9"),
    ("model-options-not-table", _set(["models", 0, "options"], "x"), r"options"),
    ("empty-model-id", _set(["models", 0, "id"], ""), r"models\.id"),
    ("no-models", _set(["models"], []), r"models"),
    ("duplicate-model-ids", lambda d: d["models"].append({"id": "m", "engine": "tiny"}), r"model ids"),
    ("node-group-unknown-model", _set(["nodes", 0, "model"], "ghost"), r"nodes.*unknown model 'ghost'"),
    ("no-node-groups", _set(["nodes"], []), r"nodes"),
    ("node-count-zero", _set(["nodes", 0, "count"], 0), r"nodes\[m\]\.count"),
    ("node-threads-zero", _set(["nodes", 0, "threads"], 0), r"nodes\[m\]\.threads"),
    ("node-gpus-two", _set(["nodes", 0, "gpus"], 2), r"nodes\[m\]\.gpus"),
    ("duplicate-node-ids-same-prefix", _add_group(model="m", count=2, prefix="m"), r"node ids collide"),
    ("duplicate-node-ids-default-prefix", _add_group(model="m", count=1), r"node ids collide"),
    ("malicious-unknown-node", _set(["malicious"], {"m-99": "substitute"}), r"malicious.*'m-99'"),
    ("malicious-unknown-behaviour", _set(["malicious"], {"m-00": "evil"}), r"malicious\[m-00\].*'evil'"),
    ("malicious-not-table", _set(["malicious"], ["m-00"]), r"malicious"),
    ("negative-price", _set(["economics", "price"], -1), r"economics\.price"),
    ("zero-collateral", _set(["economics", "collateral"], 0), r"economics\.collateral"),
    ("fee-fraction-above-one", _set(["economics", "fee_fraction"], 1.5), r"economics\.fee_fraction"),
    ("slash-fraction-negative", _set(["economics", "timeout_slash_fraction"], -0.1),
     r"economics\.timeout_slash_fraction"),
    ("min-stake-above-collateral", _set(["economics", "min_stake"], 100001), r"economics\.min_stake"),
    ("referee-plus-treasury-above-one", lambda d: d["economics"].update(referee_fraction=0.6,
                                                                         treasury_slash_fraction=0.6),
     r"referee_fraction"),
    ("economics-missing-price", _delete(["economics", "price"]), r"\[economics\].*price"),
    ("zero-timeout", _set(["limits", "timeout_s"], 0), r"limits\.timeout_s"),
    ("negative-timeout", _set(["limits", "timeout_s"], -3.0), r"limits\.timeout_s"),
    ("zero-reveal-timeout", _set(["limits", "reveal_timeout_s"], 0.0), r"limits\.reveal_timeout_s"),
    ("string-timeout", _set(["limits", "timeout_s"], "5"), r"limits\.timeout_s"),
    ("zero-max-n", _set(["limits", "max_n"], 0), r"limits\.max_n"),
    ("zero-max-tokens", _set(["limits", "max_tokens"], 0), r"limits\.max_tokens"),
    ("default-n-above-max-n", _set(["network", "default_n"], 6), r"default_n.*max_n"),
    ("default-n-zero", _set(["network", "default_n"], 0), r"network\.default_n"),
    ("network-name-with-slash", _set(["network", "name"], "a/b"), r"network\.name"),
    ("network-name-empty", _set(["network", "name"], ""), r"network\.name"),
    ("embargo-negative", _set(["network", "draw_embargo_s"], -1), r"network\.draw_embargo_s"),
    ("model-timeout-zero", lambda d: d["models"][0].update(timeout_s=0), r"models\[.*\]\.timeout_s"),
    ("model-tolerance-bad", lambda d: d["models"][0].update(tolerance={"token_margin": "wide"}),
     r"models\[.*\]\.tolerance"),
    ("model-tolerance-unknown-key", lambda d: d["models"][0].update(tolerance={"slack": 2}), r"models\[.*\]\.tolerance"),
    ("per-token-negative", _set(["limits", "timeout_per_token_s"], -1), r"limits\.timeout_per_token_s"),
    ("default-mode-unknown", _set(["network", "default_mode"], "bogus"), r"network\.default_mode"),
    ("default-p-above-one", _set(["limits", "default_p"], 1.5), r"limits\.default_p"),
    ("default-p-negative", _set(["limits", "default_p"], -0.1), r"limits\.default_p"),
    ("section-not-table", _set(["limits"], 5), r"\[limits\]"),
    ("models-not-array", _set(["models"], {"id": "m", "engine": "tiny"}), r"models"),
    ("epoch-zero", _set(["attestation"], {"provider": "simulated", "allow_simulated": True, "epoch_s": 0}),
     r"attestation\.epoch_s"),
    ("renew-fraction-one", _set(["attestation"], {"provider": "simulated", "allow_simulated": True,
                                                  "renew_fraction": 1.0}), r"attestation\.renew_fraction"),
    ("renew-fraction-zero", _set(["attestation"], {"provider": "simulated", "allow_simulated": True,
                                                   "renew_fraction": 0}), r"attestation\.renew_fraction"),
]


@pytest.mark.parametrize("mutate,match", [pytest.param(m, r, id=i) for i, m, r in BAD])
def test_bad_config_raises_config_error_naming_field(mutate, match):
    d = base()
    mutate(d)
    with pytest.raises(ConfigError, match=match):
        config.from_dict(d)


# Fields the module docstring promises are validated ("Every field is validated ... a bad
# file raises ConfigError naming the field, before anything is deployed") but are not.
UNVALIDATED = [
    # referee_extra = -1 with n = 1 makes Round(referee_n=0) raise ValueError inside
    # Aggregator.submit *after* the client's escrow was taken; "2" (a string) makes every
    # submit crash with TypeError on `b["n"] + self.limits.referee_extra`.
    ("referee-extra-negative", _set(["limits", "referee_extra"], -1), r"limits\.referee_extra"),
    ("referee-extra-string", _set(["limits", "referee_extra"], "2"), r"limits\.referee_extra"),
]


@pytest.mark.parametrize("mutate,match", [pytest.param(m, r, id=i) for i, m, r in UNVALIDATED])
def test_referee_extra_is_validated(mutate, match):
    d = base()
    mutate(d)
    with pytest.raises(ConfigError, match=match):
        config.from_dict(d)


def test_base_is_not_mutated_between_cases():
    assert BASE["nodes"] == [{"model": "m", "count": 4, "threads": 1}]  # deepcopy per case


# --- load(): files --------------------------------------------------------------------------

VALID_TOML = """
[network]
name = "file-net"
default_n = 1

[economics]
price = 10
fee_fraction = 0.0
collateral = 100
min_stake = 100

[[models]]
id = "tiny"
engine = "tiny"

[[nodes]]
model = "tiny"
count = 2
"""


def test_load_valid_file(tmp_path):
    p = tmp_path / "net.toml"
    p.write_text(VALID_TOML)
    cfg = config.load(p)
    assert cfg.network.name == "file-net" and cfg.source == str(p)
    assert [nid for g in cfg.nodes for nid in g.node_ids()] == ["tiny-00", "tiny-01"]


def test_invalid_toml_text_is_config_error(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text(VALID_TOML + "\n[network\nname = = 3\n")
    with pytest.raises(ConfigError, match=r"not valid TOML") as ei:
        config.load(p)
    assert str(p) in str(ei.value)


def test_valid_toml_with_bad_field_is_config_error(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(VALID_TOML.replace("min_stake = 100", "min_stake = 101"))
    with pytest.raises(ConfigError, match=r"economics\.min_stake"):
        config.load(p)


def test_missing_file_is_config_error(tmp_path):
    p = tmp_path / "does-not-exist.toml"
    with pytest.raises(ConfigError, match=r"cannot read config") as ei:
        config.load(p)
    assert "does-not-exist.toml" in str(ei.value)


def test_missing_bare_name_is_config_error():
    with pytest.raises(ConfigError, match=r"cannot read config.*no-such-network\.toml"):
        config.load("no-such-network.toml")


# --- every field: wrong type or out of range -> one line naming the field and what is allowed --

NAN, INF = float("nan"), float("inf")
SIM = {"provider": "simulated", "allow_simulated": True}


def _att(**kw):
    return _set(["attestation"], dict(SIM, **kw))


FIELDS = [
    # (id, mutation, the field the message must name)
    ("network.name-int", _set(["network", "name"], 5), "network.name"),
    ("network.name-newline", _set(["network", "name"], "a\nb"), "network.name"),
    ("network.namespace-int", _set(["network", "namespace"], 7), "network.namespace"),
    ("network.namespace-empty", _set(["network", "namespace"], ""), "network.namespace"),
    ("network.ledger_path-int", _set(["network", "ledger_path"], 3), "network.ledger_path"),
    ("network.ledger_path-blank", _set(["network", "ledger_path"], " "), "network.ledger_path"),
    ("network.draw_embargo_s-str", _set(["network", "draw_embargo_s"], "1"), "network.draw_embargo_s"),
    ("network.draw_embargo_s-nan", _set(["network", "draw_embargo_s"], NAN), "network.draw_embargo_s"),
    ("network.default_mode-int", _set(["network", "default_mode"], 3), "network.default_mode"),
    ("network.default_n-str", _set(["network", "default_n"], "3"), "network.default_n"),
    ("network.default_n-bool", _set(["network", "default_n"], True), "network.default_n"),
    ("network.default_n-float", _set(["network", "default_n"], 1.5), "network.default_n"),
    ("network.aggregator_shards-zero", _set(["network", "aggregator_shards"], 0), "network.aggregator_shards"),
    ("network.aggregator_shards-str", _set(["network", "aggregator_shards"], "2"), "network.aggregator_shards"),
    ("network.default_mode-tee-unattested", _set(["network", "default_mode"], "tee"), "network.default_mode"),
    ("models.id-int", _set(["models", 0, "id"], 5), "models.id"),
    ("models.id-slash", _set(["models", 0, "id"], "a/b"), "models.id"),
    ("models.engine-int", _set(["models", 0, "engine"], 5), "models[m].engine"),
    ("models.engine-list", _set(["models", 0, "engine"], ["tiny"]), "models[m].engine"),
    ("models.options.encrypted_weights-str", _set(["models", 0, "options"], {"encrypted_weights": "yes"}),
     "models[m].options.encrypted_weights"),
    ("models.options.encrypted_weights-unattested", _set(["models", 0, "options"], {"encrypted_weights": True}),
     "models[m].options.encrypted_weights"),
    ("models.timeout_s-str", lambda d: d["models"][0].update(timeout_s="5"), "models[m].timeout_s"),
    ("models.timeout_s-inf", lambda d: d["models"][0].update(timeout_s=INF), "models[m].timeout_s"),
    ("models.timeout_per_token_s-negative", lambda d: d["models"][0].update(timeout_per_token_s=-1),
     "models[m].timeout_per_token_s"),
    ("models.tolerance-int", lambda d: d["models"][0].update(tolerance=5), "models[m].tolerance"),
    ("models.match-unknown", lambda d: d["models"][0].update(match="fuzzy"), "models[m].match"),
    ("models.match-int", lambda d: d["models"][0].update(match=3), "models[m].match"),
    ("models.match-tolerant-untuned", lambda d: d["models"][0].update(match="tolerant"), "models[m].match"),
    ("nodes.model-int", _set(["nodes", 0, "model"], 5), "nodes.model"),
    ("nodes.count-str", _set(["nodes", 0, "count"], "4"), "nodes[m].count"),
    ("nodes.count-bool", _set(["nodes", 0, "count"], True), "nodes[m].count"),
    ("nodes.count-huge", _set(["nodes", 0, "count"], 10**6), "nodes[m].count"),
    ("nodes.prefix-int", _set(["nodes", 0, "prefix"], 5), "nodes[m].prefix"),
    ("nodes.prefix-slash", _set(["nodes", 0, "prefix"], "a/b"), "nodes[m].prefix"),
    ("nodes.threads-float", _set(["nodes", 0, "threads"], 2.0), "nodes[m].threads"),
    ("nodes.dtype-float16", _set(["nodes", 0, "dtype"], "float16"), "nodes[m].dtype"),
    ("nodes.dtype-int", _set(["nodes", 0, "dtype"], 32), "nodes[m].dtype"),
    ("nodes.gpus-bool", _set(["nodes", 0, "gpus"], True), "nodes[m].gpus"),
    ("nodes.gpus-float", _set(["nodes", 0, "gpus"], 1.0), "nodes[m].gpus"),
    ("nodes.cpus-negative", _set(["nodes", 0, "cpus"], -1), "nodes[m].cpus"),
    ("nodes.cpus-str", _set(["nodes", 0, "cpus"], "1"), "nodes[m].cpus"),
    ("nodes.cpus-nan", _set(["nodes", 0, "cpus"], NAN), "nodes[m].cpus"),
    ("malicious-int-behaviour", _set(["malicious"], {"m-00": 5}), "malicious[m-00]"),
    ("malicious-list-behaviour", _set(["malicious"], {"m-00": ["substitute"]}), "malicious[m-00]"),
    ("attestation.provider-int", _att(provider=5), "attestation.provider"),
    ("attestation.provider-sgx", _set(["attestation"], {"provider": "sgx"}), "attestation.provider"),
    ("attestation.allow_simulated-str", _set(["attestation"], {"allow_simulated": "yes"}),
     "attestation.allow_simulated"),
    ("attestation.root_seed-not-hex", _att(root_seed="zz"), "attestation.root_seed"),
    ("attestation.root_seed-int", _att(root_seed=5), "attestation.root_seed"),
    ("attestation.root_seed-16-bytes", _att(root_seed="00" * 16), "attestation.root_seed"),
    ("attestation.tcb_version-negative", _att(tcb_version=-1), "attestation.tcb_version"),
    ("attestation.tcb_version-str", _att(tcb_version="3"), "attestation.tcb_version"),
    ("attestation.min_tcb_version-float", _att(min_tcb_version=1.5), "attestation.min_tcb_version"),
    ("attestation.tcb-below-min", _att(tcb_version=1, min_tcb_version=2), "attestation.tcb_version"),
    ("attestation.max_age_s-zero", _att(max_age_s=0), "attestation.max_age_s"),
    ("attestation.max_age_s-str", _att(max_age_s="300"), "attestation.max_age_s"),
    ("attestation.epoch_s-inf", _att(epoch_s=INF), "attestation.epoch_s"),
    ("attestation.renew_fraction-bool", _att(renew_fraction=True), "attestation.renew_fraction"),
    ("attestation.renew_fraction-str", _att(renew_fraction="0.5"), "attestation.renew_fraction"),
    ("economics.price-str", _set(["economics", "price"], "1000"), "economics.price"),
    ("economics.price-float", _set(["economics", "price"], 1.5), "economics.price"),
    ("economics.fee_fraction-nan", _set(["economics", "fee_fraction"], NAN), "economics.fee_fraction"),
    ("limits.max_n-str", _set(["limits", "max_n"], "5"), "limits.max_n"),
    ("limits.timeout_s-nan", _set(["limits", "timeout_s"], NAN), "limits.timeout_s"),
    ("limits.max_tokens-bool", _set(["limits", "max_tokens"], True), "limits.max_tokens"),
    ("models-missing-id", _delete(["models", 0, "id"]), "[models]"),
    ("nodes-missing-count", _delete(["nodes", 0, "count"]), "[nodes]"),
    ("network-not-table", _set(["network"], 5), "[network]"),
    ("models-entry-not-table", _set(["models"], [5]), "[models]"),
]


@pytest.mark.parametrize("mutate,name", [pytest.param(m, f, id=i) for i, m, f in FIELDS])
def test_every_field_is_checked_in_one_line_naming_it(mutate, name):
    d = base()
    mutate(d)
    with pytest.raises(ConfigError) as ei:
        config.from_dict(d)
    msg = str(ei.value)
    assert "\n" not in msg
    assert name in msg
    assert "must" in msg or "missing" in msg or "needs" in msg, msg  # says what is allowed


def test_network_name_not_a_string_in_a_file_says_so_in_one_line(tmp_path):
    """The reported case: `name = 5` under [network] (was: argument of type 'int' is not iterable)."""
    p = tmp_path / "net.toml"
    p.write_text(VALID_TOML.replace('name = "file-net"', "name = 5"))
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert str(ei.value) == (f"{p}: network.name must be a non-empty string of at most 128 printable "
                             "characters without '/', got 5")


def test_not_utf8_file_is_config_error(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'[network]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(p)
