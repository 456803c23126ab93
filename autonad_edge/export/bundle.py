"""The deployment bundle: one directory with everything a device needs to run a model.

    out_dir/
      manifest.json          arch, classes, input size, normalisation, files + sha256, engine info
      model.<flavor>.onnx    the ONNX model(s): portable and/or tensorrt flavour
      model.engine           a TensorRT engine (if given) and its build record in the manifest
      plugin/spatial_shift/  the SpatialShift TensorRT plugin sources (from autonad_agent)
      plugin/lib/            the built plugin library, when this install has one
      infer.py, README.md    a stand-alone inference example (TensorRT engine or ONNX Runtime)

The bundle is assembled in a temporary sibling directory, synced to disk and renamed into
place, so a reader never sees half a bundle; ``manifest.json`` is written last. Replacing an
existing directory takes overwrite (--force) and is refused unless it is empty or a bundle.
No torch needed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx

from autonad_agent.plugin_identity import SPATIAL_SHIFT_PLUGIN
from autonad_edge.errors import AutonadError
from autonad_edge.io import DIR_MODE, fsync_path

BUNDLE_FORMAT = "autonad-edge-bundle"
BUNDLE_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENGINE_NAME = "model.engine"
PLUGIN_LIBRARY_NAME = "libautonad_trt_plugins.so"
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "deploy_template"
TEMPLATE_FILES = ("infer.py", "README.md")
# The training pipeline's normalisation (autonad_edge.data.transforms), repeated here so the
# bundle code does not import torch.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BundleError(AutonadError, ValueError):
    """A bundle that cannot be written or does not verify; one line."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_record_path(engine_path: str | os.PathLike) -> Path:
    """Where `build-engine` writes an engine's build record: ``<engine>.json``."""
    return Path(str(engine_path) + ".json")


def plugin_source_dir() -> Path | None:
    """The plugin sources shipped with the installed `autonad_agent`, if any."""
    try:
        import autonad_agent
    except ImportError:
        return None
    path = Path(autonad_agent.__file__).resolve().parent / "plugins" / "spatial_shift"
    return path if path.is_dir() else None


def plugin_library() -> Path | None:
    """The plugin library `autonad-agent build-plugin` installed on this machine, if any."""
    try:
        import autonad_agent
    except ImportError:
        return None
    path = Path(autonad_agent.__file__).resolve().parent / "plugins" / "lib" / PLUGIN_LIBRARY_NAME
    return path if path.is_file() else None


# ---- reading ONNX models ---------------------------------------------------------------------


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def describe_onnx(path: Path) -> dict[str, Any]:
    """What the manifest records about one ONNX file (weights are not loaded into memory twice)."""
    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    uses_plugin = any(n.domain == SPATIAL_SHIFT_PLUGIN.namespace for n in model.graph.node)
    flavor = meta.get("autonad.flavor") or ("tensorrt" if uses_plugin else "portable")
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    counts: dict[str, int] = {}
    for n in model.graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return {
        "flavor": flavor,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "opset": {o.domain or "ai.onnx": int(o.version) for o in model.opset_import},
        "custom_ops": sorted(k for k in counts if "::" in k),
        "nodes": sum(counts.values()),
        "ops": dict(sorted(counts.items())),
        "inputs": [{"name": v.name, "shape": _dims(v)} for v in inputs],
        "outputs": [{"name": v.name, "shape": _dims(v)} for v in model.graph.output],
        "_metadata": meta,
    }


# ---- writing ---------------------------------------------------------------------------------


def _arch_dict(arch: Any) -> dict[str, Any] | None:
    if arch is None:
        return None
    if hasattr(arch, "to_dict"):
        return arch.to_dict()
    if isinstance(arch, str):
        return json.loads(arch)
    return dict(arch)


def _arch_identity(arch: dict[str, Any] | None) -> tuple[str | None, str | None]:
    if arch is None:
        return None, None
    try:
        from autonad_edge.space import Arch

        a = Arch.from_dict(arch)
        return a.hash, a.summary()
    except Exception:  # noqa: BLE001 - an arch from a newer format: keep it, skip the identity
        return None, None


def _class_names(text: str) -> list[str]:
    names = json.loads(text)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("not a JSON list of names")
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} is not a positive size")
    return value


def _true_or_false(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(f"{text!r} is not true or false")
    return text == "true"


# What `export` records of the checkpoint in the model's metadata (export_network), and the
# manifest field each becomes.
_CHECKPOINT_METADATA = (("autonad.class_names", "classes", _class_names),
                        ("autonad.max_side", "max_side", _positive_int),
                        ("autonad.squash", "squash", _true_or_false))


def _checkpoint_metadata(meta: Mapping[str, str], src: Path) -> dict[str, Any]:
    """The class names, training scale (max_side) and squash recorded in a model's metadata,
    for a bundle written without its checkpoint; only those present."""
    out: dict[str, Any] = {}
    for key, field, parse in _CHECKPOINT_METADATA:
        if key in meta:
            try:
                out[field] = parse(meta[key])
            except ValueError as exc:  # json.JSONDecodeError is one
                raise BundleError(f"{src}: unreadable {key} metadata ({exc})") from None
    return out


def _network_identity(info: Mapping[str, Any]) -> dict[str, Any]:
    """What two flavours of one network share: the image input's and the logits' shapes (the
    batch aside: one flavour may take a dynamic batch) and what `export` recorded of the
    network and its training (arch, classes, scale). Metadata a model lacks is left out."""
    meta = info["_metadata"]
    identity: dict[str, Any] = {
        "input": info["inputs"][0]["shape"][1:] if info["inputs"] else None,
        "output": info["outputs"][0]["shape"][1:] if info["outputs"] else None,
    }
    for key in ("autonad.arch_hash", "autonad.num_classes", "autonad.image_size", "autonad.class_names",
                "autonad.max_side", "autonad.squash"):
        if key in meta:
            identity[key] = meta[key]
    return identity


def _check_same_network(first_src: Path, first: Mapping[str, Any], src: Path, info: Mapping[str, Any]) -> None:
    """Refuse a second flavour that is not the first's network: infer.py would run one or the
    other depending on the backend, and the manifest describes only the first."""
    a, b = _network_identity(first), _network_identity(info)
    for key in a:
        if key in b and a[key] != b[key]:
            raise BundleError(f"{src} is not the network of {first_src}: {key.removeprefix('autonad.')} "
                              f"{b[key]} against {a[key]}; bundle two flavours of one exported network")


def _check_manifest_agrees(src: Path, info: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """Refuse manifest fields (from a checkpoint) that contradict what the model itself says:
    a wrong checkpoint would make infer.py preprocess or name classes for another network."""
    meta = info["_metadata"]
    out_shape = info["outputs"][0]["shape"] if info["outputs"] else []
    model_classes = out_shape[1] if len(out_shape) == 4 and isinstance(out_shape[1], int) else None
    if model_classes is None and "autonad.num_classes" in meta:
        model_classes = int(meta["autonad.num_classes"])
    count = given.get("num_classes")
    if count is not None and model_classes is not None and int(count) != model_classes:
        raise BundleError(f"{src} has {model_classes} output classes, the manifest given says {int(count)}: "
                          "is the checkpoint the one this model was exported from?")
    arch = given.get("arch")
    if arch is not None and "autonad.arch" in meta:
        given_hash, given_summary = _arch_identity(_arch_dict(arch))
        try:
            model_hash, model_summary = _arch_identity(_arch_dict(meta["autonad.arch"]))
        except ValueError:  # json.JSONDecodeError: the model's own record is unreadable, the given one stands
            model_hash, model_summary = None, None
        if given_hash and model_hash and given_hash != model_hash:
            raise BundleError(f"{src} is the network {model_summary}, the manifest given says {given_summary}: "
                              "bundle the model exported from that architecture")
    recorded = _checkpoint_metadata(meta, src)
    for field in ("max_side", "squash"):
        if field in given and field in recorded and given[field] != recorded[field]:
            raise BundleError(f"{src} was exported for {field} {recorded[field]}, the manifest given says "
                              f"{given[field]}: is the checkpoint the one this model was exported from?")


def _read_engine_record(engine_path: Path) -> dict[str, Any] | None:
    """The ``<engine>.json`` build record beside `engine_path`, if there is one."""
    path = engine_record_path(engine_path)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not a readable engine build record ({' '.join(str(exc).split())})") from None
    if not isinstance(record, dict):
        raise BundleError(f"{path}: not a readable engine build record (not a JSON object)")
    return record


def _engine_entry(engine_path: Path, record: Mapping[str, Any] | None, models: list[dict[str, Any]]) -> dict[str, Any]:
    record_source = "the engine record given" if record is not None else str(engine_record_path(engine_path))
    if record is None:
        record = _read_engine_record(engine_path)
    record = dict(record or {})
    fields = dict(record.pop("fields", {}) or {})
    sha256 = sha256_file(engine_path)
    # A record left beside a rebuilt engine would vouch for another engine (its plugin flag
    # decides whether infer.py loads the plugin).
    recorded = record.get("engine_sha256") or fields.get("engine_sha256")
    if recorded and recorded != sha256:
        raise BundleError(f"{record_source} is for another engine (engine_sha256 {str(recorded)[:16]}..., "
                          f"{engine_path} has {sha256[:16]}...): rebuild the engine or give its own record")
    entry: dict[str, Any] = {
        "file": ENGINE_NAME,
        "sha256": sha256,
        "bytes": engine_path.stat().st_size,
        **{k: v for k, v in record.items() if k not in ("file", "sha256", "bytes", "engine_sha256")},
        "agent_manifest": fields,
    }
    for key in ("precision", "device", "runtime_version", "uses_spatial_shift_plugin", "compute_capability",
                "output_check"):
        if key in fields and key not in entry:
            entry[key] = fields[key]
    built_from = record.get("onnx_sha256") or fields.get("onnx_sha256")
    if built_from:
        match = [m["file"] for m in models if m["sha256"] == built_from]
        if not match:
            raise BundleError(
                f"{engine_path} was built from an ONNX model with sha256 {built_from[:16]}..., which is not "
                "in this bundle: bundle the model the engine was built from"
            )
        entry["built_from"] = match[0]
    if "uses_spatial_shift_plugin" not in entry:
        source = next((m for m in models if m["file"] == entry.get("built_from")), None)
        entry["uses_spatial_shift_plugin"] = "true" if source is None or source["custom_ops"] else "false"
    return entry


def write_bundle(
    out_dir: str | os.PathLike,
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    manifest: Mapping[str, Any] | None = None,
    *,
    extra_onnx: Sequence[str | os.PathLike] = (),
    engine_record: Mapping[str, Any] | None = None,
    plugin_dir: str | os.PathLike | None | bool = True,
    plugin_lib: str | os.PathLike | None | bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a deployment bundle to `out_dir`; returns its manifest path.

    `onnx_path` (and `extra_onnx`) are copied as ``model.<flavor>.onnx`` (one per flavour).
    `engine_path` is copied as ``model.engine``; its build record is `engine_record` or the
    ``<engine>.json`` that `build-engine` writes beside it (the engine must have been built
    from one of the bundled models when the record says which). `manifest` supplies or
    overrides manifest fields: ``arch`` (Arch, dict or JSON), ``classes`` (names),
    ``num_classes``, ``image_size`` ([H, W]), ``mean``, ``std``, ``max_side`` (the training
    scale's long-side cap), ``squash`` (True: trained on images squashed to the input size, so
    infer.py squashes too; recorded only when true) and anything else (kept as is);
    what it leaves out comes from the ONNX metadata `export` writes (arch, classes, max_side,
    squash, ...). `plugin_dir`/`plugin_lib`: True = the installed autonad_agent's plugin sources
    / built library if present, a path, or False/None for none. `overwrite` replaces an existing
    bundle (see `check_bundle_dir`). Raises `BundleError` (one line).
    """
    extra: dict[str, Any] = dict(manifest or {})
    sources = [Path(onnx_path), *(Path(p) for p in extra_onnx)]
    for src in sources:
        if not src.is_file():
            raise BundleError(f"{src}: no such ONNX file")
    if engine_path is not None and not Path(engine_path).is_file():
        raise BundleError(f"{engine_path}: no such engine file")
    check_bundle_dir(out_dir, overwrite)
    requested = Path(out_dir)
    # Resolved: the staging directory is its sibling, and "." has no name to derive one from.
    out_dir = requested.resolve()

    described = []
    flavors_seen: set[str] = set()
    for src in sources:
        try:
            info = describe_onnx(src)
        except Exception as exc:  # noqa: BLE001 - onnx raises several kinds
            raise BundleError(f"{src}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        if info["flavor"] in flavors_seen:
            raise BundleError(f"two {info['flavor']} models given ({src}); a bundle holds one per flavour")
        flavors_seen.add(info["flavor"])
        described.append((src, info))
    primary_meta = described[0][1]["_metadata"]
    primary = described[0][1]
    for src, info in described[1:]:
        _check_same_network(sources[0], primary, src, info)
    _check_manifest_agrees(sources[0], primary, extra)
    # Without a checkpoint, what `export` recorded of it: class names and the training scale.
    # (A given max_side or squash wins, None included: a checkpoint's None means native scale.)
    for key, value in _checkpoint_metadata(primary_meta, sources[0]).items():
        given = (extra.get("classes") or extra.get("class_names")) if key == "classes" else key in extra
        if not given:
            extra[key] = value

    arch = _arch_dict(extra.pop("arch", None) or primary_meta.get("autonad.arch"))
    arch_hash, arch_summary = _arch_identity(arch)
    image_input = primary["inputs"][0] if primary["inputs"] else {"name": "image", "shape": []}
    shape = list(image_input["shape"])
    size = extra.pop("image_size", None)
    if size is None and len(shape) == 4 and all(isinstance(v, int) for v in shape[2:]):
        size = shape[2:]
    if size is None and "autonad.image_size" in primary_meta:
        size = [int(v) for v in primary_meta["autonad.image_size"].split("x")]
    if size is None:
        raise BundleError(f"{sources[0]}: cannot tell the input size; pass manifest={{'image_size': [H, W]}}")
    size = [int(size[0]), int(size[1])]
    if len(shape) == 4 and all(isinstance(v, int) for v in shape[2:]) and shape[2:] != size:
        raise BundleError(f"image_size {size} does not match the model's input {shape}")
    out_shape = primary["outputs"][0]["shape"] if primary["outputs"] else []
    num_classes = extra.pop("num_classes", None) or primary_meta.get("autonad.num_classes")
    if num_classes is None and len(out_shape) == 4 and isinstance(out_shape[1], int):
        num_classes = out_shape[1]
    names_a, names_b = extra.pop("classes", None), extra.pop("class_names", None)
    classes = list(names_a or names_b or [])
    if num_classes is None and classes:
        num_classes = len(classes)
    if num_classes is None:
        raise BundleError(f"{sources[0]}: cannot tell the number of classes; pass manifest={{'num_classes': n}}")
    num_classes = int(num_classes)
    if not classes:
        classes = ["background", *(f"class{i}" for i in range(1, num_classes))]
    if len(classes) != num_classes:
        raise BundleError(f"{len(classes)} class names for {num_classes} classes")
    mean = [float(v) for v in extra.pop("mean", IMAGENET_MEAN)]
    std = [float(v) for v in extra.pop("std", IMAGENET_STD)]
    squash = bool(extra.pop("squash", False))
    if squash:
        extra["squash"] = True  # absent for an aspect-kept model: its manifest is as before
        resize = ("bilinear to exactly shape[2:] (H, W), aspect not kept (the model was trained on images "
                  "squashed to it), one window; the logits resized back to the image")
    else:
        resize = ("bilinear to the training scale (long side down to max_side, aspect kept), "
                  "then overlapping tiles of shape[2:] (H, W)")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        os.chmod(staging, DIR_MODE)  # mkdtemp's 0700 would hide the bundle from all but its writer
        models = []
        for src, info in described:
            name = f"model.{info['flavor']}.onnx"
            shutil.copyfile(src, staging / name)
            info = {k: v for k, v in info.items() if k != "_metadata"}
            models.append({"file": name, **info})
        engine_entry = None
        if engine_path is not None:
            shutil.copyfile(engine_path, staging / ENGINE_NAME)
            engine_entry = _engine_entry(Path(engine_path), engine_record, models)
        plugin_entry = _copy_plugin(staging, plugin_dir, plugin_lib)
        for name in TEMPLATE_FILES:
            if (TEMPLATE_DIR / name).is_file():
                shutil.copyfile(TEMPLATE_DIR / name, staging / name)
            elif name == "infer.py":
                raise BundleError(f"this install lacks {TEMPLATE_DIR / name} (reinstall autonad-edge)")
        from autonad_edge import __version__

        document = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "producer": f"autonad-edge {__version__}",
            "arch": arch,
            "arch_hash": arch_hash,
            "arch_summary": arch_summary,
            "num_classes": num_classes,
            "classes": classes,
            "input": {
                "name": image_input["name"],
                "shape": [1 if not isinstance(shape[0], int) else shape[0], 3, *size] if shape else [1, 3, *size],
                "batch": "dynamic" if shape and not isinstance(shape[0], int) else "static",
                "dtype": "float32",
                "layout": "NCHW",
                "color": "RGB",
                "normalization": "(pixel / 255 - mean) / std",
                "mean": mean,
                "std": std,
                "resize": resize,
            },
            "output": {
                "name": primary["outputs"][0]["name"] if primary["outputs"] else "logits",
                "shape": out_shape,
                "meaning": "per-class logits; the mask is their argmax over dim 1 (0 = background)",
            },
            "models": models,
            "engine": engine_entry,
            "plugin": plugin_entry,
            "inference_example": "infer.py",
            **extra,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        _fsync_tree(staging)  # on disk before the rename: a crash leaves the old bundle or the whole new one
        _replace_dir(staging, out_dir)
        fsync_path(out_dir.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return requested / MANIFEST_NAME


def _copy_plugin(staging: Path, plugin_dir, plugin_lib) -> dict[str, Any] | None:
    src = plugin_source_dir() if plugin_dir is True else (Path(plugin_dir) if plugin_dir else None)
    lib = plugin_library() if plugin_lib is True else (Path(plugin_lib) if plugin_lib else None)
    if src is None and lib is None:
        return None
    plugin = SPATIAL_SHIFT_PLUGIN
    entry: dict[str, Any] = {"op": plugin.op, "plugin": plugin.name, "version": plugin.version,
                             "namespace": plugin.namespace}
    if src is not None:
        if not src.is_dir():
            raise BundleError(f"{src}: no such plugin source directory")
        dest = staging / "plugin" / "spatial_shift"
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("build", "__pycache__", "*.o", "*.so"))
        entry["source"] = "plugin/spatial_shift"
        entry["source_files"] = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    if lib is not None:
        if not lib.is_file():
            raise BundleError(f"{lib}: no such plugin library")
        (staging / "plugin" / "lib").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib, staging / "plugin" / "lib" / PLUGIN_LIBRARY_NAME)
        record = lib.with_suffix(".json")
        if record.is_file():
            shutil.copyfile(record, staging / "plugin" / "lib" / record.name)
        entry["library"] = f"plugin/lib/{PLUGIN_LIBRARY_NAME}"
        entry["library_sha256"] = sha256_file(lib)
    return entry


def _fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then the directories, deepest first."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                fsync_path(Path(folder, name))
        fsync_path(Path(folder))


def _is_bundle(directory: Path) -> bool:
    """Whether `directory` holds a bundle: a manifest.json as `write_bundle` writes it."""
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT


def check_bundle_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse a bundle directory `write_bundle` must not write: anything but a directory, a
    non-empty one without `overwrite`, and, even with it, one that is not a bundle (overwrite
    deletes the old tree: it must not take a run's checkpoints or the user's files with it).
    Raises `BundleError` (one line)."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise BundleError(f"{out_dir} exists and is not a directory")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise BundleError(f"{out_dir} exists and is not empty (overwrite it with --force / overwrite=True)")
    if not _is_bundle(out_dir):
        raise BundleError(f"{out_dir} is not empty and holds no bundle (no bundle {MANIFEST_NAME}): "
                          "--force / overwrite=True replaces only a bundle; choose another directory")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system cannot."""
    if sys.platform != "linux":
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc before 2.28, musl
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without the flag
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace_dir(staging: Path, out_dir: Path) -> None:
    if out_dir.exists() and _exchange(staging, out_dir):
        # One step: a crash leaves the old bundle or the new one at out_dir, never neither.
        shutil.rmtree(staging, ignore_errors=True)
    elif out_dir.exists():
        # Two renames: a crash between them leaves out_dir missing and the old bundle in the
        # hidden sibling named here.
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(out_dir, old)
        try:
            os.replace(staging, out_dir)
        except BaseException:
            os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


# ---- reading ---------------------------------------------------------------------------------


def read_bundle(bundle_dir: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """The manifest of a bundle; with `verify`, every listed file must exist and match its sha256."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not a readable bundle manifest ({exc})") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not an autonad-edge bundle manifest")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle version {manifest.get('version')!r} is not supported")
    if verify:
        entries = list(manifest.get("models", [])) + ([manifest["engine"]] if manifest.get("engine") else [])
        for entry in entries:
            file = bundle_dir / entry["file"]
            if not file.is_file():
                raise BundleError(f"{bundle_dir}: {entry['file']} is missing")
            if sha256_file(file) != entry["sha256"]:
                raise BundleError(f"{bundle_dir}: {entry['file']} does not match its sha256")
    return manifest
