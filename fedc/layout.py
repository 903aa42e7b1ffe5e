"""Layout assignment: which parameters (and their gradients) the memory holds in panels.

A dense weight W[k, n] that the forward GEMM would copy into NR-column panels on every call
(gemm.weight_panels) is stored in those panels instead: [n / NR][k][NR], element (r, c) at
((c // NR)·k + r)·NR + c % NR. The forward reads it as it is, the input gradient packs its
transpose from it, the weight gradient writes its gradient in the same layout, and the
optimizer, which is elementwise over parameters, gradients, state and anchor, needs no change.
The manifest marks such a parameter `"layout": {"panels": NR}`; the runtimes convert at
get/set_weights, so hosts, servers and checkpoints only ever see row-major weights.

Only parameters whose every reader is one of those GEMMs, as their B operand, qualify, and
only if their gradient comes straight from a weight-gradient GEMM: anything else (an L2
penalty, a shared weight) would read the panels as if row-major.
"""

from __future__ import annotations

from .ir import Graph
from .lower import gemm

PANELS = gemm.NR
# ops that take a weight [k, n] as their second input and lower through gemm with b_packed
READERS = frozenset({"dense", "dense_relu", "matmul_nt", "matmul_nt_relu_grad"})
GRADIENT = "matmul_tn"  # writes a weight's gradient [k, n] (gemm c_packed)


def panel_values(graph: Graph) -> frozenset[int]:
    """Ids of the values stored in panels: qualifying parameters and their gradients."""
    readers: dict[int, list[tuple[str, int]]] = {}
    producer: dict[int, str] = {}
    for node in graph.nodes:
        producer[node.out.id] = node.op
        for i, v in enumerate(node.inputs):
            readers.setdefault(v.id, []).append((node.op, i))
    outputs: dict[int, list[str]] = {}
    for name, v in graph.outputs:
        outputs.setdefault(v.id, []).append(name)
    grads = {k.removeprefix("grad:"): v for k, v in graph.outputs if k.startswith("grad:")}
    out: set[int] = set()
    for prm in graph.params:
        v = prm.value
        if v.type.dtype != "f32" or v.type.batched or len(v.type.shape) != 2:
            continue
        k, n = (int(d) for d in v.type.shape)
        uses = readers.get(v.id, [])
        if not gemm.weight_panels(n, k) or not uses or v.id in outputs or \
                any(op not in READERS or i != 1 for op, i in uses):
            continue
        g = grads.get(v.name)
        if g is not None and (producer.get(g.id) != GRADIENT or g.id in readers
                              or outputs[g.id] != [f"grad:{v.name}"]):
            continue
        out.add(v.id)
        if g is not None:
            out.add(g.id)
    return frozenset(out)
