"""A corpus of broken models against a real agent on loopback: per case, the status the agent
answers, the seconds it took, and whether the next valid request was measured (issue 12).

The cases are built here (`autonad_agent.testing` has the reusable ones): empty, garbage,
truncated, an endless Loop, an unknown op, a custom domain, a huge declared input, external
data pointing at a file of the agent's, an initializer whose bytes do not match its shape, an
output of 40 GB, and an oversized request header.

    python benchmarks/agent_broken_models.py --json benchmarks/results/agent_broken_models.json
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from autonad_agent import testing
from autonad_agent.server import AgentConfig, AgentServer
from autonad_edge.io import atomic_write_json
from autonad_edge.latency import AgentClient, AgentError, MeasurementPolicy, TensorSpec

QUICK = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=5, min_duration_ms=0, max_runs=50, max_cv=100,
                          max_repeats=0)


def wrong_initializer_model() -> bytes:
    """An initializer declared [64, 64] holding 3 floats."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[64, 64], raw_data=np.zeros(3, np.float32).tobytes())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "wrong",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight],
    )
    return testing._model(graph).SerializeToString()


def huge_input_model() -> bytes:
    """A model whose declared input is [1, 3, 65536, 65536] floats (48 GiB)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "huge_input",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 65536, 65536])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 65536, 65536])],
    )
    return testing._model(graph).SerializeToString()


def cases() -> list[tuple[str, bytes, list | None]]:
    valid = testing.conv_model()
    return [
        ("empty", b"\0", None),
        ("garbage", secrets.token_bytes(4096), None),
        ("truncated", valid[: len(valid) // 2], None),
        ("endless loop", testing.endless_loop_model(), None),
        ("unknown op", testing.unknown_op_model(), None),
        ("custom domain", testing.custom_domain_model(), None),
        ("huge declared input", huge_input_model(), None),
        ("external data", testing.external_data_model(), None),
        ("wrong initializer size", wrong_initializer_model(), None),
        ("40 GB output", testing.huge_output_model(), None),
        ("100000 input specs", valid, [TensorSpec(f"x{i}", (1, 3, 32, 32)) for i in range(100_000)]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline-s", type=float, default=20.0, help="each broken request's deadline")
    parser.add_argument("--json", default="benchmarks/results/agent_broken_models.json")
    args = parser.parse_args()
    token = secrets.token_urlsafe(24)
    server = AgentServer(AgentConfig(host="127.0.0.1", port=0, backend="onnxruntime", token=token,
                                     worker_memory_mb=2048)).start()
    rows = []
    try:
        with AgentClient(server.address, token=token, timeout_s=60) as client:
            client.measure(testing.conv_model(), policy=QUICK)  # warm worker
            for name, model, inputs in cases():
                start = time.monotonic()
                try:
                    client.measure(model, inputs, policy=QUICK, timeout_s=args.deadline_s)
                    status, detail = "OK", ""
                except AgentError as exc:
                    status, detail = exc.code.name, exc.details
                seconds = time.monotonic() - start
                start_next = time.monotonic()
                try:
                    ok = client.measure(testing.conv_model(seed=len(rows) + 1), policy=QUICK, timeout_s=60).runs >= 5
                except AgentError as exc:
                    ok = False
                    detail += f" | next request: {exc.code.name}"
                rows.append({"case": name, "status": status, "seconds": seconds, "next_ok": ok,
                             "next_seconds": time.monotonic() - start_next, "detail": detail[:200]})
                print(f"{name:<24} {status:<20} {seconds:6.2f} s  next request {'ok' if ok else 'FAILED'} "
                      f"({rows[-1]['next_seconds']:.2f} s)  {detail[:90]}", flush=True)
    finally:
        server.stop(grace_s=0)
    atomic_write_json(args.json, {"command": "python " + " ".join(sys.argv), "onnx": onnx.__version__, "rows": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
