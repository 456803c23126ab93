"""The agent's device-time budgets, with the real agent on loopback (its own file: it starts its
own agent, and runs next to test_agent_service.py under xdist)."""

from __future__ import annotations

import secrets

import grpc
import pytest

from autonad_agent import testing
from autonad_agent.server import AgentConfig, AgentServer
from autonad_edge.latency import AgentClient, AgentError, MeasurementPolicy

TOKEN = secrets.token_urlsafe(24)
FAST = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=5, min_duration_ms=0, max_runs=50, max_cv=100, max_repeats=0)


def test_a_model_whose_first_inference_never_ends_is_stopped_at_the_first_run_limit():
    """An endless Loop with no caller deadline: answered DEADLINE_EXCEEDED at the agent's
    first-inference limit (2 s here), not at the request budget; the next model is measured
    by a fresh worker, and GetDeviceInfo reports the budgets."""
    config = AgentConfig(host="127.0.0.1", port=0, backend="onnxruntime", token=TOKEN, worker_memory_mb=2048,
                         first_run_timeout_s=2.0, max_request_s=300.0)
    server = AgentServer(config).start()
    try:
        with AgentClient(server.address, token=TOKEN, timeout_s=120) as c:
            info = c.device_info()
            assert (info.max_request_s, info.first_run_timeout_s, info.max_build_s) == (300.0, 2.0, 1800.0)
            c.measure(testing.conv_model(), policy=FAST)
            before = server.service.worker("onnxruntime").pid
            with pytest.raises(AgentError) as excinfo:
                c.measure(testing.endless_loop_model(), policy=FAST)
            assert excinfo.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "first inference did not finish within 2 s" in excinfo.value.details
            m = c.measure(testing.conv_model(seed=3), policy=FAST)
            assert m.runs >= 5
            assert server.service.worker("onnxruntime").pid not in (None, before)
    finally:
        server.stop(grace_s=0)
