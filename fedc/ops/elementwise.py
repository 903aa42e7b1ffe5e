"""Elementwise ops: activations, their gradients, add, and scalar constants."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llvmlite import ir

from .._lazy import np
from ..ir import BATCH, Node, TensorType, Value, f32
from ..lower.context import LowerCtx
from ..lower.kernels import const_like, where_positive
from . import ShapeError, register
from .surface import REQUIRED, TENSOR, SurfaceCtx, bind, map_lowering, unary_surface

_UNARY: tuple[tuple[TensorType, ...], dict[str, Any]] = ((f32(BATCH, 7),), {})
_BINARY: tuple[tuple[TensorType, ...], dict[str, Any]] = ((f32(BATCH, 7), f32(BATCH, 7)), {})

VecFn = Callable[[ir.IRBuilder, Sequence[ir.Value]], ir.Value]


def _same_f32(op: str) -> Callable[[tuple[TensorType, ...], dict[str, Any]], TensorType]:
    def rule(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
        for t in ins:
            if t.dtype != "f32":
                raise ShapeError(f"{op} expects f32 tensors but got {t}")
            if t != ins[0]:
                raise ShapeError(f"{op} expects operands of the same shape but got "
                                 f"{ins[0]} and {t}")
        return ins[0]
    return rule


def _map_lowering(fn: VecFn) -> Callable[[LowerCtx, Node], None]:
    return map_lowering(lambda b, v, _attrs: fn(b, v))


def _mathfn() -> Any:
    from ..lower import mathfn
    return mathfn


# --- relu ----------------------------------------------------------------------------------

register("relu", sample=_UNARY, shape=_same_f32("relu"), ref=lambda xs, _: np.maximum(xs[0], 0),
         lower=_map_lowering(lambda b, v: where_positive(b, v[0], v[0])),
         grad=lambda g, node, dy, needs: (g.emit("relu_grad", [dy, node.inputs[0]]),),
         surface=unary_surface("relu"), doc="relu(x) = max(x, 0)")

register("relu_grad", sample=_BINARY, shape=_same_f32("relu_grad"),
         ref=lambda xs, _: np.where(xs[1] > 0, xs[0], 0).astype(xs[0].dtype),
         lower=_map_lowering(lambda b, v: where_positive(b, v[1], v[0])),
         doc="dy · [x > 0]")

# --- sigmoid -------------------------------------------------------------------------------

register("sigmoid", sample=_UNARY,
         shape=_same_f32("sigmoid"), ref=lambda xs, _: 1 / (1 + np.exp(-xs[0])),
         lower=_map_lowering(lambda b, v: _mathfn().sigmoid(b, v[0])),
         grad=lambda g, node, dy, needs: (g.emit("sigmoid_grad", [dy, node.out]),),
         surface=unary_surface("sigmoid"), doc="sigmoid(x) = 1 / (1 + e^-x)")


def _sigmoid_grad(b: ir.IRBuilder, v: Sequence[ir.Value]) -> ir.Value:
    dy, y = v
    return b.fmul(dy, b.fmul(y, b.fsub(const_like(y, 1.0), y)))


register("sigmoid_grad", sample=_BINARY, shape=_same_f32("sigmoid_grad"),
         ref=lambda xs, _: xs[0] * xs[1] * (1 - xs[1]), lower=_map_lowering(_sigmoid_grad),
         doc="dy · y · (1 − y), y = sigmoid(x)")

# --- tanh ----------------------------------------------------------------------------------

register("tanh", sample=_UNARY, shape=_same_f32("tanh"), ref=lambda xs, _: np.tanh(xs[0]),
         lower=_map_lowering(lambda b, v: _mathfn().tanh(b, v[0])),
         grad=lambda g, node, dy, needs: (g.emit("tanh_grad", [dy, node.out]),),
         surface=unary_surface("tanh"), doc="tanh(x)")


def _tanh_grad(b: ir.IRBuilder, v: Sequence[ir.Value]) -> ir.Value:
    dy, y = v
    return b.fmul(dy, b.fsub(const_like(y, 1.0), b.fmul(y, y)))


register("tanh_grad", sample=_BINARY,
         shape=_same_f32("tanh_grad"), ref=lambda xs, _: xs[0] * (1 - xs[1] ** 2),
         lower=_map_lowering(_tanh_grad), doc="dy · (1 − y²), y = tanh(x)")

# --- add -----------------------------------------------------------------------------------


def _add_surface(ctx: SurfaceCtx, args: list[Any], kwargs: dict[str, Any]) -> Value:
    a, b = bind("add", args, kwargs, [("a", TENSOR, REQUIRED), ("b", TENSOR, REQUIRED)])
    return ctx.emit("add", [a, b])


register("add", sample=_BINARY, shape=_same_f32("add"), ref=lambda xs, _: xs[0] + xs[1],
         lower=_map_lowering(lambda b, v: b.fadd(v[0], v[1])),
         grad=lambda g, node, dy, needs: (dy, dy), surface=_add_surface,
         doc="a + b (same shapes); also `a + b` in a .fed file")

# --- const: a scalar (autodiff's seed) -----------------------------------------------------


def _const_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    if ins:
        raise ShapeError("const takes no inputs")
    return f32()


def _const_lower(ctx: LowerCtx, node: Node) -> None:
    ctx.b.store(ir.Constant(ir.FloatType(), float(node.attr("value"))), ctx.ptr(node.out))


register("const", sample=((), {"value": 1.5}), shape=_const_shape,
         ref=lambda xs, attrs: np.asarray(attrs["value"]), lower=_const_lower,
         grad=lambda g, node, dy, needs: (), doc="a scalar constant")


# --- copy: gives a value its own buffer (autodiff pins parameter gradients) ----------------

register("copy", sample=_UNARY, shape=_same_f32("copy"), ref=lambda xs, _: xs[0].copy(),
         lower=_map_lowering(lambda b, v: v[0]),
         grad=lambda g, node, dy, needs: (dy,), doc="a copy of x")

# --- scale_zero: zeros like x (the gradient of a parameter the loss ignores) ---------------

register("scale_zero", sample=_UNARY,
         shape=_same_f32("scale_zero"), ref=lambda xs, _: np.zeros_like(xs[0]),
         lower=_map_lowering(lambda b, v: const_like(v[0], 0.0)),
         doc="zeros shaped like x")
