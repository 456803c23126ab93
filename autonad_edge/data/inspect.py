"""The human-readable `autonad-edge data inspect` report, from `SegmentationData.describe()`."""

from __future__ import annotations

from typing import Any

SPLITS = ("train", "val", "test")


def format_description(info: dict[str, Any]) -> str:
    """Render a `describe()` dict as an aligned plain-text report."""
    names = info["class_names"]
    size, loaded = info["native_size"], info["loaded_size"]
    if not info["keep_aspect"]:
        scale = f"squashed to {info['image_size'][0]}x{info['image_size'][1]} (HxW)"
    elif info["max_side"]:
        scale = f"long side at most {info['max_side']} px, aspect kept"
    else:
        scale = "native size"
    lines = [
        f"dataset   {info['root'] or '(generated in memory)'}",
        f"format    {info['format']}   images {info['num_images']}",
        f"native    height {size['height']['min']}..{size['height']['max']}   "
        f"width {size['width']['min']}..{size['width']['max']}",
        f"loaded    height {loaded['height']['min']}..{loaded['height']['max']}   "
        f"width {loaded['width']['min']}..{loaded['width']['max']}   ({scale})",
        f"splits    {info['split_source']}, seed {info['seed']}, ratios "
        + "/".join(f"{r:g}" for r in info["ratios"]),
        f"classes   {info['num_classes']} (+ {info['ignore_index']} = ignore)",
        "",
    ]
    width = max(len(n) for n in names + ["class"]) + 2
    header = f"  {'id':>3}  {'class':<{width}}" + "".join(
        f"{split:>7}" for split in ("train", "val", "test")
    ) + f"{'with':>7}{'pixels':>10}"
    lines.append(header)
    for cls, name in enumerate(names):
        per_split = "".join(
            f"{info['splits'][split]['images_by_class'][name]:>7}" for split in SPLITS
        )
        containing = sum(info["splits"][s]["images_containing"][name] for s in SPLITS)
        lines.append(
            f"  {cls:>3}  {name:<{width}}{per_split}{containing:>7}"
            f"{100 * info['pixel_frequency'][name]:>9.3f}%"
        )
    totals = "".join(f"{info['splits'][s]['images']:>7}" for s in ("train", "val", "test"))
    lines.append(f"  {'':>3}  {'total':<{width}}{totals}")
    lines.append("")
    lines.append(
        "train/val/test: images per class (MT: folder; else dominant defect); "
        "with: images containing the class; pixels: share of labelled pixels"
    )
    if info["ignored_pixel_fraction"] > 0:
        lines.append(f"ignored pixels: {100 * info['ignored_pixel_fraction']:.3f}%")
    return "\n".join(lines)
