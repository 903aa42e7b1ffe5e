"""Arithmetic of one training step: a compiled model's training IR → multiply-add FLOPs.

Counts the products of the GEMM-like nodes (dense layers and their two gradients, convolutions
and their two gradients), 2 FLOPs per multiply-add, at a given batch size. Element-wise work
(activations, the loss, pooling, the update) is left out, so the count is a lower bound of what
a step must compute, and `flops / peak` a lower bound of its time on a machine of that peak.
"""

from __future__ import annotations

import math
from typing import Any


def _elems(t: Any, batch: int) -> int:
    return math.prod(t.concrete(batch))


def node_macs(node: Any, batch: int) -> int:
    """Multiply-adds of one training-IR node (0 for nodes that are not a product)."""
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


def step_flops(source: str, path: str, batch: int) -> int:
    """FLOPs (2 per multiply-add) of the products in one train_step of a .fed model."""
    from fedc.pipeline import Options, compile_source

    art = compile_source(source, path, Options())
    return 2 * sum(node_macs(node, batch) for node in art.train_graph.nodes)
