"""`autonad-edge search` refuses a bad option in one line before any work, and a run that failed
its checks leaves nothing behind that blocks (or misleads) the corrected rerun.

No test here trains: `plan_run` is replaced by a stop (`Planned`), so a run that gets past every
check ends where the plan would start."""

import json
from dataclasses import asdict

import pytest
from typer.testing import CliRunner

from autonad_edge.cli import app
from autonad_edge.data import load_dataset
from autonad_edge.search import pipeline
from autonad_edge.search.config import PipelineConfig, PipelineError
from autonad_edge.search.presets import PRESETS
from pipeline_stops import Planned, tiny

runner = CliRunner()


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("changes, named", [
    ({"format": "vocx"}, "--format: unknown value 'vocx'"),
    ({"sharing": "foo"}, "--sharing: unknown value 'foo'"),
    ({"device": "gpu"}, "--device: unknown device 'gpu'"),
    ({"image_size": 4}, "--image-size must be a whole number of pixels >= 8"),
    ({"seed": -1}, "--seed must be a whole number >= 0"),
    ({"batch_size": 0}, "--batch-size must be a whole number >= 1"),
    ({"population": 0}, "--population must be a whole number >= 1"),
    ({"generations": 0}, "--generations must be a whole number >= 1"),
    ({"supernet_epochs": 0}, "--supernet-epochs must be a whole number >= 1"),
    ({"retrain_epochs": -2}, "--retrain-epochs must be a whole number >= 1"),
    ({"time_budget": -5.0}, "--time-budget must be >= 0 minutes"),
    ({"time_budget": float("inf")}, "--time-budget must be a finite number"),
    ({"latency_tolerance": 1.0}, "--latency-tolerance must be a share in [0, 1)"),
    ({"latency_weight": -0.1}, "--lambda must be >= 0"),
    ({"latency_weight": float("nan")}, "--lambda must be a finite number"),
    ({"params_budget": 0}, "--params-budget must be a whole number >= 1"),
    ({"latency_budget_ms": 0.0}, "--latency-budget-ms must be > 0"),
    ({"min_defect_width": -1.0}, "--min-defect-width must be >= 0 (0 = off)"),
    ({"supernet_lr": float("nan")}, "supernet_lr must be a finite number"),
    ({"seed": "3"}, "--seed must be a whole number >= 0, got '3'"),  # a hand-written config file
    ({"image_size": [64, 96]}, "--image-size must be a whole number of pixels >= 8"),  # the same
    ({"supernet_share": 1.5}, "supernet_share must be a share in [0, 1)"),  # config-file fields
    ({"race_share": -0.1}, "race_share must be a share in [0, 1)"),
    ({"race_entrants": -1}, "--race-entrants must be a whole number >= 0"),
])
def test_a_bad_value_is_refused_in_one_line_when_the_config_resolves(changes, named):
    with pytest.raises(PipelineError) as caught:
        PipelineConfig(**changes).resolved()
    message = str(caught.value)
    assert message.startswith(named) and "\n" not in message


def test_options_that_do_nothing_are_said_not_refused():
    """--max-side with a preset that squashes images, --local-threads with another target: they
    were silently ignored; refusing them would block run directories that recorded them, so
    the run says so."""
    squashed = PipelineConfig(preset="paper", max_side=512, min_defect_width=2.0).resolved()
    assert squashed.ignored_options() == [
        "--max-side has no effect: images are squashed to --image-size (keep_aspect off)",
        "--min-defect-width has no effect: images are squashed to --image-size (keep_aspect off)"]
    remote = PipelineConfig(target="jetson", local_threads=2).resolved()
    assert remote.ignored_options() == ["--local-threads has no effect: it sets the built-in 'local' target's "
                                        "threads, and the target is 'jetson'"]
    assert PipelineConfig(local_threads=2).resolved().ignored_options() == []
    assert PipelineConfig(preset="paper").resolved().ignored_options() == []


def test_the_smallest_values_that_work_are_accepted():
    cfg = PipelineConfig(image_size=8, seed=0, time_budget=0, latency_tolerance=0.0, latency_weight=0.0,
                         population=1, generations=1, format="MT", device="cuda:0").resolved()
    assert cfg.image_size == 8 and cfg.time_budget == 0


@pytest.mark.parametrize("option", [["--sharing", "foo"], ["--time-budget", "-5"], ["--format", "vocx"]])
def test_a_bad_option_fails_in_one_line_before_anything_is_written(tmp_path, stop_at_plan, option):
    out = tmp_path / "run"
    result = runner.invoke(app, ["search", "--preset", "tiny", "--out", str(out), "--quiet", *option])
    assert option[0] in one_line_error(result)
    assert not out.exists() and stop_at_plan == []


def test_a_cuda_device_this_host_lacks_is_refused_when_the_run_is_made(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PipelineError, match="^--device: device 'cuda' asked for, but torch sees no CUDA GPU$"):
        pipeline.SearchPipeline(tiny(tmp_path, device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(PipelineError, match=r"^--device cuda:3: this host has 1 CUDA GPU\(s\)$"):
        pipeline.SearchPipeline(tiny(tmp_path, device="cuda:3"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["[1, 2]", "5", "null"])
def test_a_config_file_that_is_not_a_json_object_is_refused_in_one_line(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(PipelineError, match=r"not a search config \(a JSON \w+, not an object\)$"):
        PipelineConfig.load(path)


def test_the_loaders_own_value_errors_are_one_line_dataset_errors(tmp_path, stop_at_plan, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("split ratios must sum to 1, got (0.5, 0.2, 0.2) (sum 0.9)")

    monkeypatch.setattr(pipeline, "load_dataset", refuse)
    with pytest.raises(PipelineError, match=r"^dataset: split ratios must sum to 1"):
        pipeline.run_search(tiny(tmp_path), log=lambda msg: None)


def test_a_parameter_budget_no_subnet_meets_is_refused_before_any_training(tmp_path, stop_at_plan):
    with pytest.raises(PipelineError, match=r"^--params-budget 100 is infeasible: the smallest subnet of this "
                                            r"space has [\d,]+ parameters$"):
        pipeline.run_search(tiny(tmp_path, params_budget=100), log=lambda msg: None)
    assert stop_at_plan == [] and not (tmp_path / "run" / "config.json").exists()


def test_a_failed_run_leaves_nothing_that_blocks_the_corrected_rerun(tmp_path, stop_at_plan):
    """A typo in --target used to leave config.json behind, and the corrected command was refused
    as "a run with other settings (target)". config.json is written once the target is open, and
    one left by a run that stopped before any work does not hold the directory; one of a run that
    did work (a stage recorded in stages.json, a plan) still does."""
    run, quiet = tmp_path / "run", (lambda msg: None)
    with pytest.raises(PipelineError, match="nosuch"):
        pipeline.run_search(tiny(tmp_path, target="nosuch"), log=quiet)
    assert not (run / "config.json").exists() and not (run / "splits.json").exists()

    # What such a run wrote before (config.json first, then the failure) does not block either.
    (run / "config.json").write_text(json.dumps(asdict(tiny(tmp_path, target="nosuch").resolved())))
    with pytest.raises(Planned):
        pipeline.run_search(tiny(tmp_path), log=quiet)
    assert json.loads((run / "config.json").read_text())["target"] == "local"
    assert (run / "splits.json").is_file()

    # Once the directory holds work, other settings are another run.
    (run / "stages.json").write_text(json.dumps({"supernet": {"status": "running", "wall_s": 12.0}}))
    with pytest.raises(PipelineError, match=r"holds a run with other settings \(seed\)"):
        pipeline.run_search(tiny(tmp_path, seed=5), log=quiet)
    with pytest.raises(Planned):
        pipeline.run_search(tiny(tmp_path), log=quiet)


def test_a_split_left_without_its_config_is_not_reused_by_another_seed(tmp_path, stop_at_plan):
    """splits.json used to be written before config.json: a first run stopped in between left a
    split that a rerun with another --seed took silently. A split is reused only where
    config.json records the settings it was made with."""
    run, quiet = tmp_path / "run", (lambda msg: None)
    run.mkdir()

    def split_of(seed: int) -> dict:
        return load_dataset(None, "synthetic", image_size=32, seed=seed, synthetic_count=24).manifest()["splits"]

    load_dataset(None, "synthetic", image_size=32, seed=3, synthetic_count=24).save_manifest(run / "splits.json")
    assert split_of(3) != split_of(4)
    with pytest.raises(Planned):
        pipeline.run_search(tiny(tmp_path, seed=4), log=quiet)
    assert stop_at_plan[-1].data.manifest()["splits"] == split_of(4)
    assert json.loads((run / "splits.json").read_text())["seed"] == 4

    # With config.json recording them, the same settings reuse the split.
    saved = (run / "splits.json").read_text()
    with pytest.raises(Planned):
        pipeline.run_search(tiny(tmp_path, seed=4), log=quiet)
    assert (run / "splits.json").read_text() == saved and stop_at_plan[-1].data.manifest()["seed"] == 4


def test_a_preset_given_with_a_saved_config_sets_the_fields_the_config_took_from_its_preset():
    """A run's config.json holds every preset field, so `--config it --preset paper` used to keep
    the tiny preset's values and report "preset paper". The fields the saved run set itself
    stay; the others follow the new preset; options given now win over both."""
    saved = PipelineConfig(preset="tiny", population=4, seed=3).resolved()
    switched = saved.with_options(preset="paper", retrain_epochs=7).resolved()
    paper = PRESETS["paper"]
    assert (switched.population, switched.retrain_epochs, switched.seed) == (4, 7, 3)
    assert (switched.space, switched.image_size, switched.keep_aspect, switched.loss, switched.max_side) == (
        paper.space, paper.image_size, paper.keep_aspect, paper.loss, paper.max_side)
    assert switched.explicit == ("population", "retrain_epochs")
    # The same preset changes nothing.
    assert saved.with_options(preset="tiny").resolved() == saved


def test_the_command_line_applies_a_preset_given_with_a_config_file(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(asdict(PipelineConfig(preset="tiny", population=4).resolved())))
    given = []

    def run_search(config, log):
        given.append(config.resolved())
        raise PipelineError("stopped before the run")

    monkeypatch.setattr(pipeline, "run_search", run_search)
    result = runner.invoke(app, ["search", "--config", str(path), "--preset", "paper"])
    assert one_line_error(result) == "error: stopped before the run"
    assert given[0].preset == "paper" and given[0].image_size == PRESETS["paper"].image_size
    assert given[0].space == "paper" and given[0].population == 4


def test_a_stages_own_library_error_ends_the_command_in_one_line(monkeypatch):
    from autonad_edge.training.engine import ResumeError

    def run_search(config, log):
        raise ResumeError("runs/x/supernet/supernet.pt: trained in another search space; start it in a new --out")

    monkeypatch.setattr(pipeline, "run_search", run_search)
    line = one_line_error(runner.invoke(app, ["search", "--preset", "tiny"]))
    assert line.endswith("trained in another search space; start it in a new --out")


def test_the_data_layout_gives_the_format_when_none_is_given(tmp_path, monkeypatch):
    """`search --data <Magnetic-tile folder>` without --format read it as a VOC-layout set and
    failed with "missing JPEGImages/"; `data inspect` detected it. The search detects it too."""
    (tmp_path / "mt" / "MT_Crack" / "Imgs").mkdir(parents=True)
    (tmp_path / "voc" / "JPEGImages").mkdir(parents=True)
    (tmp_path / "voc" / "SegmentationClass").mkdir()
    given = []

    def run_search(config, log):
        given.append(config.format)
        raise PipelineError("stopped before the run")

    monkeypatch.setattr(pipeline, "run_search", run_search)
    for layout in ("mt", "voc"):
        runner.invoke(app, ["search", "--preset", "tiny", "--data", str(tmp_path / layout)])
    runner.invoke(app, ["search", "--preset", "tiny", "--data", str(tmp_path / "voc"), "--format", "synthetic"])
    assert given == ["mt", "voc", "synthetic"]
    (tmp_path / "neither").mkdir()
    line = one_line_error(runner.invoke(app, ["search", "--preset", "tiny", "--data", str(tmp_path / "neither")]))
    assert "cannot tell the dataset format" in line


def test_a_rerun_may_name_the_run_and_its_files_another_way(tmp_path, monkeypatch):
    """--out and --data given relative in one process and absolute in the next name the same
    run: that rerun used to be refused as "a run with other settings (out)"; another dataset
    still is."""
    from autonad_edge.search.pipeline import _check_config_unchanged

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "defects").mkdir()
    first = PipelineConfig(out="runs/x", data="defects", format="voc").resolved()
    _check_config_unchanged(tmp_path / "runs" / "x", first, worked=True)
    again = PipelineConfig(out=str(tmp_path / "runs" / "x"), data=str(tmp_path / "defects"), format="voc").resolved()
    assert _check_config_unchanged(tmp_path / "runs" / "x", again, worked=True)
    other = PipelineConfig(out="runs/x", data="other", format="voc").resolved()
    with pytest.raises(PipelineError, match=r"other settings \(data\)"):
        _check_config_unchanged(tmp_path / "runs" / "x", other, worked=True)
