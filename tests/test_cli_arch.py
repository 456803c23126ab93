"""`autonad-edge arch` commands through the real Typer app."""

import json

from typer.testing import CliRunner

from autonad_edge.cli import app
from autonad_edge.space import Arch, SearchSpace

runner = CliRunner()


def test_sample_is_deterministic_and_show_reports(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert runner.invoke(app, ["arch", "sample", "--seed", "5", "--out", str(a)]).exit_code == 0
    assert runner.invoke(app, ["arch", "sample", "--seed", "5", "--out", str(b)]).exit_code == 0
    assert a.read_text() == b.read_text()
    arch = SearchSpace.default().validate(Arch.from_json(a.read_text()))

    result = runner.invoke(app, ["arch", "show", str(a), "--json", "--image-size", "200", "200"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["hash"] == arch.hash and info["params"] > 0 and info["flops"] > 0
    table = runner.invoke(app, ["arch", "show", str(a)])
    assert "stage" in table.output and "FLOPs" in table.output


def test_bad_arch_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.json"
    data = SearchSpace.default().sample(__import__("random").Random(0)).to_dict()
    data["stages"][0]["width"] = 48
    bad.write_text(json.dumps(data))
    result = runner.invoke(app, ["arch", "show", str(bad)])
    assert result.exit_code == 2
    assert "stages[0].width: 48 not in [32, 64]" in result.output
    assert "Traceback" not in result.output
    missing = runner.invoke(app, ["arch", "show", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "cannot read" in missing.output


def test_an_arch_of_another_named_space_says_which(tmp_path):
    """`arch show runs/search/best_arch.json` failed ("stages[0].width: 16 not in [32, 64]"): the
    default search runs the tiny space. The error now names the space it is in."""
    path = tmp_path / "best_arch.json"
    path.write_text(SearchSpace.tiny().smallest().to_json())
    result = runner.invoke(app, ["arch", "show", str(path)])
    assert result.exit_code == 2 and result.output.strip().endswith("it is in the tiny space: pass --space tiny")
    assert runner.invoke(app, ["arch", "show", str(path), "--space", "tiny"]).exit_code == 0


def test_space_json_round_trips(tmp_path):
    out = tmp_path / "space.json"
    assert runner.invoke(app, ["arch", "space", "--space", "tiny", "--out", str(out)]).exit_code == 0
    assert SearchSpace.from_json(out.read_text()) == SearchSpace.tiny()
    sample = runner.invoke(app, ["arch", "sample", "--space", str(out)])
    assert sample.exit_code == 0
    SearchSpace.tiny().validate(Arch.from_json(sample.output))


def test_every_library_error_has_one_root_and_keeps_its_builtin_base():
    from autonad_edge.data.errors import DatasetError
    from autonad_edge.errors import AutonadError
    from autonad_edge.export.onnx_export import ExportError
    from autonad_edge.latency.client import AgentError
    from autonad_edge.latency.table import MissingEntriesError
    from autonad_edge.search.pipeline import PipelineError
    from autonad_edge.space import ArchError
    from autonad_edge.training.checkpoint import CheckpointError

    for cls, builtin in ((DatasetError, ValueError), (ArchError, ValueError), (CheckpointError, ValueError),
                         (ExportError, RuntimeError), (AgentError, RuntimeError), (PipelineError, RuntimeError),
                         (MissingEntriesError, LookupError)):
        assert issubclass(cls, AutonadError) and issubclass(cls, builtin), cls


def test_console_entry_point_turns_a_library_error_into_one_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "arch.json"
    bad.write_text("{not json")
    result = subprocess.run([sys.executable, "-c", "from autonad_edge.cli import main; main()", "arch", "show",
                             str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "error:" in (result.stderr + result.stdout)
