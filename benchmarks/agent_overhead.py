"""What the latency agent adds to a measurement, and how repeatable its numbers are.

For each model, compares the same measurement policy run
  * in-process: OnnxRuntimeBackend + measure_latency in this process, and
  * over gRPC: a loopback agent (its own worker process), via AgentClient,
and reports the median latency both ways, the wall time of a request against the
in-process wall time (upload, validation, IPC and session creation included), a cached
request, a bare RPC round trip (GetDeviceInfo), and the CV of the medians of repeated
uncached requests.

    python benchmarks/agent_overhead.py --out runs/agent_overhead.json [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import statistics
import time
from dataclasses import replace
from pathlib import Path

from autonad_agent import testing
from autonad_agent.backends.base import Precision
from autonad_agent.backends.onnxruntime import OnnxRuntimeBackend
from autonad_agent.fingerprint import usable_cpu_count
from autonad_agent.measure import MeasurementPolicy, measure_latency
from autonad_agent.server import AgentConfig, AgentServer
from autonad_agent.validation import parse_model, resolve_inputs
from autonad_edge.latency import AgentClient

# No repeats and no "unstable" flag (so results are cacheable): this benchmark measures the
# repeatability itself, as the spread of medians over requests.
POLICY = MeasurementPolicy(warmup_runs=10, warmup_ms=200, min_runs=100, min_duration_ms=500, max_runs=100_000,
                           max_cv=1e9, max_repeats=0)
MODELS = {
    "conv16@32": lambda: testing.conv_model(channels=16, size=32),
    "conv64@128": lambda: testing.conv_model(channels=64, size=128),
}


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def in_process(model: bytes, threads: int, repeats: int) -> dict[str, float | list[float]]:
    backend = OnnxRuntimeBackend(threads=threads)
    inputs = resolve_inputs(parse_model(model), [])
    medians, walls = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        with backend.load(model, inputs, Precision.FP32) as loaded:
            medians.append(measure_latency(loaded.run_once, POLICY).stats.median_ms)
        walls.append((time.perf_counter() - start) * 1e3)
    return {"medians_ms": medians, "wall_ms": statistics.median(walls)}


def over_grpc(client: AgentClient, model: bytes, repeats: int) -> dict[str, float | list[float]]:
    medians, walls = [], []
    for i in range(repeats):
        # A different min_runs per request defeats the agent's cache of identical requests.
        policy = replace(POLICY, min_runs=POLICY.min_runs + i)
        start = time.perf_counter()
        m = client.measure(model, policy=policy)
        walls.append((time.perf_counter() - start) * 1e3)
        assert not m.cached
        medians.append(m.median_ms)
    start = time.perf_counter()
    assert client.measure(model, policy=replace(POLICY, min_runs=POLICY.min_runs)).cached
    cached_ms = (time.perf_counter() - start) * 1e3
    return {"medians_ms": medians, "wall_ms": statistics.median(walls), "cached_wall_ms": cached_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Where to write the JSON results.")
    parser.add_argument("--repeats", type=int, default=5, help="Requests per model for the repeatability figure.")
    args = parser.parse_args()

    threads = usable_cpu_count()
    token = secrets.token_urlsafe(32)
    config = AgentConfig(host="127.0.0.1", port=0, backend="onnxruntime", token=token, threads=threads)
    results: dict[str, object] = {
        "machine": {"cpu_count": threads, "platform": platform.platform(), "python": platform.python_version()},
        "policy": POLICY.to_dict(),
        "models": {},
    }
    with AgentServer(config) as server, AgentClient(server.address, token=token) as client:
        client.device_info()
        rtts = []
        for _ in range(50):
            start = time.perf_counter()
            client.device_info()
            rtts.append((time.perf_counter() - start) * 1e3)
        results["rpc_roundtrip_ms"] = statistics.median(rtts)
        for name, build in MODELS.items():
            model = build()
            local = in_process(model, threads, args.repeats)
            remote = over_grpc(client, model, args.repeats)
            local_median = statistics.median(local["medians_ms"])
            remote_median = statistics.median(remote["medians_ms"])
            results["models"][name] = {
                "model_bytes": len(model),
                "in_process_median_ms": local_median,
                "agent_median_ms": remote_median,
                "median_difference_pct": 100 * (remote_median - local_median) / local_median,
                "in_process_wall_ms": local["wall_ms"],
                "agent_request_wall_ms": remote["wall_ms"],
                "request_overhead_ms": remote["wall_ms"] - local["wall_ms"],
                "cached_request_ms": remote["cached_wall_ms"],
                "in_process_cv_of_medians": cv(local["medians_ms"]),
                "agent_cv_of_medians": cv(remote["medians_ms"]),
                "in_process_medians_ms": local["medians_ms"],
                "agent_medians_ms": remote["medians_ms"],
            }

    print(f"bare RPC round trip (GetDeviceInfo): {results['rpc_roundtrip_ms']:.3f} ms; {threads} threads; "
          f"{args.repeats} requests per model")
    header = (f"{'model':<12} {'in-proc med':>11} {'agent med':>10} {'diff':>7} {'in-proc wall':>12} "
              f"{'agent wall':>11} {'overhead':>9} {'cached':>8} {'CV in-proc':>10} {'CV agent':>9}")
    print(header)
    print("-" * len(header))
    for name, r in results["models"].items():
        print(f"{name:<12} {r['in_process_median_ms']:>9.4f}ms {r['agent_median_ms']:>8.4f}ms "
              f"{r['median_difference_pct']:>+6.1f}% {r['in_process_wall_ms']:>10.1f}ms {r['agent_request_wall_ms']:>9.1f}ms "
              f"{r['request_overhead_ms']:>7.1f}ms {r['cached_request_ms']:>6.2f}ms "
              f"{r['in_process_cv_of_medians']:>10.3f} {r['agent_cv_of_medians']:>9.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
