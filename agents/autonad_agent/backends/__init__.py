"""Latency backends, imported lazily by name so a missing runtime never breaks the agent.

`backends/tensorrt.py` must define `TensorRTBackend(Backend)`; it may import `tensorrt`
at module level, because this registry only imports it when asked and turns an import
failure into "unavailable" with the reason.
"""

from __future__ import annotations

import importlib

from autonad_agent.backends.base import Backend

# name -> (module, class). Order is the preference of `--backend auto`.
BACKENDS: dict[str, tuple[str, str]] = {
    "tensorrt": ("autonad_agent.backends.tensorrt", "TensorRTBackend"),
    "onnxruntime": ("autonad_agent.backends.onnxruntime", "OnnxRuntimeBackend"),
}


def backend_class(name: str) -> type[Backend]:
    """Import and return the backend class called `name` (ImportError if it cannot load)."""
    try:
        module_name, class_name = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None
    return getattr(importlib.import_module(module_name), class_name)


def probe_backend(name: str) -> tuple[bool, str]:
    """Whether backend `name` can run here, and why not. Never raises for a known name."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    try:
        cls = backend_class(name)
    except Exception as exc:  # ImportError, or any error raised by a runtime on import
        return False, f"{type(exc).__name__}: {exc}"
    try:
        return cls.probe()
    except Exception as exc:
        return False, f"probe failed: {type(exc).__name__}: {exc}"

