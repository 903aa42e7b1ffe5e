"""Fused ops (GEMM epilogues) and the rewrite rules fedc/fuse.py applies to training graphs.

Each fused op is an ordinary registered op (shape rule, numpy reference, lowering, sample), so
the fused graph verifies, runs in the interpreter and is tested like any other; its rule says
which pattern of plain ops it replaces. Fusion runs after autodiff, so fused ops need no
gradient rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._lazy import np
from ..ir import BATCH, Node, TensorType, Value, f32
from ..lower import matmul
from ..lower import pool as lpool
from ..lower.context import LowerCtx
from . import ShapeError, pool, register
from .dense import _dense_ref, _dense_shape, _nt_shape


@dataclass
class Uses:
    """Who produces and who reads each value of the graph being rewritten."""

    producer: dict[int, Node]
    readers: dict[int, list[Node]]
    outputs: set[int]  # ids of graph outputs (never fused away)

    def only_read_by(self, v: Value, allowed: Callable[[Node], bool]) -> bool:
        return v.id not in self.outputs and all(allowed(n) for n in self.readers.get(v.id, []))


@dataclass
class Fusion:
    """Replace node `at` by `node`, delete `drop`, and read `rename[old id]` instead of old."""

    at: Node
    node: Node
    drop: list[Node]
    rename: dict[int, Value] = field(default_factory=dict)


Rule = Callable[[Uses, Node], Fusion | None]
RULES: list[tuple[str, Rule]] = []  # (op the rule looks at, rule), applied in this order


# --- dense_relu: relu(x · W + b) in the forward GEMM's epilogue ----------------------------

def _dense_relu_lower(ctx: LowerCtx, node: Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    k, units = (int(d) for d in w.type.shape)
    bias = ctx.ptr(node.inputs[2]) if len(node.inputs) == 3 else None
    matmul.nn(ctx, m=ctx.n, n=units, k=k, a=ctx.ptr(x), b=ctx.ptr(w), c=ctx.ptr(node.out),
              bias=bias, relu=True, b_panels=ctx.in_panels(w))


def _fuse_dense_relu(uses: Uses, relu: Node) -> Fusion | None:
    """dense → relu, where the pre-activation feeds nothing but the relu and relu_grads (which
    test z > 0, the same as relu(z) > 0): one GEMM writes relu's output directly."""
    z = relu.inputs[0]
    dense = uses.producer.get(z.id)
    if dense is None or dense.op != "dense":
        return None
    if not uses.only_read_by(z, lambda n: n is relu or (n.op == "relu_grad"
                                                        and n.inputs[0].id != z.id)):
        return None
    fused = Node("dense_relu", dense.inputs, dense.attrs, relu.out, dense.span)
    return Fusion(dense, fused, [relu], {z.id: relu.out})


register("dense_relu", sample=((f32(BATCH, 13), f32(13, 10), f32(10)), {}),
         shape=_dense_shape, ref=lambda xs, a: np.maximum(_dense_ref(xs, a), 0),
         lower=_dense_relu_lower,
         scratch=lambda node, mb, panels: matmul.scratch(
             "nn", mb, *node.inputs[1].type.row_shape[::-1], b_panels=node.inputs[1].id in panels),
         doc="relu(x · W + b): dense with relu in its GEMM epilogue (made by fusion)")
RULES.append(("relu", _fuse_dense_relu))


# --- matmul_nt_relu_grad: (dy · Wᵀ) · [h > 0] in the input-gradient GEMM's epilogue ---------

def _nt_relu_grad_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    if len(ins) != 3:
        raise ShapeError(f"matmul_nt_relu_grad takes 3 inputs, got {len(ins)}")
    out = _nt_shape(ins[:2], attrs)
    if ins[2] != out:
        raise ShapeError(f"matmul_nt_relu_grad expects a mask of type {out} but got {ins[2]}")
    return out


def _nt_relu_grad_lower(ctx: LowerCtx, node: Node) -> None:
    a, w, h = node.inputs
    k, u = (int(d) for d in w.type.shape)
    matmul.nt(ctx, m=ctx.n, n=k, k=u, a=ctx.ptr(a), b=ctx.ptr(w), c=ctx.ptr(node.out),
              mask=ctx.ptr(h), b_panels=ctx.in_panels(w))


def _fuse_nt_relu_grad(uses: Uses, grad: Node) -> Fusion | None:
    """relu_grad(dy · Wᵀ, h) where the product feeds only this relu_grad."""
    dh, h = grad.inputs
    nt = uses.producer.get(dh.id)
    if nt is None or nt.op != "matmul_nt" or h.id == dh.id:
        return None
    if not uses.only_read_by(dh, lambda n: n is grad):
        return None
    fused = Node("matmul_nt_relu_grad", (*nt.inputs, h), nt.attrs, grad.out, nt.span)
    return Fusion(nt, fused, [grad])


register("matmul_nt_relu_grad", sample=((f32(BATCH, 10), f32(13, 10), f32(BATCH, 13)), {}),
         shape=_nt_relu_grad_shape,
         ref=lambda xs, _: np.where(xs[2] > 0, xs[0] @ xs[1].T, 0).astype(xs[0].dtype),
         lower=_nt_relu_grad_lower,
         scratch=lambda node, mb, _: matmul.scratch("nt", mb, *node.inputs[1].type.row_shape),
         doc="(a · wᵀ) where mask > 0, else 0: a relu gradient in the GEMM epilogue (fusion)")
RULES.append(("relu_grad", _fuse_nt_relu_grad))


# --- max_poolNd_relu: max pooling of relu(x) computed as relu of the max (max commutes with relu)

def _relu_pool_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return pool._max_ref([np.maximum(xs[0], 0)], attrs)


def _relu_pool_lower(ctx: LowerCtx, node: Node) -> None:
    c, win = pool._planes(node)
    lpool.max_pool(ctx, win, c, ctx.ptr(node.inputs[0]), ctx.ptr(node.out), relu=True)


def _fuse_relu_pool(uses: Uses, mp: Node) -> Fusion | None:
    """max_pool(relu(z)) where relu's output feeds only the pooling (its gradient has already
    been fused below, so nothing else needs it): one pass over z, no relu output stored."""
    h = mp.inputs[0]
    relu = uses.producer.get(h.id)
    if relu is None or relu.op != "relu" or not uses.only_read_by(h, lambda n: n is mp):
        return None
    return Fusion(mp, Node(f"{mp.op}_relu", relu.inputs, mp.attrs, mp.out, mp.span), [relu])


# --- max_poolNd_relu_grad: relu_grad(max_pool_grad(dy, relu(z)), z) from z alone ------------

def _relu_pool_grad_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    dy, z = xs
    dh = pool._max_grad_ref([dy, np.maximum(z, 0)], attrs)
    return np.where(z > 0, dh, 0).astype(dy.dtype)


def _relu_pool_grad_lower(ctx: LowerCtx, node: Node) -> None:
    c, win = pool._planes(node)
    dy, z = node.inputs
    lpool.max_pool_grad(ctx, win, c, ctx.ptr(dy), ctx.ptr(z), ctx.ptr(node.out), relu=True)


def _fuse_relu_pool_grad(uses: Uses, grad: Node) -> Fusion | None:
    """relu_grad(max_pool_grad(dy, relu(z)), z) where the pooling gradient feeds only this
    relu_grad. The first maximum of relu(z) in a window is the first maximum of z when that is
    > 0, and relu's mask is 0 everywhere in the window otherwise; so dy goes to z's first
    maximum if it is > 0, else nowhere: the same values, bit for bit, without relu's output."""
    dh, z = grad.inputs
    mpg = uses.producer.get(dh.id)
    if mpg is None or mpg.op not in ("max_pool1d_grad", "max_pool2d_grad"):
        return None
    dy, h = mpg.inputs
    relu = uses.producer.get(h.id)
    if relu is None or relu.op != "relu" or relu.inputs[0].id != z.id:
        return None
    if not uses.only_read_by(dh, lambda n: n is grad):
        return None
    op = mpg.op.replace("_grad", "_relu_grad")
    return Fusion(mpg, Node(op, (dy, z), mpg.attrs, grad.out, mpg.span), [grad])


_PAIRS1 = {"kernel": (2,), "stride": (2,), "padding": (0,)}
_PAIRS2 = {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}

register("max_pool1d_relu", sample=((f32(BATCH, 3, 11),), _PAIRS1),
         shape=pool._pool_shape("max_pool1d"), ref=_relu_pool_ref, lower=_relu_pool_lower,
         doc="max_pool1d(relu(x)) as relu of the window max, in one pass (made by fusion)")

register("max_pool2d_relu", sample=((f32(BATCH, 3, 5, 7),), _PAIRS2),
         shape=pool._pool_shape("max_pool2d"), ref=_relu_pool_ref, lower=_relu_pool_lower,
         doc="max_pool2d(relu(x)) as relu of the window max, in one pass (made by fusion)")

register("max_pool1d_relu_grad", sample=((f32(BATCH, 3, 5), f32(BATCH, 3, 11)), _PAIRS1),
         shape=pool._max_grad_shape("max_pool1d_grad"), ref=_relu_pool_grad_ref,
         lower=_relu_pool_grad_lower,
         doc="dy to each window's first maximum of z where it is > 0: the gradient of "
             "max_pool1d(relu(z)) (made by fusion)")

register("max_pool2d_relu_grad", sample=((f32(BATCH, 3, 2, 3), f32(BATCH, 3, 5, 7)), _PAIRS2),
         shape=pool._max_grad_shape("max_pool2d_grad"), ref=_relu_pool_grad_ref,
         lower=_relu_pool_grad_lower,
         doc="dy to each window's first maximum of z where it is > 0: the gradient of "
             "max_pool2d(relu(z)) (made by fusion)")

RULES.append(("relu_grad", _fuse_relu_pool_grad))  # first: it frees relu's output of readers
RULES.append(("max_pool1d", _fuse_relu_pool))
RULES.append(("max_pool2d", _fuse_relu_pool))
