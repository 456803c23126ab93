"""The configuration of one `autonad-edge search` run (`PipelineConfig`) and its error type."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from autonad_edge.errors import AutonadError
from autonad_edge.latency.estimator import STATS
from autonad_edge.search.presets import PRESETS, Preset
from autonad_edge.training.config import RetrainConfig, SupernetConfig


class PipelineError(AutonadError, RuntimeError):
    """A run that cannot go on; the message is one line naming the problem."""


@dataclass
class PipelineConfig:
    out: str = "runs/search"
    data: str | None = None
    format: str = "synthetic"
    target: str = "local"
    targets_path: str | None = None
    local_threads: int | None = None  # ONNX Runtime threads of the built-in `local` agent
    table: str = "runs/latency.sqlite"
    # Exported blocks, kept across runs and targets (latency.export_cache): a directory,
    # "table" (next to the latency table) or "off"; None = $AUTONAD_EXPORT_CACHE or ~/.cache.
    export_cache: str | None = None
    preset: str = "cpu"
    # None = the preset's value
    space: str | None = None
    image_size: int | None = None
    supernet_epochs: int | None = None
    retrain_epochs: int | None = None
    batch_size: int | None = None
    population: int | None = None
    generations: int | None = None
    parents: int | None = None
    sharing: str = "cross"
    latency_weight: float = 0.1
    # The statistic the latency table sums and the search scores: "min" (the latency without
    # interference, which block sums predict best: benchmarks/RESULTS.md) or "median", ...
    # The report gives the end-to-end median and min either way.
    latency_stat: str = "min"
    latency_budget_ms: float | None = None
    params_budget: int | None = None
    prior_method: str = "softmax"
    prior_temperature: float | None = None
    # Minutes for the whole run: epochs and search size are planned from measured costs
    # (search.budget); None = the preset's budget (cpu: 9 min), 0 = the preset's epochs.
    time_budget: float | None = None
    seed: int = 0
    device: str = "auto"
    quiet: bool = False

    def resolved(self) -> "PipelineConfig":
        if self.preset not in PRESETS:
            raise PipelineError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.latency_stat not in STATS:
            raise PipelineError(f"unknown latency statistic {self.latency_stat!r}; choose one of {', '.join(STATS)}")
        preset = asdict(PRESETS[self.preset])
        values = asdict(self)
        for f in fields(self):
            if values[f.name] is None and f.name in preset:
                values[f.name] = preset[f.name]
        return PipelineConfig(**values)

    @property
    def preset_values(self) -> Preset:
        return PRESETS[self.preset]

    def supernet_config(self) -> SupernetConfig:
        """The supernet training settings of a run (of a resolved config)."""
        preset = self.preset_values
        return SupernetConfig(
            data=self.data, format=self.format, image_size=self.image_size,
            synthetic_count=preset.synthetic_count, epochs=self.supernet_epochs, batch_size=self.batch_size,
            seed=self.seed, device=self.device, space=self.space, sharing=self.sharing,
            max_steps_per_epoch=preset.max_steps_per_epoch, class_weighting=preset.class_weighting,
            warmup_epochs=preset.supernet_warmup_epochs, sandwich=preset.sandwich,
            sandwich_random=preset.sandwich_random, **self.recipe(),
            # Its val figures are progress information only (the search evaluates subnets itself):
            # ten points per run are enough.
            eval_every=max(1, self.supernet_epochs // 10),
            **({"lr": preset.supernet_lr} if preset.supernet_lr else {}),
        )

    def retrain_config(self, supernet_checkpoint: str | Path) -> RetrainConfig:
        """The retraining settings of a run (of a resolved config): the chosen subnet's, and
        those any baseline compared with it must get (same epochs, optimiser, loss, init)."""
        preset = self.preset_values
        return RetrainConfig(
            data=self.data, format=self.format, image_size=self.image_size,
            synthetic_count=preset.synthetic_count, epochs=self.retrain_epochs, batch_size=self.batch_size,
            seed=self.seed, device=self.device, init=preset.retrain_init,
            supernet=str(supernet_checkpoint) if preset.retrain_init == "inherited" else None,
            max_steps_per_epoch=preset.max_steps_per_epoch, class_weighting=preset.class_weighting,
            schedule=preset.retrain_schedule, warmup_epochs=preset.retrain_warmup_epochs,
            ema_decay=preset.retrain_ema, **self.recipe(),
            **({"lr": preset.retrain_lr} if preset.retrain_lr else {}),
        )

    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else tuple(s)

    def recipe(self) -> dict[str, Any]:
        """The data and loss settings both trainings share (`RunConfig` fields)."""
        preset = self.preset_values
        return {"loss": preset.loss, "defect_crop_share": preset.defect_crop_share,
                "keep_aspect": preset.keep_aspect, "max_side": preset.max_side}
