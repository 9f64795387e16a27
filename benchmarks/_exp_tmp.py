import time, ray, statistics, sys
from benchmarks import common
from benchmarks.latency_finality import one_request
info = common.init_ray()
net, lp = common.deploy_network("tiny.toml", malicious={})
c = net.client()
for i in range(3): c.generate("warm", n=8, max_tokens=32).result()
for i in range(5): c.generate("warm", n=1, max_tokens=32).result()
open("/tmp/ready","w").write("1")
rows=[]
t0=time.time()
while time.time()-t0 < float(sys.argv[1]):
    r = one_request(net, c, f"The quick brown fox {len(rows)%16} jumps over the lazy dog", "sampling", int(sys.argv[2]), None, 32)
    rows.append(r)
print(len(rows), "eng", statistics.median(r["engine_critical_s"] for r in rows), "ttfo", statistics.median(r["ttfo_s"] for r in rows), "fin", statistics.median(r["finality_s"] for r in rows))
for k in rows[0]["split"]: print(k, statistics.median(r["split"][k] for r in rows))
