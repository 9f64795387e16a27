"""The HTTP gateway: time to first token over streaming, per-request overhead, throughput, fairness.

    python -m benchmarks.gateway [--config tiny.toml|default.toml] [--requests 30] [--out bench-out]

Measured in one run, side by side with their baselines:
  * time to first token over HTTP streaming (SSE, the openai package) at N = 1 and N = 3, against
    the engine's own time to its first token (the same prompts, the engine called directly);
  * per-request overhead: the gateway (non-streamed) against the Ray client, at N = 1;
  * requests per second through the gateway (concurrent callers) against the Ray client;
  * fairness: a light key's latency alone, and while a second key floods the gateway
    (gate capacity 2), with each key's share of admissions.
Targets (issue 13): streamed TTFT at N = 3 within 1.1x the engine's; the gateway adds <= 5 ms p50.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time

from benchmarks import common


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_ttft(net, prompts, max_tokens: int) -> list[float]:
    """The engine's own time to first token: a local engine of the network's model."""
    from actors.engines import make_engine
    from cluster.network import engine_spec
    from protocols.params import SamplingParams

    cfg = net.config
    eng = make_engine(engine_spec(cfg.model(cfg.default_model), 1))
    eng.load()
    out = []
    for p in prompts:
        t0, first = time.perf_counter(), []

        def on(tokens, t0=t0, first=first):
            if not first:
                first.append(time.perf_counter() - t0)
        eng.generate(p, SamplingParams(max_tokens), on_tokens=on)
        out.append(first[0] if first else None)
    return out


def stream_ttft(client, model: str, prompts, n: int, max_tokens: int) -> list[float]:
    out = []
    for p in prompts:
        t0 = time.perf_counter()
        ttft = None
        for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                                    max_tokens=max_tokens, stream=True,
                                                    extra_body={"verinfer": {"n": n}}):
            if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                ttft = time.perf_counter() - t0
        out.append(ttft)
    return out


def latency(fn, prompts) -> list[float]:
    out = []
    for p in prompts:
        t0 = time.perf_counter()
        fn(p)
        out.append(time.perf_counter() - t0)
    return out


def throughput(fn, prompts, workers: int) -> float:
    todo = list(prompts)
    lock = threading.Lock()

    def run():
        while True:
            with lock:
                if not todo:
                    return
                p = todo.pop()
            fn(p)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(prompts) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny.toml")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args(argv)

    import openai

    from cluster import gateway
    from cluster.keys import KeyStore

    info = common.init_ray()
    net, ledger = common.deploy_network(args.config, tag="gw")
    url = gateway.start(net, "127.0.0.1", _port(), keys_file=ledger + ".keys", capacity=64)
    store = KeyStore(ledger + ".keys")
    light, _ = store.create("light")
    heavy, _ = store.create("heavy")
    gateway.wait_ready(url)
    model = net.config.default_model
    oc = openai.OpenAI(base_url=url + "/v1", api_key=light, max_retries=0, timeout=300)
    hc = openai.OpenAI(base_url=url + "/v1", api_key=heavy, max_retries=0, timeout=300)
    rc = net.client()
    prompts = [f"request {i}: tell me something" for i in range(args.requests)]
    mt = args.max_tokens

    def via_gateway(p, c=oc, n=1):
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": p}], max_tokens=mt,
                                  extra_body={"verinfer": {"n": n}})

    def via_ray(p, n=1):
        rc.generate(p, n=n, max_tokens=mt).result()

    via_gateway(prompts[0])  # warm both paths
    via_ray(prompts[0])
    res: dict = {"machine": common.machine_info(), "config": args.config, "requests": args.requests,
                 "max_tokens": mt}
    common.step("time to first token: the engine alone, then streamed through the gateway (N = 1, 3)")
    res["engine_ttft_s"] = common.summarize(engine_ttft(net, prompts[:10], mt))
    for n in (1, 3):
        res[f"stream_ttft_n{n}_s"] = common.summarize(stream_ttft(oc, model, prompts[:10], n, mt))
    common.step(f"latency: {len(prompts)} requests through the gateway, then through the Ray client")
    gw, ray_ = latency(via_gateway, prompts), latency(via_ray, prompts)
    res["latency_gateway_s"], res["latency_ray_client_s"] = common.summarize(gw), common.summarize(ray_)
    res["gateway_overhead_p50_ms"] = 1000 * (statistics.median(gw) - statistics.median(ray_))
    common.step("throughput: 4 threads through the gateway, then through the Ray client")
    res["rps_gateway"] = throughput(via_gateway, prompts, 4)
    res["rps_ray_client"] = throughput(via_ray, prompts, 4)

    # fairness: the light key alone, then while the heavy key floods (capacity 2 in flight),
    # with fair turns and, as the baseline, with one FIFO for everyone
    common.step("fairness: a light key alone, then while a heavy key floods (fair turns, then FIFO)")
    alone = latency(via_gateway, prompts[:8])
    res["fairness"] = {"light_alone_s": common.summarize(alone), "flooding_threads": 8, "capacity": 2}
    for policy in ("fair", "fifo"):
        res["fairness"][policy] = _flooded(net, via_gateway, hc, prompts[:8], policy == "fair")
    f = res["fairness"]
    e, s3 = res["engine_ttft_s"].get("p50"), res["stream_ttft_n3_s"].get("p50")
    res["targets"] = {"stream_ttft_n3_over_engine": (s3 / e) if e and s3 else None, "target_ratio": 1.1,
                      "gateway_overhead_p50_ms": res["gateway_overhead_p50_ms"], "target_overhead_ms": 5.0}
    path = common.write_json(args.out, "gateway", res)
    _plot(res, args.out)
    print(f"wrote {path}")
    for k in ("engine_ttft_s", "stream_ttft_n1_s", "stream_ttft_n3_s", "latency_gateway_s", "latency_ray_client_s"):
        print(f"  {k:<24} p50 {common.fmt_s(res[k].get('p50'))}  p95 {common.fmt_s(res[k].get('p95'))}")
    print(f"  gateway overhead p50 {res['gateway_overhead_p50_ms']:.1f} ms; rps gateway {res['rps_gateway']:.1f} "
          f"vs Ray client {res['rps_ray_client']:.1f}")
    for policy in ("fair", "fifo"):
        print(f"  {policy}: light key p50 {common.fmt_s(f[policy]['light_s'].get('p50'))} while flooded "
              f"(alone {common.fmt_s(f['light_alone_s'].get('p50'))}); admitted {f[policy]['admitted']}")
    gateway.stop()
    common.shutdown_ray(info)
    return 0


def _flooded(net, via_gateway, heavy_client, prompts, fair: bool) -> dict:
    import ray

    from cluster.gateway import GATE_NAME

    gate = ray.get_actor(f"{net.config.network.name}/{GATE_NAME}")
    ray.get(gate.configure.remote(fair, 2))
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            try:
                via_gateway("flood", heavy_client)
            except Exception:  # 429 once its own queue is full: that is the point
                time.sleep(0.05)
    flooders = [threading.Thread(target=flood) for _ in range(8)]
    for t in flooders:
        t.start()
    time.sleep(1.0)
    before = dict(ray.get(gate.stats.remote())["admitted"])
    busy = latency(via_gateway, prompts)
    after = dict(ray.get(gate.stats.remote())["admitted"])
    stop.set()
    for t in flooders:
        t.join()
    ray.get(gate.configure.remote(True, 64))
    return {"light_s": common.summarize(busy), "admitted": {k: after.get(k, 0) - before.get(k, 0) for k in after}}


def _plot(res: dict, out: str) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    keys = ["engine_ttft_s", "stream_ttft_n1_s", "stream_ttft_n3_s"]
    axes[0].bar(["engine", "HTTP N=1", "HTTP N=3"], [1000 * (res[k].get("p50") or 0) for k in keys],
                color=["grey", "tab:blue", "tab:blue"])
    axes[0].set_ylabel("time to first token, p50 (ms)")
    axes[0].set_xlabel("where the tokens are read")
    axes[0].set_title("streaming TTFT vs the engine's own")
    axes[1].bar(["Ray client", "gateway"], [1000 * res["latency_ray_client_s"]["p50"],
                                            1000 * res["latency_gateway_s"]["p50"]], color=["grey", "tab:blue"])
    axes[1].set_ylabel("request latency N=1, p50 (ms)")
    axes[1].set_xlabel("client")
    axes[1].set_title(f"gateway overhead {res['gateway_overhead_p50_ms']:.1f} ms p50")
    f = res["fairness"]
    axes[2].bar(["light alone", "flooded, FIFO", "flooded, fair turns"],
                [1000 * f["light_alone_s"]["p50"], 1000 * f["fifo"]["light_s"]["p50"],
                 1000 * f["fair"]["light_s"]["p50"]], color=["grey", "tab:red", "tab:green"])
    axes[2].set_ylabel("light key latency, p50 (ms)")
    axes[2].set_xlabel("admission")
    axes[2].set_title("one key floods (8 threads, capacity 2)")
    fig.suptitle("HTTP gateway: streaming, overhead over the Ray client, fairness between keys", fontsize=10)
    common.save_png(fig, out, "gateway", res.get("machine"))


if __name__ == "__main__":
    raise SystemExit(main())
