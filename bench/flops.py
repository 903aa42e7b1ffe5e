"""Arithmetic of one training step: a compiled model's training IR → multiply-add FLOPs.

Counts the products of the GEMM-like nodes (dense layers and their two gradients, convolutions
and their two gradients), 2 FLOPs per multiply-add, at a given batch size: `direct` as the
definition computes them, or as fedc's kernels do (a Winograd F(m×m, 3×3) convolution does a²
multiplies per tile and channel pair where the direct one does 9·m²). Element-wise work
(activations, the loss, pooling, transforms, the update) is left out, so the count is a lower
bound of what a step computes, and `flops / peak` a lower bound of its time at that peak.
"""

from __future__ import annotations

import math
from typing import Any


def _elems(t: Any, batch: int) -> int:
    return math.prod(t.concrete(batch))


def node_macs(node: Any, batch: int, direct: bool = True) -> int:
    """Multiply-adds of one training-IR node (0 for nodes that are not a product); with
    direct=False, as fedc's lowering computes them."""
    macs = _direct_macs(node, batch)
    if direct or not node.op.startswith("conv"):
        return macs
    from fedc.lower import conv
    from fedc.ops.conv import _node_shape

    which = 2 if node.op.endswith("_grad_weight") else 1 if node.op.endswith("_grad_input") else 0
    m = conv.WINOGRAD.get(conv.strategy(_node_shape(node), which))
    return macs if m is None else macs * (m + 2) ** 2 // (9 * m * m)


def _direct_macs(node: Any, batch: int) -> int:
    op, ins, out = node.op, node.inputs, node.out.type
    if op.startswith("dense"):  # x[B, K] · W[K, N]
        return _elems(out, batch) * ins[0].type.shape[-1]
    if op.startswith("matmul_nt"):  # a[B, N] · W[K, N]ᵀ
        return _elems(out, batch) * ins[1].type.shape[-1]
    if op == "matmul_tn":  # a[B, K]ᵀ · g[B, N]: the batch is the reduction
        return _elems(out, batch) * batch
    if op.startswith("conv") and op.endswith("_grad_weight"):  # (x, dy) → W[O, C/g, k…]
        return _elems(ins[1].type, batch) * math.prod(out.shape[1:])
    if op.startswith("conv") and op.endswith("_grad_input"):  # (dy, W)
        return _elems(ins[0].type, batch) * math.prod(ins[1].type.shape[1:])
    if op.startswith("conv"):  # (x, W, b) → y: each output reduces over C/g·k…
        return _elems(out, batch) * math.prod(ins[1].type.shape[1:])
    return 0


def step_flops(source: str, path: str, batch: int, direct: bool = True) -> int:
    """FLOPs (2 per multiply-add) of the products in one train_step of a .fed model."""
    from fedc.pipeline import Options, compile_source

    art = compile_source(source, path, Options())
    return 2 * sum(node_macs(node, batch, direct) for node in art.train_graph.nodes)
