"""Network configuration: one TOML file, mirrored one-to-one by dataclasses.

    [network]    name, namespace, ledger_path, draw_embargo_s, default_mode, default_n
    [economics]  price, fee_fraction, collateral, min_stake, *_slash_fraction, referee_fraction
    [limits]     timeout_s, reveal_timeout_s, max_prompt_chars, max_n, max_tokens, referee_extra, client_credit,
                 default_p (cross-validation check probability), max_batch_calls (1 = no batch calls)
    [[models]]   id, engine ("tiny" | "smollm2" | "vllm"), options = { engine kwargs }, tolerance (calibrated),
                 match ("tolerant": plaintext rounds draw across the model's tolerance group; "exact")
    [[nodes]]    model, count, prefix, threads, dtype (CPU engines: "float32" | "bfloat16"), gpus, cpus
    [malicious]  "<node id>" = "<behaviour>"   (experiments only)
    [attestation] provider, allow_simulated, root_seed, tcb_version, min_tcb_version, max_age_s, epoch_s, renew_fraction

Every field is validated in __post_init__; a bad file raises ConfigError naming
the field, before anything is deployed.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from protocols.admission import Limits
from protocols.modes import MODES
from actors.engines import ENGINES as _ENGINES
from actors.executor import BEHAVIOURS
from protocols.errors import ConfigError
from protocols.ledger import Economics

CONFIG_DIR = Path(__file__).parent / "configs"
TOLERANT_ENGINES = ("tiny", "smollm2")  # engines with a tolerant check (verify_tolerant) and fingerprints
ENGINES = tuple(_ENGINES)  # one spec per engine: actors.engines.ENGINES


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
        if not isinstance(self.aggregator_shards, int) or isinstance(self.aggregator_shards, bool) \
                or not 1 <= self.aggregator_shards <= 64:
            raise ConfigError("network.aggregator_shards must be an integer from 1 to 64")
        if not self.name or "/" in self.name:
            raise ConfigError("network.name must be non-empty and contain no '/'")
        if not isinstance(self.draw_embargo_s, (int, float)) or isinstance(self.draw_embargo_s, bool) \
                or self.draw_embargo_s < 0:
            raise ConfigError("network.draw_embargo_s must be a non-negative number of seconds")
        if not isinstance(self.default_n, int) or self.default_n < 1:
            raise ConfigError("network.default_n must be an integer >= 1")
        if self.default_mode not in MODES:
            raise ConfigError(f"network.default_mode must be one of {MODES}")


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
        if not self.id:
            raise ConfigError("models.id must be non-empty")
        self.match = self.match or ("tolerant" if self.tolerance is not None else "exact")
        if self.match not in ("tolerant", "exact"):
            raise ConfigError(f"models[{self.id}].match must be \"tolerant\" or \"exact\"")
        if self.match == "tolerant" and self.tolerance is None:
            raise ConfigError(f"models[{self.id}].match = \"tolerant\" needs a calibrated tolerance "
                              "(python -m benchmarks.tolerance)")
        if self.match == "tolerant" and self.engine not in TOLERANT_ENGINES:
            raise ConfigError(f"models[{self.id}]: the {self.engine} engine has no tolerant check "
                              f"({' and '.join(TOLERANT_ENGINES)} do); use match = \"exact\"")
        if self.tolerance is not None:
            from protocols.errors import MalformedMessage
            from protocols.fingerprint import Tolerance

            try:
                Tolerance.of(self.tolerance)
            except MalformedMessage as exc:
                raise ConfigError(f"models[{self.id}].tolerance: {exc}") from None
        for f, low in (("timeout_s", 1e-9), ("timeout_per_token_s", 0.0)):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < low or v > 3600):
                raise ConfigError(f"models[{self.id}].{f} must be a number in [{low:g}, 3600]")
        if self.engine not in ENGINES:
            raise ConfigError(f"models[{self.id}].engine must be one of {ENGINES}, got {self.engine!r}")
        if not isinstance(self.options, dict):
            raise ConfigError(f"models[{self.id}].options must be a table")

    def tolerant(self):
        """The model's calibrated Tolerance, or None (exact match only)."""
        from protocols.fingerprint import Tolerance

        return None if self.tolerance is None else Tolerance.of(self.tolerance)

    def group_tolerance(self) -> dict | None:
        """What the registry groups this model's nodes by (None: exact classes only)."""
        return self.tolerant().to_wire() if self.match == "tolerant" else None


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
        if not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"nodes[{self.model}].count must be an integer >= 1")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"nodes[{self.model}].threads must be an integer >= 1")
        if self.dtype not in ("", "float32", "bfloat16"):
            raise ConfigError(f"nodes[{self.model}].dtype must be \"float32\" or \"bfloat16\"")
        if self.gpus not in (0, 1):
            raise ConfigError(f"nodes[{self.model}].gpus must be 0 or 1")
        if not isinstance(self.cpus, (int, float)) or isinstance(self.cpus, bool) or not 0 <= self.cpus <= 64:
            raise ConfigError(f"nodes[{self.model}].cpus must be a number in [0, 64]")
        self.prefix = self.prefix or self.model

    def node_ids(self) -> list[str]:
        return [f"{self.prefix}-{i:02d}" for i in range(self.count)]


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
        if self.provider not in ("none", "simulated", "nvidia"):
            raise ConfigError("attestation.provider must be none, simulated or nvidia")
        if self.provider == "simulated" and not self.allow_simulated:
            raise ConfigError("attestation.provider = simulated needs attestation.allow_simulated = true "
                              "(a production config uses a real provider and keeps it false)")
        if self.root_seed:
            try:
                if len(bytes.fromhex(self.root_seed)) != 32:
                    raise ValueError
            except ValueError:
                raise ConfigError("attestation.root_seed must be 32 bytes of hex") from None
        for f in ("tcb_version", "min_tcb_version"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 0:
                raise ConfigError(f"attestation.{f} must be a non-negative integer")
        for f in ("max_age_s", "epoch_s"):
            if not isinstance(getattr(self, f), (int, float)) or getattr(self, f) <= 0:
                raise ConfigError(f"attestation.{f} must be a positive number")
        if not isinstance(self.renew_fraction, (int, float)) or not 0.0 < self.renew_fraction < 1.0:
            raise ConfigError("attestation.renew_fraction must be in (0, 1)")

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
            raise ConfigError("at least one [[models]] entry is required")
        if len(set(ids)) != len(ids):
            raise ConfigError("model ids must be unique")
        all_nodes: list[str] = []
        for g in self.nodes:
            if g.model not in ids:
                raise ConfigError(f"nodes group serves unknown model {g.model!r}")
            all_nodes += g.node_ids()
        if not all_nodes:
            raise ConfigError("at least one [[nodes]] group is required")
        if len(set(all_nodes)) != len(all_nodes):
            raise ConfigError("node ids collide; give groups distinct prefixes")
        for nid, beh in self.malicious.items():
            if nid not in all_nodes:
                raise ConfigError(f"malicious names unknown node {nid!r}")
            if beh not in BEHAVIOURS:
                raise ConfigError(f"malicious[{nid}] = {beh!r}; choose from {sorted(BEHAVIOURS)}")
        if self.network.default_n > self.limits.max_n:
            raise ConfigError("network.default_n exceeds limits.max_n")

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
        raise ConfigError(f"[{where}] must be a table")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"[{where}] has unknown keys: {', '.join(sorted(unknown))}")
    try:
        return cls(**data)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}]: {exc}") from None


def from_dict(data: dict[str, Any], source: str = "<dict>") -> NetworkConfig:
    unknown = set(data) - {"network", "economics", "limits", "models", "nodes", "malicious", "attestation"}
    if unknown:
        raise ConfigError(f"unknown top-level sections: {', '.join(sorted(unknown))}")
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
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return from_dict(data, str(p))
