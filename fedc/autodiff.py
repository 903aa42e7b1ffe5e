"""Reverse-mode autodiff: forward graph → training graph with one gradient output per parameter."""

from __future__ import annotations

from .diagnostics import CheckError, Diagnostic, InternalError
from .ir import Graph, GraphBuilder, Node, Value
from .ops import REGISTRY
from .ops.surface import GradBuilder


def _needs_grad(graph: Graph) -> set[int]:
    """Ids of values that depend on a parameter (only those need a gradient)."""
    needs = {p.value.id for p in graph.params}
    for node in graph.nodes:
        if any(v.id in needs for v in node.inputs):
            needs.add(node.out.id)
    return needs


def _reaches_loss(graph: Graph, loss: Value) -> list[Node]:
    """The forward nodes the loss depends on, in reverse topological order."""
    live = {loss.id}
    out = []
    for node in reversed(graph.nodes):
        if node.out.id in live:
            out.append(node)
            live.update(v.id for v in node.inputs)
    return out


def grad(graph: Graph) -> Graph:
    """Append the backward pass of `loss` to the forward graph.

    Outputs keep the forward ones and add `grad:<param name>` for every parameter; each of
    those is a value of its own (a `copy` is inserted if a gradient is shared), so the memory
    plan can place it in the gradient region.
    """
    loss = graph.output("loss")
    needs = _needs_grad(graph)
    g = GraphBuilder.extend(graph)
    seed = g.emit("const", [], {"value": 1.0}, graph.nodes[-1].span, "dloss")
    adj: dict[int, Value] = {loss.id: seed}
    for node in _reaches_loss(graph, loss):
        dy = adj.get(node.out.id)
        if dy is None:
            continue
        opdef = REGISTRY[node.op]
        if opdef.grad is None:
            raise CheckError([Diagnostic(f"{node.op} cannot be differentiated (it has no "
                                         "gradient rule), but the loss depends on it", node.span)])
        in_needs = tuple(v.id in needs for v in node.inputs)
        grads = opdef.grad(GradBuilder(g, node.span), node, dy, in_needs)
        if len(grads) != len(node.inputs):
            raise InternalError(f"gradient rule of {node.op} returned {len(grads)} values "
                                f"for {len(node.inputs)} inputs", node.span)
        for v, dv, need in zip(node.inputs, grads, in_needs, strict=True):
            if dv is None or not need:
                continue
            if dv.type != v.type:
                raise InternalError(f"gradient of {node.op} for %{v.id} is {dv.type}, "
                                    f"expected {v.type}", node.span)
            prev = adj.get(v.id)
            adj[v.id] = dv if prev is None else g.emit("add", [prev, dv], None, node.span)
    outputs = list(graph.outputs)
    claimed: set[int] = set()
    used = {v.id for n in g.nodes for v in n.inputs}
    for p in graph.params:
        dv = adj.get(p.value.id)
        if dv is None:  # the loss does not depend on this parameter: its gradient is zero
            dv = g.emit("scale_zero", [p.value], None, p.span)
        if dv.id in claimed or dv.id in used or dv.id not in {n.out.id for n in g.nodes}:
            dv = g.emit("copy", [dv], None, p.span)
        claimed.add(dv.id)
        outputs.append((f"grad:{p.value.name}", dv))
    return g.build(outputs)
