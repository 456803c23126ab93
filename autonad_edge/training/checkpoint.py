"""Checkpoints: atomic, plain-data files that load with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain Python data (str, int, float, bool, None, list,
dict); the search space and architectures are JSON strings, RNG states are tensors or lists.
Nothing is pickled as a Python object, so loading a checkpoint never runs code.

Two kinds:

``kind="supernet"`` (written by `SupernetTrainer`, ``<out>/supernet.pt``)
    model (HybridSupernet state_dict), space, sharing, num_classes, class_names, image_size,
    optimizer, scheduler, scaler (AMP, else None), rng {sampler, data, torch, cuda}, epoch
    (completed epochs), step (optimizer steps), config, metrics, splits (split manifest JSON).

``kind="subnet"`` (written by `RetrainTrainer` as ``<out>/last.pt`` and ``<out>/best.pt``,
or by `save_subnet` for any static network)
    model (SegmentationNet state_dict), arch, space, num_classes, class_names, image_size,
    epoch, step, config, metrics, splits, max_side (the training scale's long-side cap); a
    model trained on images squashed to image_size (keep_aspect false) adds ``squash=True``, so
    inference squashes too (absent: aspect kept). A resumable ``last.pt`` adds optimizer,
    scheduler, scaler, rng and best (the best validation record so far).

Every checkpoint also holds ``format`` (= "autonad-edge-checkpoint") and ``version``.
`load_model(path, arch=None)` turns either kind into a static `SegmentationNet`.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autonad_edge.errors import AutonadError
from autonad_edge.io import atomic_write_bytes
from autonad_edge.space import Arch, ArchError, SearchSpace, load_arch

CHECKPOINT_FORMAT = "autonad-edge-checkpoint"
CHECKPOINT_VERSION = 1
# "baseline": the training state of a hand-designed network outside the search space (the
# benchmarks' U-Net); resumable like the others, not loadable as a searched network.
KINDS = ("supernet", "subnet", "baseline")


class CheckpointError(AutonadError, ValueError):
    """A checkpoint file that is missing, unreadable or not what the caller needs (one line)."""


# ---- RNG states as plain data ----------------------------------------------------------------


def python_rng_state(rng: random.Random) -> list:
    """`random.Random.getstate()` as a list (weights_only-loadable)."""
    version, internal, gauss = rng.getstate()
    return [int(version), [int(v) for v in internal], gauss]


def set_python_rng_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((int(version), tuple(int(v) for v in internal), gauss))


def torch_rng_states(device: torch.device | None = None) -> dict[str, Any]:
    """The global torch CPU RNG state, and the CUDA one of `device` when it is a GPU."""
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "cuda": None}
    if device is not None and device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_torch_rng_states(states: dict[str, Any], device: torch.device | None = None) -> None:
    if states.get("torch") is not None:
        torch.set_rng_state(states["torch"].cpu())
    if states.get("cuda") is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)


# ---- save / load -----------------------------------------------------------------------------


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Serialise `payload` in memory, then write it atomically (temp file, fsync, rename).

    A failure at any point (serialisation, disk full, a kill) leaves any previous file at
    `path` intact. `payload` must be plain data and tensors (checked by the round trip in the
    tests, enforced by `load_checkpoint`'s ``weights_only=True``).
    """
    if payload.get("kind") not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {', '.join(KINDS)}, got {payload.get('kind')!r}")
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    buffer = io.BytesIO()
    torch.save(data, buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; raise `CheckpointError` (one line) if bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is "not a checkpoint"
        first = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an autonad-edge checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {data.get('version')!r} is not supported "
            f"(this build reads version {CHECKPOINT_VERSION})"
        )
    if data.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {data.get('kind')!r}")
    return data


@dataclass
class CheckpointInfo:
    """What a checkpoint describes, without its tensors."""

    path: Path
    kind: str  # "supernet" or "subnet"
    space: SearchSpace
    arch: Arch | None  # the subnet's arch; for a supernet, the arch extracted (if any)
    num_classes: int
    class_names: list[str]
    image_size: tuple[int, int] | None
    sharing: str | None = None
    epoch: int = 0
    step: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, Any] | None = None  # the split manifest of the run
    max_side: int | None = None  # the training scale's long-side cap (None: native or squashed)
    # Trained on images squashed to image_size (keep_aspect false): inference resizes every
    # image to exactly image_size, one window, and the output back to the image's size.
    squash: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "arch_hash": self.arch.hash if self.arch is not None else None,
            "arch_summary": self.arch.summary() if self.arch is not None else None,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "image_size": list(self.image_size) if self.image_size else None,
            "max_side": self.max_side,
            "squash": self.squash,
            "sharing": self.sharing,
            "epoch": self.epoch,
            "step": self.step,
        }


def _config_max_side(config: dict[str, Any]) -> int | None:
    """The training scale of a checkpoint that does not record it apart (a supernet's): its
    run config's, when that kept the aspect ratio."""
    return config.get("max_side") if config.get("keep_aspect", True) else None


def _config_squash(config: dict[str, Any]) -> bool:
    """Whether a checkpoint that does not record it (a supernet's, or a subnet's from before
    the field) was trained on squashed images: its run config did not keep the aspect ratio."""
    return not config.get("keep_aspect", True)


def checkpoint_info(data: dict[str, Any], path: str | Path, arch: Arch | None = None) -> CheckpointInfo:
    """A `CheckpointInfo` from a loaded checkpoint dict (`arch` overrides a supernet's none)."""
    path = Path(path)
    try:
        space = SearchSpace.from_json(data["space"])
        if data["kind"] == "subnet":
            arch = space.validate(Arch.from_json(data["arch"]))
        splits = json.loads(data["splits"]) if data.get("splits") else None
        size = data.get("image_size")
        return CheckpointInfo(
            path=path,
            kind=data["kind"],
            space=space,
            arch=arch,
            num_classes=int(data["num_classes"]),
            class_names=list(data.get("class_names") or [str(i) for i in range(int(data["num_classes"]))]),
            image_size=(int(size[0]), int(size[1])) if size else None,
            sharing=data.get("sharing"),
            epoch=int(data.get("epoch", 0)),
            step=int(data.get("step", 0)),
            config=dict(data.get("config") or {}),
            metrics=dict(data.get("metrics") or {}),
            splits=splits,
            max_side=data.get("max_side") if "max_side" in data else _config_max_side(data.get("config") or {}),
            squash=bool(data["squash"]) if "squash" in data else _config_squash(data.get("config") or {}),
        )
    except KeyError as exc:
        raise CheckpointError(f"{path}: checkpoint is missing the field {exc.args[0]!r}") from None
    except (ArchError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _resolve_arch(arch: Arch | str | Path | None, space: SearchSpace) -> Arch | None:
    if arch is None or isinstance(arch, Arch):
        return space.validate(arch) if arch is not None else None
    return load_arch(str(arch), space)


def load_supernet(path: str | Path, device: str | torch.device = "cpu"):
    """The `HybridSupernet` of a supernet checkpoint (eval mode) and its `CheckpointInfo`."""
    from autonad_edge.models.supernet import HybridSupernet

    data = load_checkpoint(path)
    if data["kind"] != "supernet":
        raise CheckpointError(f"{path}: a {data['kind']} checkpoint, not a supernet one")
    info = checkpoint_info(data, path)
    net = HybridSupernet(info.space, info.num_classes, info.sharing or "cross")
    _load_state(net, data["model"], path)
    return net.to(device).eval(), info


def load_model(
    path: str | Path,
    arch: Arch | str | Path | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, CheckpointInfo]:
    """A static `SegmentationNet` (eval mode) from a checkpoint, and its `CheckpointInfo`.

    A subnet checkpoint is rebuilt directly (`arch`, if given, must equal the stored one). A
    supernet checkpoint needs `arch` (an `Arch` or an architecture JSON file): the subnet is
    extracted with its inherited weights. Raises `CheckpointError` or `ArchError`.
    """
    from autonad_edge.models.network import SegmentationNet
    from autonad_edge.models.supernet import HybridSupernet

    data = load_checkpoint(path)
    if data["kind"] == "baseline":
        raise CheckpointError(f"{path}: a baseline network's training state, not a searched network")
    space = checkpoint_info(data, path).space
    wanted = _resolve_arch(arch, space)
    if data["kind"] == "subnet":
        info = checkpoint_info(data, path)
        if wanted is not None and wanted != info.arch:
            raise ArchError(
                f"{path} holds the subnet {info.arch.summary()} (hash {info.arch.hash}), "
                f"not {wanted.summary()} (hash {wanted.hash})"
            )
        net = SegmentationNet.from_arch(info.arch, info.space, info.num_classes)
        _load_state(net, data["model"], path)
        return net.to(device).eval(), info
    if wanted is None:
        raise CheckpointError(f"{path} is a supernet checkpoint: give the architecture to extract (--arch)")
    info = checkpoint_info(data, path, arch=wanted)
    supernet = HybridSupernet(info.space, info.num_classes, info.sharing or "cross")
    _load_state(supernet, data["model"], path)
    net = supernet.extract(wanted)
    return net.to(device).eval(), info


def _load_state(module: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path}: weights do not match the stored architecture ({first})") from None


def subnet_payload(
    model: nn.Module,
    space: SearchSpace,
    class_names: list[str],
    image_size: tuple[int, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The plain payload of a subnet checkpoint for a static `SegmentationNet`."""
    model = getattr(model, "module", model)
    arch: Arch = model.arch
    return {
        "kind": "subnet",
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": arch.to_json(indent=None),
        "arch_hash": arch.hash,
        "space": space.to_json(indent=None),
        "num_classes": int(model.num_classes),
        "class_names": list(class_names),
        "image_size": list(image_size) if image_size else None,
        **extra,
    }


def save_subnet(
    path: str | Path,
    model: nn.Module,
    space: SearchSpace,
    class_names: list[str],
    image_size: tuple[int, int] | None = None,
    **extra: Any,
) -> Path:
    """Write a static network as a ``kind="subnet"`` checkpoint (what `load_model` reads)."""
    return save_checkpoint(path, subnet_payload(model, space, class_names, image_size, **extra))


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "CheckpointInfo",
    "checkpoint_info",
    "load_checkpoint",
    "load_model",
    "load_supernet",
    "python_rng_state",
    "save_checkpoint",
    "save_subnet",
    "set_python_rng_state",
    "set_torch_rng_states",
    "subnet_payload",
    "torch_rng_states",
]
