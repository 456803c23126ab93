"""The latency-aware prior: favours faster operators, stays smooth, round-trips, plots."""

from __future__ import annotations

import json

import pytest

from autonad_agent.backends.base import TensorSpec
from autonad_agent.measure import MeasurementPolicy
from autonad_edge.latency import LatencyTable
from autonad_edge.latency.blocks import space_units
from autonad_edge.latency.client import Measurement
from autonad_edge.latency.estimator import LatencyEstimator
from autonad_edge.latency.fingerprint import Fingerprint
from autonad_edge.latency.prior import (
    build_prior,
    load_prior,
    plot_prior,
    plot_title,
    save_prior,
    smooth,
    softmax_probs,
)
from autonad_edge.latency.profiler import TargetKey
from autonad_edge.space import EDGE_NAMES, ChoicePrior, SearchSpace

SPACE = SearchSpace.tiny()
SIZE = 64
CLASSES = 4
FINGERPRINT = Fingerprint({"device": "test-cpu", "runtime": "onnxruntime", "runtime_version": "1", "threads": "1"})
KEY = TargetKey(FINGERPRINT, "onnxruntime", "fp32")


def _fake_ms(unit) -> float:
    """Synthetic latencies: transformer blocks slow, mlp fastest; conv5x5 the slowest edge."""
    c = unit.config
    scale = unit.inputs[0][1] * unit.inputs[0][2] * unit.inputs[0][3] / 4096
    if unit.kind == "mixer":
        return {"transformer": 5.0, "conv": 2.0 + (0.5 if c.get("kernel") == 5 else 0.0), "mlp": 1.0}[c["op"]] * scale
    if unit.kind == "ffn":  # the same for every operator
        return scale * c["hidden"] / c["channels"]
    if unit.kind == "edge":
        return {"conv1x1": 0.2, "conv3x3": 0.8, "conv5x5": 2.0, "dilconv3x3": 0.9, "dwconv3x3": 0.3}[c["op"]] * scale
    return 0.5


def _measurement(ms: float) -> Measurement:
    return Measurement(
        median_ms=ms, mean_ms=ms, min_ms=ms, max_ms=ms, p90_ms=ms, p99_ms=ms, std_ms=0.0, cv=0.0, runs=10,
        outliers=0, stable=True, attempts=1, warmup_runs=1, cached=False, backend="onnxruntime",
        precision="fp32", inputs=(TensorSpec("input", (1,), "float32"),), policy=MeasurementPolicy(),
        model_sha256="0" * 64, fingerprint=FINGERPRINT, agent="test",
    )


@pytest.fixture()
def estimator(tmp_path):
    with LatencyTable(tmp_path / "table.sqlite") as table:
        table.record_many((u.signature, _measurement(_fake_ms(u))) for u in space_units(SPACE, CLASSES, SIZE))
        yield LatencyEstimator(table, SPACE, SIZE, CLASSES, key=KEY)


def test_softmax_prior_favours_the_faster_operator(estimator):
    prior, meta = build_prior(estimator, method="softmax", temperature=0.5, mix=0.1, target="test")
    assert len(prior.ops) == 4
    for i, stage in enumerate(SPACE.stages):
        assert len(prior.ops[i]) == stage.max_depth
        for probs in prior.ops[i]:
            assert set(probs) == set(SPACE.operators)
            assert sum(probs.values()) == pytest.approx(1.0)
            assert probs["mlp"] > probs["conv"] > probs["transformer"] > 0
    for name in EDGE_NAMES:
        probs = prior.edges[name]
        assert sum(probs.values()) == pytest.approx(1.0)
        assert probs["conv1x1"] > probs["conv5x5"] > 0
        assert min(probs.values()) > 0
    lat = meta["latency_ms"]["ops"][0]
    assert lat["transformer"] > lat["conv"] > lat["mlp"]
    assert meta["fingerprint"] == FINGERPRINT.hash and meta["method"] == "softmax"


def test_smoothing_keeps_every_probability_positive():
    # An operator 100x slower still keeps at least mix / n.
    probs = softmax_probs({"a": 1.0, "b": 100.0, "c": 1.0}, temperature=0.05, mix=0.1)
    assert probs["b"] >= 0.1 / 3 - 1e-12 and sum(probs.values()) == pytest.approx(1.0)
    assert smooth({"a": 0, "b": 0}, 0.1) == {"a": 0.5, "b": 0.5}
    # Higher temperature: closer to uniform.
    hot = softmax_probs({"a": 1.0, "b": 2.0}, temperature=100.0, mix=0.0)
    assert hot["a"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError):
        softmax_probs({"a": 1.0}, temperature=0.0, mix=0.1)


def test_fastest_prior_counts_operators_of_the_fastest_subnets(estimator):
    prior, meta = build_prior(estimator, method="fastest", samples=400, top=0.1, mix=0.1, seed=1)
    assert meta["fastest"]["kept"] == 40
    stage1 = prior.ops[0][0]
    assert stage1["mlp"] > stage1["transformer"] > 0
    assert sum(stage1.values()) == pytest.approx(1.0)
    assert all(min(p.values()) > 0 for stage in prior.ops for p in stage)


def test_prior_json_round_trip_and_heatmap(estimator, tmp_path):
    prior, meta = build_prior(estimator, method="softmax", target="test")
    path = tmp_path / "prior.json"
    save_prior(path, prior, meta)
    data = json.loads(path.read_text())
    assert set(data) == {"ops", "edges", "meta"}
    # The file is ChoicePrior.to_dict() plus metadata: ChoicePrior reads it directly.
    assert ChoicePrior.from_dict(data) == prior
    loaded, loaded_meta = load_prior(path)
    assert loaded == prior and loaded_meta["fingerprint"] == FINGERPRINT.hash
    # The search samples with it.
    import random

    arch = SPACE.sample(random.Random(0), prior=loaded)
    SPACE.validate(arch)
    png = tmp_path / "prior.png"
    title, subtitle = plot_title(meta)
    assert "test" in title and FINGERPRINT.hash in subtitle
    plot_prior(prior, SPACE, png, title=title, subtitle=subtitle)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_prior_needs_every_unit_of_this_device(estimator, tmp_path):
    from autonad_edge.latency import StaleTableError

    other = TargetKey(Fingerprint({"device": "another"}), "onnxruntime", "fp32")
    stale = LatencyEstimator(estimator.table, SPACE, SIZE, CLASSES, key=other)
    with pytest.raises(StaleTableError):
        build_prior(stale)
