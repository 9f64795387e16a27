"""Run in a subprocess by test_cluster_placement: a two-node Ray cluster whose
nodes declare GPUs (a scheduling label here; no CUDA needed), a network with a
GPU node group, and checks that each executor holds its own GPU bundle and that
quorums still form; then a CPU node group, whose executors spread over the Ray
nodes. Prints one JSON line with what it saw."""

import json
import sys
import tempfile

import ray
from ray.cluster_utils import Cluster

from cluster import config as cfgmod
from cluster.network import deploy, teardown


def serve(**group) -> tuple[list, object]:
    """A tiny network with one node group set as given: its executors' info and one result."""
    cfg = cfgmod.load("tiny.toml")
    cfg.malicious = {}
    for k, v in group.items():
        setattr(cfg.nodes[0], k, v)
    net = deploy(cfg, ledger_path=tempfile.mkdtemp() + "/ledger.db")
    infos = ray.get([e.ready.remote() for e in net.executors.values()])
    res = net.client().generate("placed", n=3, max_tokens=6).result()
    teardown(net)
    return infos, res


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.add_node(num_cpus=2, num_gpus=2)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    infos, res = serve(count=4, gpus=1)
    cpu_infos, cpu_res = serve(count=6, cpus=0.01)  # and a CPU group: spread over the Ray nodes, not packed on one
    print(json.dumps({
        "executors": [{"node_id": i["node_id"], "ray_node": i["ray_node"], "gpu_ids": i["gpu_ids"],
                       "placement_group": i["placement_group"]} for i in infos],
        "status": res.status, "paid": list(res.summary.paid),
        "cpu_ray_nodes": [i["ray_node"] for i in cpu_infos], "cpu_status": cpu_res.status,
    }))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
