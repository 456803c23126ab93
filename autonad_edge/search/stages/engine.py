"""Stage 6: on a TensorRT target, the engine built by the agent (with its latency); on every
target, the deployment bundle."""

from __future__ import annotations

from dataclasses import dataclass

from autonad_edge.export.bundle import write_bundle
from autonad_edge.export.engine import EngineBuildError, build_engine
from autonad_edge.search.stages.context import RunContext
from autonad_edge.search.stages.export import ExportResult
from autonad_edge.search.stages.store import StageResult


@dataclass(frozen=True)
class DeployResult(StageResult):
    engine: str | None
    engine_ms: float | None
    note: str  # what happened to the engine (built, failed and why, or not a TensorRT target)
    bundle: str

    def stage_note(self) -> str:
        return self.note


def engine_stage(ctx: RunContext, exported: ExportResult) -> DeployResult:
    cfg, out_dir = ctx.cfg, ctx.out / "deploy"
    files = exported.files
    engine_path, engine_ms = None, None
    if ctx.backend == "tensorrt":
        try:
            result = build_engine(cfg.target, files["tensorrt"].path, out_dir / "model.engine",
                                  fp16=ctx.estimator.key.precision == "fp16", targets_path=cfg.targets_path)
            engine_path = out_dir / "model.engine"
            engine_ms = result.latency_ms
            note = "built on the target's agent" + (f" ({result.warning})" if result.warning else "")
        except EngineBuildError as exc:
            note = f"engine build failed: {exc}; the ONNX models are kept"
    else:
        note = (f"target '{cfg.target}' runs {ctx.backend}, not TensorRT: no engine was built; "
                "deploy export/model.portable.onnx (or run build-engine against a TensorRT target)")
    write_bundle(
        out_dir / "bundle", files["portable"].path, engine_path,
        manifest={"arch": ctx.best_arch(), "classes": list(ctx.data.class_names), "image_size": list(ctx.image_hw),
                  "max_side": cfg.max_side if cfg.keep_aspect else None, "squash": not cfg.keep_aspect},
        extra_onnx=[files["tensorrt"].path], overwrite=True,
    )
    return DeployResult(engine=str(engine_path) if engine_path else None, engine_ms=engine_ms, note=note,
                        bundle=str(out_dir / "bundle"))
