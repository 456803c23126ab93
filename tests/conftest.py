"""Fixtures shared by the test modules."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the CPUs: one torch (and ONNX Runtime)
    thread per worker when there are as many workers as cores (threads spinning against
    another process are slower than one thread)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        import torch

        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        # The same for the local agent's ONNX Runtime, and exports stay in the test process
        # (the tests that are about export workers ask for them explicitly).
        os.environ.setdefault("AUTONAD_LOCAL_THREADS", str(share))
        os.environ.setdefault("AUTONAD_EXPORT_WORKERS", "0")

# Prepended to code run by `run_without_torch`: any import of torch fails loudly.
_BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class _BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked ({name})")
            return None

    sys.meta_path.insert(0, _BlockTorch())
    """
)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    the test models are tiny, and on a shared CPU two OpenMP threads can be 10x slower than one
    (spinning while another process holds the other core)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_without_torch():
    """Run Python `code` in a fresh interpreter where importing torch raises ImportError (what
    a Jetson image without a usable torch looks like); returns the CompletedProcess."""

    def run(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _BLOCK_TORCH + textwrap.dedent(code)],
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def run_infer_py():
    """Run a bundle's standalone ``infer.py`` on `image` (extra CLI `args`) in a fresh
    interpreter, as a user on the device would; returns (CompletedProcess, the mask written:
    uint8 [H, W], or None when it failed). The mask goes to `out` (default: infer.py's
    ``<image>_mask.png``)."""

    def run(bundle, image, *args, out=None, cwd=None):
        import numpy as np
        from PIL import Image

        command = [sys.executable, str(Path(bundle) / "infer.py"), str(image), *map(str, args)]
        if out is not None:
            command += ["--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)
        written = Path(out) if out is not None else Path(image).with_name(Path(image).stem + "_mask.png")
        return done, (np.asarray(Image.open(written)) if done.returncode == 0 else None)

    return run


@pytest.fixture(scope="session", autouse=True)
def session_export_cache(tmp_path_factory):
    """One on-disk export cache for the whole session (never the user's ~/.cache): a unit
    exported by one test is not exported again by another."""
    from autonad_edge.latency.profiler import use_export_cache

    import os

    path = tmp_path_factory.mktemp("export-cache")
    os.environ["AUTONAD_SESSION_EXPORT_CACHE"] = str(path)  # for tests that switch it and back
    use_export_cache(path)
    yield path


@pytest.fixture
def stop_at_plan(monkeypatch):
    """Runs of the search pipeline stop where they would plan their epochs (`Planned`, in
    pipeline_stops.py); returns the run contexts that got there."""
    from autonad_edge.search import pipeline
    from pipeline_stops import Planned

    reached = []

    def plan(ctx):
        reached.append(ctx)
        raise Planned

    monkeypatch.setattr(pipeline, "plan_run", plan)
    monkeypatch.setenv("AUTONAD_EXPORT_WORKERS", "0")  # no export processes for runs that stop early
    return reached
