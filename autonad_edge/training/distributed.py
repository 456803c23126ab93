"""Single-process and `torchrun` (DistributedDataParallel) runs through one code path.

Under ``torchrun --nproc_per_node N`` the environment carries RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; `DistContext.from_env` initialises the process group (nccl on
GPUs, gloo on CPU) and picks ``cuda:LOCAL_RANK`` when GPUs are used. Without those variables
(or with WORLD_SIZE=1) everything is a plain single-process run.

Only rank 0 writes files (checkpoints, logs, masks); every rank samples the same subnets
because every rank seeds its sampler identically.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' (cuda when available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU")
        if spec == "cuda":
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return torch.device(spec)
    if spec != "cpu":
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> "DistContext":
        """Join the process group described by torchrun's environment (if any)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        dev = resolve_device(device, local_rank)
        if world <= 1:
            return cls(0, 1, 0, dev)
        here = False
        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
            here = True
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, dev, here)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks in place (a no-op on one process); returns it."""
        if self.distributed:
            moved = tensor.to(self._comm_device())
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved.to(tensor.device))
        return tensor

    def all_gather_object(self, obj):
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        """Leave the process group if this context joined it."""
        if self.initialised_here and dist.is_initialized():
            # Leave together: a rank tearing gloo down while another still talks to it
            # aborts the process ("terminate called without an active exception").
            dist.barrier()
            dist.destroy_process_group()
            self.initialised_here = False


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of every parameter's bytes, in order: equal iff bit-identical."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


__all__ = ["DistContext", "parameter_digest", "resolve_device"]
