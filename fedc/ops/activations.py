"""Activations beyond relu/sigmoid/tanh: leaky_relu, gelu (tanh form), softmax, log_softmax."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from llvmlite import ir

from .._lazy import np
from ..ir import BATCH, Node, TensorType, Value, f32
from ..lower import mathfn, softmax
from ..lower.context import LowerCtx
from ..lower.kernels import bcast_w, const_like, emit_map, load_w, loop, store_w
from ..lower.rows import hmax, hsum, like, row_ptr, rows
from . import ShapeError, register
from .surface import (
    NUMBER,
    REQUIRED,
    TENSOR,
    GradBuilder,
    SurfaceCtx,
    SurfaceError,
    bind,
    map_lowering,
    unary_surface,
)

Sample = tuple[tuple[TensorType, ...], dict[str, Any]]
_UNARY: Sample = ((f32(BATCH, 7),), {})
_BINARY: Sample = ((f32(BATCH, 7), f32(BATCH, 7)), {})
_ROWS: Sample = ((f32(BATCH, 2, 7),), {})  # several rows per example: softmax is over the last dim
_ROWS2: Sample = ((f32(BATCH, 2, 7), f32(BATCH, 2, 7)), {})

VecFn = Callable[[ir.IRBuilder, Sequence[ir.Value], dict[str, Any]], ir.Value]


def _same_f32(op: str) -> Callable[[tuple[TensorType, ...], dict[str, Any]], TensorType]:
    def rule(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
        for t in ins:
            if t.dtype != "f32" or t != ins[0]:
                raise ShapeError(f"{op} expects f32 operands of one shape but got "
                                 f"{', '.join(str(t) for t in ins)}")
        if not ins[0].shape:
            raise ShapeError(f"{op} expects a tensor with at least one dimension")
        return ins[0]
    return rule


# --- leaky_relu: x if x > 0 else negative_slope·x (torch.nn.functional.leaky_relu) ---------

def _leaky(b: ir.IRBuilder, x: ir.Value, then: ir.Value, slope: float) -> ir.Value:
    """then where x > 0, else slope·then (x NaN gives slope·then, as PyTorch's backward)."""
    return b.select(b.fcmp_ordered(">", x, const_like(x, 0.0)), then,
                    b.fmul(then, const_like(then, slope)))


def _leaky_surface(ctx: SurfaceCtx, args: list[Any], kwargs: dict[str, Any]) -> Value:
    x, slope = bind("leaky_relu", args, kwargs,
                    [("x", TENSOR, REQUIRED), ("negative_slope", NUMBER, 0.01)])
    if not math.isfinite(slope):
        raise SurfaceError(f"leaky_relu expects a finite negative_slope but got {slope}",
                           "negative_slope")
    return ctx.emit("leaky_relu", [x], {"negative_slope": slope})


register("leaky_relu", sample=((f32(BATCH, 7),), {"negative_slope": 0.1}),
         shape=_same_f32("leaky_relu"),
         ref=lambda xs, a: np.where(xs[0] > 0, xs[0], a["negative_slope"] * xs[0]),
         lower=map_lowering(lambda b, v, a: _leaky(b, v[0], v[0], a["negative_slope"])),
         grad=lambda g, node, dy, needs: (
             g.emit("leaky_relu_grad", [dy, node.inputs[0]], dict(node.attrs)),),
         surface=_leaky_surface,
         doc="leaky_relu(x, negative_slope=0.01): x where x > 0, else negative_slope·x")

register("leaky_relu_grad", sample=((f32(BATCH, 7), f32(BATCH, 7)), {"negative_slope": 0.1}),
         shape=_same_f32("leaky_relu_grad"),
         ref=lambda xs, a: np.where(xs[1] > 0, xs[0], a["negative_slope"] * xs[0]),
         lower=map_lowering(lambda b, v, a: _leaky(b, v[1], v[0], a["negative_slope"])),
         doc="dy where x > 0, else negative_slope·dy")

# --- gelu, tanh approximation (torch's approximate='tanh') ----------------------------------
# 0.5·x·(1 + tanh(u)) with u = √(2/π)·(x + 0.044715·x³). The kernel uses the identity
# 1 + tanh(u) = 2·sigmoid(2u): gelu = x·sigmoid(2u). mathfn.sigmoid is accurate *relative* to
# its result, so gelu keeps full relative precision for negative x, where 1 + tanh(u) would
# cancel (see docs/math.md).

_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715
# |x| ≥ 20 makes sigmoid(2u) exactly 0 or 1 in float32, so the derivative term is exactly 0;
# clamping x there keeps x·x³ from overflowing to inf·0 = NaN for huge inputs.
_GELU_CLAMP = 20.0


def _gelu_sigmoid_ref(x: np.ndarray) -> np.ndarray:
    """sigmoid(2u) = (1 + tanh u)/2, without 1 + tanh's cancellation (even in float64 it
    returns 0 for u < −19, where sigmoid(2u) is still a normal number)."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-2 * _GELU_K * (x + _GELU_C * x ** 3)))


def _gelu_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return xs[0] * _gelu_sigmoid_ref(xs[0])


def _gelu_grad_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    dy, x = xs
    s = _gelu_sigmoid_ref(x)
    return dy * (s + 2 * x * s * (1 - s) * _GELU_K * (1 + 3 * _GELU_C * x * x))


def _gelu_sig(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """sigmoid(2u) = (1 + tanh(u)) / 2."""
    x3 = b.fmul(b.fmul(x, x), x)
    two_u = b.fmul(b.fadd(x, b.fmul(x3, const_like(x, _GELU_C))), const_like(x, 2 * _GELU_K))
    return mathfn.sigmoid(b, two_u)


def _gelu(b: ir.IRBuilder, v: Sequence[ir.Value], attrs: dict[str, Any]) -> ir.Value:
    return b.fmul(v[0], _gelu_sig(b, v[0]))


def _gelu_grad(b: ir.IRBuilder, v: Sequence[ir.Value], attrs: dict[str, Any]) -> ir.Value:
    dy, x = v
    s = _gelu_sig(b, x)
    hi, lo = const_like(x, _GELU_CLAMP), const_like(x, -_GELU_CLAMP)
    xc = b.select(b.fcmp_ordered(">", x, hi), hi, b.select(b.fcmp_ordered("<", x, lo), lo, x))
    # d/dx x·s(2u) = s + x·s·(1 − s)·2u'(x), u' = k·(1 + 3c·x²)
    du = b.fmul(const_like(x, 2 * _GELU_K),
                b.fadd(const_like(x, 1.0), b.fmul(const_like(x, 3 * _GELU_C), b.fmul(xc, xc))))
    slope = b.fmul(b.fmul(xc, b.fmul(s, b.fsub(const_like(x, 1.0), s))), du)
    return b.fmul(dy, b.fadd(s, slope))


register("gelu", sample=_UNARY, shape=_same_f32("gelu"), ref=_gelu_ref, lower=map_lowering(_gelu),
         grad=lambda g, node, dy, needs: (g.emit("gelu_grad", [dy, node.inputs[0]]),),
         surface=unary_surface("gelu"),
         doc="gelu(x): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), PyTorch approximate='tanh'")

register("gelu_grad", sample=_BINARY, shape=_same_f32("gelu_grad"), ref=_gelu_grad_ref,
         lower=map_lowering(_gelu_grad), doc="dy · gelu'(x)")


# --- softmax and log_softmax over the last dimension ----------------------------------------

def _softmax_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    z = xs[0] - xs[0].max(axis=-1, keepdims=True)
    e = flushed_exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def flushed_exp(z: np.ndarray) -> np.ndarray:
    """e^z, 0 where z < softmax.FLUSH_BELOW: the softmax kernels' flush of terms that would
    run into denormals (fedc.lower.softmax)."""
    with np.errstate(under="ignore"):
        return np.where(z < softmax.FLUSH_BELOW, np.zeros_like(z), np.exp(z))


def _log_softmax_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    z = xs[0] - xs[0].max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _per_row(ctx: LowerCtx, node: Node,
             body: Callable[[list[ir.Value], ir.Value, int], None]) -> None:
    """body(row pointers of every input, row pointer of the output, width) for every row."""
    width = int(node.out.type.shape[-1])
    ins = [ctx.ptr(v) for v in node.inputs]
    out = ctx.ptr(node.out)
    with loop(ctx.b, 0, rows(ctx, node.out.type, width), 1, "row") as r:
        body([row_ptr(ctx.b, p, r, width) for p in ins], row_ptr(ctx.b, out, r, width), width)


def _softmax_lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b

    def row(ins: list[ir.Value], out: ir.Value, c: int) -> None:
        (x,) = ins
        mx = hmax(b, x, c)

        def exp_store(j: ir.Value, vec: bool) -> ir.Value:  # stores e^(x − max), returns it
            e = softmax.shifted_exp(b, b.fsub(load_w(b, x, j, vec), bcast_w(b, mx, vec)))
            store_w(b, e, out, j, vec)
            return e

        inv = b.fdiv(const_like(mx, 1.0), hsum(b, c, exp_store))
        emit_map(b, c, lambda bb, v: bb.fmul(v[0], like(bb, inv, v[0])), [out], out)

    _per_row(ctx, node, row)


def _log_softmax_lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b

    def row(ins: list[ir.Value], out: ir.Value, c: int) -> None:
        (x,) = ins
        mx = hmax(b, x, c)
        s = hsum(b, c, lambda j, vec: mathfn.exp(b, b.fsub(load_w(b, x, j, vec),
                                                           bcast_w(b, mx, vec))))
        log_s = mathfn.log(b, s)
        # (x − max) − log s: x − max is exact near the max, where log_softmax is small; folding
        # max + log s first would round at max's magnitude (PyTorch's order too)
        emit_map(b, c, lambda bb, v: bb.fsub(bb.fsub(v[0], like(bb, mx, v[0])),
                                             like(bb, log_s, v[0])), [x], out)

    _per_row(ctx, node, row)


def _softmax_grad_lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b

    def row(ins: list[ir.Value], out: ir.Value, c: int) -> None:
        dy, y = ins
        dot = hsum(b, c, lambda j, vec: b.fmul(load_w(b, dy, j, vec), load_w(b, y, j, vec)))
        emit_map(b, c, lambda bb, v: bb.fmul(v[1], bb.fsub(v[0], like(bb, dot, v[0]))),
                 [dy, y], out)

    _per_row(ctx, node, row)


def _log_softmax_grad_lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b

    def row(ins: list[ir.Value], out: ir.Value, c: int) -> None:
        dy, y = ins
        total = hsum(b, c, lambda j, vec: load_w(b, dy, j, vec))
        emit_map(b, c, lambda bb, v: bb.fsub(v[0], bb.fmul(softmax.shifted_exp(bb, v[1]),
                                                            like(bb, total, v[0]))),
                 [dy, y], out)

    _per_row(ctx, node, row)


def _softmax_grad(g: GradBuilder, node: Node, dy: Value,
                  needs: tuple[bool, ...]) -> tuple[Value | None, ...]:
    return (g.emit(f"{node.op}_grad", [dy, node.out]),)


register("softmax", sample=_ROWS, shape=_same_f32("softmax"), ref=_softmax_ref,
         lower=_softmax_lower, grad=_softmax_grad, surface=unary_surface("softmax"),
         doc="softmax(x): e^x / Σ e^x over the last dimension (max-shifted)")

register("softmax_grad", sample=_ROWS2, shape=_same_f32("softmax_grad"),
         ref=lambda xs, _: xs[1] * (xs[0] - (xs[0] * xs[1]).sum(axis=-1, keepdims=True)),
         lower=_softmax_grad_lower, doc="y · (dy − Σ dy·y) over the last dim, y = softmax(x)")

register("log_softmax", sample=_ROWS, shape=_same_f32("log_softmax"), ref=_log_softmax_ref,
         lower=_log_softmax_lower, grad=_softmax_grad, surface=unary_surface("log_softmax"),
         doc="log_softmax(x): x − max − log Σ e^(x − max) over the last dimension")

register("log_softmax_grad", sample=_ROWS2, shape=_same_f32("log_softmax_grad"),
         ref=lambda xs, _: xs[0] - flushed_exp(xs[1]) * xs[0].sum(axis=-1, keepdims=True),
         lower=_log_softmax_grad_lower,
         doc="dy − e^y · Σ dy over the last dim, y = log_softmax(x)")
