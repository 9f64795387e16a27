"""Run in a subprocess by test_cluster_placement: a two-node Ray cluster whose
nodes declare GPUs (a scheduling label here; no CUDA needed) and one network
with a GPU node group and a CPU node group: each GPU executor holds its own GPU
bundle and a quorum of them finalizes; the CPU group's executors spread over the
Ray nodes and a quorum of them finalizes. Prints one JSON line with what it saw."""

import json
import sys
import tempfile

import ray
from ray.cluster_utils import Cluster

from cluster import config as cfgmod
from cluster.config import NodeGroup
from cluster.network import deploy, teardown
from tests.conftest import request_id_drawing


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    cluster.add_node(num_cpus=3, num_gpus=2)  # 2 CPUs for the GPU bundles, 1 for CPU executors
    cluster.add_node(num_cpus=3, num_gpus=2)  # 2 CPUs for the GPU bundles, 1 for CPU executors
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    # one network, two node groups of the tiny model: a GPU group (each executor pinned to its own
    # GPU bundle) and a CPU group (spread over the Ray nodes, not packed on one)
    cfg = cfgmod.load("tiny.toml")
    cfg.malicious = {}
    cfg.nodes = [NodeGroup(model="tiny", count=4, prefix="gpu", gpus=1),
                 NodeGroup(model="tiny", count=3, prefix="cpu", cpus=0.01)]
    net = deploy(cfg, ledger_path=tempfile.mkdtemp() + "/ledger.db")
    infos = ray.get([e.ready.remote() for e in net.executors.values()])
    client = net.client()
    gpu = {i["node_id"] for i in infos if i["node_id"].startswith("gpu-")}
    cpu = {i["node_id"] for i in infos if i["node_id"].startswith("cpu-")}
    # a quorum of GPU executors only, then one of CPU executors only
    res = client.generate("placed", n=3, max_tokens=6, request_id=request_id_drawing(net, set(sorted(gpu)[:3]), 3,
                                                                                     avoid=cpu)).result()
    cpu_res = client.generate("placed", n=3, max_tokens=6,
                              request_id=request_id_drawing(net, set(sorted(cpu)[:3]), 3, avoid=gpu)).result()
    teardown(net)
    print(json.dumps({
        "executors": [{"node_id": i["node_id"], "ray_node": i["ray_node"], "gpu_ids": i["gpu_ids"],
                       "placement_group": i["placement_group"]} for i in infos if i["node_id"] in gpu],
        "status": res.status, "paid": list(res.summary.paid),
        "cpu_ray_nodes": [i["ray_node"] for i in infos if i["node_id"] in cpu], "cpu_status": cpu_res.status,
        "cpu_paid": list(cpu_res.summary.paid),
    }))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
