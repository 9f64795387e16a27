"""Where actors run. The one place that knows about CPUs, GPUs and bundles.

- Control-plane actors (registry, selector, aggregator, ledger) take num_cpus=0:
  they mostly wait on messages, and a 2-CPU laptop must host the whole network.
- Executors of a GPU group (gpus = 1) each get their own placement-group bundle
  {"GPU": 1, "CPU": c}: one engine, one GPU, never a hand-set CUDA_VISIBLE_DEVICES.
- Executors of a CPU group share the cluster's CPUs fractionally, so N of them
  fit on any machine; their torch thread count is fixed by the config instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONTROL_PLANE = {"num_cpus": 0}


@dataclass
class ExecutorPlacement:
    node_id: str
    options: dict[str, Any]  # ray actor .options(...)
    bundle: tuple[int, int] | None = None  # (placement group index, bundle index) for GPU executors


def cpu_share(total_cpus: float, n_executors: int) -> float:
    """Fraction of a CPU per CPU executor: all fit, at most one whole CPU each."""
    if n_executors <= 0:
        return 1.0
    return max(0.01, min(1.0, int(total_cpus * 100 / n_executors) / 100))


def plan(groups: list, cluster_cpus: float, cpus_per_gpu_executor: float = 1.0):
    """Return (placements, placement_groups) for every executor in `groups`.

    groups: config NodeGroup list (node_ids(), gpus). GPU groups get one placement
    group each, created here and returned so `down` can remove them.
    """
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    n_cpu_exec = sum(g.count for g in groups if not g.gpus)
    share = cpu_share(cluster_cpus, n_cpu_exec)
    placements: list[ExecutorPlacement] = []
    pgs = []
    for g in groups:
        if g.gpus:
            pg = placement_group([{"GPU": 1, "CPU": cpus_per_gpu_executor}] * g.count, strategy="PACK")
            pgs.append(pg)
            for i, nid in enumerate(g.node_ids()):
                strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i)
                placements.append(ExecutorPlacement(
                    nid, {"num_gpus": 1, "num_cpus": cpus_per_gpu_executor, "scheduling_strategy": strategy},
                    (len(pgs) - 1, i)))
        else:
            for nid in g.node_ids():
                placements.append(ExecutorPlacement(nid, {"num_cpus": share}))
    return placements, pgs
