#!/usr/bin/env python3
"""Segment one image with this deployment bundle; write the mask as a PNG.

    python infer.py part.png --out part_mask.png
    python infer.py part.png --backend onnxruntime      # force ONNX Runtime
    python infer.py part.png --plugin-lib /path/libautonad_trt_plugins.so

Stand-alone: needs numpy and Pillow, plus ONNX Runtime (``pip install onnxruntime``) or, for
the engine, TensorRT and pycuda. Nothing from autonad-edge is imported.

Backends (``--backend auto``, the default): the TensorRT engine (``model.engine``) when the
bundle has one and ``tensorrt`` imports, else the portable ONNX model with ONNX Runtime. An
engine only runs on the device (GPU model, TensorRT version) it was built on; the TensorRT
flavour of the ONNX model needs the SpatialShift plugin, so ONNX Runtime uses the portable one.

The image is turned as its EXIF orientation says (as training read it), scaled to the model's
training scale (long side down to the manifest's ``max_side``, aspect kept; none = native) and
segmented in overlapping windows of the model's fixed input size, so any size or aspect ratio
runs and thin cracks are not squashed. A model trained on images squashed to its input size
(the manifest's ``squash``: true) sees each image the way it learnt: resized to exactly the
input size, one window, its logits resized back. The mask PNG is a palette image whose pixel
values are the class indices (0 = background), at the input image's size. Everything this
needs (input size, normalisation, scale, classes, files) comes from ``manifest.json`` next to
this script.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PLUGIN_LIBRARY = "libautonad_trt_plugins.so"
PLUGIN_ENV = "AUTONAD_PLUGIN_LIB"


class InferError(RuntimeError):
    pass


# ---------------------------------------------------------------------------- pre/post-processing
def load_image(path: Path):
    """The image as a viewer shows it: turned as its EXIF orientation says (cameras store a
    turned photo unturned with a tag; the model was trained on the view its masks were drawn
    on, autonad_edge.data.cache.open_image). Pillow's decompression-bomb limit (179 Mpx by
    default) is kept: the logits of a larger image would not fit a device's memory."""
    from PIL import Image, ImageOps

    try:
        image = Image.open(path)
        image.load()
        # The returning form (not in_place) works on the older Pillow of a device image; one
        # older than 6.0 has none, and its images are used as stored.
        turn = getattr(ImageOps, "exif_transpose", None)
        return turn(image) if turn is not None else image
    except Image.DecompressionBombError as exc:
        match = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow: "Image size (N pixels) exceeds ..."
        size = f"{int(match.group(1)):,} pixels" if match else "too many pixels"
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise InferError(f"{path}: image too large to open: {size}, above Pillow's limit of {limit:,} "
                         "(a guard against decompression bombs); cut it into tiles first") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InferError(f"cannot read image {path}: {exc}") from None


def training_scale(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) the model was trained at for such an image: the long side scaled DOWN to
    `max_side`, aspect kept (None = native). Mirrors autonad_edge.data.cache.training_scale_hw."""
    if max_side is None or max(height, width) <= max_side:
        return int(height), int(width)
    factor = max_side / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def preprocess(image, spec: dict, max_side: int | None, squash: bool = False) -> np.ndarray:
    """PIL image -> float32 [3, h, w]: RGB (grey replicated), scaled bilinearly to the training
    scale (nothing squashed to the model's input: thin cracks keep their width; with `squash`,
    a model trained on squashed images, resized to exactly the input, aspect not kept),
    ((pixel / 255) - mean) / std."""
    from PIL import Image

    channels = spec["shape"][1]
    if channels != 3:
        raise InferError(f"the model expects {channels} input channels; this example handles 3")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        low, high = image.getextrema()
        if low < 0 or high > 255:  # converting would clip: a 16-bit image saturates to white
            raise InferError(f"{image.mode} image with values {low:g}..{high:g}: the model takes 8-bit "
                             f"images; convert it to 8-bit grey or colour first")
    rgb = image.convert("RGB")
    if squash:  # the scale the model learnt: every image resized to its input size
        height, width = int(spec["shape"][2]), int(spec["shape"][3])
    else:
        height, width = training_scale(rgb.height, rgb.width, max_side)
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1), dtype=np.float32)


# The tile planner mirrors autonad_edge.inference.plan_tiles (re-implemented: the bundle must
# not import the package). Windows of min(tile, length) with a stride of tile - overlap, the last
# flush with the edge; each window's output is kept up to the middle of its overlaps, so the
# kept regions partition the image and every pixel comes from the window where it is furthest
# from a border. The model's input is fixed, so one axis may tile differently from the other.
def axis_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(window start, window end, keep start, keep end) along one axis."""
    if length <= tile:
        return [(0, length, 0, length)]
    starts = list(range(0, length - tile, tile - overlap)) + [length - tile]
    cuts = [(nxt + prev + tile) // 2 for prev, nxt in zip(starts, starts[1:])]
    return [(s, s + tile, k0, k1) for s, k0, k1 in zip(starts, [0, *cuts], [*cuts, length])]


def plan_tiles(height: int, width: int, tile_hw: tuple[int, int]):
    """[(window (y0, x0, y1, x1), keep (y0, x0, y1, x1))] over the image, overlap a quarter tile."""
    rows = axis_spans(height, tile_hw[0], tile_hw[0] // 4)
    cols = axis_spans(width, tile_hw[1], tile_hw[1] // 4)
    return [((wy0, wx0, wy1, wx1), (ky0, kx0, ky1, kx1))
            for wy0, wy1, ky0, ky1 in rows for wx0, wx1, kx0, kx1 in cols]


def resize_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [C, h, w] -> [C, height, width], bilinear per class (PIL float images)."""
    from PIL import Image

    if logits.shape[1:] == (height, width):
        return logits
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(c, dtype=np.float32))  # mode F
                                .resize((width, height), Image.BILINEAR)) for c in logits])


def tiled_logits(run, x: np.ndarray, tile_hw: tuple[int, int]) -> np.ndarray:
    """float32 [C, h, w] logits of a normalised image [3, h, w] from `run` (the model, fixed input
    [1, 3, *tile_hw]). A window shorter than the input is padded with zeros (the normalised mean
    colour) and its output cropped; memory: the logits plus one tile."""
    _, height, width = x.shape
    out = None
    for (wy0, wx0, wy1, wx1), (ky0, kx0, ky1, kx1) in plan_tiles(height, width, tile_hw):
        batch = np.zeros((1, 3, *tile_hw), dtype=np.float32)
        batch[0, :, :wy1 - wy0, :wx1 - wx0] = x[:, wy0:wy1, wx0:wx1]
        logits = np.asarray(run(batch), dtype=np.float32)[0]
        if logits.shape[1:] != tuple(tile_hw):  # a model whose output is not at input size
            logits = resize_logits(logits, *tile_hw)
        if out is None:
            out = np.empty((logits.shape[0], height, width), dtype=np.float32)
        out[:, ky0:ky1, kx0:kx1] = logits[:, ky0 - wy0:ky1 - wy0, kx0 - wx0:kx1 - wx0]
    return out


def palette() -> list[int]:
    """Background black, then distinct colours (the PASCAL VOC bit-interleaving scheme)."""
    colours = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.extend((r, g, b))
    return colours


def save_mask(mask: np.ndarray, out: Path) -> np.ndarray:
    """Write uint8 [H, W] class indices as a palette PNG; returns what was written."""
    from PIL import Image

    image = Image.fromarray(mask.astype(np.uint8))  # mode L; putpalette makes it P, keeping the indices
    image.putpalette(palette())
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside it, then renamed: a run stopped mid-write leaves no truncated mask under the name.
    # (The format is the name's, as Pillow would choose it.)
    kind = Image.registered_extensions().get(out.suffix.lower())
    if kind is None:
        raise ValueError(f"unknown file extension: {out.suffix or out.name}")
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        image.save(partial, format=kind)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return np.asarray(image)


def argmax_at(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [height, width] argmax of logits [C, h, w] resized bilinearly to that size, one
    class at a time (a multi-megapixel image never holds all its resized logits at once)."""
    best = resize_logits(logits[:1], height, width)[0]
    mask = np.zeros((height, width), dtype=np.uint8)
    for index in range(1, logits.shape[0]):
        score = resize_logits(logits[index:index + 1], height, width)[0]
        mask[score > best] = index
        np.maximum(best, score, out=best)
    return mask


def segment(run, image, spec: dict, max_side: int | None, squash: bool = False) -> np.ndarray:
    """uint8 [H, W] class mask of a PIL image at its own size: training scale, tiles of the
    model's input (squash: the image squashed to the input, one tile), logits resized back to
    the image (bilinear), argmax."""
    x = preprocess(image, spec, max_side, squash)
    logits = tiled_logits(run, x, (int(spec["shape"][2]), int(spec["shape"][3])))
    return argmax_at(logits, image.height, image.width)


# ---------------------------------------------------------------------------- backends
# A backend loads its model once and returns `run`: float32 [1, 3, H, W] -> logits, called per tile.
def onnxruntime_runner(model_path: Path, input_name: str):
    try:
        import onnxruntime as ort
    except ImportError:
        raise InferError("onnxruntime is not installed (pip install onnxruntime)") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=ort.get_available_providers())
    return lambda x: session.run(None, {input_name: x})[0]


def find_plugin_library(explicit: str | None) -> Path | None:
    candidates = [explicit, os.environ.get(PLUGIN_ENV), HERE / "plugin" / "lib" / PLUGIN_LIBRARY]
    try:  # an autonad-agent installed on this device keeps its own build here
        import autonad_agent  # noqa: F401

        candidates.append(Path(autonad_agent.__file__).resolve().parent / "plugins" / "lib" / PLUGIN_LIBRARY)
    except ImportError:
        pass
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def load_plugin(trt, explicit: str | None):
    path = find_plugin_library(explicit)
    if path is None:
        raise InferError(
            f"the engine uses the SpatialShift plugin but no {PLUGIN_LIBRARY} was found: build it from "
            f"plugin/spatial_shift (see plugin/spatial_shift/README.md) and pass --plugin-lib or set ${PLUGIN_ENV}"
        )
    library = ctypes.CDLL(str(path))
    init = getattr(library, "initAutonadPlugins", None)
    if init is not None:
        init.restype = ctypes.c_int32
        if int(init()) != 0:
            raise InferError(f"{path}: registering the plugin failed")
    else:  # a library exposing only getCreators: let TensorRT's registry load it
        trt.get_plugin_registry().load_library(str(path))
    return library


def tensorrt_runner(engine_path: Path, shape: list[int], plugin_lib: str | None, needs_plugin: bool):
    try:
        import tensorrt as trt
    except ImportError:
        raise InferError("the TensorRT backend needs TensorRT's Python package (tensorrt); "
                         "use --backend onnxruntime") from None

    try:
        import pycuda.autoinit  # noqa: F401 - creates a CUDA context
        import pycuda.driver as cuda
    except ImportError:
        raise InferError("the TensorRT path needs pycuda (pip install pycuda)") from None
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    library = load_plugin(trt, plugin_lib) if needs_plugin else None
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise InferError(f"{engine_path}: TensorRT could not deserialise the engine (built for another "
                         "device or TensorRT version? rebuild it with `autonad-edge build-engine`)")
    context = engine.create_execution_context()
    stream = cuda.Stream()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if len(inputs) != 1 or not outputs:
        raise InferError(f"expected one input and an output, the engine has {inputs} -> {outputs}")
    allocations = []  # keeps the device buffers alive as long as the runner

    def bind(name: str, host: np.ndarray):
        buffer = cuda.mem_alloc(max(host.nbytes, 1))
        allocations.append(buffer)
        context.set_tensor_address(name, int(buffer))
        return buffer

    input_dtype = trt.nptype(engine.get_tensor_dtype(inputs[0]))
    context.set_input_shape(inputs[0], tuple(shape))  # shapes first: outputs follow from them
    input_buffer = bind(inputs[0], np.empty(tuple(shape), dtype=input_dtype))
    host_out = []
    for name in outputs:
        host = np.empty(tuple(context.get_tensor_shape(name)), dtype=trt.nptype(engine.get_tensor_dtype(name)))
        host_out.append((host, bind(name, host)))

    def run(x: np.ndarray) -> np.ndarray:
        data = np.ascontiguousarray(x.astype(input_dtype))
        cuda.memcpy_htod_async(input_buffer, data, stream)
        if not context.execute_async_v3(stream.handle):
            raise InferError("TensorRT execution failed")
        for host, buffer in host_out:
            cuda.memcpy_dtoh_async(host, buffer, stream)
        stream.synchronize()
        return host_out[0][0].astype(np.float32)

    run.keep_alive = (library, runtime, engine, allocations)  # the plugin stays loaded while run exists
    return run


# ---------------------------------------------------------------------------- main
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def choose_backend(manifest: dict, wanted: str) -> str:
    if wanted != "auto":
        return wanted
    if manifest.get("engine"):
        try:
            import tensorrt  # noqa: F401

            return "tensorrt"
        except ImportError:
            pass
    return "onnxruntime"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path, help="image to segment (any format Pillow reads)")
    parser.add_argument("--out", type=Path, default=None, help="mask PNG (default: <image>_mask.png)")
    parser.add_argument("--bundle", type=Path, default=HERE, help="bundle directory (default: this script's)")
    parser.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime"), default="auto")
    parser.add_argument("--plugin-lib", default=None, help=f"the SpatialShift plugin ({PLUGIN_LIBRARY})")
    parser.add_argument("--no-verify", action="store_true", help="skip the model files' sha256 check")
    args = parser.parse_args(argv)

    try:
        manifest = json.loads((args.bundle / "manifest.json").read_text(encoding="utf-8"))
        spec = manifest["input"]
        backend = choose_backend(manifest, args.backend)
        if backend == "tensorrt":
            engine = manifest.get("engine")
            if not engine:
                raise InferError("this bundle has no TensorRT engine; use --backend onnxruntime")
            entry = engine
            path = args.bundle / engine["file"]
            needs_plugin = str(engine.get("uses_spatial_shift_plugin", "true")).lower() == "true"
        else:
            models = [m for m in manifest["models"] if m["flavor"] == "portable"]
            if not models:
                raise InferError("this bundle has no portable ONNX model (its TensorRT flavour needs the "
                                 "SpatialShift plugin, which ONNX Runtime does not have)")
            entry = models[0]
            path = args.bundle / entry["file"]
        if not args.no_verify and entry.get("sha256") and sha256_file(path) != entry["sha256"]:
            raise InferError(f"{path} does not match the sha256 in manifest.json")
        image = load_image(args.image)
        if backend == "tensorrt":
            run = tensorrt_runner(path, spec["shape"], args.plugin_lib, needs_plugin)
        else:
            run = onnxruntime_runner(path, spec["name"])
        max_side = manifest.get("max_side")
        squash = manifest.get("squash") is True  # trained on images squashed to the input size
        out = args.out or args.image.with_name(args.image.stem + "_mask.png")
        mask = save_mask(segment(run, image, spec, int(max_side) if max_side else None, squash), out)
    except InferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"error: {args.bundle / 'manifest.json'} is not valid JSON ({exc})", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: {args.bundle / 'manifest.json'} lacks the field {exc}: not a bundle this script reads",
              file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # a missing file, an unwritable --out, a bad plugin library
        print(f"error: {exc}", file=sys.stderr)
        return 2
    classes = manifest.get("classes") or [str(i) for i in range(int(manifest["num_classes"]))]
    counts = np.bincount(mask.ravel(), minlength=len(classes))
    found = ", ".join(f"{classes[i] if i < len(classes) else i} {100 * n / mask.size:.1f}%"
                      for i, n in enumerate(counts) if n)
    print(f"wrote {out} ({mask.shape[1]}x{mask.shape[0]}, {backend}: {path.name}); classes: {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
