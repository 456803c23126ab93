"""Stage 5: ONNX models (portable and TensorRT flavours) of the retrained network, the
deployed flavour measured end to end on the target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autonad_agent.measure import STAT_FIELDS, LatencyStats
from autonad_edge.export.graph import op_counts
from autonad_edge.export.onnx_export import export_network, save_model
from autonad_edge.io import json_safe
from autonad_edge.latency.client import TensorSpec
from autonad_edge.search.stages.context import RunContext
from autonad_edge.search.stages.retrain import RetrainResult
from autonad_edge.search.stages.store import StageResult
from autonad_edge.training.checkpoint import load_model

FLAVORS = ("portable", "tensorrt")


@dataclass(frozen=True)
class ExportedFile:
    path: str
    sha256: str
    ops: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "ops": self.ops}


@dataclass(frozen=True)
class ExportResult(StageResult):
    files: dict[str, ExportedFile]  # by flavour
    measured: dict[str, Any]  # the deployed flavour's end-to-end measurement (+ "flavor"), as JSON

    @property
    def flavor(self) -> str:
        """The flavour measured (the one the target deploys)."""
        return self.measured["flavor"]

    @property
    def stats(self) -> LatencyStats:
        """The measurement's statistics."""
        return LatencyStats(**{name: self.measured[name] for name in STAT_FIELDS})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExportResult":
        return cls(files={k: ExportedFile(**v) for k, v in d["files"].items()}, measured=d["measured"])


def deployed_flavor(backend: str) -> str:
    """The model a TensorRT target runs is the plugin flavour; every other target the portable one."""
    return "tensorrt" if backend == "tensorrt" else "portable"


def export_stage(ctx: RunContext, retrained: RetrainResult) -> ExportResult:
    out_dir = ctx.out / "export"
    model, _ = load_model(retrained.checkpoint)
    cfg = ctx.cfg
    files = {}
    for flavor in FLAVORS:
        # The models carry what a bundle made from them alone needs: class names, training scale.
        onnx_model = export_network(model, ctx.image_hw, flavor, class_names=list(ctx.data.class_names),
                                    max_side=cfg.max_side if cfg.keep_aspect else None, squash=not cfg.keep_aspect)
        path = out_dir / f"model.{flavor}.onnx"
        sha = save_model(onnx_model, path)
        files[flavor] = ExportedFile(str(path), sha, sum(op_counts(onnx_model).values()))
    flavor = deployed_flavor(ctx.backend)
    onnx_bytes = Path(files[flavor].path).read_bytes()
    # The final figure always uses the agent's full (trtexec-like) policy.
    m = ctx.pool.measure(onnx_bytes, [TensorSpec("image", (1, 3, *ctx.image_hw), "float32")])
    return ExportResult(files=files, measured={"flavor": flavor, **json_safe(m.to_dict())})
