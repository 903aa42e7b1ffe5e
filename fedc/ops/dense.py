"""Dense layers and the matrix products their gradients need."""

from __future__ import annotations

import math
from typing import Any

from .._lazy import np
from ..ir import BATCH, Node, TensorType, Value, f32
from ..lower import matmul
from ..lower.context import LowerCtx
from . import ShapeError, register
from .surface import BOOL, POS_INT, REQUIRED, TENSOR, GradBuilder, SurfaceCtx, bind


def _rows2(op: str, t: TensorType, what: str) -> int:
    if t.dtype != "f32" or len(t.shape) != 2 or not t.batched:
        raise ShapeError(f"{op} expects {what} of type f32[N, features] but got {t}")
    return int(t.shape[1])


# --- dense: y = x · W + b ------------------------------------------------------------------

def _dense_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    if len(ins) not in (2, 3):
        raise ShapeError(f"dense takes 2 or 3 inputs, got {len(ins)}")
    k = _rows2("dense", ins[0], "its input")
    w = ins[1]
    if len(w.shape) != 2 or w.shape[0] != k:
        raise ShapeError(f"dense expects a weight f32[{k}, units] but got {w}")
    units = int(w.shape[1])
    if len(ins) == 3 and ins[2].shape != (units,):
        raise ShapeError(f"dense expects a bias f32[{units}] but got {ins[2]}")
    return f32(BATCH, units)


def _dense_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    y = xs[0] @ xs[1]
    return y + xs[2] if len(xs) == 3 else y


def _dense_grad(g: GradBuilder, node: Node, dy: Value,
                needs: tuple[bool, ...]) -> tuple[Value | None, ...]:
    x, w = node.inputs[0], node.inputs[1]
    dx = g.emit("matmul_nt", [dy, w]) if needs[0] else None
    dw = g.emit("matmul_tn", [x, dy]) if needs[1] else None
    db = (g.emit("sum_rows", [dy]) if needs[2] else None) if len(node.inputs) == 3 else None
    return (dx, dw) if len(node.inputs) == 2 else (dx, dw, db)


def _dense_lower(ctx: LowerCtx, node: Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    k, units = (int(d) for d in w.type.shape)
    bias = ctx.ptr(node.inputs[2]) if len(node.inputs) == 3 else None
    matmul.nn(ctx, m=ctx.n, n=units, k=k, a=ctx.ptr(x), b=ctx.ptr(w), c=ctx.ptr(node.out),
              bias=bias, b_panels=ctx.in_panels(w))


def _dense_surface(ctx: SurfaceCtx, args: list[Any], kwargs: dict[str, Any]) -> Value:
    x, units, use_bias = bind("dense", args, kwargs,
                              [("x", TENSOR, REQUIRED), ("units", POS_INT, REQUIRED),
                               ("bias", BOOL, True)])
    fan_in = _rows2("dense", x.type, "its input") if x.type.dtype == "f32" else 0
    if not fan_in:
        raise ShapeError(f"dense expects an input of type f32[N, features] but got {x.type}")
    name = ctx.layer_name("dense")
    bound = 1.0 / math.sqrt(fan_in)  # PyTorch's nn.Linear default initialisation
    init = {"kind": "uniform", "low": -bound, "high": bound}
    w = ctx.param(name, "weight", (fan_in, units), init)
    ins = [x, w]
    if use_bias:
        ins.append(ctx.param(name, "bias", (units,), init))
    return ctx.emit("dense", ins)


register("dense", sample=((f32(BATCH, 13), f32(13, 10), f32(10)), {}),
         shape=_dense_shape, ref=_dense_ref, grad=_dense_grad, lower=_dense_lower,
         scratch=lambda node, mb, panels: matmul.scratch(
             "nn", mb, *node.inputs[1].type.row_shape[::-1], b_panels=node.inputs[1].id in panels),
         surface=_dense_surface,
         doc="dense(x, units, bias=true): x · W + b, W: [features, units], PyTorch init")


# --- matmul_nt: a · wᵀ (the input gradient of dense) ---------------------------------------

def _nt_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    u = _rows2("matmul_nt", ins[0], "its left operand")
    if len(ins[1].shape) != 2 or ins[1].shape[1] != u:
        raise ShapeError(f"matmul_nt expects f32[K, {u}] on the right but got {ins[1]}")
    return f32(BATCH, int(ins[1].shape[0]))


def _nt_lower(ctx: LowerCtx, node: Node) -> None:
    a, w = node.inputs
    k, u = (int(d) for d in w.type.shape)
    matmul.nt(ctx, m=ctx.n, n=k, k=u, a=ctx.ptr(a), b=ctx.ptr(w), c=ctx.ptr(node.out),
              b_panels=ctx.in_panels(w))


register("matmul_nt", sample=((f32(BATCH, 10), f32(13, 10)), {}),
         shape=_nt_shape, ref=lambda xs, _: xs[0] @ xs[1].T, lower=_nt_lower,
         scratch=lambda node, mb, _: matmul.scratch("nt", mb, *node.inputs[1].type.row_shape),
         doc="a · wᵀ with w stored [K, U]")


# --- matmul_tn: aᵀ · g (the weight gradient of dense; reduces over the batch) --------------

def _tn_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    k = _rows2("matmul_tn", ins[0], "its left operand")
    u = _rows2("matmul_tn", ins[1], "its right operand")
    return f32(k, u)


def _tn_lower(ctx: LowerCtx, node: Node) -> None:
    a, g = node.inputs
    k, u = node.out.type.row_shape
    matmul.tn(ctx, m=ctx.n, n=u, k=k, a=ctx.ptr(a), b=ctx.ptr(g), c=ctx.ptr(node.out),
              c_panels=ctx.in_panels(node.out))


register("matmul_tn", sample=((f32(BATCH, 13), f32(BATCH, 10)), {}),
         shape=_tn_shape, ref=lambda xs, _: xs[0].T @ xs[1], lower=_tn_lower,
         scratch=lambda node, mb, _: matmul.scratch("tn", mb, *node.out.type.row_shape[::-1]),
         doc="aᵀ · g over the batch")


# --- sum_rows: Σ over the batch (the bias gradient) ----------------------------------------

def _sum_rows_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    if not ins[0].batched or ins[0].dtype != "f32":
        raise ShapeError(f"sum_rows expects a batched f32 tensor but got {ins[0]}")
    return f32(*ins[0].row_shape)


def _sum_rows_lower(ctx: LowerCtx, node: Node) -> None:
    matmul.sum_rows(ctx, m=ctx.n, n=node.out.type.row_size, a=ctx.ptr(node.inputs[0]),
                    c=ctx.ptr(node.out))


register("sum_rows", sample=((f32(BATCH, 10),), {}), shape=_sum_rows_shape,
         ref=lambda xs, _: xs[0].sum(axis=0),
         lower=_sum_rows_lower, doc="Σ over the batch dimension")
