"""Supernet training, retraining, evaluation and prediction (host side, needs torch).

    from autonad_edge.training import (SupernetConfig, SupernetTrainer, RetrainConfig,
                                       RetrainTrainer, evaluate, load_model, predict_images)

Modules: `config` (run settings), `engine` (the shared loop: resume, DDP, logging), `supernet_trainer`,
`retrain`, `evaluate`, `predict`, `checkpoint` (atomic weights_only checkpoints, `load_model`),
`losses` (class-weighted cross-entropy), `schedules`, `distributed`, `progress`, `hooks` (non-blocking step hooks), `rundata` (loading a
run's data with its split manifest).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "RunConfig": "config",
    "SupernetConfig": "config",
    "RetrainConfig": "config",
    "Trainer": "engine",
    "ResumeError": "engine",
    "SupernetTrainer": "supernet_trainer",
    "train_supernet": "supernet_trainer",
    "RetrainTrainer": "retrain",
    "retrain": "retrain",
    "EvalResult": "evaluate",
    "evaluate": "evaluate",
    "predict_images": "predict",
    "CheckpointError": "checkpoint",
    "CheckpointInfo": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "load_supernet": "checkpoint",
    "save_checkpoint": "checkpoint",
    "save_subnet": "checkpoint",
    "BackgroundHook": "hooks",
    "DistContext": "distributed",
    "load_run_data": "rundata",
    "class_weights": "losses",
    "masked_cross_entropy": "losses",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
