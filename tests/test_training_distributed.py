"""The supernet CLI under torchrun: 2 gloo processes on the CPU, DistributedDataParallel."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from autonad_edge.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


TRANSIENT = ("Address already in use", "EADDRINUSE", "Connection refused", "Connection reset")


def test_two_gloo_processes_train_in_lockstep(tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text("from autonad_edge.cli import app\napp(prog_name='autonad-edge')\n")
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(launcher), "supernet", "train", "--space", "tiny", "--image-size", "32",
        "--synthetic-count", "24", "--epochs", "2", "--batch-size", "4", "--sandwich",
        "--sandwich-random", "1", "--device", "cpu", "--out", str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    for attempt in range(2):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        output = proc.stdout + proc.stderr
        # A local port taken by another process between torchrun picking it and binding it is
        # the one failure worth a second try; anything else is a real failure.
        if proc.returncode == 0 or not any(s in output for s in TRANSIENT):
            break
    assert proc.returncode == 0, output[-6000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    digests = summary["rank_param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # bit-identical parameters on both ranks
    ckpt = load_checkpoint(out / "supernet.pt")
    assert ckpt["kind"] == "supernet" and ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    train = len(json.loads((out / "splits.json").read_text())["splits"]["train"])
    per_epoch = math.ceil(math.ceil(train / 2) / 4)  # each rank takes half the images, 4 a step
    assert ckpt["step"] == summary["steps"] == 2 * per_epoch
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # written once, by rank 0
    assert proc.stdout.count("wrote ") == 1
