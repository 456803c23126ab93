"""The one-call GPU check (benchmarks/gpu_check.py) runs here, without a GPU, and says why each
GPU check skipped: a lent GPU's few minutes must not be lost to a broken script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="a CUDA GPU is present: the checks would run, not skip")
def test_gpu_check_reports_each_check_and_why_it_skipped(tmp_path: Path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--only", "env", "bandwidth", "steps",
                           "search"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "gpu_check.json").read_text())
    checks = results["checks"]
    assert list(checks) == ["env", "bandwidth", "steps", "search"]
    assert checks["env"]["status"] == "ok" and checks["env"]["gpu_present"] is False
    for name in ("bandwidth", "steps", "search"):
        assert checks[name]["status"] == "skipped" and "CUDA" in checks[name]["why"], checks[name]
    assert (out / "gpu_check.log").is_file()
    # One line per check on the console, in order.
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[gpu_check] ")]
    assert [line.split()[1] for line in lines[:4]] == ["env", "bandwidth", "steps", "search"]
