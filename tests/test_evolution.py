"""Evolution semantics with cheap deterministic scorers (no network, no device)."""

import json
import random
from collections import Counter

import pytest

from autonad_edge.search.evolution import (
    EvolutionarySearch,
    EvolutionConfig,
    SearchCallbacks,
    SearchError,
    pareto_front,
)
from autonad_edge.space import EDGE_NAMES, ChoicePrior, SearchSpace

OP_COST = {"transformer": 3.0, "conv": 1.5, "mlp": 1.0}


def fake_latency(arch) -> float:
    return sum(OP_COST[b.op] * s.width / 16 for s in arch.stages for b in s.blocks) + 0.1 * sum(arch.pool_sizes)


def fake_miou(arch) -> tuple[float, float]:
    # Bigger and more transformers help, with arch-specific noise: deterministic per arch.
    noise = random.Random(arch.hash).random() * 0.05
    size = sum(s.width * s.depth for s in arch.stages) / 400
    tf = sum(b.op == "transformer" for s in arch.stages for b in s.blocks) / 8
    miou = min(0.95, 0.3 + 0.3 * size + 0.1 * tf + noise)
    return miou, miou + 0.05


class Counting:
    def __init__(self):
        self.evaluated = []

    def evaluate(self, arch):
        self.evaluated.append(arch.hash)
        return fake_miou(arch)


def callbacks(counter, **kw):
    return SearchCallbacks(
        evaluate=counter.evaluate, latency_ms=fake_latency,
        params=lambda a: sum(s.width * s.depth for s in a.stages) * 100, **kw,
    )


@pytest.fixture
def space():
    return SearchSpace.tiny()


def test_no_duplicate_evaluations_and_improvement(space):
    counter = Counting()
    cfg = EvolutionConfig(population=16, generations=6, parents=4, seed=1)
    search = EvolutionarySearch(space, cfg, callbacks(counter))
    best = search.run()
    assert len(counter.evaluated) == len(set(counter.evaluated)) == len(search.cache)
    # The best found beats the median of the first generation.
    first = [c for c in search.cache.values() if c.generation == 0]
    first_scores = sorted(search.score(c) for c in first)
    assert search.score(best) >= first_scores[len(first_scores) // 2]
    assert best is search.ranked()[0]


def test_prior_biased_sampling_shifts_operator_frequencies(space):
    prior = ChoicePrior(
        ops=tuple(tuple({"mlp": 0.9, "conv": 0.05, "transformer": 0.05} for _ in range(2)) for _ in range(4)),
        edges={n: {"conv1x1": 1.0} for n in EDGE_NAMES},
    )
    cfg = EvolutionConfig(population=40, generations=1, parents=5, seed=0)
    freq = {}
    for name, p in (("uniform", None), ("prior", prior)):
        search = EvolutionarySearch(space, cfg, callbacks(Counting()), prior=p)
        search.run()
        ops = Counter(b.op for c in search.cache.values() for s in c.arch.stages for b in s.blocks)
        freq[name] = ops["mlp"] / sum(ops.values())
    assert freq["prior"] > 0.7 > 0.5 > freq["uniform"]


def test_latency_and_params_budgets_are_respected(space):
    budget = sorted(fake_latency(space.sample(random.Random(i))) for i in range(200))[60]
    cfg = EvolutionConfig(population=12, generations=4, parents=4, seed=2, latency_budget_ms=budget,
                          params_budget=20_000)
    measured = []

    def measure_together(archs):
        measured.append([a.hash for a in archs])
        return [fake_latency(a) for a in archs]

    search = EvolutionarySearch(space, cfg, callbacks(Counting(), measure_ms=measure_together))
    search.run()
    assert search.cache
    assert all(c.latency_ms <= budget and c.params <= 20_000 for c in search.cache.values())
    final = search.finalize(top=3)
    assert final.measured_ms is not None and final.measured_ms <= budget
    # The finalists (top 3 and the Pareto front) are measured in one call, so together.
    assert len(measured) == 1 and len(measured[0]) == len(set(measured[0])) >= 3
    assert final.arch.hash in measured[0]


def test_infeasible_budget_fails_fast_with_the_floor(space):
    counter = Counting()
    cfg = EvolutionConfig(population=8, generations=2, parents=2, latency_budget_ms=0.01)
    with pytest.raises(SearchError, match=r"infeasible: the fastest subnet of this space takes \d"):
        EvolutionarySearch(space, cfg, callbacks(counter)).run()
    assert counter.evaluated == []
    cfg = EvolutionConfig(population=8, generations=2, parents=2, params_budget=10)
    with pytest.raises(SearchError, match="parameter budget 10 is infeasible"):
        EvolutionarySearch(space, cfg, callbacks(counter)).run()


def test_resume_equals_uninterrupted_run(space, tmp_path):
    cfg = EvolutionConfig(population=10, generations=5, parents=3, seed=7)
    straight = EvolutionarySearch(space, cfg, callbacks(Counting()), state_path=tmp_path / "a.json")
    best = straight.run()

    class Killed(Exception):
        pass

    def kill_after_two(gen, ranked):
        if gen == 2:
            raise Killed

    state = tmp_path / "b.json"
    first = Counting()
    with pytest.raises(Killed):
        EvolutionarySearch(space, cfg, callbacks(first, on_generation=kill_after_two), state_path=state).run()
    second = Counting()
    resumed = EvolutionarySearch(space, cfg, callbacks(second), state_path=state)
    best_resumed = resumed.run()
    assert best_resumed.arch == best.arch
    assert set(resumed.cache) == set(straight.cache)
    # Nothing evaluated before the kill is evaluated again after it.
    assert not set(first.evaluated) & set(second.evaluated)
    a, b = json.loads((tmp_path / "a.json").read_text()), json.loads(state.read_text())
    assert a["population"] == b["population"] and a["rng"] == b["rng"]


def test_resume_refuses_other_settings(space, tmp_path):
    state = tmp_path / "s.json"
    EvolutionarySearch(space, EvolutionConfig(population=6, generations=2, parents=2), callbacks(Counting()),
                       state_path=state).run()
    with pytest.raises(SearchError, match="other settings"):
        EvolutionarySearch(space, EvolutionConfig(population=7, generations=2, parents=2), callbacks(Counting()),
                           state_path=state).run()


def test_pareto_front_is_non_dominated(space):
    search = EvolutionarySearch(space, EvolutionConfig(population=20, generations=2, parents=4),
                                callbacks(Counting()))
    search.run()
    cands = list(search.cache.values())
    front = pareto_front(cands)
    for f in front:
        assert not any(c.miou > f.miou and c.latency_ms < f.latency_ms for c in cands)
    assert [f.latency_ms for f in front] == sorted(f.latency_ms for f in front)


def test_a_failed_evaluation_neither_shadows_the_front_nor_ranks_first(space):
    import dataclasses
    import math

    search = EvolutionarySearch(space, EvolutionConfig(population=8, generations=1, parents=4),
                                callbacks(Counting()))
    search.run()
    cands = sorted(search.cache.values(), key=lambda c: c.latency_ms)
    broken = dataclasses.replace(cands[0], miou=math.nan)  # the fastest, its evaluation failed
    rest = cands[1:]
    # `x > nan` is always false: the NaN would have been the whole front.
    assert pareto_front([broken, *rest]) == pareto_front(rest) and pareto_front(rest)
    assert search.score(broken) == -math.inf


def test_latency_ties_are_decided_on_accuracy(space):
    """Two finalists 2 % apart in latency: within a 5 % tolerance the more accurate one wins,
    although the faster one scores higher; with no tolerance the score decides."""
    rng = random.Random(7)
    fast, slow = space.sample(rng), space.sample(rng)
    while slow.hash == fast.hash:
        slow = space.sample(rng)
    miou = {fast.hash: 0.500, slow.hash: 0.502}
    latency = {fast.hash: 10.0, slow.hash: 10.2}
    cfg = EvolutionConfig(population=2, generations=1, parents=2, latency_weight=1.0)

    def final(tolerance):
        cb = SearchCallbacks(evaluate=lambda a: (miou[a.hash], miou[a.hash]), latency_ms=lambda a: latency[a.hash],
                             params=lambda a: 1, measure_ms=lambda archs: [latency[a.hash] for a in archs])
        search = EvolutionarySearch(space, cfg, cb)
        search.reference_ms = 10.0
        search._evaluate([fast, slow])
        return search.finalize(top=2, latency_tolerance=tolerance)

    # score = mIoU - latency / 10: fast 0.5 - 1.0 = -0.500, slow 0.502 - 1.02 = -0.518.
    assert final(0.0).arch.hash == fast.hash
    chosen = final(0.05)
    assert chosen.arch.hash == slow.hash
    assert chosen.extra["decision"]["by"] == "accuracy among latency ties"
    assert set(chosen.extra["decision"]["ties"]) == {fast.hash, slow.hash}
    # 10 % apart is no tie at 5 %.
    latency[slow.hash] = 11.5
    assert final(0.05).arch.hash == fast.hash


def test_the_budget_counts_the_evaluations_the_search_makes(space):
    """The time budget priced one breeding round too many (a default run's 16 x 5 with 5
    parents: 71 evaluations for the 60 it makes), shrinking searches it had room for. A
    population no larger than its parents bred nothing after the first generation; it keeps
    two fewer parents now (5 with 5 parents: 3 parents, 2 children a generation)."""
    from autonad_edge.search.budget import evaluations

    assert evaluations(5, 3, 5) == 5 + 2 * 2
    for population, generations, parents in ((8, 3, 3), (16, 5, 5), (6, 1, 2), (5, 3, 5)):
        counter = Counting()
        EvolutionarySearch(space, EvolutionConfig(population=population, generations=generations, parents=parents),
                           callbacks(counter)).run()
        assert len(counter.evaluated) == evaluations(population, generations, parents)
