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

The mask PNG is a palette image whose pixel values are the class indices (0 = background),
at the input image's size. Everything this needs (input size, normalisation, classes, files)
comes from ``manifest.json`` next to this script.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
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
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError) as exc:
        raise InferError(f"cannot read image {path}: {exc}") from None
    return image


def preprocess(image, spec: dict) -> np.ndarray:
    """PIL image -> float32 [1, 3, H, W]: RGB (grey replicated), resized bilinearly to the
    model's input size, ((pixel / 255) - mean) / std."""
    from PIL import Image

    _, channels, height, width = spec["shape"]
    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    x = ((pixels - mean) / std).transpose(2, 0, 1)[None]
    if channels != 3:
        raise InferError(f"the model expects {channels} input channels; this example handles 3")
    return np.ascontiguousarray(x, dtype=np.float32)


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


def save_mask(logits: np.ndarray, size: tuple[int, int], out: Path):
    from PIL import Image

    mask = np.asarray(logits[0]).argmax(axis=0).astype(np.uint8)
    image = Image.fromarray(mask)  # mode L; putpalette makes it P, keeping the indices
    image.putpalette(palette())
    if image.size != size:
        image = image.resize(size, Image.NEAREST)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return np.asarray(image)


# ---------------------------------------------------------------------------- backends
def run_onnxruntime(model_path: Path, x: np.ndarray, input_name: str) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError:
        raise InferError("onnxruntime is not installed (pip install onnxruntime)") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=ort.get_available_providers())
    return session.run(None, {input_name: x})[0]


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
            f"plugin/spatial_shift (see plugin/README.md) and pass --plugin-lib or set ${PLUGIN_ENV}"
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


def run_tensorrt(engine_path: Path, x: np.ndarray, input_name: str, plugin_lib: str | None, needs_plugin: bool):
    import tensorrt as trt

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
    allocations = []  # keeps the device buffers alive until the copies are done

    def bind(name: str, host: np.ndarray):
        buffer = cuda.mem_alloc(max(host.nbytes, 1))
        allocations.append(buffer)
        context.set_tensor_address(name, int(buffer))
        return buffer

    data = np.ascontiguousarray(x.astype(trt.nptype(engine.get_tensor_dtype(inputs[0]))))
    context.set_input_shape(inputs[0], data.shape)  # shapes first: outputs follow from them
    cuda.memcpy_htod_async(bind(inputs[0], data), data, stream)
    host_out = []
    for name in outputs:
        host = np.empty(tuple(context.get_tensor_shape(name)), dtype=trt.nptype(engine.get_tensor_dtype(name)))
        host_out.append((host, bind(name, host)))
    if not context.execute_async_v3(stream.handle):
        raise InferError("TensorRT execution failed")
    for host, buffer in host_out:
        cuda.memcpy_dtoh_async(host, buffer, stream)
    stream.synchronize()
    del library, stream  # the plugin library had to stay loaded until the run finished
    return host_out[0][0].astype(np.float32)


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
        x = preprocess(image, spec)
        if backend == "tensorrt":
            logits = run_tensorrt(path, x, spec["name"], args.plugin_lib, needs_plugin)
        else:
            logits = run_onnxruntime(path, x, spec["name"])
        out = args.out or args.image.with_name(args.image.stem + "_mask.png")
        mask = save_mask(logits, image.size, out)
    except InferError as exc:
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
