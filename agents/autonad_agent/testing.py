"""Test and benchmark helpers: tiny ONNX models built with onnx.helper, and an agent run
as a subprocess. Torch-free like the rest of the agent."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9  # what onnxruntime >= 1.17 reads


def _model(graph: onnx.GraphProto, extra_opsets: Sequence[tuple[str, int]] = ()) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="autonad-tests")
    model.ir_version = IR_VERSION
    return model


def conv_model(channels: int = 16, size: int = 32, input_name: str = "x", seed: int = 0) -> bytes:
    """x[1,3,size,size] -> Conv3x3(channels) -> Relu: a cheap but non-trivial model."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", [input_name, "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "conv",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
        [weight],
    )
    return _model(graph).SerializeToString()


def endless_loop_model() -> bytes:
    """A Loop whose trip count is 2^62 and whose condition stays true: it never ends."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)],
        "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array(2**62, dtype=np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond")],
    )
    return _model(graph).SerializeToString()


def big_initializer_model(megabytes: float = 20.0) -> bytes:
    """A model of about `megabytes` whose graph stays cheap: y = x + W[0] for a large W."""
    count = int(megabytes * 1024 * 1024 / 4)
    weight = numpy_helper.from_array(np.arange(count, dtype=np.float32), "w")
    index = numpy_helper.from_array(np.array([0], dtype=np.int64), "i")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["w", "i"], ["g"]), helper.make_node("Add", ["x", "g"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [weight, index],
    )
    return _model(graph).SerializeToString()


def unknown_op_model() -> bytes:
    """A model using an op that no ONNX opset defines."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])],
        "unknown",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return _model(graph).SerializeToString()


def custom_domain_model(domain: str = "com.example.evil") -> bytes:
    """A model with a node in a custom op domain."""
    graph = helper.make_graph(
        [helper.make_node("Shift", ["x"], ["y"], domain=domain)],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return _model(graph, extra_opsets=[(domain, 1)]).SerializeToString()


def identity_model(elem_type: int, shape: Sequence[int], input_name: str = "x") -> bytes:
    """y = Identity(x) for an input of any ONNX element type and static shape (also ones the
    agent cannot feed: strings, bfloat16, rank or sides beyond its limits)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["y"])],
        "identity",
        [helper.make_tensor_value_info(input_name, elem_type, list(shape))],
        [helper.make_tensor_value_info("y", elem_type, list(shape))],
    )
    return _model(graph).SerializeToString()


def external_data_model(location: str = "/etc/passwd") -> bytes:
    """A model whose initializer points at a file on the agent's disk."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [weight],
    )
    return _model(graph).SerializeToString()


def huge_output_model(side: int = 100_000) -> bytes:
    """A tiny model whose output needs side*side floats (40 GB by default)."""
    shape = numpy_helper.from_array(np.array([side, side], dtype=np.int64), "s")
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "s"], ["y"])],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [side, side])],
        [shape],
    )
    return _model(graph).SerializeToString()


class AgentProcess:
    """`autonad-agent serve` on 127.0.0.1 and a free port, as a subprocess.

    `with AgentProcess(token_file) as agent: ... agent.address ...`; the process is killed
    on exit whatever happened.
    """

    def __init__(
        self, token_file: Path | None, *extra_args: str, env: dict[str, str] | None = None, startup_timeout_s: float = 60.0
    ) -> None:
        auth = ["--token-file", str(token_file)] if token_file else ["--insecure-no-auth"]
        command = [sys.executable, "-m", "autonad_agent.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                   "--backend", "onnxruntime", *auth, *extra_args]
        # A session of its own, so kill() can take the agent's worker down with it.
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.address = self._wait_for_address(startup_timeout_s)

    def _wait_for_address(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                break
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            if line.startswith("listening on "):
                return line.split()[2]
        self.kill()
        raise RuntimeError(f"agent did not start (exit code {self.proc.poll()})")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the agent and its worker (its process group)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()
