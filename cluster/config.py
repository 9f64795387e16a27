"""Network configuration: one TOML file, mirrored one-to-one by dataclasses.

    [network]    name, namespace, ledger_path, draw_embargo_s, default_mode, default_n, aggregator_shards
    [economics]  price, fee_fraction, collateral, min_stake, *_slash_fraction, referee_fraction
    [limits]     timeout_s, reveal_timeout_s, max_prompt_chars, max_n, max_tokens, referee_extra, client_credit,
                 default_p (cross-validation check probability), max_batch_calls (1 = no batch calls)
    [[models]]   id, engine ("tiny" | "smollm2" | "vllm"), options = { engine kwargs }, tolerance (calibrated),
                 match ("tolerant": plaintext rounds draw across the model's tolerance group; "exact")
    [[nodes]]    model, count, prefix, threads, dtype (CPU engines: "float32" | "bfloat16"), gpus, cpus
    [malicious]  "<node id>" = "<behaviour>"   (experiments only)
    [attestation] provider, allow_simulated, root_seed, tcb_version, min_tcb_version, max_age_s, epoch_s, renew_fraction

Every field's type and range is validated in __post_init__ (and [economics] /
[limits] by their own dataclasses in protocols/); a bad file raises ConfigError
in one line that names the file, the field and what is allowed, e.g.
`net.toml: network.name must be a non-empty string ..., got 5`, before anything
is deployed.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from protocols.admission import Limits
from protocols import modes
from protocols.modes import MODES
from actors.engines import ENGINES as _ENGINES
from actors.executor import BEHAVIOURS
from protocols.errors import ConfigError
from protocols.ledger import Economics

CONFIG_DIR = Path(__file__).parent / "configs"
TOLERANT_ENGINES = ("tiny", "smollm2")  # engines with a tolerant check (verify_tolerant) and fingerprints
ENGINES = tuple(_ENGINES)  # one spec per engine: actors.engines.ENGINES
MAX_NAME = 128  # names become Ray actor names and ledger accounts ("collateral/<node id>")


# --- one-line checks: each names the field, what is allowed, and what it got --------------
def _need(ok: bool, field_: str, allowed: str, value: Any) -> None:
    if not ok:
        got = repr(value)
        raise ConfigError(f"{field_} must be {allowed}, got {got if len(got) <= 60 else got[:57] + '...'}")


def _whole(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _number(v: Any, lo: float, hi: float = math.inf) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


def _name(v: Any, empty: bool = False) -> bool:
    """A name that can be part of an actor name or a ledger account: a string without '/'."""
    return isinstance(v, str) and (empty or bool(v)) and len(v) <= MAX_NAME and "/" not in v \
        and v.isprintable()


NAME = f"a non-empty string of at most {MAX_NAME} printable characters without '/'"


@dataclass
class NetworkSection:
    name: str = "verinfer"  # prefix of every actor name
    namespace: str = "verinfer"  # Ray namespace the detached actors live in
    ledger_path: str = "~/.verinfer/ledger.db"  # SQLite file of the SlashingLedger
    draw_embargo_s: float = 86400.0  # obfuscated draws are disclosed to auditors only this long after
    default_mode: str = "sampling"
    default_n: int = 3
    aggregator_shards: int = 2  # requests go to shard H(request id) mod K; a dead shard stops no other

    def __post_init__(self) -> None:
        _need(_name(self.name), "network.name", NAME, self.name)
        _need(_name(self.namespace), "network.namespace", NAME, self.namespace)
        _need(isinstance(self.ledger_path, str) and bool(self.ledger_path.strip()), "network.ledger_path",
              "a non-empty file path (string)", self.ledger_path)
        _need(_number(self.draw_embargo_s, 0), "network.draw_embargo_s", "a non-negative number of seconds",
              self.draw_embargo_s)
        _need(isinstance(self.default_mode, str) and self.default_mode in MODES, "network.default_mode",
              f"one of {', '.join(MODES)}", self.default_mode)
        _need(_whole(self.default_n, 1, 1 << 16), "network.default_n", "an integer >= 1 (at most limits.max_n)",
              self.default_n)
        _need(_whole(self.aggregator_shards, 1, 64), "network.aggregator_shards", "an integer from 1 to 64",
              self.aggregator_shards)


@dataclass
class ModelSection:
    id: str  # model id clients ask for
    engine: str  # one of ENGINES
    options: dict[str, Any] = field(default_factory=dict)  # engine constructor kwargs
    # the member deadline an honest node of this model needs: timeout_s + timeout_per_token_s * max_tokens
    # (absent: the [limits] figures). Clients may ask for longer, never shorter.
    timeout_s: float | None = None
    timeout_per_token_s: float | None = None
    # tolerant verification (protocols.fingerprint.Tolerance): calibrated by benchmarks/tolerance.py;
    # absent: this model is checked by exact match only
    tolerance: dict[str, Any] | None = None
    # "tolerant" (the default with a tolerance): nodes of any hardware, dtype, threads or batching
    # form one group that plaintext rounds draw from, and disputes weigh the tolerant check;
    # "exact": quorums stay within one bit-identical determinism class (the default without one)
    match: str = ""

    def __post_init__(self) -> None:
        _need(_name(self.id), "models.id", NAME, self.id)
        where = f"models[{self.id}]"
        _need(isinstance(self.engine, str) and self.engine in ENGINES, f"{where}.engine",
              f"one of {', '.join(ENGINES)}", self.engine)
        _need(isinstance(self.options, dict) and all(isinstance(k, str) for k in self.options),
              f"{where}.options", "a table of engine options", self.options)
        if "encrypted_weights" in self.options:
            v = self.options["encrypted_weights"]
            _need(isinstance(v, bool), f"{where}.options.encrypted_weights", "true or false", v)
        for f, low, allowed in (("timeout_s", 1e-9, "a positive number of seconds, at most 3600"),
                                ("timeout_per_token_s", 0.0, "a number of seconds in [0, 3600]")):
            v = getattr(self, f)
            _need(v is None or _number(v, low, 3600), f"{where}.{f}", allowed + " (absent: the [limits] one)", v)
        _need(self.tolerance is None or isinstance(self.tolerance, dict), f"{where}.tolerance",
              "a table { token_margin, fingerprint } (python -m benchmarks.tolerance calibrates one)",
              self.tolerance)
        _need(self.match in ("", "tolerant", "exact"), f"{where}.match", '"tolerant" or "exact"', self.match)
        self.match = self.match or ("tolerant" if self.tolerance is not None else "exact")
        if self.match == "tolerant" and self.tolerance is None:
            raise ConfigError(f"{where}.match = \"tolerant\" needs a calibrated tolerance "
                              "(python -m benchmarks.tolerance)")
        if self.match == "tolerant" and self.engine not in TOLERANT_ENGINES:
            raise ConfigError(f"{where}.match must be \"exact\" for the {self.engine} engine: only "
                              f"{' and '.join(TOLERANT_ENGINES)} have a tolerant check")
        if self.tolerance is not None:
            from protocols.errors import MalformedMessage
            from protocols.fingerprint import Tolerance

            try:
                Tolerance.of(self.tolerance)
            except (MalformedMessage, TypeError, ValueError, AttributeError) as exc:
                raise ConfigError(f"{where}.tolerance: {str(exc).removeprefix('tolerance: ')}") from None

    def tolerant(self):
        """The model's calibrated Tolerance, or None (exact match only)."""
        from protocols.fingerprint import Tolerance

        return None if self.tolerance is None else Tolerance.of(self.tolerance)

    def group_tolerance(self) -> dict | None:
        """What the registry groups this model's nodes by (None: exact classes only)."""
        return self.tolerant().to_wire() if self.match == "tolerant" else None


MAX_NODES = 4096  # per [[nodes]] group


@dataclass
class NodeGroup:
    model: str  # model id the nodes serve
    count: int  # how many nodes
    prefix: str = ""  # node ids are f"{prefix}-{i:02d}" (default: model id)
    threads: int = 1  # torch threads per executor (part of the determinism class)
    dtype: str = ""  # CPU engines: "float32" | "bfloat16" ("" = the engine's default); part of the class
    gpus: int = 0  # 1 = each executor pinned to its own GPU bundle
    cpus: float = 0.0  # CPU executors: Ray CPUs each (0 = a fair share of the free CPUs)

    def __post_init__(self) -> None:
        _need(_name(self.model), "nodes.model", "the id of one of the [[models]]", self.model)
        where = f"nodes[{self.model}]"
        _need(_whole(self.count, 1, MAX_NODES), f"{where}.count", f"an integer from 1 to {MAX_NODES}", self.count)
        _need(_name(self.prefix, empty=True), f"{where}.prefix", f"a string of at most {MAX_NAME} printable "
              "characters without '/' (empty: the model id)", self.prefix)
        _need(_whole(self.threads, 1, 256), f"{where}.threads", "an integer from 1 to 256", self.threads)
        _need(self.dtype in ("", "float32", "bfloat16"), f"{where}.dtype",
              '"float32" or "bfloat16" (absent: the engine\'s default)', self.dtype)
        _need(_whole(self.gpus, 0, 1), f"{where}.gpus", "0 or 1 (1: each executor on its own GPU)", self.gpus)
        _need(_number(self.cpus, 0, 64), f"{where}.cpus", "a number of CPUs in [0, 64] (0: a fair share)",
              self.cpus)
        self.prefix = self.prefix or self.model

    def node_ids(self) -> list[str]:
        return [f"{self.prefix}-{i:02d}" for i in range(self.count)]


def _hex32(text: str) -> bool:
    try:
        return len(bytes.fromhex(text)) == 32
    except ValueError:
        return False


@dataclass
class AttestationSection:
    provider: str = "none"  # "none" | "simulated" (test root of trust) | "nvidia" (GPU confidential computing)
    allow_simulated: bool = False  # verifier accepts simulated evidence (never in production)
    root_seed: str = ""  # hex seed of the simulated root of trust; empty = fresh per deployment
    tcb_version: int = 3  # TCB/firmware version simulated nodes report
    min_tcb_version: int = 1  # policy: oldest acceptable TCB
    max_age_s: float = 300.0  # policy: evidence older than this is stale
    epoch_s: float = 3600.0  # attestation (and node keys) must be renewed every epoch
    renew_fraction: float = 0.8  # the network renews a node's attestation this far into its epoch

    def __post_init__(self) -> None:
        _need(self.provider in ("none", "simulated", "nvidia"), "attestation.provider",
              '"none", "simulated" or "nvidia"', self.provider)
        _need(isinstance(self.allow_simulated, bool), "attestation.allow_simulated", "true or false",
              self.allow_simulated)
        if self.provider == "simulated" and not self.allow_simulated:
            raise ConfigError("attestation.provider = simulated needs attestation.allow_simulated = true "
                              "(a production config uses a real provider and keeps it false)")
        _need(isinstance(self.root_seed, str) and (not self.root_seed or _hex32(self.root_seed)),
              "attestation.root_seed", "64 hex characters (32 bytes), or absent for a fresh root", self.root_seed)
        for f in ("tcb_version", "min_tcb_version"):
            _need(_whole(getattr(self, f), 0, (1 << 63) - 1), f"attestation.{f}", "a non-negative integer",
                  getattr(self, f))
        if self.provider == "simulated" and self.tcb_version < self.min_tcb_version:
            raise ConfigError(f"attestation.tcb_version ({self.tcb_version}) must be >= attestation.min_tcb_version "
                              f"({self.min_tcb_version}): no simulated node would attest")
        for f in ("max_age_s", "epoch_s"):
            _need(_number(getattr(self, f), 1e-9), f"attestation.{f}", "a positive number of seconds",
                  getattr(self, f))
        _need(_number(self.renew_fraction, 0) and 0 < self.renew_fraction < 1, "attestation.renew_fraction",
              "a number between 0 and 1 (exclusive)", self.renew_fraction)

    @property
    def enabled(self) -> bool:
        return self.provider != "none"


@dataclass
class NetworkConfig:
    network: NetworkSection
    economics: Economics
    limits: Limits
    models: list[ModelSection]
    nodes: list[NodeGroup]
    malicious: dict[str, str] = field(default_factory=dict)
    attestation: AttestationSection = field(default_factory=AttestationSection)
    source: str = "<dict>"

    def __post_init__(self) -> None:
        ids = [m.id for m in self.models]
        if not ids:
            raise ConfigError("models: at least one [[models]] entry is required")
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ConfigError(f"models.id must be unique (model ids must not repeat), got {dup[0]!r} twice")
        all_nodes: list[str] = []
        for g in self.nodes:
            if g.model not in ids:
                raise ConfigError(f"nodes[{g.model}].model must name one of the [[models]] ({', '.join(ids)}): "
                                  f"nodes group serves unknown model {g.model!r}")
            all_nodes += g.node_ids()
        if not all_nodes:
            raise ConfigError("nodes: at least one [[nodes]] group is required")
        if len(set(all_nodes)) != len(all_nodes):
            dup = sorted({n for n in all_nodes if all_nodes.count(n) > 1})
            raise ConfigError(f"nodes.prefix must differ between groups of one model: node ids collide ({dup[0]})")
        if not isinstance(self.malicious, dict):
            raise ConfigError("[malicious] must be a table of node id = behaviour")
        for nid, beh in self.malicious.items():
            if nid not in all_nodes:
                raise ConfigError(f"malicious names unknown node {nid!r}: keys must be node ids of [[nodes]] "
                                  f"(such as {all_nodes[0]!r})")
            _need(isinstance(beh, str) and beh in BEHAVIOURS, f"malicious[{nid}]",
                  f"one of {', '.join(sorted(BEHAVIOURS))}", beh)
        if self.network.default_n > self.limits.max_n:
            raise ConfigError(f"network.default_n ({self.network.default_n}) exceeds limits.max_n "
                              f"({self.limits.max_n}): it must be at most limits.max_n")
        spec = modes.SPECS[self.network.default_mode]  # (a mode of fixed N runs on that N: clients use it)
        if spec.attested and not self.attestation.enabled:
            raise ConfigError(f"network.default_mode = {spec.name!r} needs an [attestation] provider")
        for m in self.models:
            if m.options.get("encrypted_weights") and not self.attestation.enabled:
                raise ConfigError(f"models[{m.id}].options.encrypted_weights needs an [attestation] provider "
                                  "(only attested executors get the key)")

    def model(self, model_id: str) -> ModelSection:
        for m in self.models:
            if m.id == model_id:
                return m
        raise ConfigError(f"no model {model_id!r}")

    @property
    def default_model(self) -> str:
        return self.models[0].id

    def ledger_file(self) -> str:
        return os.path.expanduser(self.network.ledger_path)

    def state_dir(self) -> str:
        """Where the control plane's durable state lives (next to the ledger)."""
        return os.path.join(os.path.dirname(os.path.abspath(self.ledger_file())), "state", self.network.name)


def _section(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table, got {data!r}")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"[{where}] has unknown keys: {', '.join(sorted(map(str, unknown)))}; "
                          f"allowed: {', '.join(f.name for f in fields(cls))}")
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"[{where}] is missing {', '.join(missing)} (required)")
    try:
        return cls(**data)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # (a check above should have named the field)
        raise ConfigError(f"[{where}]: {exc}") from None


SECTIONS = ("network", "economics", "limits", "models", "nodes", "malicious", "attestation")


def from_dict(data: dict[str, Any], source: str = "<dict>") -> NetworkConfig:
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown top-level sections: {', '.join(sorted(map(str, unknown)))}; "
                          f"allowed: {', '.join(SECTIONS)}")
    limits = _section(Limits, data.get("limits"), "limits")
    # (Limits validates itself: protocols.admission)
    if not isinstance(data.get("models", []), list) or not isinstance(data.get("nodes", []), list):
        raise ConfigError("models and nodes must be arrays of tables ([[models]], [[nodes]])")
    malicious = data.get("malicious", {})
    if not isinstance(malicious, dict):
        raise ConfigError("[malicious] must be a table of node id = behaviour")
    return NetworkConfig(
        network=_section(NetworkSection, data.get("network"), "network"),
        economics=_section(Economics, data.get("economics"), "economics"),
        limits=limits,
        models=[_section(ModelSection, m, "models") for m in data.get("models", [])],
        nodes=[_section(NodeGroup, g, "nodes") for g in data.get("nodes", [])],
        malicious=dict(malicious),
        attestation=_section(AttestationSection, data.get("attestation"), "attestation"),
        source=source,
    )


def load(path: str | os.PathLike | None = None) -> NetworkConfig:
    """Load a config file; None = the repo's default network."""
    p = Path(path) if path else CONFIG_DIR / "default.toml"
    if not p.exists() and not p.is_absolute() and (CONFIG_DIR / p).exists():
        p = CONFIG_DIR / p
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read config {p}: not UTF-8 text (a TOML file is)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    try:
        return from_dict(data, str(p))
    except ConfigError as exc:  # (one line: which file, which field, what is allowed)
        raise ConfigError(f"{p}: {exc}") from None
