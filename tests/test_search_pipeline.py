"""End to end: `autonad-edge search` on tiny synthetic data with a real local agent."""

import json
import socket
import time
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from autonad_edge.cli import app
from autonad_edge.space import SearchSpace, StageSpace

runner = CliRunner()


def micro_space() -> SearchSpace:
    """Every operator type, few other choices (one depth a stage): a space whose blocks
    profile in well under a minute."""
    return SearchSpace(
        stages=(StageSpace((1,), (16,), (2.0,), 8), StageSpace((1,), (16,), (2.0,), 4),
                StageSpace((1,), (32,), (2.0,), 2), StageSpace((1,), (32,), (2.0,), 1)),
        kernels=(3,), edge_ops=("conv1x1", "dwconv3x3"), pool_size_choices=(1, 2, 3, 4),
        decoder_channels=16, head_dim=16,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    space = out / "micro.json"
    space.write_text(micro_space().to_json())
    args = ["search", "--preset", "tiny", "--space", str(space), "--out", str(out / "run"),
            "--table", str(out / "latency.sqlite"), "--quiet", "--seed", "3", "--population", "4",
            "--min-defect-width", "3", "--race-entrants", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out / "run", args, result.output


def test_search_produces_every_artefact(finished_run):
    run, _, output = finished_run
    for rel in ("report.md", "report.json", "best_arch.json", "splits.json", "stages.json",
                "search/search.json", "search/pareto.json", "search/pareto.png",
                "latency/prior.json", "latency/prior.png",
                "export/model.portable.onnx", "export/model.tensorrt.onnx",
                "deploy/bundle/manifest.json", "predictions.png"):
        assert (run / rel).is_file(), rel
    report = json.loads((run / "report.json").read_text())
    assert report["target"]["name"] == "local" and report["target"]["backend"] == "onnxruntime"
    assert report["latency"]["measured_ms"] > 0 and report["latency"]["estimated_ms"] > 0
    # The search scores the min latency (what block sums predict best); the report gives both.
    assert report["latency"]["statistic"] == "min"
    assert 0 < report["latency"]["measured_min_ms"] <= report["latency"]["measured_ms"]
    # No TensorRT here: the report says so instead of pretending.
    assert report["latency"]["engine_ms"] is None
    assert "not TensorRT" in report["latency"]["engine_note"]
    assert not (run / "deploy" / "model.engine").exists()
    assert {s["name"] for s in report["stages"]} == {
        "supernet", "latency", "search", "race", "retrain", "export", "engine", "report"}
    assert 0.0 <= report["accuracy"]["test"]["miou"] <= 1.0
    search = json.loads((run / "search" / "search.json").read_text())
    hashes = [c["hash"] for c in search["candidates"]]
    assert len(hashes) == len(set(hashes)) and search["chosen"] in hashes
    # The search says whether it could see accuracy (noise of the val score vs the candidates' spread).
    signal = search["signal"]
    assert signal["noise"] >= 0 and signal["spread"] >= 0 and signal["candidates"] == len(hashes)
    assert signal["latency_decided"] == (signal["spread"] <= 2 * signal["noise"])
    # The kept network's decision was calibrated on val, and the report says so.
    calibration = report["accuracy"]["calibration"]
    assert calibration["split"] == "val" and calibration["miou_after"] >= calibration["miou_before"]
    md = (run / "report.md").read_text()
    assert "Chosen architecture" in md and "TensorRT engine" in md
    assert "search signal: val mIoU noise" in md and "Decision calibrated on val" in md
    assert "![predictions](predictions.png)" in md and "defects found" in md
    assert f"- search space `{run.parent / 'micro.json'}`\n" in md  # the --space given (a JSON file)
    # The training scale was chosen from the masks (--min-defect-width): the synthetic images
    # are no larger than the network input, so they stay at native size, and the report says why.
    scale = report["dataset"]["training_scale"]
    assert report["dataset"]["max_side"] == 256 and scale["max_side"] is None and scale["min_width"] == 3.0
    assert scale["thinnest"] in report["dataset"]["classes"][1:]
    assert f"Training scale, chosen from the masks: native size (thinnest class {scale['thinnest']}" in md
    assert report["accuracy"]["test"]["defect_level"]["min_overlap"] > 0
    assert "chosen" in output and "measured on 'local'" in output
    # The exported models carry what a bundle made from them alone needs.
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(run / "export" / "model.portable.onnx")).metadata_props}
    assert json.loads(meta["autonad.class_names"]) == report["dataset"]["classes"]
    assert meta["autonad.squash"] == "false"


def test_a_search_that_cannot_see_accuracy_races_its_candidates(finished_run):
    """--race-entrants 2: when the candidates' val scores are within the noise, two of them
    (the search's choice and one more) are trained for the same steps and the better race
    score (training loss and latency) is the run's choice; otherwise the search's passes on."""
    run, _, output = finished_run
    report = json.loads((run / "report.json").read_text())
    search = json.loads((run / "search" / "search.json").read_text())
    race = report["race"]
    chosen = json.loads((run / "best_arch.json").read_text())
    from autonad_edge.space import Arch

    assert Arch.from_dict(chosen).hash == race["winner"]["hash"] == report["chosen"]["hash"]
    if not search["signal"]["latency_decided"]:
        assert race["entries"] == [] and race["winner"]["hash"] == search["chosen"]
        return
    entries = race["entries"]
    assert len(entries) == 2 and search["chosen"] in {e["hash"] for e in entries}
    assert race["steps"] == race["epochs"] * 4 > 0  # tiny preset: 4 steps an epoch
    for e in entries:  # trained from scratch, each in its own resumable directory
        assert (run / "race" / e["hash"] / "best.pt").is_file() and e["train_loss"] > 0
        assert json.loads((run / "race" / e["hash"] / "config.json").read_text())["init"] == "scratch"
    best = max(entries, key=lambda e: e["score"])
    assert race["winner"]["hash"] == best["hash"]
    assert report["accuracy"]["race_val"]["miou"] == best["raced_miou"]
    assert "lower in" in race["evidence"] and "epochs of the second half" in race["evidence"]
    md = (run / "report.md").read_text()
    assert "- race: raced 2 candidates" in md and "(chosen)" in md
    assert "note: raced 2 candidates" in output


def test_rerun_resumes_and_skips_finished_stages(finished_run):
    run, args, _ = finished_run
    before = json.loads((run / "stages.json").read_text())
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("done in an earlier run; skipped") == 7
    assert json.loads((run / "stages.json").read_text()) == before


def test_a_rerun_on_another_device_is_refused_naming_what_changed(finished_run, monkeypatch):
    """The local target's fingerprint holds its thread count: with another, the finished run's
    latencies (its table rows, prior, search state) are another device's."""
    run, args, _ = finished_run
    before = (run / "stages.json").read_text()
    monkeypatch.setenv("AUTONAD_LOCAL_THREADS", "7")
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "is not the device this run measured its latencies on" in result.output
    assert "threads" in result.output and (run / "stages.json").read_text() == before


def test_changed_settings_refuse_to_mix_runs(finished_run):
    run, args, _ = finished_run
    result = runner.invoke(app, [*args, "--lambda", "0.5"])
    assert result.exit_code == 2
    assert "other settings (latency_weight)" in result.output


def test_unreachable_target_fails_fast_before_training(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    targets = tmp_path / "targets.toml"
    targets.write_text(f'[targets.line1]\nagents = ["127.0.0.1:{port}"]\nbackend = "onnxruntime"\n')
    result = runner.invoke(app, ["search", "--preset", "tiny", "--target", "line1", "--targets", str(targets),
                                 "--out", str(tmp_path / "run"), "--table", str(tmp_path / "t.sqlite"), "--quiet"])
    assert result.exit_code == 2
    assert f"127.0.0.1:{port}" in result.output
    assert not (tmp_path / "run" / "supernet").exists()


def test_bad_dataset_fails_before_training(tmp_path):
    bad = tmp_path / "voc"
    (bad / "JPEGImages").mkdir(parents=True)
    (bad / "SegmentationClass").mkdir()
    result = runner.invoke(app, ["search", "--preset", "tiny", "--data", str(bad), "--format", "voc",
                                 "--out", str(tmp_path / "run"), "--table", str(tmp_path / "t.sqlite"), "--quiet"])
    assert result.exit_code == 2
    assert "dataset" in result.output
    assert not (tmp_path / "run" / "supernet").exists()


def test_report_warns_when_the_two_end_to_end_measurements_disagree():
    from autonad_edge.search.report import latency_disagreement

    assert latency_disagreement({"finalist_measured_ms": 1.31, "measured_ms": 1.40}) is None
    assert latency_disagreement({"finalist_measured_ms": None, "measured_ms": 3.6}) is None
    warning = latency_disagreement({"finalist_measured_ms": 1.31, "measured_ms": 3.61})
    assert "1.310 ms" in warning and "3.610 ms" in warning and "2.76x" in warning



def test_report_says_when_the_images_were_squashed():
    """A squashing run (keep_aspect false, the paper preset) says so, and that inference
    squashes the same way; an aspect-kept run at native scale has no scale line."""
    from autonad_edge.search.report import render_markdown

    squashed = render_markdown({"dataset": {"image_size": "320x320", "max_side": None, "squash": True}})
    assert "every image squashed to 320x320 (aspect not kept)" in squashed
    assert "Training scale" not in render_markdown({"dataset": {"image_size": "320x320", "max_side": None}})


def test_cpu_preset_trains_with_the_defect_recipe_and_its_own_learning_rates():
    """The default run must learn the defects in minutes: the cpu preset's recipe and
    optimisation settings reach both trainers (and the baselines' benchmarks, via
    `retrain_config`)."""
    from autonad_edge.search.pipeline import PRESETS, PipelineConfig

    cfg = PipelineConfig().resolved()
    retrain = cfg.retrain_config("runs/x/supernet.pt")
    preset = PRESETS["cpu"]
    assert retrain.loss == preset.loss == "ce+dice" and retrain.lr == preset.retrain_lr
    assert retrain.class_weighting == preset.class_weighting == "inverse_sqrt"
    assert retrain.defect_crop_share == preset.defect_crop_share > 0 and retrain.ema_decay == preset.retrain_ema
    assert retrain.schedule == "cosine" and retrain.keep_aspect and retrain.max_side == preset.max_side
    # From scratch (on Magnetic-tile the supernet's weights slowed the retraining: RESULTS.md),
    # after a race when the search cannot see accuracy.
    assert retrain.init == "scratch" and retrain.supernet is None
    assert cfg.race_entrants == preset.race_entrants == 4 and 0 < cfg.race_share < 0.5
    assert cfg.race_min_steps == 500 and PipelineConfig(preset="tiny").resolved().race_min_steps == 0
    assert retrain.epochs == preset.retrain_epochs and retrain.image_size == preset.image_size
    # The warm-up is a share of the retraining, so a re-planned (longer) one warms up longer.
    assert retrain.warmup_epochs == pytest.approx(0.1 * preset.retrain_epochs)
    longer = replace(cfg, retrain_epochs=500).retrain_config("runs/x/supernet.pt")
    assert longer.warmup_epochs == pytest.approx(50.0)
    supernet = cfg.supernet_config()
    assert supernet.loss == "ce+dice" and supernet.lr == preset.supernet_lr
    # One subnet a step: in a CPU budget the sandwich's supernet stays at the floor (RESULTS.md).
    assert not supernet.sandwich and supernet.sandwich == preset.sandwich
    assert cfg.supernet_share == preset.supernet_share < 0.5
    assert supernet.epochs == preset.supernet_epochs and supernet.warmup_epochs == preset.supernet_warmup_epochs
    assert PipelineConfig(preset="paper").resolved().supernet_config().lr == 5e-4
    paper = PipelineConfig(preset="paper").resolved().retrain_config("s.pt")
    assert paper.class_weighting == "none" and paper.lr == 1e-4 and paper.supernet is None


def test_a_runs_config_json_loads_and_resumes_it(finished_run):
    run, _, _ = finished_run
    from autonad_edge.search.pipeline import PipelineConfig

    saved = PipelineConfig.load(run / "config.json")
    assert saved.resolved() == saved and saved.preset == "tiny" and saved.seed == 3
    result = runner.invoke(app, ["search", "--config", str(run / "config.json"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.count("done in an earlier run; skipped") == 7


def test_resolved_config_fills_every_preset_field_and_keeps_what_was_given():
    from dataclasses import fields

    from autonad_edge.search.pipeline import PRESETS, PipelineConfig, Preset

    cfg = PipelineConfig(preset="paper", retrain_epochs=5).resolved()
    for f in fields(Preset):
        expected = 5 if f.name == "retrain_epochs" else getattr(PRESETS["paper"], f.name)
        assert getattr(cfg, f.name) == expected, f.name
    assert cfg.explicit == ("retrain_epochs",)
    # Options on top of a loaded config become explicit too (a time budget's plan keeps them).
    assert cfg.with_options(supernet_epochs=3, seed=None).explicit == ("retrain_epochs", "supernet_epochs")


def test_the_small_space_sits_between_tiny_and_default_and_is_chosen_by_name():
    """`--space small` (not a preset's: RESULTS.md, session 11) resolves everywhere a space
    name is read, and every stage is wider than tiny's and no wider than default's."""
    from autonad_edge.search.pipeline import PipelineConfig
    from autonad_edge.space import SearchSpace

    assert PipelineConfig(time_budget=60).resolved().space == "tiny"
    assert PipelineConfig(space="small").resolved().space == "small"
    small, tiny, default = (SearchSpace.resolve(n) for n in ("small", "tiny", "default"))
    assert all(t.max_width < s.max_width <= d.max_width for t, s, d in zip(tiny.stages, small.stages, default.stages))
    assert SearchSpace.from_json(small.to_json()) == small and small.contains(small.largest())


def test_stage_results_load_as_typed_records_and_save_as_the_same_json(finished_run):
    """`stages.json` keeps its format: every stage's record loads as its result type and
    serialises back to exactly the stored JSON (so older run directories resume)."""
    from autonad_edge.search.stages.engine import DeployResult
    from autonad_edge.search.stages.export import ExportResult
    from autonad_edge.search.stages.latency import LatencyResult
    from autonad_edge.search.stages.race import RaceResult
    from autonad_edge.search.stages.retrain import RetrainResult
    from autonad_edge.search.stages.search import SearchResult
    from autonad_edge.search.stages.store import StageLog
    from autonad_edge.search.stages.supernet import SupernetResult

    run, _, _ = finished_run
    stages = StageLog.open(run / "stages.json")
    types = {"supernet": SupernetResult, "latency": LatencyResult, "search": SearchResult,
             "race": RaceResult, "retrain": RetrainResult, "export": ExportResult, "engine": DeployResult}
    for name, result_type in types.items():
        result = stages.load(name, result_type)
        assert json.loads(json.dumps(result.to_dict())) == stages.records[name]["result"], name
        assert result.stage_note() == stages.note(name), name
    export = stages.load("export", ExportResult)
    assert export.flavor == "portable" and export.stats.median_ms > 0


def test_an_interrupted_stage_keeps_its_seconds_and_the_rerun_counts_them(tmp_path):
    """A time budget is spent by every process of a run: a stage that stops unfinished keeps the
    seconds it ran in ``stages.json`` (written as it runs, so a killed process keeps them up to
    the last beat, and when it stops on an exception), and the rerun that resumes it adds them to
    the run's clock (which re-plans the retraining) and to the stage's recorded time."""
    from dataclasses import dataclass

    from autonad_edge.search.stages.context import RunClock
    from autonad_edge.search.stages.store import StageLog, StageResult

    @dataclass(frozen=True)
    class Trained(StageResult):
        epochs: int

    path, now, quiet = tmp_path / "stages.json", [0.0], (lambda msg: None)

    def interrupted() -> Trained:
        assert json.loads(path.read_text())["supernet"] == {"status": "running", "wall_s": 0.0}  # from its start
        now[0] += 250.0
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StageLog.open(path).run("supernet", Trained, interrupted, log=quiet, clock=RunClock(now=lambda: now[0]))
    assert json.loads(path.read_text()) == {"supernet": {"status": "running", "wall_s": 250.0}}

    now[0] = 1000.0  # a new process: its own clock, from its start
    clock, stages, seen, logs = RunClock(now=lambda: now[0]), StageLog.open(path), [], []
    assert not stages.done("supernet")

    def resumed() -> Trained:
        seen.append(clock.elapsed_s())
        now[0] += 50.0
        return Trained(epochs=4)

    assert stages.run("supernet", Trained, resumed, log=logs.append, clock=clock) == Trained(epochs=4)
    assert seen == [250.0] and clock.elapsed_s() == 300.0 and clock.stage_earlier_s == {"supernet": 250.0}
    assert stages.done("supernet") and json.loads(path.read_text())["supernet"]["wall_s"] == 300.0
    assert logs[0] == "[supernet] resuming (250.0 s spent in an earlier run) ..."
    skipped = RunClock(now=lambda: now[0])  # a third process skips it, and counts all of it
    assert StageLog.open(path).run("supernet", Trained, resumed, log=quiet, clock=skipped) == Trained(epochs=4)
    assert skipped.elapsed_s() == 300.0 and len(seen) == 1

    # While a stage runs, its seconds so far are written every `heartbeat_s`.
    beating = StageLog(path, StageLog.open(path).records, heartbeat_s=0.01)

    def long_stage() -> Trained:
        now[0] += 40.0
        deadline = time.monotonic() + 60
        while json.loads(path.read_text())["latency"]["wall_s"] != 40.0:
            assert time.monotonic() < deadline, "no heartbeat written"
            time.sleep(0.01)
        return Trained(epochs=0)

    beating.run("latency", Trained, long_stage, log=quiet, clock=RunClock(now=lambda: now[0]))
    assert json.loads(path.read_text())["latency"]["status"] == "done"


def test_the_supernet_reports_the_epochs_it_ran_not_the_plans():
    """Its time limit may cut or extend the planned epochs: the stage note says so, and the
    report's budgets give the epochs run (they gave the plan's)."""
    from autonad_edge.latency.background import BackgroundStats
    from autonad_edge.search.stages.supernet import SupernetResult

    stats = BackgroundStats(1, 0, 3, 1, 2, 0, 0, 0, 0.5, 1.5)
    cut = SupernetResult(checkpoint="s.pt", summary={"epochs": 5, "planned_epochs": 8}, background_latency=stats)
    assert cut.epochs == 5 and cut.stage_note().startswith("5 epochs: they ran slower than planned")
    assert "block timing: 2 units" in cut.stage_note()
    kept = SupernetResult(checkpoint="s.pt", summary={"epochs": 3, "planned_epochs": 3}, background_latency=stats)
    assert kept.stage_note().startswith("3 epochs; block timing")


def test_search_progress_goes_to_stderr_as_lines_off_a_terminal(capsys):
    """stdout is for results (`search > out.txt`); the generation bar wrote its last frame there
    and nothing until then. Off a terminal it is one line a generation on stderr."""
    from types import SimpleNamespace

    from autonad_edge.search.stages.search import _GenerationProgress

    best = SimpleNamespace(miou=0.25, latency_ms=1.5)
    with _GenerationProgress(2, quiet=False) as progress:
        progress.evaluated(best)
        progress.generation(1, [best])
        progress.generation(2, [best])
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["search generation 1/2: 1 evaluated; best mIoU 25.0% at 1.50 ms",
                                "search generation 2/2: 1 evaluated; best mIoU 25.0% at 1.50 ms"]
    with _GenerationProgress(2, quiet=True) as progress:
        progress.generation(1, [best])
    assert capsys.readouterr() == ("", "")


def test_a_resumed_run_on_a_changed_device_says_what_changed():
    """A reboot that resets the CPU governor (or another thread count) changes the target's
    fingerprint; a run whose latency stage is done would search with two devices' latencies."""
    from types import SimpleNamespace

    from autonad_edge.latency.fingerprint import Fingerprint
    from autonad_edge.search.stages.latency import LatencyResult, device_change

    before = Fingerprint({"cpu_model": "EPYC", "cpu_governor": "performance", "threads": "2"})
    after = Fingerprint({"cpu_model": "EPYC", "cpu_governor": "schedutil", "threads": "2"})
    result = LatencyResult(profile="", correction={}, prior="", heatmap="", fingerprint=before.hash,
                           fingerprint_summary=before.summary(), fingerprint_json=before.to_json())

    def ctx(fingerprint):
        key = SimpleNamespace(fingerprint=fingerprint, summary=fingerprint.summary)
        return SimpleNamespace(cfg=SimpleNamespace(target="local"), estimator=SimpleNamespace(key=key))

    assert device_change(result, ctx(before)) is None
    why = device_change(result, ctx(after))
    assert "cpu_governor performance -> schedutil" in why and "another --out" in why and "\n" not in why
    old_run = LatencyResult.from_dict({**result.to_dict(), "fingerprint_json": None})
    assert before.hash in device_change(old_run, ctx(after))


def test_the_console_summary_is_read_from_the_report_by_the_library(finished_run):
    """The command printed its result by digging through the report's dict; the report module
    now says what to print (`console_summary`), and the command prints it."""
    from autonad_edge.search.report import console_summary

    run, _, output = finished_run
    report = json.loads((run / "report.json").read_text())
    summary = console_summary(report)
    assert summary.result.startswith(f"chosen {report['chosen']['summary']} (hash {report['chosen']['hash']}): test mIoU")
    assert summary.result in output and all(f"note: {note}" in output for note in summary.notes)
    assert any(note.startswith("raced 2 candidates") for note in summary.notes)
    quiet = dict(report, race={"entries": []}, search_signal={"latency_decided": False},
                 latency=dict(report["latency"], warning="timings were unstable"))
    assert console_summary(quiet).notes == () and console_summary(quiet).warnings == ("timings were unstable",)


def test_the_library_call_returns_the_runs_typed_results(finished_run):
    """`run_search` gave the CLI the report's dict to dig through; it returns a typed outcome
    (each stage's result, the report, the files) that the command prints from."""
    from autonad_edge.search.pipeline import PipelineConfig, SearchOutcome, run_search
    from autonad_edge.space import load_arch

    run, _, output = finished_run
    lines: list[str] = []
    outcome = run_search(PipelineConfig.load(run / "config.json"), log=lines.append)  # resumes: all done
    assert isinstance(outcome, SearchOutcome) and outcome.out == run
    report = json.loads(outcome.report_json.read_text())
    assert outcome.chosen.hash == report["chosen"]["hash"] == load_arch(run / "best_arch.json").hash
    assert outcome.deploy_onnx.is_file() and outcome.deploy_onnx.name == "model.portable.onnx"
    assert outcome.results.retrain.metrics["test"]["miou"] == report["accuracy"]["test"]["miou"]
    assert outcome.summary().result in output
    assert not any(line.startswith("supernet epoch") for line in lines)  # nothing trained again
