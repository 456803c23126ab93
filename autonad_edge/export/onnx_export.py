"""ONNX export of any module of the network, in two flavours.

``portable``
    `torch.ops.autonad.spatial_shift` is lowered to standard ONNX (per channel group, two
    Slices and a Concat along H or W; one Concat over the groups), so the model runs in any
    ONNX runtime.
``tensorrt``
    Each spatial shift is ONE node ``autonad::SpatialShift`` (opset import ``autonad`` v1)
    with attributes ``pattern`` (1|2), ``plugin_version="1"`` and ``plugin_namespace="autonad"``:
    TensorRT's ONNX parser falls back to its plugin registry for an op it does not know and
    looks the creator up by op type, ``plugin_version`` and ``plugin_namespace``, so the node
    binds to the "SpatialShift" v1 IPluginV3 in namespace "autonad"
    (``agents/autonad_agent/plugins/spatial_shift``). Every other attribute (``pattern``)
    reaches the plugin creator as a plugin field.

Exporter choice: torch's default ``dynamo=True`` exporter (torch.export + onnxscript). A
``torch.library`` custom op survives torch.export as one FX node, and the exporter's
``custom_translation_table`` maps it to whatever ONNX we want, per flavour, with the tensor's
static shape at hand. The legacy TorchScript exporter (``dynamo=False``) is deprecated, needs a
global symbolic registration, and fails on parts of this network (symbolic ``reshape`` sizes in
the conv mixing), so it is not used. Output is opset 18, cleaned by `graph.simplify`.

The custom node is emitted through a private `onnx.defs.OpSchema` that is never registered
globally, so ONNX tooling elsewhere in the process is unaffected; onnx's checker and shape
inference skip nodes of an unregistered domain, and the exporter writes the node's output
shape into ``value_info`` (from the op's fake implementation), so
``onnx.checker.check_model(model, full_check=True)`` passes for both flavours.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import warnings
from typing import Sequence

import onnx
import torch
from torch import Tensor, nn

from autonad_agent.plugin_identity import SPATIAL_SHIFT_PLUGIN
from autonad_edge.errors import AutonadError
from autonad_edge.latency.blocks import Unit
from autonad_edge.models.geometry import image_hw
from autonad_edge.models.network import SegmentationNet
from autonad_edge.space import Arch, SearchSpace

FLAVORS = ("portable", "tensorrt")
OPSET = 18
# The plugin's op type, version and namespace (the node's domain) come from the one place the
# agent and the bundle read them too.
CUSTOM_DOMAIN = SPATIAL_SHIFT_PLUGIN.namespace
CUSTOM_DOMAIN_VERSION = 1
PLUGIN_NAME = SPATIAL_SHIFT_PLUGIN.name
PLUGIN_VERSION = SPATIAL_SHIFT_PLUGIN.version
PLUGIN_NAMESPACE = SPATIAL_SHIFT_PLUGIN.namespace
_INT64_MAX = 2**63 - 1
# torch.export and the exporter's logging/stdout handling are process-global: one at a time.
_EXPORT_LOCK = threading.Lock()


class ExportError(AutonadError, RuntimeError):
    """An export that failed; the message is one line naming the cause."""


# ---- translations of torch.ops.autonad.spatial_shift -----------------------------------------


def _portable_spatial_shift(x, pattern: int):
    """Slice/Concat lowering; same grouping and border rule as `spatial_shift_reference`."""
    from onnxscript import opset18 as op

    from autonad_edge.models.spatial_shift import SHIFT_PATTERNS, channel_groups

    channels = x.shape[1]
    if not isinstance(channels, int):
        raise ExportError("spatial shift needs a static channel count to export")

    def const(values: list[int]):
        return op.Constant(value_ints=values)

    pieces = []
    for (start, stop), (dim, step) in zip(channel_groups(channels), SHIFT_PATTERNS[pattern]):
        if stop <= start:
            continue
        axes = const([1, dim])
        # Each piece slices its channel group and a window along `dim` in one Slice. Negative
        # / INT64_MAX ends keep it independent of H and W (H or W of 1 gives back the input).
        if step > 0:  # y[h] = x[h-1], y[0] = x[0]
            first = op.Slice(x, const([start, 0]), const([stop, 1]), axes)
            rest = op.Slice(x, const([start, 0]), const([stop, -1]), axes)
        else:  # y[h] = x[h+1], y[n-1] = x[n-1]
            first = op.Slice(x, const([start, 1]), const([stop, _INT64_MAX]), axes)
            rest = op.Slice(x, const([start, -1]), const([stop, _INT64_MAX]), axes)
        pieces.append(op.Concat(first, rest, axis=dim))
    if len(pieces) == 1:
        return pieces[0]
    return op.Concat(*pieces, axis=1)


def _spatial_shift_schema() -> onnx.defs.OpSchema:
    S = onnx.defs.OpSchema
    return S(
        PLUGIN_NAME,
        CUSTOM_DOMAIN,
        CUSTOM_DOMAIN_VERSION,
        doc="AutoNAD spatial shift (TensorRT plugin SpatialShift v1, namespace autonad).",
        inputs=[S.FormalParameter("x", "T")],
        outputs=[S.FormalParameter("y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "NCHW activations")],
        attributes=[
            S.Attribute("pattern", S.AttrType.INT, "1 (Eq. 18) or 2 (Eq. 19)"),
            S.Attribute("plugin_version", S.AttrType.STRING, "TensorRT plugin version"),
            S.Attribute("plugin_namespace", S.AttrType.STRING, "TensorRT plugin namespace"),
        ],
    )


_TRT_OP = None


def _tensorrt_spatial_shift(x, pattern: int):
    global _TRT_OP
    if _TRT_OP is None:
        from onnxscript.values import Op, Opset

        _TRT_OP = Op(Opset(CUSTOM_DOMAIN, CUSTOM_DOMAIN_VERSION), PLUGIN_NAME, op_schema=_spatial_shift_schema())
    return _TRT_OP(
        x, pattern=int(pattern), plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE
    )


def translation_table(flavor: str) -> dict:
    check_flavor(flavor)
    import autonad_edge.models.spatial_shift  # noqa: F401  (registers the op: a model without shifts may not have)

    fn = _portable_spatial_shift if flavor == "portable" else _tensorrt_spatial_shift
    return {torch.ops.autonad.spatial_shift.default: fn}


_REGISTRIES: dict[tuple[str, int], object] = {}


def _cached_registry(flavor: str, opset: int):
    """The exporter's op registry (torchlib + our translation table), built once per flavour.

    `torch.onnx.export` rebuilds it on every call from torchlib's Python sources, about 0.9 s,
    half the export of a small block; profiling exports hundreds of blocks. Uses the
    exporter's internal entry points (stable since torch 2.6); None if they are missing, and
    the public `torch.onnx.export` is used instead."""
    key = (flavor, opset)
    if key not in _REGISTRIES:
        try:
            from torch.onnx._internal.exporter import _constants, _registration

            registry = _registration.ONNXRegistry.from_torchlib(opset_version=max(opset, _constants.TORCHLIB_OPSET))
            for torch_op, onnx_op in translation_table(flavor).items():
                registry.register_op(torch_op, onnx_op, is_complex=False)
        except (ImportError, AttributeError, TypeError):
            registry = None
        _REGISTRIES[key] = registry
    return _REGISTRIES[key]


_CIA_OPS: dict[tuple, object] = {}


@contextlib.contextmanager
def _cached_cia_ops():
    """torch.export's set of preservable CompositeImplicitAutograd ops, computed once per state
    of the op registry instead of on every export.

    torch rebuilds the set twice per export by walking every registered operator (about 0.3 s,
    a third of a small block's export) because a custom op may be registered at any time. The
    cache key is what such a registration changes: the dispatcher's CIA registrations and the
    op namespaces; a new op changes the key and the set is rebuilt. Used inside the export lock;
    a torch without these internals exports uncached."""
    try:
        from torch._export import utils as export_utils
        from torch.export import decomp_utils, exported_program
    except ImportError:
        yield
        return
    original = getattr(export_utils, "_collect_all_valid_cia_ops", None)
    users = [m for m in (exported_program, decomp_utils) if getattr(m, "_collect_all_valid_cia_ops", None) is original]
    if original is None or not users:
        yield
        return

    def collect():
        key = (len(torch._C._dispatch_get_registrations_for_dispatch_key("CompositeImplicitAutograd")),
               tuple(sorted(torch.ops._dir)))
        if key not in _CIA_OPS:
            _CIA_OPS.clear()
            _CIA_OPS[key] = original()
        return _CIA_OPS[key]

    for m in users:
        m._collect_all_valid_cia_ops = collect
    try:
        yield
    finally:
        for m in users:
            m._collect_all_valid_cia_ops = original


def _torch_onnx_export(module: nn.Module, inputs: tuple[Tensor, ...], flavor: str, opset: int,
                       input_names: list[str], output_names: list[str], dynamic_shapes):
    """`torch.onnx.export(dynamo=True)` with a cached registry and CIA op set where possible
    (same result)."""
    options = dict(input_names=input_names, output_names=output_names, dynamic_shapes=dynamic_shapes,
                   optimize=False, verbose=False, report=False, opset_version=opset)
    registry = _cached_registry(flavor, opset)
    with _cached_cia_ops():
        if registry is not None:
            try:
                from torch.onnx._internal.exporter import _core
            except ImportError:
                pass
            else:
                return _core.export(module, inputs, registry=registry, **options)
        return torch.onnx.export(module, inputs, dynamo=True, custom_translation_table=translation_table(flavor),
                                 **options)


def check_flavor(flavor: str) -> str:
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}")
    return flavor


# ---- export ----------------------------------------------------------------------------------


def _default_names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def _count_outputs(module: nn.Module, example_inputs: tuple[Tensor, ...]) -> int:
    with torch.no_grad():
        out = module(*example_inputs)
    return len(out) if isinstance(out, (tuple, list)) else 1


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress to stdout and logs warnings; keep a CLI's output clean."""
    buffer = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _one_line(exc: BaseException) -> str:
    # The exporter's messages are long; the innermost cause usually names the problem.
    inner: BaseException = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = " ".join(str(inner).split()) or type(inner).__name__
    return f"{type(inner).__name__}: {text[:300]}"


def export_module(
    module: nn.Module,
    example_inputs: tuple[Tensor, ...],
    flavor: str = "portable",
    dynamic_batch: bool = False,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    *,
    opset: int = OPSET,
    simplify: str | bool = "auto",
) -> onnx.ModelProto:
    """Export `module` (any part of the network, or all of it) to an ONNX model.

    `example_inputs` fix every input's shape (and dtype); with `dynamic_batch` dimension 0 of
    every input (and hence output) is the symbolic ``batch``. Inputs are named `input_names`
    (default ``input`` or ``input_0, input_1, ...``), outputs `output_names` (default
    ``output`` / ``output_0, ...``). The module is run in eval mode (its mode is restored) on
    CPU or wherever its weights are. The result is simplified (`graph.simplify` at level
    `simplify`: "auto" (default), "full", "fast" or "none"; True/False mean "auto"/"none"), carries
    ``autonad.flavor`` in its metadata. Raises `ExportError` (one line) on failure.

    Exports are serialised by a process-wide lock (torch.export is not thread-safe); the
    exporter's progress output is swallowed while one runs.
    """
    check_flavor(flavor)
    from autonad_edge.export.graph import SIMPLIFY_LEVELS

    if not isinstance(simplify, bool) and simplify not in SIMPLIFY_LEVELS:
        raise ValueError(f"simplify must be one of {', '.join(SIMPLIFY_LEVELS)}, got {simplify!r}")
    if isinstance(example_inputs, Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if not example_inputs or not all(isinstance(t, Tensor) for t in example_inputs):
        raise ValueError("example_inputs must be a non-empty tuple of tensors")
    if opset < 17:
        raise ValueError(f"opset must be 17 or newer, got {opset}")
    input_names = list(input_names) if input_names else _default_names("input", len(example_inputs))
    if len(input_names) != len(example_inputs):
        raise ValueError(f"{len(input_names)} input names for {len(example_inputs)} inputs")

    was_training = module.training
    module.eval()
    try:
        n_out = _count_outputs(module, example_inputs)
        output_names = list(output_names) if output_names else _default_names("output", n_out)
        if len(output_names) != n_out:
            raise ValueError(f"{len(output_names)} output names for {n_out} outputs")
        dynamic_shapes = None
        trace_inputs = example_inputs
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1, max=4096)
            dynamic_shapes = tuple({0: batch} for _ in example_inputs)
            # torch.export specialises a size-1 dimension; trace with batch 2 so it stays symbolic.
            trace_inputs = tuple(t.expand(2, *t.shape[1:]).contiguous() if t.shape[0] == 1 else t
                                 for t in example_inputs)
        with _EXPORT_LOCK, _quiet() as log, torch.no_grad():
            try:
                program = _torch_onnx_export(module, trace_inputs, flavor, opset, input_names, output_names,
                                             dynamic_shapes)
            except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
                raise ExportError(f"ONNX export of {type(module).__name__} failed: {_one_line(exc)}") from exc
        del log
        model = program.model_proto
    finally:
        module.train(was_training)
    from autonad_edge.export.graph import simplify as _simplify

    level = ("auto" if simplify else "none") if isinstance(simplify, bool) else simplify
    model = _simplify(model, level)
    _finish(model, flavor)
    return model


def _finish(model: onnx.ModelProto, flavor: str) -> None:
    uses_custom = any(n.domain == CUSTOM_DOMAIN for n in model.graph.node)
    imports = {o.domain: o for o in model.opset_import}
    if uses_custom and CUSTOM_DOMAIN not in imports:
        model.opset_import.append(onnx.helper.make_opsetid(CUSTOM_DOMAIN, CUSTOM_DOMAIN_VERSION))
    elif uses_custom:
        imports[CUSTOM_DOMAIN].version = CUSTOM_DOMAIN_VERSION
    model.producer_name = "autonad-edge"
    from autonad_edge import __version__

    model.producer_version = __version__
    meta = {p.key: p for p in model.metadata_props}
    if "autonad.flavor" in meta:
        meta["autonad.flavor"].value = flavor
    else:
        model.metadata_props.append(onnx.StringStringEntryProto(key="autonad.flavor", value=flavor))


def export_module_bytes(
    module: nn.Module,
    example_inputs: tuple[Tensor, ...],
    flavor: str = "portable",
    dynamic_batch: bool = False,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    **kwargs,
) -> bytes:
    """`export_module(...)` serialised: the bytes a latency agent or a file takes."""
    return export_module(
        module, example_inputs, flavor, dynamic_batch, input_names, output_names, **kwargs
    ).SerializeToString()


# ---- the whole network -----------------------------------------------------------------------

IMAGE_INPUT = "image"
LOGITS_OUTPUT = "logits"


def export_network(
    model: nn.Module,
    image_size: tuple[int, int],
    flavor: str = "portable",
    dynamic_batch: bool = False,
    *,
    batch: int = 1,
    opset: int = OPSET,
    simplify: str | bool = "auto",
    class_names: Sequence[str] | None = None,
    max_side: int | None = None,
    squash: bool | None = None,
) -> onnx.ModelProto:
    """Export a static `SegmentationNet`: input ``image`` float32 [N, 3, H, W] (normalised),
    output ``logits`` [N, classes, H, W]. The architecture (JSON), class count and image size
    go into the model's metadata (``autonad.arch``, ``autonad.num_classes``,
    ``autonad.image_size``), and so do, when given (they live in the checkpoint, not the
    network), the class names (``autonad.class_names``, JSON), the training scale's long-side
    cap (``autonad.max_side``; absent: native scale) and whether the network was trained on
    images squashed to its input (``autonad.squash``, true/false): a bundle made from the model
    alone then preprocesses as training did."""
    h, w = (int(v) for v in image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    num_classes = getattr(model, "num_classes", None)
    # (ExportError, not ValueError: these come from a checkpoint, and `export` reports them in one line.)
    if class_names is not None and num_classes is not None and len(class_names) != int(num_classes):
        raise ExportError(f"{len(class_names)} class names for a network of {int(num_classes)} classes")
    if max_side is not None and int(max_side) < 1:
        raise ExportError(f"the training scale's max_side must be positive, got {max_side}")
    param = next(iter(model.parameters()), None)
    in_chans = getattr(getattr(model, "stages", [None])[0], "embed", None)
    channels = in_chans.in_channels if isinstance(in_chans, nn.Conv2d) else 3
    # Seeded: the same network exports the same bytes (the export cache and the agent's
    # result cache rely on it).
    example = torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(0)).to(
        dtype=param.dtype if param is not None else torch.float32,
        device=param.device if param is not None else "cpu",
    )
    onnx_model = export_module(
        model, (example,), flavor, dynamic_batch, [IMAGE_INPUT], [LOGITS_OUTPUT], opset=opset, simplify=simplify
    )
    meta = {"autonad.image_size": f"{h}x{w}"}
    arch = getattr(model, "arch", None)
    if arch is not None and hasattr(arch, "to_json"):
        meta["autonad.arch"] = arch.to_json(indent=None)
        meta["autonad.arch_hash"] = arch.hash
    if num_classes is not None:
        meta["autonad.num_classes"] = str(int(num_classes))
    if class_names is not None:
        meta["autonad.class_names"] = json.dumps([str(n) for n in class_names])
    if max_side is not None:
        meta["autonad.max_side"] = str(int(max_side))
    if squash is not None:
        meta["autonad.squash"] = "true" if squash else "false"
    set_metadata(onnx_model, meta)
    return onnx_model


def export_arch(arch: Arch, space: SearchSpace, num_classes: int, image_size, flavor: str = "portable",
                **options) -> onnx.ModelProto:
    """A freshly initialised subnet of `arch`, exported as a deployed network is
    (`export_network`): what end-to-end latency measurements time."""
    net = SegmentationNet.from_arch(arch, space, num_classes).eval()
    return export_network(net, image_hw(image_size), flavor, **options)


# Max abs difference between ONNX Runtime and torch a portable export may show.
ORT_TOLERANCE = 1e-3


def onnxruntime_error(model: nn.Module, onnx_model: onnx.ModelProto, image_size: tuple[int, int]) -> float:
    """Max abs difference between ONNX Runtime running `onnx_model` (portable flavour) and
    torch running `model`, on one seeded random image of `image_size` (on the CPU)."""
    import numpy as np
    import onnxruntime as ort

    x = torch.randn(1, 3, *image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(got - expected).max())


def export_unit(unit: Unit, flavor: str = "portable", module: nn.Module | None = None) -> onnx.ModelProto:
    """A latency unit's ONNX graph (static shapes, batch 1) for block timing; of `module` (a
    `unit.build()` result) when given, else of a freshly built one. The same graph, byte for
    byte, as `export_units_together` gives for it."""
    return export_units_together([unit], flavor, [unit.build() if module is None else module])[0]


class _Together(nn.Module):
    """Several units side by side: one forward, each unit on its own inputs."""

    def __init__(self, modules: Sequence[nn.Module], arity: Sequence[int]) -> None:
        super().__init__()
        self.units = nn.ModuleList(modules)
        self.arity = list(arity)

    def forward(self, *inputs: Tensor):
        outputs, start = [], 0
        for module, n in zip(self.units, self.arity):
            out = module(*inputs[start : start + n])
            outputs.extend(out if isinstance(out, (tuple, list)) else [out])
            start += n
        return tuple(outputs)


def export_units_together(units: Sequence[Unit], flavor: str = "portable",
                          modules: Sequence[nn.Module] | None = None) -> list[onnx.ModelProto]:
    """Each unit's ONNX graph (as `export_unit`), from ONE torch.export call over all of them.

    Part of an export's cost is per call, not per node (torch.export's tracing and
    decomposition set-up), so block timing exports its backlog in bundles. The joint graph is
    cut back into one model per unit (`onnx.utils.Extractor`) and every name is made canonical
    (`_canonical`), so a unit's bytes do not depend on its company: the export caches and the
    agent's result cache key on them. `modules` are the units' built modules (default: freshly
    built ones); an export that fails raises `ExportError` for the bundle."""
    from onnx.utils import Extractor

    if not units:
        return []
    modules = [u.build() for u in units] if modules is None else list(modules)
    if len(modules) != len(units):
        raise ValueError(f"{len(modules)} modules for {len(units)} units")
    examples = [u.example_inputs() for u in units]
    with torch.no_grad():
        counts = [_count_outputs(m.eval(), x) for m, x in zip(modules, examples)]
    in_names = [[f"u{i}.in{j}" for j in range(len(x))] for i, x in enumerate(examples)]
    out_names = [[f"u{i}.out{k}" for k in range(n)] for i, n in enumerate(counts)]
    joint = _Together(modules, [len(x) for x in examples])
    with torch.no_grad():
        model = export_module(joint, tuple(t for x in examples for t in x), flavor=flavor,
                              input_names=[n for names in in_names for n in names],
                              output_names=[n for names in out_names for n in names])
    if len(units) == 1:
        return [_canonical(model, in_names[0], out_names[0])]
    extractor = Extractor(model)
    return [_canonical(_with_header(extractor.extract_model(ins, outs), model), ins, outs)
            for ins, outs in zip(in_names, out_names)]


def _with_header(part: onnx.ModelProto, whole: onnx.ModelProto) -> onnx.ModelProto:
    """`part` with the IR version, producer and metadata of the model it was cut from."""
    part.ir_version = whole.ir_version
    part.producer_name, part.producer_version = whole.producer_name, whole.producer_version
    part.metadata_props.extend(whole.metadata_props)
    return part


def _canonical(model: onnx.ModelProto, inputs: Sequence[str], outputs: Sequence[str]) -> onnx.ModelProto:
    """`model` with names that depend only on its own graph: inputs ``input``/``input_<i>``,
    outputs ``output``/``output_<i>``, every other value numbered by first use (``p<k>`` for
    initializers, ``t<k>`` for computed values), nodes ``n<k>``; initializers and value infos in
    that order; only the opset imports its nodes use."""
    graph = model.graph
    names = dict(zip(inputs, _default_names("input", len(inputs))))
    names.update(zip(outputs, _default_names("output", len(outputs))))
    initializers = {t.name: t for t in graph.initializer}
    params: list[str] = []
    for k, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in names and name in initializers:
                names[name] = f"p{len(params)}"
                params.append(name)
        for name in node.output:
            if name and name not in names:
                names[name] = f"t{len(names)}"
        node.name = f"n{k}"
        node.doc_string = ""
        node.ClearField("metadata_props")
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    order = {new: i for i, new in enumerate(names.values())}
    kept = [initializers[old] for old in params]
    for tensor in kept:
        tensor.name = names[tensor.name]
    # (The extractor lists the graph's inputs and outputs as value infos too.)
    infos = [v for v in graph.value_info if v.name in names and v.name not in inputs and v.name not in outputs]
    for value in [*infos, *graph.input, *graph.output]:
        value.name = names.get(value.name, value.name)
        value.ClearField("metadata_props")  # the exporter's notes name the joint graph's values
    infos.sort(key=lambda v: order[v.name])
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    graph.ClearField("value_info")
    graph.value_info.extend(infos)
    graph.name = "unit"
    graph.doc_string = ""
    used = {n.domain for n in graph.node} | {""}
    imports = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    model.ClearField("opset_import")
    model.opset_import.extend(imports)
    return model


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def save_model(model: onnx.ModelProto, path) -> str:
    """Write `model` atomically to `path`; returns the file's sha256 (hex)."""
    import hashlib

    from autonad_edge.io import atomic_write_bytes

    data = model.SerializeToString()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()
