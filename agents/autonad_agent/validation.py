"""Checks an uploaded ONNX model before any runtime sees it.

Runs in the worker process (parsing untrusted bytes is part of what is isolated there).
The agent only ever executes the graph it was sent: no external-data files (they would
make the runtime read paths on the agent's disk) and no custom op domains except those
the chosen backend implements from its own install.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, TensorProto, helper

from autonad_agent.backends.base import ModelRejected, TensorSpec

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
# numpy cannot even describe a larger array (random inputs are drawn as 8-byte values before
# the cast to the input's dtype): such a shape fails here as a rejection, not in the runtime.
MAX_INPUT_ELEMENTS = np.iinfo(np.intp).max // 8


def _nested(nodes) -> Iterator[GraphProto]:
    """Every graph held in the attributes of `nodes` (If/Loop/Scan bodies), with theirs."""
    for node in nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _subgraphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _subgraphs(sub)


def _subgraphs(graph: GraphProto) -> Iterator[GraphProto]:
    """`graph` and every graph nested in node attributes (If/Loop/Scan bodies)."""
    yield graph
    yield from _nested(graph.node)


def _graphs(model: ModelProto) -> list[GraphProto]:
    """Every graph of `model` a runtime may read: the main one, the training-info graphs and
    the graphs nested in them and in model-local function bodies."""
    graphs = list(_subgraphs(model.graph))
    for info in model.training_info:
        graphs += [*_subgraphs(info.initialization), *_subgraphs(info.algorithm)]
    for function in model.functions:
        graphs += list(_nested(function.node))
    return graphs


def _nodes(model: ModelProto) -> list[onnx.NodeProto]:
    """Every node of `model`: its graphs' (`_graphs`) and its function bodies'."""
    return [node for g in _graphs(model) for node in g.node] + [node for f in model.functions for node in f.node]


def _tensors(model: ModelProto) -> Iterator[TensorProto]:
    for graph in _graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
    for node in _nodes(model):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices


def parse_model(model_bytes: bytes) -> ModelProto:
    try:
        return onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelRejected(f"not a valid ONNX model ({type(exc).__name__}: {exc})") from None


def check_model(model: ModelProto, allowed_custom_domains: Sequence[str]) -> None:
    """Refuse external data, disallowed op domains and models the ONNX checker rejects."""
    for tensor in _tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            raise ModelRejected(
                f"tensor {tensor.name!r} references external data; the agent only accepts "
                "self-contained models (save with all tensors inside the .onnx file)"
            )
    allowed = STANDARD_DOMAINS | set(allowed_custom_domains)
    domains = {opset.domain for opset in model.opset_import}
    domains |= {opset.domain for f in model.functions for opset in f.opset_import}
    domains |= {node.domain for node in _nodes(model)}  # function bodies included
    domains |= {f.domain for f in model.functions}
    refused = sorted(domains - allowed)
    if refused:
        raise ModelRejected(
            f"custom op domain(s) {', '.join(map(repr, refused))} not allowed on this backend "
            f"(allowed custom domains: {', '.join(sorted(allowed_custom_domains)) or 'none'})"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError, or a C++ error surfaced as another type
        raise ModelRejected(f"invalid ONNX model: {exc}") from None


def model_inputs(model: ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller must feed (initializers listed as inputs excluded)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def resolve_inputs(model: ModelProto, requested: Sequence[TensorSpec]) -> list[TensorSpec]:
    """The input specs to feed: `requested` checked against the model, or the model's own
    static shapes when nothing was requested. ModelRejected for inputs the agent cannot feed."""
    declared = model_inputs(model)
    if requested:
        names = {spec.name for spec in requested}
        expected = {value.name for value in declared}
        if names != expected or len(names) != len(requested):
            raise ModelRejected(
                f"inputs {sorted(spec.name for spec in requested)} do not match the model's inputs {sorted(expected)}"
            )
        specs = list(requested)
    else:
        specs = [_declared_spec(value) for value in declared]
    for spec in specs:
        elements = math.prod(spec.shape)
        if elements > MAX_INPUT_ELEMENTS:
            raise ModelRejected(f"input {spec.name!r}: shape {spec.shape} has {elements} elements, "
                                "more than any array can hold")
    return specs


def _declared_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    """The spec of a model input as the model declares it."""
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        raise ModelRejected(f"input {value.name!r} is not a tensor")
    shape = []
    for dim in tensor_type.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value <= 0:
            raise ModelRejected(f"input {value.name!r} has a dynamic dimension; pass its shape explicitly")
        shape.append(dim.dim_value)
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    except Exception:
        raise ModelRejected(f"input {value.name!r} has unsupported element type {tensor_type.elem_type}") from None
    try:
        return TensorSpec(value.name, tuple(shape), dtype)
    except ValueError as exc:  # a string or bfloat16 input, rank or sides beyond the limits
        raise ModelRejected(f"cannot feed the model: {exc}") from None
