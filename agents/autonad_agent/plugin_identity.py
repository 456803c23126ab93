"""The TensorRT plugin's identity: what the exported ONNX node names, what the agent loads and
checks, what a plugin build and a deployment bundle record. One place, so they never differ."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PluginIdentity:
    name: str  # the IPluginV3 creator's name; the ONNX node's op type
    version: str
    namespace: str  # the creator's namespace; the ONNX node's domain

    @property
    def op(self) -> str:
        return f"{self.namespace}::{self.name}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


SPATIAL_SHIFT_PLUGIN = PluginIdentity(name="SpatialShift", version="1", namespace="autonad")
