"""The shared measurement loop and the model checks, without a server."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from autonad_agent import testing
from autonad_agent.backends.base import ModelRejected, TensorSpec
from autonad_agent.measure import MAX_RUNS, LatencyStats, MeasurementPolicy, measure_latency
from autonad_agent.validation import check_model, parse_model, resolve_inputs


def test_stats_count_outliers_without_dropping_them():
    samples = [1.0] * 40 + [1.1] * 40 + [50.0, 60.0]
    stats = LatencyStats.from_samples(samples)
    assert stats.runs == 82 and stats.outliers == 2
    assert stats.max_ms == 60.0 and stats.median_ms == pytest.approx(1.1)
    assert stats.mean_ms == pytest.approx(np.mean(samples))
    assert stats.std_ms == pytest.approx(np.std(samples, ddof=1)) and stats.cv == pytest.approx(stats.std_ms / stats.mean_ms)


def test_runs_until_both_count_and_duration_are_reached():
    calls = itertools.count()

    def run_once() -> float:
        next(calls)
        return 1.0

    policy = MeasurementPolicy(warmup_runs=3, warmup_ms=0, min_runs=20, min_duration_ms=0, max_runs=100)
    result = measure_latency(run_once, policy)
    assert result.stats.runs == 20 and result.warmup_runs == 3 and result.stable and result.attempts == 1
    capped = measure_latency(run_once, MeasurementPolicy(warmup_runs=0, warmup_ms=0, min_runs=5, min_duration_ms=60_000, max_runs=40))
    assert capped.stats.runs == 40  # the cap wins over the duration


def test_noisy_rounds_are_repeated_then_flagged():
    noise = itertools.cycle([1.0, 10.0])
    policy = MeasurementPolicy(warmup_runs=0, warmup_ms=0, min_runs=10, min_duration_ms=0, max_runs=10, max_cv=0.1, max_repeats=2)
    result = measure_latency(lambda: next(noise), policy)
    assert result.attempts == 3 and not result.stable and result.stats.cv > 0.1


def test_policy_from_wire_defaults_caps_and_validation():
    assert MeasurementPolicy.from_wire() == MeasurementPolicy()
    assert MeasurementPolicy.from_wire(warmup_ms=0.0).warmup_ms == 0.0  # explicit zero is honoured
    assert MeasurementPolicy.from_wire(min_runs=10_000).max_runs == 10_000
    assert MeasurementPolicy.from_wire(max_runs=10**9).max_runs == MAX_RUNS
    for bad in ({"min_runs": 0}, {"max_cv": 0.0}, {"warmup_ms": float("nan")}, {"bogus": 1}):
        with pytest.raises(ValueError):
            MeasurementPolicy.from_wire(**bad)


def test_external_data_is_found_in_constant_nodes_too():
    tensor = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[1], data_location=TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value="secrets.bin")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=tensor)], "g", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelRejected, match="external data"):
        check_model(model, ())


def test_function_bodies_are_checked_like_the_graph():
    """A model-local function in an allowed domain (the TensorRT backend allows its plugin's)
    used to hide what the graph may not hold: a tensor reading a file on the agent's disk in an
    If branch of its body, and a node of a refused domain. Both are refused as at top level."""
    leak = TensorProto(name="leak", data_type=TensorProto.FLOAT, dims=[1], data_location=TensorProto.EXTERNAL)
    leak.external_data.add(key="location", value="secret.bin")

    def branch(name, value):
        return helper.make_graph([helper.make_node("Constant", [], [name], value=value)], name, [],
                                 [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])])

    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])

    def model(body):
        function = helper.make_function("autonad", "Hidden", ["c"], ["p"], body,
                                        opset_imports=[helper.make_opsetid("", 17),
                                                       helper.make_opsetid("com.microsoft", 1)])
        graph = helper.make_graph([helper.make_node("Hidden", ["c"], ["y"], domain="autonad")], "g",
                                  [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        return parse_model(helper.make_model(graph, functions=[function], ir_version=8, opset_imports=[
            helper.make_opsetid("", 17), helper.make_opsetid("autonad", 1)]).SerializeToString())

    reads_a_file = model([helper.make_node("If", ["c"], ["p"], then_branch=branch("t", leak),
                                           else_branch=branch("e", zero))])
    with pytest.raises(ModelRejected, match="external data"):
        check_model(reads_a_file, ("autonad",))
    refused_op = model([helper.make_node("If", ["c"], ["o"], then_branch=branch("t", zero),
                                         else_branch=branch("e", zero)),
                        helper.make_node("Gelu", ["o"], ["p"], domain="com.microsoft")])
    with pytest.raises(ModelRejected, match="'com.microsoft' not allowed"):
        check_model(refused_op, ("autonad",))


def test_custom_domains_only_where_allowed():
    model = parse_model(testing.custom_domain_model("autonad"))
    with pytest.raises(ModelRejected, match="'autonad' not allowed"):
        check_model(model, ())
    check_model(model, ("autonad",))  # e.g. the TensorRT backend with its plugin


def test_inputs_resolve_from_static_shapes_or_must_be_given():
    model = parse_model(testing.conv_model(size=16))
    assert resolve_inputs(model, []) == [TensorSpec("x", (1, 3, 16, 16), "float32")]
    dynamic = onnx.load_from_string(testing.conv_model())
    dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(ModelRejected, match="dynamic"):
        resolve_inputs(dynamic, [])
    assert resolve_inputs(dynamic, [TensorSpec("x", (2, 3, 32, 32))])[0].shape == (2, 3, 32, 32)


def test_a_slow_model_cannot_hold_the_device_past_the_measurement_budget(monkeypatch):
    """1 s a run and a policy asking for 1000 timed runs and 5 repeats: warm-up and timing stop
    at the 60-s budget (fake clock: deterministic), with a result made of the runs that fit."""
    import types

    from autonad_agent import measure

    clock = {"now": 0.0}
    monkeypatch.setattr(measure, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))

    def one_second() -> float:
        clock["now"] += 1.0
        return 1000.0 + (clock["now"] % 3)  # a little spread: never stable at max_cv 1e-9

    policy = MeasurementPolicy(warmup_runs=10, warmup_ms=0, min_runs=1000, min_duration_ms=0, max_runs=5000,
                               max_cv=1e-9, max_repeats=5)
    result = measure.measure_latency(one_second, policy)
    assert clock["now"] <= measure.MAX_MEASURE_MS / 1e3 + 1
    assert result.stats.runs >= 2 and not result.stable and result.attempts == 1
