"""What a finished search gives back to its caller (`run_search`, `SearchPipeline.run`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autonad_edge.search.report import ConsoleSummary, console_summary
from autonad_edge.search.stages.report import RunResults
from autonad_edge.space import Arch


@dataclass(frozen=True)
class SearchOutcome:
    """Every stage's typed result, the report as written to ``report.json``, and where the
    run's files are::

        outcome = run_search(PipelineConfig(data="defects/", format="voc"))
        outcome.chosen.summary(), outcome.results.retrain.metrics["test"]["miou"]
        outcome.deploy_onnx            # the model to ship
    """

    out: Path
    results: RunResults
    report: dict[str, Any]  # report.json's content (the record a later reader gets)

    @property
    def chosen(self) -> Arch:
        """The architecture retrained and shipped (``best_arch.json``): the race's winner, or
        the search's choice when no race ran."""
        return self.results.race.winner.arch

    @property
    def report_md(self) -> Path:
        return self.out / "report.md"

    @property
    def report_json(self) -> Path:
        return self.out / "report.json"

    @property
    def deploy_onnx(self) -> Path:
        """The exported model of the target's flavour (the one its latency was measured on)."""
        # From the run directory, not the stored path (relative to where the export ran).
        return self.out / "export" / Path(self.results.export.files[self.results.export.flavor].path).name

    def summary(self) -> ConsoleSummary:
        """The result line, notes and warnings a console shows."""
        return console_summary(self.report)


__all__ = ["SearchOutcome"]
