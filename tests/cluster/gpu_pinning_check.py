"""Run in a subprocess by test_cluster_placement: a two-node Ray cluster whose
nodes declare GPUs (a scheduling label here; no CUDA needed), a network with a
GPU node group, and checks that each executor holds its own GPU bundle and that
quorums still form. Prints one JSON line with what it saw."""

import json
import sys
import tempfile

import ray
from ray.cluster_utils import Cluster

from cluster import config as cfgmod
from cluster.network import deploy, teardown


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.add_node(num_cpus=2, num_gpus=2)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    cfg = cfgmod.load("tiny.toml")
    cfg.malicious = {}
    cfg.nodes[0].count = 4
    cfg.nodes[0].gpus = 1
    net = deploy(cfg, ledger_path=tempfile.mkdtemp() + "/ledger.db")
    infos = ray.get([e.ready.remote() for e in net.executors.values()])
    res = net.client().generate("pinned", n=3, max_tokens=6).result()
    print(json.dumps({
        "executors": [{"node_id": i["node_id"], "ray_node": i["ray_node"], "gpu_ids": i["gpu_ids"],
                       "placement_group": i["placement_group"]} for i in infos],
        "status": res.status, "paid": list(res.summary.paid),
    }))
    teardown(net)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
