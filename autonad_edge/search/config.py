"""The configuration of one `autonad-edge search` run (`PipelineConfig`) and its error type.

One flat record: the run's own settings, and every preset field under the same name (None =
the preset's value). `resolved()` fills all of them, so the stages read one value per setting;
the resolved config of a run is saved as ``<out>/config.json`` and `load()` reads it back
(`autonad-edge search --config FILE`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from autonad_edge.errors import AutonadError
from autonad_edge.search.presets import PRESETS, Preset
from autonad_edge.training.config import (
    RETRAIN_EVALS, SUPERNET_EVALS, RetrainConfig, SupernetConfig, eval_every_for,
)

PRESET_FIELDS = tuple(f.name for f in fields(Preset))
# The smallest network input side: the data's crops and tiles need 8x8 (`data.cache.image_size_hw`,
# `data.crops.CropConfig`); the supernets run at 8 (and below).
MIN_IMAGE_SIDE = 8
# What `training.distributed.resolve_device` accepts (whether this host has the GPU is the
# pipeline's check: a saved config stays loadable on another host).
DEVICE_SPEC = re.compile(r"auto|cpu|cuda(:\d+)?", re.IGNORECASE)
# Settings `autonad-edge search` takes as options, named so in messages (the others by field).
CLI_OPTIONS = {
    "out", "data", "format", "target", "local_threads", "table", "export_cache", "preset", "sharing",
    "latency_stat", "latency_budget_ms", "latency_tolerance", "params_budget", "seed", "device", "space",
    "image_size", "supernet_epochs", "retrain_epochs", "batch_size", "population", "generations",
    "max_side", "min_defect_width", "time_budget", "race_entrants",
}
OPTION_NAMES = {"latency_weight": "--lambda", "targets_path": "--targets"}


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
    sharing: str = "cross"
    latency_weight: float = 0.1
    # The statistic the latency table sums and the search scores: "min" (the latency without
    # interference, which block sums predict best: benchmarks/RESULTS.md) or "median", ...
    # The report gives the end-to-end median and min either way.
    latency_stat: str = "min"
    latency_budget_ms: float | None = None
    # Each finalist's end-to-end latency is known to +- this share; those whose ranges overlap
    # the best-scoring one's (up to about twice the share apart) are compared on accuracy
    # alone: a real device cannot tell them apart (benchmarks/RESULTS.md: repeated
    # measurements of one subnet spread by a few per cent).
    latency_tolerance: float = 0.05
    params_budget: int | None = None
    prior_method: str = "softmax"
    prior_temperature: float | None = None
    seed: int = 0
    device: str = "auto"
    quiet: bool = False
    # The preset's fields (presets.Preset says what each is); None = the preset's value.
    space: str | None = None
    image_size: int | None = None
    synthetic_count: int | None = None
    supernet_epochs: int | None = None
    retrain_epochs: int | None = None
    batch_size: int | None = None
    population: int | None = None
    generations: int | None = None
    parents: int | None = None
    calibration_archs: int | None = None
    finalists: int | None = None
    retrain_init: str | None = None
    max_steps_per_epoch: int | None = None
    timing: str | None = None
    supernet_lr: float | None = None
    supernet_warmup_epochs: float | None = None
    retrain_lr: float | None = None
    class_weighting: str | None = None
    loss: str | None = None
    defect_crop_share: float | None = None
    keep_aspect: bool | None = None
    max_side: int | None = None
    min_defect_width: float | None = None
    sandwich: bool | None = None
    sandwich_random: int | None = None
    retrain_schedule: str | None = None
    retrain_warmup_share: float | None = None
    retrain_ema: float | None = None
    reference_images: int | None = None
    # Minutes for the whole run: epochs and search size are planned from measured costs
    # (search.budget); None = the preset's budget (cpu: 9.5 min), 0 = the preset's epochs.
    time_budget: float | None = None
    supernet_share: float | None = None  # of a time budget's training time (presets.Preset)
    race_entrants: int | None = None  # candidates raced when the search cannot see accuracy (search.race)
    race_share: float | None = None  # of the retraining's epochs (time, on a budget), split among the race's entrants
    race_min_steps: int | None = None  # no race when an entrant would train for fewer steps
    # The preset fields set explicitly (not from the preset): a time budget's plan never
    # overrides them. None until resolved; kept in config.json so a loaded config plans alike.
    explicit: tuple[str, ...] | None = None

    def resolved(self) -> "PipelineConfig":
        """Every field filled: the ones left None from the preset."""
        if self.preset not in PRESETS:
            raise PipelineError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        # Imported here: the CLI builds its help from this module and starts without grpc.
        from autonad_edge.latency.estimator import STATS

        if self.latency_stat not in STATS:
            raise PipelineError(f"unknown latency statistic {self.latency_stat!r}; choose one of {', '.join(STATS)}")
        preset = PRESETS[self.preset]
        unset = [name for name in PRESET_FIELDS if getattr(self, name) is None]
        explicit = self.explicit if self.explicit is not None else \
            tuple(name for name in PRESET_FIELDS if name not in unset)
        resolved = replace(self, **{name: getattr(preset, name) for name in unset}, explicit=tuple(explicit))
        resolved._check()
        return resolved

    def _check(self) -> None:
        """Refuse a bad value in one line naming it, before a file is written or a minute spent
        (each would otherwise fail late, in a stage, or with a traceback)."""
        # Imported here: the CLI builds its help from this module and starts without torch.
        from autonad_edge.data.dataset import FORMATS
        from autonad_edge.models.hybrid_block import SHARING_MODES
        from autonad_edge.training.config import CLASS_WEIGHTINGS, LOSSES, SCHEDULES

        choices = {
            "format": (*FORMATS, "auto"), "sharing": SHARING_MODES, "timing": ("quick", "full"),
            "retrain_init": ("scratch", "inherited"), "class_weighting": CLASS_WEIGHTINGS, "loss": LOSSES,
            "retrain_schedule": SCHEDULES, "prior_method": ("softmax", "fastest"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if (value.lower() if name == "format" and isinstance(value, str) else value) not in allowed:
                raise PipelineError(f"{_option(name)}: unknown value {value!r}; choose one of {', '.join(allowed)}")
        if not isinstance(self.device, str) or not DEVICE_SPEC.fullmatch(self.device):
            raise PipelineError(f"--device: unknown device {self.device!r}; use auto, cpu, cuda or cuda:N")
        for f in fields(self):  # NaN and infinity pass every comparison below the wrong way
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise PipelineError(f"{_option(f.name)} must be a finite number, got {value}")
        # One side: the network's input and the training crops are square (a [H, W] from a
        # --config file passed here and failed later, deep in a stage, with a traceback).
        if not (_is_int(self.image_size) and self.image_size >= MIN_IMAGE_SIDE):
            raise PipelineError(f"--image-size must be a whole number of pixels >= {MIN_IMAGE_SIDE} "
                                f"(the square input; the smallest crop the data and the network take), "
                                f"got {self.image_size!r}")
        for name in ("batch_size", "population", "generations", "parents", "supernet_epochs", "retrain_epochs",
                     "synthetic_count"):
            _require(self, name, 1, integer=True)
        for name in ("max_steps_per_epoch", "local_threads", "reference_images", "params_budget"):
            _require(self, name, 1, integer=True, optional=True)
        _require(self, "seed", 0, integer=True)
        for name in ("finalists", "calibration_archs", "race_entrants"):
            _require(self, name, 0, integer=True, optional=True)
        # Shares of the budget or of the retraining: outside [0, 1] the plan's arithmetic breaks.
        for name in ("supernet_share", "race_share"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and 0 <= value < 1):
                raise PipelineError(f"{_option(name)} must be a share in [0, 1), got {value!r}")
        _require(self, "max_side", MIN_IMAGE_SIDE, integer=True, optional=True)
        _require(self, "time_budget", 0, optional=True, note=" minutes (0 = the preset's epochs)")
        _require(self, "min_defect_width", 0, optional=True, note=" (0 = off)")
        _require(self, "latency_weight", 0)
        _require(self, "latency_budget_ms", 0, optional=True, above=True)
        _require(self, "prior_temperature", 0, optional=True, above=True)
        if not (_is_number(self.latency_tolerance) and 0 <= self.latency_tolerance < 1):
            raise PipelineError(f"--latency-tolerance must be a share in [0, 1), got {self.latency_tolerance!r}")

    def ignored_options(self) -> list[str]:
        """Options set that do nothing in this config, each said in a line (not refused: a run
        directory that recorded one must still resume)."""
        notes = []
        if not self.keep_aspect:  # every image squashed to image_size: no scale to choose
            notes += [f"{_option(name)} has no effect: images are squashed to --image-size (keep_aspect off)"
                      for name in ("max_side", "min_defect_width") if name in (self.explicit or ())]
        if self.local_threads is not None and self.target != "local":
            notes.append(f"--local-threads has no effect: it sets the built-in 'local' target's threads, "
                         f"and the target is {self.target!r}")
        return notes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> "PipelineConfig":
        """A config saved as JSON (a run's ``config.json``); missing fields keep their defaults."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PipelineError(f"config {path}: {exc}") from None
        if not isinstance(values, dict):
            raise PipelineError(f"config {path}: not a search config (a JSON {type(values).__name__}, not an object)")
        # Older configs gave the retraining's warm-up in epochs; a share replaces it.
        values.pop("retrain_warmup_epochs", None)
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise PipelineError(f"config {path}: not a search config (unknown fields: {', '.join(unknown)})")
        if values.get("explicit") is not None:
            if not isinstance(values["explicit"], list) or not all(isinstance(v, str) for v in values["explicit"]):
                raise PipelineError(f"config {path}: explicit must be a list of setting names")
            values["explicit"] = tuple(values["explicit"])
        return cls(**values)

    def with_options(self, **options: Any) -> "PipelineConfig":
        """This config with the options given (not None) on top; given preset fields become explicit."""
        given = {k: v for k, v in options.items() if v is not None}
        base = self
        if given.get("preset", self.preset) != self.preset and self.explicit is not None:
            # A saved (resolved) config holds every field of its preset: those it did not set
            # explicitly follow the new preset, or the preset given would be silently ignored.
            base = replace(self, **{name: None for name in PRESET_FIELDS if name not in self.explicit})
        explicit = None if self.explicit is None else \
            tuple(sorted({*self.explicit, *(k for k in given if k in PRESET_FIELDS)}))
        return replace(base, **given, explicit=explicit)

    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else tuple(s)

    def supernet_config(self) -> SupernetConfig:
        """The supernet training settings of a run (of a resolved config)."""
        return SupernetConfig(
            data=self.data, format=self.format, image_size=self.image_size,
            synthetic_count=self.synthetic_count, epochs=self.supernet_epochs, batch_size=self.batch_size,
            seed=self.seed, device=self.device, space=self.space, sharing=self.sharing,
            max_steps_per_epoch=self.max_steps_per_epoch, class_weighting=self.class_weighting,
            warmup_epochs=self.supernet_warmup_epochs, sandwich=self.sandwich,
            sandwich_random=self.sandwich_random, **self.recipe(),
            eval_every=eval_every_for(self.supernet_epochs, SUPERNET_EVALS),
            **({"lr": self.supernet_lr} if self.supernet_lr else {}),
        )

    def retrain_config(self, supernet_checkpoint: str | Path) -> RetrainConfig:
        """The retraining settings of a run (of a resolved config): the chosen subnet's, and
        those any baseline compared with it must get (same epochs, optimiser, loss, init)."""
        return RetrainConfig(
            data=self.data, format=self.format, image_size=self.image_size,
            synthetic_count=self.synthetic_count, epochs=self.retrain_epochs, batch_size=self.batch_size,
            seed=self.seed, device=self.device, init=self.retrain_init,
            supernet=str(supernet_checkpoint) if self.retrain_init == "inherited" else None,
            max_steps_per_epoch=self.max_steps_per_epoch, class_weighting=self.class_weighting,
            schedule=self.retrain_schedule, warmup_epochs=self.retrain_warmup_share * self.retrain_epochs,
            ema_decay=self.retrain_ema, **self.recipe(),
            eval_every=eval_every_for(self.retrain_epochs, RETRAIN_EVALS),
            **({"lr": self.retrain_lr} if self.retrain_lr else {}),
        )

    def recipe(self) -> dict[str, Any]:
        """The data and loss settings both trainings share (`RunConfig` fields)."""
        return {"loss": self.loss, "defect_crop_share": self.defect_crop_share,
                "keep_aspect": self.keep_aspect, "max_side": self.max_side}


def _option(name: str) -> str:
    """How a message names a setting: its option, or its config field where it has none."""
    if name in OPTION_NAMES:
        return OPTION_NAMES[name]
    return "--" + name.replace("_", "-") if name in CLI_OPTIONS else name


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(cfg: PipelineConfig, name: str, low: float, *, integer: bool = False, optional: bool = False,
             above: bool = False, note: str = "") -> None:
    """`name` must be a number (a whole one with `integer`) >= `low` (> with `above`); None
    passes when `optional`. The message says which: a value of another type shows as itself."""
    value = getattr(cfg, name)
    if value is None and optional:
        return
    if not (_is_int(value) if integer else _is_number(value)) or value < low or (above and value == low):
        kind = "a whole number " if integer else ""
        raise PipelineError(f"{_option(name)} must be {kind}{'>' if above else '>='} {low:g}{note}, got {value!r}")


def default_text(name: str) -> str:
    """What a setting defaults to, for help texts: the preset's value per preset, or the
    config's own default."""
    if name in PRESET_FIELDS:
        values = ", ".join(f"{preset} {_text(getattr(p, name))}" for preset, p in PRESETS.items())
        return f"the preset's: {values}"
    default = next(f.default for f in fields(PipelineConfig) if f.name == name)
    return _text(default)


def _text(value: Any) -> str:
    return "none" if value is None else str(value)
