"""TensorRT engines are built ON the target (an engine is only valid for the GPU and TensorRT
version that built it): the host sends the ONNX model to the target's latency agent
(`autonad_edge.latency`), which builds with the SpatialShift plugin, checks the engine
against ONNX Runtime and streams it back with a manifest.

A target that cannot build (no TensorRT, no plugin, a model it rejects), an engine whose
outputs the agent found to differ from ONNX Runtime, or an `out` that cannot be written is
reported as an `EngineBuildError` carrying the reason; no engine file is written then.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import onnx

from autonad_edge.errors import AutonadError
from autonad_edge.export.bundle import engine_record_path


class EngineBuildError(AutonadError, RuntimeError):
    """The target did not build an engine. `unavailable`: it cannot (e.g. no TensorRT), as
    opposed to a failed attempt. The message is one line."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


@dataclass
class EngineResult:
    path: Path
    record_path: Path
    sha256: str
    size: int
    agent: str
    record: dict[str, Any] = field(default_factory=dict)
    # Set when the agent did not confirm the engine's outputs (its check was skipped): one line.
    warning: str | None = None

    @property
    def latency_ms(self) -> float | None:
        """The median latency the agent timed while checking the engine, if it reported one."""
        value = self.record.get("fields", {}).get("latency_ms_median")
        try:
            return float(value) if value not in (None, "") else None
        except ValueError:
            return None


def _dynamic_inputs(model: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in value.type.tensor_type.shape.dim):
            out.append(value.name)
    return out


def _tensorrt_backend(info) -> Any:
    for backend in info.backends:
        if backend.name == "tensorrt":
            return backend
    return None


def output_check_warning(fields: Mapping[str, str]) -> str | None:
    """The agent's verdict on the engine's outputs against ONNX Runtime (its manifest's
    ``output_check``: "ok (...)", "mismatch..." or "skipped: ..."). None when they matched; a
    one-line warning when nothing was checked (skipped, or an agent that does not report it):
    the engine may still be right. Raises `EngineBuildError` on a mismatch: such an engine
    computes something else than the model, so it must not be written or bundled."""
    verdict = " ".join(str(fields.get("output_check") or "").split())
    if verdict.startswith("ok"):
        return None
    if verdict.startswith("mismatch"):
        raise EngineBuildError(f"the engine's outputs differ from ONNX Runtime's ({verdict})")
    if not verdict:
        return "the agent did not check the engine's outputs against ONNX Runtime"
    return f"the engine's outputs were not checked against ONNX Runtime ({verdict})"


def check_engine_out(onnx_path: str | os.PathLike, out: str | os.PathLike) -> None:
    """Refuse an engine path that cannot take the engine before any target is contacted (a
    build takes minutes): the ONNX model itself, a directory, a parent that is not a writable
    directory. Raises `EngineBuildError` (one line)."""
    onnx_path, out = Path(onnx_path), Path(out)
    for path in (out, engine_record_path(out)):
        if path.resolve() == onnx_path.resolve():
            what = "the engine" if path == out else f"the engine's record {path.name}"
            raise EngineBuildError(f"{out}: {what} would overwrite the ONNX model {onnx_path}; "
                                   "give the engine its own file name")
        if path.is_dir():
            raise EngineBuildError(f"{out}: {path} is a directory; give the engine file's name")
    # The nearest existing ancestor: the write creates the missing folders below it.
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise EngineBuildError(f"{out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EngineBuildError(f"{out}: cannot write in {parent} (permission denied)")


def build_engine(
    target: str,
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fp16: bool = False,
    targets_path: str | os.PathLike | None = None,
    connect_timeout_s: float = 5.0,
) -> EngineResult:
    """Ask `target`'s agent(s) to build a TensorRT engine from `onnx_path`; write it to `out`
    (atomically) and its build record to ``<out>.json``. The agent's check of the engine's
    outputs against ONNX Runtime decides: a mismatch raises and writes nothing, a skipped check
    is kept in the record (``output_check``) and in `EngineResult.warning`. Raises
    `EngineBuildError`."""
    from autonad_edge.io import atomic_write_bytes, atomic_write_json
    from autonad_edge.latency.client import AgentError
    from autonad_edge.latency.targets import TargetError, open_target

    onnx_path, out = Path(onnx_path), Path(out)
    check_engine_out(onnx_path, out)
    try:
        onnx_bytes = onnx_path.read_bytes()
    except OSError as exc:
        raise EngineBuildError(f"cannot read {onnx_path}: {exc.strerror}") from None
    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except Exception as exc:  # noqa: BLE001
        raise EngineBuildError(f"{onnx_path} is not an ONNX model ({type(exc).__name__})") from None
    dynamic = _dynamic_inputs(model)
    if dynamic:
        raise EngineBuildError(
            f"{onnx_path} has dynamic input dimensions ({', '.join(dynamic)}): an engine is built for fixed "
            "shapes, so export without --dynamic-batch"
        )
    precision = "fp16" if fp16 else "fp32"
    onnx_sha256 = hashlib.sha256(onnx_bytes).hexdigest()
    kept = f"kept {onnx_path}"
    try:
        with open_target(target, targets_path, connect_timeout_s=connect_timeout_s) as pool:
            errors: list[str] = []
            for client in pool.clients:
                try:
                    backend = _tensorrt_backend(client.device_info())
                except AgentError as exc:
                    errors.append(f"{client.address}: {exc.details or exc.code.name}")
                    continue
                if backend is None or not backend.available or not backend.can_build_engine:
                    reason = "the agent has no TensorRT backend" if backend is None else _strip_prefix(
                        backend.reason or "its TensorRT backend cannot build engines")
                    raise EngineBuildError(f"target {target!r} has no TensorRT ({reason}); {kept}", unavailable=True)
                try:
                    engine = client.build_engine(onnx_bytes, backend="tensorrt", precision=precision)
                except AgentError as exc:
                    if exc.retryable:
                        errors.append(f"{client.address}: {exc.details or exc.code.name}")
                        continue
                    detail = _strip_prefix(" ".join((exc.details or exc.code.name).split()))
                    unavailable = exc.code.name == "FAILED_PRECONDITION"
                    what = "has no TensorRT" if unavailable and "TensorRT not available" in (exc.details or "") \
                        else "could not build the engine"
                    raise EngineBuildError(f"target {target!r} {what} ({detail}); {kept}",
                                           unavailable=unavailable) from None
                break
            else:
                raise EngineBuildError(f"target {target!r}: no agent built the engine ({'; '.join(errors)}); {kept}")
    except TargetError as exc:
        raise EngineBuildError(f"{exc}; {kept}", unavailable=True) from None
    fields = dict(engine.manifest)
    if fields.get("onnx_sha256", onnx_sha256) != onnx_sha256:
        raise EngineBuildError(f"target {target!r} answered for another model (onnx sha256 mismatch); {kept}")
    try:
        warning = output_check_warning(fields)
    except EngineBuildError as exc:
        raise EngineBuildError(f"target {target!r}: {exc}; no engine written, {kept}") from None
    sha256 = hashlib.sha256(engine.engine).hexdigest()
    record = {
        "target": target,
        "agent": client.address,
        "onnx": onnx_path.name,
        "onnx_sha256": onnx_sha256,
        "engine_sha256": sha256,
        "bytes": len(engine.engine),
        "precision": precision,
        "fingerprint": dict(engine.fingerprint.fields) if engine.fingerprint is not None else None,
        "fingerprint_hash": engine.fingerprint.hash if engine.fingerprint is not None else None,
        # The agent's verdict, at the top where a reader (and the bundle's manifest) sees it.
        "output_check": fields.get("output_check") or "not reported by the agent",
        "fields": fields,
    }
    record_path = engine_record_path(out)
    try:
        atomic_write_bytes(out, engine.engine)
    except OSError as exc:
        raise EngineBuildError(f"cannot write the engine to {out}: {exc.strerror or exc}; {kept}") from None
    try:
        atomic_write_json(record_path, record)
    except OSError as exc:
        # An engine without its record would be bundled without its plugin flag and origin.
        out.unlink(missing_ok=True)
        raise EngineBuildError(f"cannot write the engine record {record_path}: {exc.strerror or exc}; "
                               f"no engine written; {kept}") from None
    return EngineResult(out, record_path, sha256, len(engine.engine), client.address, record, warning)


def _strip_prefix(reason: str) -> str:
    """The agent says "TensorRT not available: <why>"; the caller already says that part."""
    for prefix in ("TensorRT not available on this agent: ", "TensorRT not available: "):
        if reason.startswith(prefix):
            return reason[len(prefix):]
    return reason


def read_engine_record(engine_path: str | os.PathLike) -> dict[str, Any] | None:
    path = engine_record_path(engine_path)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
