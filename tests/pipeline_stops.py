"""Running `autonad-edge search` up to its plan and no further (the `stop_at_plan` fixture in
conftest.py): the pipeline's option checks and its data, target and run-directory guards,
without training."""

from autonad_edge.search.config import PipelineConfig


class Planned(Exception):
    """Raised where the run would plan its epochs: it got past every check."""


def tiny(tmp_path, **changes) -> PipelineConfig:
    """A run of a few small synthetic images into ``tmp_path/run``."""
    settings = dict(out=str(tmp_path / "run"), table=str(tmp_path / "latency.sqlite"), preset="tiny",
                    quiet=True, synthetic_count=24, image_size=32)
    return PipelineConfig(**{**settings, **changes})
