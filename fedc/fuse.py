"""Fusion: training graph → the same computation with some op pairs fused into GEMM epilogues.

The rewrite rules and the fused ops live in the op registry (fedc/ops/fused.py); this pass only
applies them, rule by rule, until none matches. The result is an ordinary graph: verify() and
the reference interpreter accept it, and it computes the same values.
"""

from __future__ import annotations

from .ir import Graph, Node, Value
from .ops.fused import RULES, Fusion, Uses


def fuse(graph: Graph) -> Graph:
    """Apply every fusion rule of the registry wherever it matches."""
    for op, rule in RULES:
        while True:
            uses = _uses(graph)
            found = next((f for n in graph.nodes if n.op == op
                          if (f := rule(uses, n)) is not None), None)
            if found is None:
                break
            graph = _apply(graph, found)
    return graph


def _uses(graph: Graph) -> Uses:
    readers: dict[int, list[Node]] = {}
    for node in graph.nodes:
        for v in node.inputs:
            readers.setdefault(v.id, []).append(node)
    return Uses({n.out.id: n for n in graph.nodes}, readers, {v.id for _, v in graph.outputs})


def _apply(graph: Graph, f: Fusion) -> Graph:
    dropped = {id(n) for n in f.drop}

    def renamed(v: Value) -> Value:
        return f.rename.get(v.id, v)

    nodes = []
    for node in graph.nodes:
        if node is f.at:
            nodes.append(f.node)
        elif id(node) not in dropped:
            ins = tuple(renamed(v) for v in node.inputs)
            nodes.append(node if ins == node.inputs else
                         Node(node.op, ins, node.attrs, node.out, node.span))
    outputs = tuple((k, renamed(v)) for k, v in graph.outputs)
    return Graph(graph.inputs, graph.params, tuple(nodes), outputs)
