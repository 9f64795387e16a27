"""GPU pinning: each executor of a GPU group owns one {"GPU": 1, "CPU": c} bundle; CPU
executors spread over a multi-node cluster."""

import json
import os
import subprocess
import sys
from pathlib import Path

from cluster.placement import cpu_share

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_share_fits_all_executors():
    assert cpu_share(2, 8) == 0.25
    assert cpu_share(2, 1) == 1.0
    assert cpu_share(2, 300) == 0.01
    assert cpu_share(16, 8) == 1.0


def test_each_gpu_executor_holds_a_distinct_gpu_bundle_and_quorums_form():
    # A separate process: this needs its own multi-node Ray cluster, not the shared one.
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_DEDUP_LOGS="0")
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "cluster" / "gpu_pinning_check.py")], capture_output=True,
                         text=True, timeout=240, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    execs = seen["executors"]
    assert len(execs) == 4
    slots = {(e["ray_node"], g) for e in execs for g in e["gpu_ids"]}
    assert all(len(e["gpu_ids"]) == 1 for e in execs)
    assert len(slots) == 4  # no two executors share a GPU
    assert len({e["ray_node"] for e in execs}) == 2  # two 2-GPU Ray nodes, both used
    assert all(e["placement_group"] for e in execs)
    assert seen["status"] == "final" and sorted(seen["paid"]) == sorted(e["node_id"] for e in execs)[:3]
    # CPU executors spread over the cluster's Ray nodes (a cluster grown by machines uses them)
    assert len(set(seen["cpu_ray_nodes"])) >= 2 and seen["cpu_status"] == "final"
    assert all(n.startswith("cpu-") for n in seen["cpu_paid"]) and len(seen["cpu_paid"]) == 3
