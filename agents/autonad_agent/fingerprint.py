"""The device fingerprint: what a latency number is valid for.

A measurement is only reusable on the same device model, runtime build and performance
settings, so the fingerprint records those (and nothing volatile: no current clock,
temperature or load, which would make every restart look like a new device). Its hash is
the key the host's latency table files results under.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

HASH_LENGTH = 16


def fingerprint_hash(fields: dict[str, str]) -> str:
    """Stable hash of a fingerprint: sha256 of its canonical JSON, first 16 hex digits."""
    canonical = json.dumps({str(k): str(v) for k, v in fields.items()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


def _read_text(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip().strip("\x00") or None
    except OSError:
        return None


def _cpu_model() -> str:
    cpuinfo = _read_text("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Model", "cpu model", "Processor"):
        for line in cpuinfo.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def usable_cpu_count() -> int:
    """CPUs this process may run on (affinity/cgroup-aware where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def host_fingerprint() -> dict[str, str]:
    """Fingerprint fields of the host itself (CPU, board, OS-level performance settings).

    Backends add their runtime, accelerator and thread settings on top.
    """
    fields = {
        "machine": platform.machine(),
        "os": platform.system(),
        "cpu_model": _cpu_model(),
        "cpu_count": str(usable_cpu_count()),
    }
    readable = {
        # Board name on ARM devices (e.g. "NVIDIA Jetson Orin Nano Developer Kit").
        "board": "/proc/device-tree/model",
        "cpu_governor": "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
        "cpu_max_freq_khz": "/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq",
        # Jetson: L4T release (JetPack) and the nvpmodel power mode.
        "l4t_release": "/etc/nv_tegra_release",
        "power_mode": "/var/lib/nvpmodel/status",
    }
    for key, path in readable.items():
        value = _read_text(path)
        if value:
            fields[key] = value.splitlines()[0].strip()
    return fields
