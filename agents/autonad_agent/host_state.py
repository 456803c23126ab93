"""What else the device is doing when it times a model: load, CPU clock, temperature.

Read by the agent just before each measurement and returned with it (`MeasureResponse.host`),
so a host can tell a latency taken on a busy or throttled device from one taken on a quiet
one. Linux only (`/proc`, `/sys`); a value that cannot be read is 0, never a guess.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostState:
    load_1m: float = 0.0  # runnable threads, 1-minute average, all cores
    cpus: int = 0
    cpu_mhz: float = 0.0  # mean current clock over the online CPUs
    temperature_c: float = 0.0  # the hottest thermal zone

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"load {self.load_1m:.2f}/{self.cpus} cpus"]
        if self.cpu_mhz:
            parts.append(f"{self.cpu_mhz:.0f} MHz")
        if self.temperature_c:
            parts.append(f"{self.temperature_c:.0f} C")
        return ", ".join(parts)


def _read_float(path: str) -> float | None:
    try:
        return float(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def cpu_mhz() -> float:
    """Mean current CPU clock: cpufreq where the kernel exposes it (Jetson, most desktops),
    else /proc/cpuinfo's "cpu MHz" lines (x86 VMs); 0 when neither is there."""
    khz = [v for v in (_read_float(p) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"))
           if v]
    if khz:
        return sum(khz) / len(khz) / 1000.0
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return 0.0
    mhz = []
    for line in lines:
        if line.lower().startswith("cpu mhz"):
            try:
                mhz.append(float(line.split(":", 1)[1]))
            except (IndexError, ValueError):
                continue
    return sum(mhz) / len(mhz) if mhz else 0.0


def temperature_c() -> float:
    """The hottest thermal zone in degrees Celsius (millidegrees in sysfs); 0 if none."""
    temps = [v / 1000.0 for v in (_read_float(p) for p in glob.glob("/sys/class/thermal/thermal_zone*/temp"))
             if v is not None and v > 0]
    return max(temps) if temps else 0.0


def read_host_state() -> HostState:
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = 0.0
    return HostState(load_1m=float(load), cpus=os.cpu_count() or 0, cpu_mhz=cpu_mhz(), temperature_c=temperature_c())


__all__ = ["HostState", "cpu_mhz", "read_host_state", "temperature_c"]
