"""What a rerun of `autonad-edge search` refuses to resume, in one line: a directory another run
holds, checkpoints and search states of another search space, and damaged state files.

No test here runs the pipeline's stages: `plan_run` is replaced by a stop (`Planned`)."""

import fcntl
import json
import os
import random

import pytest
import torch

from autonad_edge.data import load_dataset
from autonad_edge.search import pipeline
from autonad_edge.search.config import PipelineError
from autonad_edge.search.evolution import EvolutionarySearch, EvolutionConfig, SearchCallbacks, SearchError
from autonad_edge.search.stages.context import RunClock
from autonad_edge.search.stages.store import StageLog
from autonad_edge.space import SearchSpace, StageSpace
from autonad_edge.training.checkpoint import load_checkpoint
from autonad_edge.training.config import SupernetConfig
from autonad_edge.training.engine import ResumeError
from autonad_edge.training.supernet_trainer import SupernetTrainer
from pipeline_stops import Planned, tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quiet(msg: str) -> None:
    pass


def test_a_directory_another_run_holds_is_refused_and_left_alone(tmp_path, stop_at_plan):
    run = tmp_path / "run"
    run.mkdir()
    stages = json.dumps({"supernet": {"status": "running", "wall_s": 3.0}})
    (run / "stages.json").write_text(stages)
    with open(run / ".lock", "w") as held:  # what the other run holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()}\n")
        held.flush()
        with pytest.raises(PipelineError, match=rf"^{run} is in use by another autonad-edge run \(pid {os.getpid()}\); "
                                                "wait for it or use another --out$"):
            pipeline.run_search(tiny(tmp_path), log=quiet)
    assert (run / "stages.json").read_text() == stages
    assert sorted(p.name for p in run.iterdir()) == [".lock", "stages.json"]
    # Once it is free, the next run takes it (and gives it back when it ends, however).
    with pytest.raises(Planned):
        pipeline.run_search(tiny(tmp_path), log=quiet)
    with pytest.raises(Planned):
        pipeline.run_search(tiny(tmp_path), log=quiet)


def micro_space(ffn_ratios=(2.0, 4.0), width: int = 16) -> SearchSpace:
    return SearchSpace(
        stages=(StageSpace((1,), (width,), ffn_ratios, 8), StageSpace((1,), (16,), (2.0,), 4),
                StageSpace((1,), (32,), (2.0,), 2), StageSpace((1,), (32,), (2.0,), 1)),
        kernels=(3,), edge_ops=("conv1x1",), pool_size_choices=(1, 2), num_pool_branches=2,
        decoder_channels=16, head_dim=16,
    )


@pytest.fixture(scope="module")
def supernet_run(tmp_path_factory):
    """One epoch of one step of a supernet of `micro_space()`, with its checkpoint."""
    out = tmp_path_factory.mktemp("supernet")
    data = load_dataset(None, "synthetic", image_size=32, seed=0, synthetic_count=24)
    cfg = SupernetConfig(image_size=32, epochs=1, batch_size=4, max_steps_per_epoch=1, eval_every=0,
                         augment=False, device="cpu", space="micro.json")
    SupernetTrainer(cfg, data, out, space=micro_space(), quiet=True).fit()
    return cfg, data, out


def test_a_supernet_trained_in_another_space_does_not_resume(supernet_run):
    """The resume compared kind, config, world size and split, not the space: a space with the
    same weight shapes (here: other FFN ratios below the same largest) went on silently."""
    cfg, data, out = supernet_run
    same_shapes = micro_space(ffn_ratios=(3.0, 4.0))
    with pytest.raises(ResumeError, match=r"supernet.pt: trained in another search space; start it in a new --out$"):
        SupernetTrainer(cfg, data, out, space=same_shapes, quiet=True, resume=True).fit()
    # The same space resumes (its one epoch is done: nothing more to train).
    SupernetTrainer(cfg, data, out, space=micro_space(), quiet=True, resume=True).fit()


def test_weights_that_do_not_fit_are_a_one_line_resume_error(supernet_run, tmp_path):
    """A checkpoint without its space (or any whose weights do not fit) used to end in
    load_state_dict's many-line RuntimeError."""
    cfg, data, out = supernet_run
    ckpt = load_checkpoint(out / "supernet.pt")
    del ckpt["space"]
    torch.save(ckpt, tmp_path / "supernet.pt")
    with pytest.raises(ResumeError) as caught:
        SupernetTrainer(cfg, data, tmp_path, space=micro_space(width=32), quiet=True, resume=True).fit()
    message = str(caught.value)
    assert "supernet.pt: its state does not fit this network (" in message and "\n" not in message
    assert message.endswith("start it in a new --out")


def search_in(space: SearchSpace, state_path) -> EvolutionarySearch:
    callbacks = SearchCallbacks(evaluate=lambda a: (random.Random(a.hash).random(), 0.5),
                                latency_ms=lambda a: float(sum(s.width for s in a.stages)),
                                params=lambda a: sum(s.width for s in a.stages))
    return EvolutionarySearch(space, EvolutionConfig(population=4, generations=1, parents=2, seed=1), callbacks,
                              state_path=state_path)


def test_a_search_state_of_another_space_does_not_resume(tmp_path):
    state = tmp_path / "state.json"
    search_in(SearchSpace.tiny(), state).run()
    other = SearchSpace.tiny()
    other = SearchSpace(stages=(StageSpace((1, 2), (16,), (2.0, 3.0), 8), *other.stages[1:]),
                        decoder_channels=other.decoder_channels, head_dim=other.head_dim,
                        detail_channels=other.detail_channels)
    with pytest.raises(SearchError, match=r"state.json: the search ran in another search space; start it in a new --out$"):
        search_in(other, state).load_state()
    assert search_in(SearchSpace.tiny(), state).load_state()


@pytest.mark.parametrize("text, why", [
    ("{\"generation\": 1, ", "Expecting"),  # a torn copy
    ("[]", "a JSON list, not an object"),
    ("{\"config\": {}, \"generation\": 1}", "KeyError"),
])
def test_a_damaged_search_state_is_refused_in_one_line(tmp_path, text, why):
    state = tmp_path / "state.json"
    search_in(SearchSpace.tiny(), state).run()
    saved = json.loads(state.read_text())
    if why == "KeyError":  # the right settings, the rest missing
        text = json.dumps({"config": saved["config"], "space": saved["space"], "generation": 1})
    state.write_text(text)
    with pytest.raises(SearchError) as caught:
        search_in(SearchSpace.tiny(), state).load_state()
    message = str(caught.value)
    assert message.startswith(f"{state}: unreadable (") and why in message and "\n" not in message
    assert message.endswith("; delete it to redo the search, or use another --out")


@pytest.mark.parametrize("name, text, redo", [
    ("stages.json", "{\"supernet\": {\"status\": \"do", "run the stages again"),
    ("stages.json", "{\"supernet\": \"done\"}", "run the stages again"),
    ("plan.json", "\xff{", "plan the run again"),
    ("plan.json", "{\"epochs\": {\"supernet_epochs\": \"many\"}}", "plan the run again"),
])
def test_a_damaged_run_file_is_refused_in_one_line_before_the_data_loads(tmp_path, stop_at_plan, monkeypatch,
                                                                           name, text, redo):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text(text, encoding="latin-1")
    monkeypatch.setattr(pipeline, "load_dataset", lambda *a, **k: pytest.fail("the data loaded"))
    with pytest.raises(PipelineError) as caught:
        pipeline.run_search(tiny(tmp_path), log=quiet)
    message = str(caught.value)
    assert message.startswith(f"{run / name}: unreadable (") and "\n" not in message
    assert message.endswith(f"; delete it to {redo}, or use another --out")


@pytest.mark.parametrize("text", ["{\"seed\": 3,", "[]"])
def test_a_damaged_config_is_refused_beside_work_and_replaced_without(tmp_path, stop_at_plan, text):
    """Deleting a damaged config.json beside finished stages would let other settings reuse
    them: it is to be restored. Without work, it is from a run that stopped before any, and
    this run's replaces it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    with pytest.raises(Planned):
        pipeline.run_search(tiny(tmp_path), log=quiet)
    assert json.loads((run / "config.json").read_text())["preset"] == "tiny"
    (run / "config.json").write_text(text)
    (run / "stages.json").write_text(json.dumps({"supernet": {"status": "running", "wall_s": 3.0}}))
    with pytest.raises(PipelineError) as caught:
        pipeline.run_search(tiny(tmp_path), log=quiet)
    message = str(caught.value)
    assert message.startswith(f"{run / 'config.json'}: unreadable (") and "delete" not in message
    assert message.endswith("restore it (this run's finished work was made with its settings), or use another --out")


def test_a_damaged_stage_result_is_refused_in_one_line(tmp_path):
    from autonad_edge.search.stages.supernet import SupernetResult

    path = tmp_path / "stages.json"
    path.write_text(json.dumps({"supernet": {"status": "done", "wall_s": 1.0, "result": {"checkpoint": "x"}}}))
    with pytest.raises(PipelineError, match=r"stages.json: unreadable \(the supernet result: KeyError"):
        StageLog.open(path).run("supernet", SupernetResult, lambda: pytest.fail("ran again"), log=quiet,
                                clock=RunClock())
