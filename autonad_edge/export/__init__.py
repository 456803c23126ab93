"""Deployment: ONNX export (portable / TensorRT flavours), graph clean-up, the deployment
bundle and engine builds on a target.

    from autonad_edge.export import export_module
    model = export_module(block, (x,), flavor="portable")       # onnx.ModelProto

The export functions need torch; they are imported on first use, so `bundle`, `graph` and
`engine` stay importable without it.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = (
    "CUSTOM_DOMAIN", "FLAVORS", "OPSET", "ExportError", "export_module", "export_module_bytes",
    "export_arch", "export_network", "export_unit", "save_model",
)

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from autonad_edge.export import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
