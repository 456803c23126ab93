"""The run presets: every budget and recipe setting of `autonad-edge search`, by name.

`PipelineConfig.resolved()` fills every field the command line left unset from one of these,
so a preset field and the config field of the same name are one setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autonad_agent.measure import MeasurementPolicy


@dataclass(frozen=True, kw_only=True)
class Preset:
    """The budgets and the recipe of a kind of run; every field is a `PipelineConfig` field too."""

    space: str
    image_size: int
    synthetic_count: int
    supernet_epochs: int
    retrain_epochs: int
    batch_size: int
    population: int
    generations: int
    parents: int
    calibration_archs: int  # subnets measured end to end to fit the latency correction
    finalists: int  # top candidates re-measured end to end before the final choice
    retrain_init: str  # "inherited" fine-tunes from the supernet, "scratch" trains anew
    max_steps_per_epoch: int | None = None
    # Block timing: "quick" (5 ms of warm-up, 20 ms of timed runs: `measurement_policy`) for CPU
    # presets, "full" (the agent's trtexec-like default: 200 ms warm-up, >= 1 s and >= 50 runs)
    # for the paper's.
    timing: str = "quick"
    # Optimisation. None = the training defaults (AdamW 5e-4 for the supernet, Adam 1e-4 for the
    # retrain: the paper's, tuned for 100-200 epochs). Minute-scale CPU budgets need larger
    # steps and a loss that does not settle on "all background" first.
    supernet_lr: float | None = None
    supernet_warmup_epochs: float = 0.0
    retrain_lr: float | None = None
    class_weighting: str = "none"
    # The defect-aware recipe (training.config.RunConfig): loss, crops, training scale.
    loss: str = "ce+dice"
    defect_crop_share: float = 0.5
    keep_aspect: bool = True
    max_side: int | None = 1024
    # Training scale from the masks (data.scale): scale the images down, below max_side, while
    # the thinnest defect class's median region stays this many pixels wide; None = max_side.
    min_defect_width: float | None = None
    sandwich: bool = False  # with in-place distillation (SupernetConfig.distill_weight)
    sandwich_random: int = 1
    retrain_schedule: str = "cosine"
    # Linear warm-up of the retraining, as a share of its epochs (a time budget re-plans them).
    # Measured on Magnetic-tile (benchmarks/RESULTS.md, session 12): a mixed MLP/conv/transformer
    # subnet retrained for 6,405 steps at Adam 2e-3 scored 60.4 % test mIoU with a tenth of the
    # run as warm-up, 52.3 % with half an epoch (a transformer-only subnet's 60-minute run did
    # not gain from it).
    retrain_warmup_share: float = 0.0
    retrain_ema: float | None = None
    # Epochs are tuned for this many train images and scaled to keep the optimiser steps
    # (`budget.scale_epochs`); None = used as given.
    reference_images: int | None = None
    # Minutes for the whole run when no --time-budget is given (None: the epochs above).
    time_budget: float | None = None
    # Share of a time budget's training time that goes to the supernet (the rest, and whatever
    # the earlier stages leave, to retraining the chosen subnet: the network that is delivered).
    supernet_share: float = 0.5
    # The race (search.race): when the search cannot tell its candidates apart by accuracy,
    # this many of them are retrained briefly and compared again (below 2: off), for race_share
    # of the retraining's epochs split evenly (on a time budget, of its time left, at the
    # entrants' own steps: planning.plan_race).
    race_entrants: int = 0
    race_share: float = 0.2
    # No race when each entrant would get fewer optimiser steps: the loss gap between a fast and
    # a slow learner on Magnetic-tile was 1 % after 175 steps and 2 % after 700 (session 13); a
    # race of 147 steps an entrant on the synthetic default run decided by a 1.2 % margin, with
    # time taken from the retraining.
    race_min_steps: int = 0


def measurement_policy(timing: str) -> MeasurementPolicy | None:
    """The agent measurement policy of a preset's ``timing``; None = the agent's default."""
    if timing == "full":
        return None
    # Imported here: the CLI builds its help from this module and starts without numpy.
    from autonad_agent.measure import MeasurementPolicy

    # 5 ms of warm-up and 20 ms of timed runs a unit (at least 5 and 10 runs; the median unit of
    # the default space runs in 0.06 ms): 0.037 s a unit with the request against 0.071 s with
    # 10 / 40 ms, and a unit's median strays from the longer policy's, measured right before or
    # after it, by 0.7 % (median; p90 2.5 %), as much as the longer policy strays from itself
    # measured again at once (0.6 %; p90 2.6 %; benchmarks/block_policy.py, session 22). The
    # same benchmark took 20 / 100 ms down to 10 / 40 ms in session 15: beyond a few hundred
    # runs, the host's drift swamps what a longer window adds.
    return MeasurementPolicy(warmup_runs=5, warmup_ms=5.0, min_runs=10, min_duration_ms=20.0,
                             max_runs=2000, max_cv=0.2, max_repeats=1)


PRESETS: dict[str, Preset] = {
    # Seconds: for tests and smoke runs.
    "tiny": Preset(
        space="tiny", image_size=64, synthetic_count=48, supernet_epochs=2, retrain_epochs=2, batch_size=8,
        population=6, generations=2, parents=3, calibration_archs=2, finalists=2, retrain_init="inherited",
        max_steps_per_epoch=4, max_side=256,
    ),
    # The default: minutes on a 2-core CPU with --target local.
    # Measured (benchmarks/RESULTS.md): at the paper's lr the supernet never leaves the
    # all-background floor in a CPU budget; 3e-3 with class weighting separates subnets.
    # The recipe: defect-centred crops, CE + soft Dice, warm-up + cosine for both trainings, EMA
    # of the retrained weights. One subnet per supernet step, not the sandwich: in the same
    # time (105 sandwich steps or 315 single ones) the sandwich's supernet stayed at the floor
    # and gave its inherited retrain nothing over scratch (26.2 vs 25.9 % test mIoU), single
    # steps left it and gave 32.4 %. Retraining starts from scratch, as the paper's does: on
    # Magnetic-tile the same subnet, steps and recipe reached 56.5 % val mIoU at 10,290 steps
    # from scratch and 34.8 % from the supernet's weights (session 13). So the supernet's
    # epochs buy the search's ranking only, and at CPU scale it has none to give: in every
    # default run and every 60-minute Magnetic-tile run since then its candidates scored
    # within the val noise (spread of 60 candidates 0.2-0.5 points) and latency chose. It gets 8 % of the
    # training time (30 % until session 17, 15 % until session 20; it needs only a few epochs to
    # see every block for the latency table: on the default set that is its minimum of 2), the
    # retraining the rest: what the retrain learns is what is delivered. At 15 % the default
    # run retrained for 331-381 s and scored 59.8-59.9 % test mIoU (three runs), at 8 % for
    # 397-414 s and 60.9-62.6 % (five runs, session 20); the same subnet retrained with another seed
    # moves by up to 4 points of test mIoU (session 17). When the search
    # cannot see accuracy, 4 candidates are raced first (search.race). The budget is
    # 9.5 min so that the whole command stays within 10: with the re-plan's measured export and
    # 4 % margin runs took 9 m 08 s to 9 m 39 s (sessions 16-17), the retraining using the rest.
    # 480 generated images (336 train): the same subnet retrained for the same 300 s scored
    # 60.4 % mIoU on a common held-out set of 240 images against 58.2 % with 240 (168 train) and
    # 60.4 % with 960, whose larger val split cost steps (two seeds each, session 20,
    # benchmarks/synthetic_train_size.py): in the same steps, more distinct defects generalise.
    "cpu": Preset(
        space="tiny", image_size=128, synthetic_count=480, supernet_epochs=40, retrain_epochs=30, batch_size=8,
        population=16, generations=5, parents=5, calibration_archs=8, finalists=4, retrain_init="scratch",
        supernet_lr=3e-3, supernet_warmup_epochs=1.0, retrain_lr=2e-3, class_weighting="inverse_sqrt",
        sandwich=False, retrain_warmup_share=0.1, retrain_ema=0.998, reference_images=168,
        defect_crop_share=0.7, time_budget=9.5, supernet_share=0.08, min_defect_width=3.0,
        race_entrants=4, race_share=0.3, race_min_steps=500,
    ),
    # The paper's settings (Sec. V-B), for GPU hosts: fixed-size resize, plain cross-entropy,
    # Table I's space exactly (no detail path in the head).
    "paper": Preset(
        space="paper", image_size=320, synthetic_count=240, supernet_epochs=100, retrain_epochs=200, batch_size=8,
        population=100, generations=50, parents=10, calibration_archs=50, finalists=10, retrain_init="scratch",
        timing="full", loss="ce", defect_crop_share=0.0, keep_aspect=False, retrain_schedule="poly",
    ),
}
