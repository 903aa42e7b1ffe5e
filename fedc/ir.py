"""The IR: a flat list of typed SSA nodes in topological order, its text form, and verify()."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .diagnostics import InternalError, Span

BATCH = "N"  # the symbolic batch dimension: the module is compiled for 1 ≤ N ≤ max_batch
Dim = int | str


@dataclass(frozen=True)
class TensorType:
    dtype: str  # "f32" | "i32"
    shape: tuple[Dim, ...]

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    @property
    def batched(self) -> bool:
        return bool(self.shape) and self.shape[0] == BATCH

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The per-example shape (without the batch dim)."""
        dims = self.shape[1:] if self.batched else self.shape
        return tuple(int(d) for d in dims)

    @property
    def row_size(self) -> int:
        return math.prod(self.row_shape)

    def numel(self, batch: int) -> int:
        return self.row_size * (batch if self.batched else 1)

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)


def f32(*shape: Dim) -> TensorType:
    return TensorType("f32", tuple(shape))


def i32(*shape: Dim) -> TensorType:
    return TensorType("i32", tuple(shape))


@dataclass(frozen=True)
class Value:
    """An SSA value: assigned once, by a node or as a graph input/parameter."""

    id: int
    type: TensorType
    name: str = ""

    def __str__(self) -> str:
        return f"%{self.id}"


@dataclass(frozen=True)
class Node:
    op: str
    inputs: tuple[Value, ...]
    attrs: tuple[tuple[str, Any], ...]
    out: Value
    span: Span

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class Param:
    """A trainable parameter: its value, name and initialiser (manifest-ready dict)."""

    value: Value
    init: tuple[tuple[str, Any], ...]
    span: Span


@dataclass(frozen=True)
class Graph:
    inputs: tuple[Value, ...]  # batch data: model inputs, then targets
    params: tuple[Param, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[tuple[str, Value], ...]  # "loss", "prediction", "grad:<param>"

    def output(self, name: str) -> Value:
        for k, v in self.outputs:
            if k == name:
                return v
        raise KeyError(name)

    def has_output(self, name: str) -> bool:
        return any(k == name for k, _ in self.outputs)

    @property
    def param_values(self) -> tuple[Value, ...]:
        return tuple(p.value for p in self.params)


@dataclass
class GraphBuilder:
    """Appends nodes with fresh SSA ids; shape rules run as nodes are added."""

    inputs: list[Value] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    next_id: int = 0

    @classmethod
    def extend(cls, graph: Graph) -> GraphBuilder:
        all_values = [*graph.inputs, *graph.param_values, *(n.out for n in graph.nodes)]
        return cls(list(graph.inputs), list(graph.params), list(graph.nodes),
                   max((v.id for v in all_values), default=-1) + 1)

    def fresh(self, type_: TensorType, name: str = "") -> Value:
        v = Value(self.next_id, type_, name)
        self.next_id += 1
        return v

    def add_input(self, type_: TensorType, name: str) -> Value:
        v = self.fresh(type_, name)
        self.inputs.append(v)
        return v

    def add_param(self, shape: tuple[int, ...], name: str, init: dict[str, Any],
                  span: Span) -> Value:
        v = self.fresh(f32(*shape), name)
        self.params.append(Param(v, tuple(init.items()), span))
        return v

    def emit(self, op: str, inputs: Iterable[Value], attrs: dict[str, Any] | None,
             span: Span, name: str = "") -> Value:
        from .ops import REGISTRY, ShapeError

        ins = tuple(inputs)
        attr_items = tuple(sorted((attrs or {}).items()))
        try:
            out_type = REGISTRY[op].shape(tuple(v.type for v in ins), dict(attr_items))
        except ShapeError as exc:
            raise InternalError(f"{op}: {exc}", span) from exc
        out = self.fresh(out_type, name)
        self.nodes.append(Node(op, ins, attr_items, out, span))
        return out

    def build(self, outputs: Iterable[tuple[str, Value]]) -> Graph:
        return Graph(tuple(self.inputs), tuple(self.params), tuple(self.nodes), tuple(outputs))


def live(graph: Graph) -> Graph:
    """The graph without the nodes and parameters its outputs do not depend on (the inputs,
    the module's ABI, are all kept)."""
    needed = {v.id for _, v in graph.outputs}
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if node.out.id in needed:
            kept.append(node)
            needed.update(v.id for v in node.inputs)
    params = tuple(p for p in graph.params if p.value.id in needed)
    return Graph(graph.inputs, params, tuple(reversed(kept)), graph.outputs)


def _fmt_attr(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def format_node(node: Node) -> str:
    args = ", ".join([*(str(v) for v in node.inputs),
                      *(f"{k}={_fmt_attr(v)}" for k, v in node.attrs)])
    name = f" ({node.out.name})" if node.out.name else ""
    return f"  %{node.out.id}: {node.out.type} = {node.op} {args}  # {node.span}{name}"


def format_graph(graph: Graph, title: str = "graph") -> str:
    """The stable text form printed by `fedc compile --emit ir` and compared by golden tests."""
    lines = [f"{title}("]
    for v in graph.inputs:
        lines.append(f"    input %{v.id}: {v.type}  ({v.name})")
    for p in graph.params:
        lines.append(f"    param %{p.value.id}: {p.value.type}  ({p.value.name})")
    lines.append(") {")
    lines.extend(format_node(n) for n in graph.nodes)
    outs = ", ".join(f"{k}=%{v.id}" for k, v in graph.outputs)
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines)


def verify(graph: Graph) -> None:
    """Re-run every shape rule; check single assignment and definition before use."""
    from .ops import REGISTRY, ShapeError

    defined: dict[int, Value] = {}

    def define(v: Value, where: Span | None) -> None:
        if v.id in defined:
            raise InternalError(f"%{v.id} assigned twice", where)
        defined[v.id] = v

    for v in graph.inputs:
        define(v, None)
    for p in graph.params:
        define(p.value, p.span)
    for node in graph.nodes:
        opdef = REGISTRY.get(node.op)
        if opdef is None:
            raise InternalError(f"unknown op {node.op!r}", node.span)
        for v in node.inputs:
            if defined.get(v.id) != v:
                raise InternalError(f"{node.op} uses %{v.id} before its definition", node.span)
        try:
            expected = opdef.shape(tuple(v.type for v in node.inputs), dict(node.attrs))
        except ShapeError as exc:
            raise InternalError(f"{node.op}: {exc}", node.span) from exc
        if expected != node.out.type:
            raise InternalError(
                f"{node.op} produces {node.out.type} but its shape rule says {expected}", node.span
            )
        define(node.out, node.span)
    for name, v in graph.outputs:
        if defined.get(v.id) != v:
            raise InternalError(f"output {name} (%{v.id}) is not defined")
