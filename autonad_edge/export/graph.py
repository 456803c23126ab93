"""Graph clean-up and reporting for exported ONNX models.

`simplify` runs onnxscript's optimizer (constant folding, dead-code removal, basic rewrites)
and then the `onnx_ir` passes that leave a graph with no dead nodes, no unused initializers,
no Identity nodes, no duplicated constants and no per-node export metadata (torch stack
traces, which otherwise make up a large part of the file). `op_counts`/`graph_report` are what
the CLI prints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import onnx

SIMPLIFY_LEVELS = ("auto", "full", "fast", "none")


def simplify(model: onnx.ModelProto, level: str = "auto") -> onnx.ModelProto:
    """A cleaned copy of `model`: folded, dead-code free, sorted, metadata stripped.

    ``level="full"`` is onnxscript's optimizer (constant folding and its pattern rewrites, e.g.
    collapsing shape arithmetic, to a fixed point); ``"fast"`` folds constants, removes dead
    code and applies only the rewrites that matter for static graphs here (Pad into Conv,
    Slice/Transpose/Reshape no-ops), about 3x quicker. With static shapes both give the same
    graph (folding leaves no shape arithmetic for the other rewrites to work on); with a
    dynamic dimension "full" removes a few more Shape/Concat nodes. ``"auto"`` (default) is
    "full" when the model has a dynamic input dimension, else "fast". All end with the same
    clean-up passes; ``"none"`` returns `model`.
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as passes
    import onnxscript.optimizer
    from onnxscript.optimizer import _constant_folding

    if level not in SIMPLIFY_LEVELS:
        raise ValueError(f"level must be one of {', '.join(SIMPLIFY_LEVELS)}, got {level!r}")
    if level == "none":
        return model
    if level == "auto":
        level = "full" if has_dynamic_inputs(model) else "fast"
    ir_model = ir.serde.deserialize_model(model)
    if level == "full":
        onnxscript.optimizer.optimize_ir(ir_model)
    else:
        ir.passes.Sequential(
            passes.InlinePass(),
            ir.passes.PassManager(
                [_constant_folding.FoldConstantsPass(
                    shape_inference=True,
                    input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                    output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
                ), passes.RemoveUnusedNodesPass()],
                steps=2,
                early_stop=True,
            ),
        )(ir_model)
        rules = _cheap_rewrite_rules()
        if rules:
            import onnxscript.rewriter

            ir.passes.Sequential(onnxscript.rewriter.RewritePass(rules), passes.RemoveUnusedNodesPass())(ir_model)
    ir.passes.Sequential(
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.IdentityEliminationPass(),
        passes.CommonSubexpressionEliminationPass(),
        passes.DeduplicateInitializersPass(),
        passes.RemoveUnusedNodesPass(),
        passes.RemoveUnusedFunctionsPass(),
        passes.RemoveUnusedOpsetsPass(),
        passes.TopologicalSortPass(),
        passes.ClearMetadataAndDocStringPass(),
    )(ir_model)
    return ir.serde.serialize_model(ir_model)


def _cheap_rewrite_rules() -> list:
    """The few pattern rewrites that matter for static graphs of this network (Pad fused into
    the following Conv, no-op and successive Slice/Transpose/Reshape); the full default set
    costs most of "full"'s time."""
    try:
        from onnxscript.rewriter.rules import common as rules
    except ImportError:  # an onnxscript without the public rule names: fold only
        return []
    names = (
        "normalize_pad_format_conv_rule", "fuse_pad_into_conv_rule", "collapse_slice_rule",
        "collapse_slice2_rule", "no_op_transpose_rule", "transpose_transpose_rule", "reshape_reshape_rule",
    )
    return [getattr(rules, n) for n in names if hasattr(rules, n)]


def has_dynamic_inputs(model: onnx.ModelProto) -> bool:
    initializers = {t.name for t in model.graph.initializer}
    return any(
        not d.HasField("dim_value")
        for v in model.graph.input
        if v.name not in initializers
        for d in v.type.tensor_type.shape.dim
    )


def op_counts(model: onnx.ModelProto) -> Counter:
    """Node count per op type (``domain::op`` for ops outside the default domain)."""
    return Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node
    )


def unused_initializers(model: onnx.ModelProto) -> list[str]:
    """Initializers no node (and no graph output) reads."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    return [t.name for t in model.graph.initializer if t.name not in used]


def dead_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes none of whose outputs reach a graph output."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output if o}
    live: set[int] = set()
    stack = [o.name for o in graph.output]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        stack.extend(i for i in node.input if i)
    return [n.name or n.op_type for n in graph.node if id(n) not in live]


@dataclass
class GraphReport:
    nodes: int
    ops: dict[str, int]
    initializers: int
    parameters: int
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes, "ops": dict(self.ops), "initializers": self.initializers,
            "parameters": self.parameters, "inputs": self.inputs, "outputs": self.outputs,
        }

    def ops_line(self) -> str:
        return ", ".join(f"{op} {n}" for op, n in sorted(self.ops.items(), key=lambda kv: (-kv[1], kv[0])))


def _value_spec(v: onnx.ValueInfoProto) -> dict[str, Any]:
    t = v.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in t.shape.dim]
    return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}


def graph_report(model: onnx.ModelProto) -> GraphReport:
    counts = op_counts(model)
    params = 0
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        params += n
    return GraphReport(
        nodes=sum(counts.values()),
        ops=dict(sorted(counts.items())),
        initializers=len(model.graph.initializer),
        parameters=params,
        inputs=[_value_spec(v) for v in model.graph.input],
        outputs=[_value_spec(v) for v in model.graph.output],
    )
