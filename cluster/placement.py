"""Where actors run. The one place that knows about CPUs, GPUs and bundles.

- Control-plane actors (registry, selector, aggregator, ledger) take num_cpus=0:
  they mostly wait on messages, and a 2-CPU laptop must host the whole network.
- Executors of a GPU group (gpus = 1) each get their own placement-group bundle
  {"GPU": 1, "CPU": c}: one engine, one GPU, never a hand-set CUDA_VISIBLE_DEVICES.
- Executors of a CPU group share the cluster's *free* CPUs fractionally (or take
  the group's explicit `cpus`), so N of them fit on any machine, next to other
  networks; their torch thread count is fixed by the config instead. They are
  spread over the cluster's Ray nodes (SPREAD), not packed onto the first.
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


def plan(groups: list, free_cpus: float, cpus_per_gpu_executor: float = 1.0):
    """Return (placements, placement_groups) for every executor in `groups`.

    groups: config NodeGroup list (node_ids(), gpus, cpus). GPU groups get one
    placement group each, created here and returned so `down` can remove them.
    Raises ConfigError when the free CPUs cannot host the CPU executors.
    """
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from protocols.errors import ConfigError

    explicit = sum(g.count * g.cpus for g in groups if not g.gpus and g.cpus)
    n_auto = sum(g.count for g in groups if not g.gpus and not g.cpus)
    left = free_cpus - explicit
    if left < -1e-9 or (n_auto and left < 0.01 * n_auto):
        raise ConfigError(f"the cluster has {free_cpus:.2f} free CPUs; these node groups need "
                          f"{explicit:.2f} + {0.01 * n_auto:.2f} (stop another network or set nodes.cpus)")
    share = cpu_share(left, n_auto)
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
                # spread over the cluster's nodes, so executors added to a cluster use its new machines
                placements.append(ExecutorPlacement(nid, {"num_cpus": g.cpus or share, "scheduling_strategy": "SPREAD"}))
    return placements, pgs
