"""Pointwise losses (mean over every element): bce_with_logits, l1, huber, and their gradients."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llvmlite import ir

from .._lazy import np
from ..ir import BATCH, Node, TensorType, Value, f32
from ..lower import mathfn, softmax
from ..lower.context import LowerCtx
from ..lower.kernels import F32, const_like, emit_map, load, load_w, store
from ..lower.rows import hsum, like
from . import ShapeError, register
from .surface import NUMBER, REQUIRED, TENSOR, SurfaceCtx, SurfaceError, bind

Attrs = dict[str, Any]
RefFn = Callable[["np.ndarray", "np.ndarray", Attrs], "np.ndarray"]
IrFn = Callable[[ir.IRBuilder, ir.Value, ir.Value, Attrs], ir.Value]


@dataclass(frozen=True)
class Pointwise:
    """A loss mean(f(p, y)) over all elements, with ∂f/∂p; the IR forms take float or <4 x float>.

    `args` are the surface's extra numeric arguments: (name, default, check, rule).
    """

    name: str
    f: RefFn
    df: RefFn
    f_ir: IrFn
    df_ir: IrFn
    doc: str
    task: str | None = None
    args: tuple[tuple[str, float, Callable[[float], bool], str], ...] = ()


def _shape(op: str) -> Callable[[tuple[TensorType, ...], Attrs], TensorType]:
    def rule(ins: tuple[TensorType, ...], attrs: Attrs) -> TensorType:
        pred, target = ins[-2:]
        if len(ins) == 3 and ins[0] != f32():
            raise ShapeError(f"{op} expects a scalar f32 seed, got {ins[0]}")
        if pred.dtype != "f32" or not pred.batched:
            raise ShapeError(f"{op} expects a batched f32 prediction but got {pred}")
        if target != pred:
            raise ShapeError(f"{op} expects a target of the prediction's type {pred} "
                             f"but got {target}")
        return f32() if len(ins) == 2 else pred
    return rule


def _surface(loss: Pointwise) -> Callable[[SurfaceCtx, list[Any], Attrs], Value]:
    def surface(ctx: SurfaceCtx, args: list[Any], kwargs: Attrs) -> Value:
        spec = [("prediction", TENSOR, REQUIRED), ("target", TENSOR, REQUIRED),
                *((name, NUMBER, default) for name, default, _, _ in loss.args)]
        pred, target, *values = bind(loss.name, args, kwargs, spec)
        if ctx.classes_of(target) is not None:
            raise SurfaceError(f"{loss.name} expects a real-valued target (e.g. `target y: "
                               f"f32[1]`), not class labels", 1)
        attrs = {}
        for (name, _, check, rule), v in zip(loss.args, values, strict=True):
            if not check(v):
                raise SurfaceError(f"{loss.name} expects {name} {rule} but got {v}", name)
            attrs[name] = v
        if target.type != pred.type:
            raise SurfaceError(f"{loss.name} expects a target of the prediction's type "
                               f"{pred.type} but got {target.type}", 1)
        return ctx.emit(loss.name, [pred, target], attrs)
    return surface


def _lower(loss: Pointwise) -> Callable[[LowerCtx, Node], None]:
    def lower(ctx: LowerCtx, node: Node) -> None:
        b, attrs = ctx.b, dict(node.attrs)
        pred, target = node.inputs
        count = ctx.count(pred.type)
        pp, tp = ctx.ptr(pred), ctx.ptr(target)
        total = hsum(b, count, lambda i, vec: loss.f_ir(b, load_w(b, pp, i, vec),
                                                        load_w(b, tp, i, vec), attrs))
        store(b, b.fdiv(total, b.sitofp(count, F32)), ctx.ptr(node.out), 0)
    return lower


def _lower_grad(loss: Pointwise) -> Callable[[LowerCtx, Node], None]:
    def lower(ctx: LowerCtx, node: Node) -> None:
        b, attrs = ctx.b, dict(node.attrs)
        g, pred, target = node.inputs
        count = ctx.count(pred.type)
        scale = b.fdiv(load(b, ctx.ptr(g), 0), b.sitofp(count, F32))
        emit_map(b, count, lambda bb, v: bb.fmul(loss.df_ir(bb, v[0], v[1], attrs),
                                                 like(bb, scale, v[0])),
                 [ctx.ptr(pred), ctx.ptr(target)], ctx.ptr(node.out))
    return lower


def register_pointwise(loss: Pointwise) -> None:
    """Register the loss and its `<name>_grad` (g/numel · ∂f/∂p) as two ops."""
    types = (f32(BATCH, 3), f32(BATCH, 3))
    defaults = {name: default for name, default, _, _ in loss.args}
    grad_name = f"{loss.name}_grad"
    register(loss.name, sample=(types, defaults), shape=_shape(loss.name),
             ref=lambda xs, a: np.asarray(loss.f(xs[0], xs[1], a).mean()),
             lower=_lower(loss),
             grad=lambda g, node, dy, needs: (
                 g.emit(grad_name, [dy, *node.inputs], dict(node.attrs)), None),
             surface=_surface(loss), loss=True, task=loss.task, doc=loss.doc)
    register(grad_name, sample=((f32(), *types), defaults), shape=_shape(grad_name),
             ref=lambda xs, a: xs[0] * loss.df(xs[1], xs[2], a) / xs[1].size,
             lower=_lower_grad(loss), doc=f"g/numel · ∂{loss.name}/∂prediction")


def _where(b: ir.IRBuilder, cond: ir.Value, a: ir.Value, c: ir.Value) -> ir.Value:
    return b.select(cond, a, c)


# --- bce_with_logits: max(z, 0) − z·y + log(1 + e^−|z|)  (torch's stable form) -------------

# e^−|z| is flushed below e^FLUSH_BELOW, as in the softmax kernels (fedc.lower.softmax): a
# confident logit (|z| > 87) made it a denormal, computed in microcode on Intel cores. The loss
# does not change (1 + e^−44 rounds to 1); the gradient of such a logit is 0 instead of < 1e-19.

def _bce_ir(b: ir.IRBuilder, z: ir.Value, y: ir.Value, a: Attrs) -> ir.Value:
    zero = const_like(z, 0.0)
    relu = _where(b, b.fcmp_ordered(">", z, zero), z, zero)
    soft = mathfn.log(b, b.fadd(const_like(z, 1.0), _e_neg_abs(b, z)))
    return b.fadd(b.fsub(relu, b.fmul(z, y)), soft)


def _e_neg_abs(b: ir.IRBuilder, z: ir.Value) -> ir.Value:
    return softmax.shifted_exp(b, b.fneg(mathfn.fabs(b, z)))


def _bce_df(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(under="ignore", over="ignore"):
        s = np.where(z < softmax.FLUSH_BELOW, 0.0, 1 / (1 + np.exp(-z)))
    return s - y


register_pointwise(Pointwise(
    name="bce_with_logits",
    f=lambda z, y, a: np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))),
    df=lambda z, y, a: _bce_df(z, y),
    f_ir=_bce_ir,
    df_ir=lambda b, z, y, a: b.fsub(mathfn.sigmoid_of(b, z, _e_neg_abs(b, z)), y),
    task="binary",
    doc="bce_with_logits(logits, y): mean binary cross-entropy of sigmoid(logits) against "
        "y ∈ [0, 1] (PyTorch F.binary_cross_entropy_with_logits)",
))


# --- l1: |p − y| -----------------------------------------------------------------------------

def _sign(b: ir.IRBuilder, d: ir.Value) -> ir.Value:
    """sign(d) with sign(0) = 0, like torch.sign (the subgradient PyTorch's l1_loss uses)."""
    zero = const_like(d, 0.0)
    neg = _where(b, b.fcmp_ordered("<", d, zero), const_like(d, -1.0), zero)
    return _where(b, b.fcmp_ordered(">", d, zero), const_like(d, 1.0), neg)


register_pointwise(Pointwise(
    name="l1",
    f=lambda p, y, a: np.abs(p - y),
    df=lambda p, y, a: np.sign(p - y),
    f_ir=lambda b, p, y, a: mathfn.fabs(b, b.fsub(p, y)),
    df_ir=lambda b, p, y, a: _sign(b, b.fsub(p, y)),
    doc="l1(prediction, target): mean |prediction − target| (PyTorch F.l1_loss)",
))


# --- huber: ½d² for |d| < delta, else delta·(|d| − ½delta) ---------------------------------

def _huber_ref(p: np.ndarray, y: np.ndarray, a: Attrs) -> np.ndarray:
    d, delta = np.abs(p - y), a["delta"]
    return np.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta))


def _huber_ir(b: ir.IRBuilder, p: ir.Value, y: ir.Value, a: Attrs) -> ir.Value:
    d = mathfn.fabs(b, b.fsub(p, y))
    delta = const_like(d, a["delta"])
    quad = b.fmul(const_like(d, 0.5), b.fmul(d, d))
    lin = b.fmul(delta, b.fsub(d, const_like(d, 0.5 * a["delta"])))
    return _where(b, b.fcmp_ordered("<", d, delta), quad, lin)


def _huber_grad_ir(b: ir.IRBuilder, p: ir.Value, y: ir.Value, a: Attrs) -> ir.Value:
    d = b.fsub(p, y)
    hi, lo = const_like(d, a["delta"]), const_like(d, -a["delta"])
    return _where(b, b.fcmp_ordered(">", d, hi), hi, _where(b, b.fcmp_ordered("<", d, lo), lo, d))


register_pointwise(Pointwise(
    name="huber",
    f=_huber_ref,
    df=lambda p, y, a: np.clip(p - y, -a["delta"], a["delta"]),
    f_ir=_huber_ir,
    df_ir=_huber_grad_ir,
    args=(("delta", 1.0, lambda v: 0 < v < math.inf, "> 0"),),
    doc="huber(prediction, target, delta=1.0): mean Huber loss (PyTorch F.huber_loss)",
))
