"""Shared helpers for the benchmark scripts: Ray connection, throwaway networks,
statistics (percentiles, Wilson intervals), a progress bar, JSON + PNG output.
Every PNG is stamped with the machine it ran on (`save_png`: platform, CPUs, GPU,
torch and Ray versions, load, commit in the figure's suptitle).

Benchmarks measure and report; they never assert. Every script writes
`<out>/<name>.json` and `<out>/<name>.png` and runs both as
`python -m benchmarks.<name>` and as a `ray job submit` entrypoint:

    ray job submit --working-dir . -- python -m benchmarks.<name> --out /tmp/bench

(with `--working-dir`, a relative `--out` lands in the job's working directory
on the head node, so pass an absolute path to find the files afterwards).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Iterable, Sequence

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

PERCENTILES = (50, 95)


# --- Ray ---------------------------------------------------------------------------
def init_ray(num_cpus: int = 2) -> dict:
    """Connect to the cluster in RAY_ADDRESS (a `ray job submit` job, or a user's
    cluster), else start a private local one with `num_cpus` CPUs and no dashboard.
    Returns a description of what we connected to."""
    import ray

    if ray.is_initialized():
        return {"address": "already-initialized", "local": False}
    addr = os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": False, "configure_logging": False}
    if addr:
        ray.init(address=addr, **quiet)
        return {"address": addr, "local": False}
    ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
    return {"address": "local", "local": True, "num_cpus": num_cpus}


def shutdown_ray(info: dict) -> None:
    import ray

    if info.get("local") and ray.is_initialized():
        ray.shutdown()


def step(what: str) -> None:
    """A benchmark's next stage, on stderr (what it is doing while no bar moves)."""
    print(f"> {what}", file=sys.stderr, flush=True)


def deploy_log(line: str) -> None:
    """A deploy step, on stderr (benchmarks keep stdout for their results)."""
    print(f"  deploy: {line}", file=sys.stderr, flush=True)


def deploy_network(config_name: str, *, nodes: int | None = None, malicious: dict | None = None,
                   timeout_s: float | None = None, reveal_timeout_s: float | None = None,
                   cpus: float | None = None, tag: str = "bench", log=deploy_log):
    """Deploy a throwaway network from a packaged config under a unique name, with
    its own ledger file in a temp dir (removed with the process's temp files).
    Returns (network, ledger_path)."""
    from cluster import config as cfgmod
    from cluster.network import deploy

    cfg = cfgmod.load(config_name)
    cfg.network.name = f"{tag}-{uuid.uuid4().hex[:6]}"
    cfg.malicious = dict(malicious or {})
    if nodes is not None:
        cfg.nodes[0].count = int(nodes)
    if timeout_s is not None:
        cfg.limits.timeout_s = float(timeout_s)
    if reveal_timeout_s is not None:
        cfg.limits.reveal_timeout_s = float(reveal_timeout_s)
    if cpus is not None:
        cfg.nodes[0].cpus = float(cpus)
    ledger = os.path.join(tempfile.mkdtemp(prefix=f"verinfer-{tag}-"), "ledger.db")
    return deploy(cfg, ledger_path=ledger, log=log, debug_calls=True), ledger  # (benchmarks inspect actors)


class Noop:
    """A trivial actor: the unit of one Ray actor round trip."""

    def ping(self, x=None):
        return x


def actor_rtt(calls: int = 500, pipelined: int = 2000, payload: Any = None) -> dict:
    """Round-trip time of an empty actor method call on the connected cluster.

    sync: `ray.get(a.ping.remote())` one at a time (what one protocol hop costs on
    the critical path); pipelined: `pipelined` calls in flight, per-call time
    (the throughput-bound cost of a hop)."""
    import ray

    a = ray.remote(num_cpus=0)(Noop).remote()
    ray.get(a.ping.remote())
    for _ in range(50):  # warm up the connection and the worker
        ray.get(a.ping.remote(payload))
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        ray.get(a.ping.remote(payload))
        samples.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ray.get([a.ping.remote(payload) for _ in range(pipelined)])
    per_call = (time.perf_counter() - t0) / pipelined
    ray.kill(a)
    return {"sync": summarize(samples), "pipelined_per_call_s": per_call, "calls": calls,
            "pipelined_calls": pipelined}


# --- statistics ----------------------------------------------------------------------
def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), nan for no data."""
    xs = sorted(float(x) for x in xs if x is not None)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(xs: Iterable[float | None]) -> dict:
    vals = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    out = {"n": len(vals)}
    if not vals:
        return out
    out.update({f"p{q}": percentile(vals, q) for q in PERCENTILES})
    out.update(mean=sum(vals) / len(vals), min=min(vals), max=max(vals))
    return out


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


# --- progress and output -----------------------------------------------------------------
def progress(iterable=None, **kw):
    """tqdm with settings that read well both in a terminal and in `ray job logs`."""
    from tqdm import tqdm

    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("mininterval", 0.5)
    kw.setdefault("file", sys.stderr)
    return tqdm(iterable, **kw)


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages: other work on the machine skews latency numbers."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg": loadavg()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:
        pass
    try:
        import ray

        info["ray"] = ray.__version__
    except Exception:
        pass
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                                     text=True, timeout=5).stdout.strip() or None
    except Exception:
        pass
    return info


def _jsonable(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bytes):
        return x.hex()
    return x


def write_json(out_dir: str, name: str, data: dict) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(_jsonable(data), f, indent=2)
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def machine_line(info: dict | None = None) -> str:
    """One line naming the machine a benchmark ran on: platform, CPUs, GPU, torch, Ray, load, commit."""
    m = info if info is not None else machine_info()
    parts = [m.get("platform") or "unknown platform", f"{m.get('cpus', '?')} CPUs"]
    if m.get("gpu"):
        parts.append(str(m["gpu"]))
    for key, label in (("torch", "torch"), ("ray", "Ray"), ("python", "Python")):
        if m.get(key):
            parts.append(f"{label} {m[key]}")
    if m.get("loadavg"):
        parts.append(f"load {m['loadavg'][0]:g}")
    if m.get("git"):
        parts.append(f"git {m['git']}")
    return "ran on " + ", ".join(parts)


def stamp_machine(fig, info: dict | None = None) -> None:
    """Put the machine line under the figure's suptitle (or make it the suptitle)."""
    import textwrap

    m = info if info is not None else machine_info()
    sup = getattr(fig, "_suptitle", None)
    text = sup.get_text() if sup is not None else ""
    if m.get("platform") and m["platform"] in text:  # (the figure names its machine itself)
        return
    size = min(sup.get_fontsize(), 10) if text else 8
    line = textwrap.fill(machine_line(m), width=int(fig.get_figwidth() * 72 / (size * 0.62)))  # (fits the figure)
    fig.suptitle(f"{text}\n{line}" if text else line, fontsize=size)


def save_png(fig, out_dir: str, name: str, machine: dict | None = None) -> str:
    """Write `<out_dir>/<name>.png`, stamped with the machine it ran on (`machine`: the run's
    machine_info(), e.g. from its JSON; default: this machine, now)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.png")
    stamp_machine(fig, machine)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def fmt_s(x: float | None) -> str:
    """Seconds in a readable unit."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if abs(x) < 1e-3:
        return f"{x * 1e6:.0f}µs"
    if abs(x) < 1:
        return f"{x * 1e3:.1f}ms"
    return f"{x:.2f}s"
