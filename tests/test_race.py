"""The race's choice of entrants and of its winner (search.race), on hand-made candidates."""

import random

import pytest

from autonad_edge.search.evolution import Candidate
from autonad_edge.search.race import RaceEntry, RaceRun, evidence, pick_entrants, race_winner, score_entries
from autonad_edge.space import SearchSpace


def candidates(latencies, measured=None):
    space = SearchSpace.resolve("tiny")
    rng = random.Random(0)
    out, seen = [], set()
    while len(out) < len(latencies):
        arch = space.sample(rng)
        if arch.hash in seen:
            continue
        seen.add(arch.hash)
        i = len(out)
        out.append(Candidate(arch, miou=0.2, mf1=0.3, latency_ms=latencies[i], params=1000, generation=0,
                             measured_ms=(measured or {}).get(i)))
    return out


def test_entrants_span_the_latencies_and_include_the_search_choice():
    cands = candidates([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0])  # fastest is index 1, slowest index 6
    chosen = cands[3]  # 2.0 ms
    picked = pick_entrants(cands, chosen, 4)
    ms = [c.latency_ms for c in picked]
    assert len(picked) == 4 and len({c.arch.hash for c in picked}) == 4
    assert chosen in picked and 1.0 in ms and 7.0 in ms  # the search's, the fastest, the slowest
    assert ms == sorted(ms)  # fastest first
    assert pick_entrants(list(reversed(cands)), chosen, 4) == picked  # order of input does not matter


def test_entrants_use_the_measured_latency_where_there_is_one():
    cands = candidates([1.0, 2.0, 3.0], measured={0: 9.0})  # estimated fastest, measured slowest
    picked = pick_entrants(cands, cands[1], 2)
    assert [c.arch.hash for c in picked] == [cands[1].arch.hash, cands[0].arch.hash]


def test_fewer_candidates_than_entrants_races_them_all():
    cands = candidates([1.0, 2.0])
    assert {c.arch.hash for c in pick_entrants(cands, cands[0], 4)} == {c.arch.hash for c in cands}
    assert pick_entrants(cands, cands[1], 1) == [cands[1]]


def test_the_winner_fits_best_for_its_latency():
    cands = candidates([2.0, 4.0, 3.0])
    runs = [RaceRun(cands[0], (2.5, 1.5), raced_miou=0.25), RaceRun(cands[1], (1.5,), raced_miou=0.5),
            RaceRun(cands[2], (1.0, 1.0), raced_miou=0.125)]
    entries = score_entries(runs, latency_weight=0.25, reference_ms=2.0)  # median loss 1.5
    assert [e.score for e in entries] == [-2.0 / 1.5 - 0.25, -1.0 - 0.5, -1.0 / 1.5 - 0.375]
    assert [e.hash for e in entries] == [c.arch.hash for c in cands]
    assert entries[1].raced_miou == 0.5 and entries[0].inherited_miou == 0.2 and entries[2].latency_ms == 3.0
    assert race_winner(entries) is entries[2]  # the lowest loss pays for its latency
    # Equal losses: latency decides.
    fast, slow = score_entries([RaceRun(cands[0], (1.0,), 0.0), RaceRun(cands[1], (1.0,), 0.0)], 0.25, 2.0)
    assert fast.score == -1.25 and slow.score == -1.5 and race_winner([slow, fast]) is fast
    assert RaceEntry.from_dict(slow.to_dict()) == slow
    with pytest.raises(ValueError):
        race_winner([])


def test_an_entrant_whose_training_diverged_cannot_win():
    # A NaN loss used to make the median, and so every score, NaN: the fastest entrant won.
    cands = candidates([1.0, 2.0, 3.0])
    runs = [RaceRun(cands[0], (float("nan"),), 0.0), RaceRun(cands[1], (1.0,), 0.0), RaceRun(cands[2], (2.0,), 0.0)]
    entries = score_entries(runs, latency_weight=0.25, reference_ms=2.0)  # median of the finite: 1.5
    assert entries[0].score == float("-inf")
    assert entries[1].score == pytest.approx(-1.0 / 1.5 - 0.25) and race_winner(entries) is entries[1]


def test_the_evidence_counts_the_epochs_the_winner_fitted_better():
    cands = candidates([1.0, 2.0])
    winner, other = RaceRun(cands[1], (1.0, 2.0, 1.0, 0.0), 0.0), RaceRun(cands[0], (2.0, 1.0, 2.0, 1.0), 0.0)
    assert evidence(winner, other) == ("training loss 1.0000 against 1.5000 (-33.3 %), "
                                       "lower in 3 of 4 epochs of the second half")


def test_the_search_plot_stars_the_race_winner(tmp_path, monkeypatch):
    """The race may choose another subnet than the search; the plot the search drew starred the
    search's choice while the report named the race's. It is redrawn with the race's winner."""
    import json
    from types import SimpleNamespace

    import autonad_edge.search.stages.race as race_stage_module
    from autonad_edge.search.signal import SearchSignal
    from autonad_edge.search.stages.search import SearchResult

    cands = candidates([1.0, 2.0, 3.0, 4.0])
    search_json = tmp_path / "search.json"
    search_json.write_text(json.dumps({"candidates": [c.to_dict() for c in cands]}))
    blind = SearchSignal(noise=0.02, spread=0.01, best_gap=0.0, candidates=4, images=10)  # latency decided
    search = SearchResult(best=cands[1], evaluated=4, pareto=4, reference_ms=2.0, signal=blind,
                          search_json=str(search_json), pareto_png=str(tmp_path / "pareto.png"))
    cfg = SimpleNamespace(race_entrants=4, latency_budget_ms=None, race_share=0.5, retrain_epochs=8,
                          race_min_steps=1, latency_weight=0.0, target="local")
    ctx = SimpleNamespace(cfg=cfg, out=tmp_path, log=lambda line: None, data=None, space=None,
                          estimator=SimpleNamespace(measure_together=lambda archs: [1.0] * len(archs)))
    monkeypatch.setattr(race_stage_module, "_steps_per_epoch", lambda ctx: 10)
    losses = {c.arch.hash: loss for c, loss in zip(cands, (0.9, 0.8, 0.3, 0.7))}  # index 2 learns fastest
    monkeypatch.setattr(race_stage_module, "train_entrant",
                        lambda cfg, data, space, out, c, epochs: RaceRun(c, (losses[c.arch.hash],), 0.5, 10))
    starred = []
    monkeypatch.setattr(race_stage_module, "plot_pareto",
                        lambda cands, chosen, path, **kw: starred.append((chosen.arch.hash, str(path), kw["chosen_by"])))
    result = race_stage_module.race_stage(ctx, search)
    assert result.winner.arch.hash == cands[2].arch.hash
    assert starred == [(cands[2].arch.hash, search.pareto_png, "by the race")]
    assert json.loads((tmp_path / "best_arch.json").read_text())["stages"] == cands[2].arch.to_dict()["stages"]
    # A rerun (the race resumed) keeps the entrants it measured: a second measurement that
    # would now put one over the budget is not taken.
    ctx.estimator = SimpleNamespace(measure_together=lambda archs: pytest.fail("measured again"))
    assert race_stage_module.race_stage(ctx, search).winner.arch.hash == cands[2].arch.hash
    # A rerun that does not race writes the search's choice back over the race's.
    cfg.race_entrants = 1
    assert race_stage_module.race_stage(ctx, search).winner.arch.hash == cands[1].arch.hash
    assert json.loads((tmp_path / "best_arch.json").read_text())["stages"] == cands[1].arch.to_dict()["stages"]


def test_on_a_time_budget_the_race_gets_its_share_of_the_time_left_at_its_entrants_pace(tmp_path, monkeypatch):
    """On Magnetic-tile the race's epochs, a share of the retraining's planned at a probed
    subnet's step, took 1,252 s of a 60-minute budget where 868 were planned: its entrants'
    steps were slower. The race now times each entrant and fits the epochs that every entrant
    runs into its share of the time left; a resumed race keeps them."""
    import json
    from dataclasses import asdict
    from types import SimpleNamespace

    import autonad_edge.search.planning as planning
    from autonad_edge.search.budget import REPLAN_MARGIN, StageCosts, retrain_time_limit_s

    costs = StageCosts(supernet_step_s=0.2, retrain_step_s=0.1, val_eval_s=2.0, supernet_steps_per_epoch=10,
                       retrain_steps_per_epoch=10, latency_s=30.0, export_s=20.0)
    (tmp_path / "plan.json").write_text(json.dumps({"plan": {"budget_s": 3600.0}, "costs": asdict(costs),
                                                    "epochs": {"retrain_epochs": 900}}))
    monkeypatch.setattr(planning, "measure_retrain_step",
                        lambda config, space, data, arch, steps, seed: step_s[arch.hash])
    cands = candidates([1.0, 2.0, 3.0])
    step_s = {c.arch.hash: s for c, s in zip(cands, (0.10, 0.12, 0.14))}
    clock = SimpleNamespace(elapsed_s=lambda: 1000.0)
    cfg = SimpleNamespace(race_share=0.3, retrain_epochs=900, seed=0,
                          retrain_config=lambda checkpoint: SimpleNamespace())
    ctx = SimpleNamespace(cfg=cfg, out=tmp_path, given=set(), clock=clock, space=None, data=None)
    epochs = planning.plan_race(ctx, [c.arch for c in cands], steps_per_epoch=35)
    share = 0.3 * retrain_time_limit_s(costs, 3600.0, 1000.0, margin=REPLAN_MARGIN)
    # Every entrant's epochs and its final val pass fit the share; one epoch more would not.
    assert 3 * 2.0 + epochs * 35 * (0.10 + 0.12 + 0.14) <= share < 3 * 2.0 + (epochs + 1) * 35 * 0.36
    assert epochs < planning.race_epochs(cfg, 3)  # the plan's share at its probe's step: 90 each
    saved = json.loads((tmp_path / "plan.json").read_text())["race"]
    assert saved["epochs"] == epochs and saved["step_s"] == [0.10, 0.12, 0.14]
    # A resumed race keeps its epochs (the entrants already trained ran them): nothing is timed.
    monkeypatch.setattr(planning, "measure_retrain_step", lambda *a, **k: pytest.fail("timed again"))
    ctx.clock = SimpleNamespace(elapsed_s=lambda: 2000.0)
    assert planning.plan_race(ctx, [c.arch for c in cands], steps_per_epoch=35) == epochs
    # A race begun by a version that kept no record (an entrant's checkpoint in race/) keeps
    # the epochs it began with: the plan's share, as then.
    plan = json.loads((tmp_path / "plan.json").read_text())
    del plan["race"]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "race" / cands[0].arch.hash).mkdir(parents=True)
    (tmp_path / "race" / cands[0].arch.hash / "last.pt").write_bytes(b"")
    assert planning.plan_race(ctx, [c.arch for c in cands], steps_per_epoch=35) == planning.race_epochs(cfg, 3)
    # Retraining epochs given on the command line: the share of those, as without a budget.
    ctx.given = {"retrain_epochs"}
    assert planning.plan_race(ctx, [c.arch for c in cands], steps_per_epoch=35) == planning.race_epochs(cfg, 3)


def test_measuring_the_entrants_leaves_the_searchs_records_as_they_were(tmp_path):
    """The race measures its entrants afresh; it used to write the figures into the search's
    own candidates, so a race that then passed on reported the search's choice at the race's
    figure in one process and at the search's after a resume (which reads its record back)."""
    import types

    from autonad_edge.search.stages.race import _measured_entrants

    cands = candidates([1.0, 2.0, 3.0], measured={1: 2.5})
    context = types.SimpleNamespace(out=tmp_path, estimator=types.SimpleNamespace(
        measure_together=lambda archs: [10.0 + i for i in range(len(archs))]))
    entrants = _measured_entrants(context, pick_entrants(cands, cands[1], 3))
    assert [c.measured_ms for c in entrants] == [10.0, 11.0, 12.0]
    assert [c.measured_ms for c in cands] == [None, 2.5, None], "the search's candidates are untouched"
    again = _measured_entrants(context, pick_entrants(cands, cands[1], 3))  # a resume reads them back
    assert [c.measured_ms for c in again] == [10.0, 11.0, 12.0]
