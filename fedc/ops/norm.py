"""Normalisation layers: layer_norm, group_norm (PyTorch semantics), their gradients, sum_except."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .._lazy import np
from ..ir import BATCH, Node, TensorType, Value, f32
from ..lower import norm as kernels
from ..lower.context import LowerCtx
from ..lower.kernels import emit_cols, i32c, load, load_w, loop, store, store_w
from ..lower.rows import hsum
from . import ShapeError, register
from .surface import NUMBER, POS_INT, REQUIRED, TENSOR, GradBuilder, SurfaceCtx, SurfaceError, bind

Attrs = dict[str, Any]
Sample = tuple[tuple[TensorType, ...], Attrs]


def _geometry(op: str, x: TensorType, attrs: Attrs) -> kernels.Geometry:
    """Segments of layer_norm (over the last dim) or group_norm (groups of channels, dim 1)."""
    if x.dtype != "f32" or not x.batched or len(x.shape) < 2:
        raise ShapeError(f"{op} expects a batched f32 tensor with features, e.g. f32[N, 64], "
                         f"but got {x}")
    dims = x.row_shape
    if op.startswith("layer_norm"):
        return kernels.Geometry(x.row_size // dims[-1], 1, dims[-1], 1)
    groups = int(attrs["groups"])
    if dims[0] % groups:
        raise ShapeError(f"{op} expects channels ({dims[0]}) divisible by groups ({groups}) "
                         f"but got {x}")
    return kernels.Geometry(1, groups, dims[0] // groups, x.row_size // dims[0])


def _shape(op: str, n_tensors: int) -> Callable[[tuple[TensorType, ...], Attrs], TensorType]:
    """Shape rule of the forward op (x, w, b), the input gradient (dy, x, w) or the weight
    gradient (dy, x): every one checks x and the parameter shapes."""
    def rule(ins: tuple[TensorType, ...], attrs: Attrs) -> TensorType:
        if len(ins) != n_tensors:
            raise ShapeError(f"{op} takes {n_tensors} inputs, got {len(ins)}")
        x = ins[0] if op in ("layer_norm", "group_norm") else ins[1]
        geo = _geometry(op, x, attrs)
        width = geo.groups * geo.cg
        tensors = ins[1:] if op in ("layer_norm", "group_norm") else ins[2:]
        for t in tensors:
            if t != f32(width):
                raise ShapeError(f"{op} expects parameters f32[{width}] but got {t}")
        if op not in ("layer_norm", "group_norm") and ins[0] != x:
            raise ShapeError(f"{op} expects a gradient of type {x} but got {ins[0]}")
        return f32(width) if op.endswith("weight_grad") else x
    return rule


# --- numpy references: x viewed as [segments, cg, s] ---------------------------------------

def _split(op: str, x: np.ndarray, attrs: Attrs) -> tuple[np.ndarray, kernels.Geometry]:
    types = TensorType("f32", (BATCH, *x.shape[1:]))
    geo = _geometry(op, types, attrs)
    return x.reshape(-1, geo.groups, geo.cg, geo.s), geo


def _normalise(op: str, x: np.ndarray, attrs: Attrs) -> tuple[np.ndarray, np.ndarray]:
    xs, _ = _split(op, x, attrs)
    mean = xs.mean(axis=(2, 3), keepdims=True)
    rstd = 1 / np.sqrt(((xs - mean) ** 2).mean(axis=(2, 3), keepdims=True) + attrs["eps"])
    return (xs - mean) * rstd, rstd


def _per_channel(p: np.ndarray, geo: kernels.Geometry) -> np.ndarray:
    return p.reshape(1, geo.groups, geo.cg, 1)


def _forward_ref(op: str) -> Callable[[list[np.ndarray], Attrs], np.ndarray]:
    def ref(xs: list[np.ndarray], attrs: Attrs) -> np.ndarray:
        x, w, b = xs
        xhat, _ = _normalise(op, x, attrs)
        geo = _split(op, x, attrs)[1]
        return (xhat * _per_channel(w, geo) + _per_channel(b, geo)).reshape(x.shape)
    return ref


def _input_grad_ref(op: str) -> Callable[[list[np.ndarray], Attrs], np.ndarray]:
    def ref(xs: list[np.ndarray], attrs: Attrs) -> np.ndarray:
        dy, x, w = xs
        xhat, rstd = _normalise(op, x, attrs)
        dys, geo = _split(op, dy, attrs)
        g = dys * _per_channel(w, geo)
        mean_g = g.mean(axis=(2, 3), keepdims=True)
        mean_gx = (g * xhat).mean(axis=(2, 3), keepdims=True)
        return (rstd * (g - mean_g - xhat * mean_gx)).reshape(x.shape)
    return ref


def _weight_grad_ref(op: str) -> Callable[[list[np.ndarray], Attrs], np.ndarray]:
    def ref(xs: list[np.ndarray], attrs: Attrs) -> np.ndarray:
        dy, x = xs
        xhat, _ = _normalise(op, x, attrs)
        dys, _ = _split(op, dy, attrs)
        return (dys * xhat).sum(axis=(0, 3)).reshape(-1)
    return ref


# --- lowerings, gradient rule, surfaces ----------------------------------------------------

def _geo(node: Node, x_index: int) -> kernels.Geometry:
    return _geometry(node.op, node.inputs[x_index].type, dict(node.attrs))


def _forward_lower(ctx: LowerCtx, node: Node) -> None:
    x, w, b = (ctx.ptr(v) for v in node.inputs)
    kernels.forward(ctx, _geo(node, 0), node.attr("eps"), x, w, b, ctx.ptr(node.out))


def _input_grad_lower(ctx: LowerCtx, node: Node) -> None:
    dy, x, w = (ctx.ptr(v) for v in node.inputs)
    kernels.input_grad(ctx, _geo(node, 1), node.attr("eps"), dy, x, w, ctx.ptr(node.out))


def _weight_grad_lower(ctx: LowerCtx, node: Node) -> None:
    dy, x = (ctx.ptr(v) for v in node.inputs)
    kernels.weight_grad(ctx, _geo(node, 1), node.attr("eps"), dy, x, ctx.ptr(node.out))


def _grad(g: GradBuilder, node: Node, dy: Value,
          needs: tuple[bool, ...]) -> tuple[Value | None, ...]:
    x, w, _ = node.inputs
    attrs = dict(node.attrs)
    channel_axis = len(x.type.shape) - 1 if node.op == "layer_norm" else 1
    dx = g.emit(f"{node.op}_grad", [dy, x, w], attrs) if needs[0] else None
    dw = g.emit(f"{node.op}_weight_grad", [dy, x], attrs) if needs[1] else None
    db = g.emit("sum_except", [dy], {"axis": channel_axis}) if needs[2] else None
    return dx, dw, db


def _eps(op: str, eps: float) -> float:
    if not 0 < eps < math.inf:
        raise SurfaceError(f"{op} expects eps > 0 but got {eps}", "eps")
    return eps


def _affine(ctx: SurfaceCtx, op: str, width: int) -> list[Value]:
    """weight (ones) and bias (zeros) of `width`, PyTorch's elementwise_affine/affine init."""
    name = ctx.layer_name(op)
    return [ctx.param(name, "weight", (width,), {"kind": "ones"}),
            ctx.param(name, "bias", (width,), {"kind": "zeros"})]


def _layer_norm_surface(ctx: SurfaceCtx, args: list[Any], kwargs: Attrs) -> Value:
    x, eps = bind("layer_norm", args, kwargs, [("x", TENSOR, REQUIRED), ("eps", NUMBER, 1e-5)])
    attrs = {"eps": _eps("layer_norm", eps)}
    geo = _geometry("layer_norm", x.type, attrs)
    return ctx.emit("layer_norm", [x, *_affine(ctx, "layer_norm", geo.cg)], attrs)


def _group_norm_surface(ctx: SurfaceCtx, args: list[Any], kwargs: Attrs) -> Value:
    x, groups, eps = bind("group_norm", args, kwargs, [("x", TENSOR, REQUIRED),
                          ("groups", POS_INT, REQUIRED), ("eps", NUMBER, 1e-5)])
    attrs = {"groups": groups, "eps": _eps("group_norm", eps)}
    geo = _geometry("group_norm", x.type, attrs)
    return ctx.emit("group_norm", [x, *_affine(ctx, "group_norm", geo.groups * geo.cg)], attrs)


_LN: Attrs = {"eps": 1e-5}
_GN: Attrs = {"groups": 2, "eps": 1e-5}
_SAMPLES: dict[str, tuple[TensorType, int, Attrs]] = {  # x, channels, attrs
    "layer_norm": (f32(BATCH, 3, 6), 6, _LN),
    "group_norm": (f32(BATCH, 6, 5), 6, _GN),  # 2 groups of 3 channels × 5 elements
}
_DOCS = {
    "layer_norm": "layer_norm(x, eps=1e-5): normalise over the last dim, then ·weight + bias "
                  "(PyTorch nn.LayerNorm: weight ones, bias zeros)",
    "group_norm": "group_norm(x, groups, eps=1e-5): x f32[N, C, …]; normalise each group of "
                  "C/groups channels (with their spatial elements), then per-channel ·weight + "
                  "bias (PyTorch nn.GroupNorm)",
}

for _op, _surface in (("layer_norm", _layer_norm_surface), ("group_norm", _group_norm_surface)):
    _x, _c, _attrs = _SAMPLES[_op]
    register(_op, sample=((_x, f32(_c), f32(_c)), _attrs), shape=_shape(_op, 3),
             ref=_forward_ref(_op), lower=_forward_lower, grad=_grad, surface=_surface,
             doc=_DOCS[_op])
    register(f"{_op}_grad", sample=((_x, _x, f32(_c)), _attrs), shape=_shape(f"{_op}_grad", 3),
             ref=_input_grad_ref(_op), lower=_input_grad_lower,
             doc=f"∂{_op}/∂x: rstd · (g − mean g − xhat · mean(g·xhat)), g = dy · weight")
    register(f"{_op}_weight_grad", sample=((_x, _x), _attrs),
             shape=_shape(f"{_op}_weight_grad", 2), ref=_weight_grad_ref(_op),
             lower=_weight_grad_lower, doc=f"∂{_op}/∂weight: Σ dy · xhat per channel")


# --- sum_except: Σ over every dim but `axis` (a per-channel bias gradient) -----------------

def _sum_except_shape(ins: tuple[TensorType, ...], attrs: Attrs) -> TensorType:
    (x,) = ins
    axis = int(attrs["axis"])
    if x.dtype != "f32" or not x.batched or not 1 <= axis < len(x.shape):
        raise ShapeError(f"sum_except expects a batched f32 tensor and an axis in "
                         f"1..{len(x.shape) - 1} but got {x} and axis {axis}")
    return f32(int(x.shape[axis]))


def _sum_except_ref(xs: list[np.ndarray], attrs: Attrs) -> np.ndarray:
    axis = int(attrs["axis"])
    return xs[0].sum(axis=tuple(i for i in range(xs[0].ndim) if i != axis))


def _sum_except_lower(ctx: LowerCtx, node: Node) -> None:
    """x viewed as [outer, width, inner]: out[a] = Σ_{o, i} x[o, a, i]."""
    b = ctx.b
    (x,) = node.inputs
    axis = int(node.attr("axis"))
    dims = x.type.row_shape
    width, inner = dims[axis - 1], math.prod(dims[axis:])
    outer = b.mul(ctx.n, i32c(math.prod(dims[:axis - 1])))
    xp, out = ctx.ptr(x), ctx.ptr(node.out)
    kernels.zero(b, out, width)
    with loop(b, 0, outer, 1, "so") as o:
        row = b.gep(xp, [b.mul(o, i32c(width * inner))], source_etype=kernels.F32)
        if inner == 1:  # lanes run over the kept axis
            emit_cols(b, width, lambda j, vec: store_w(
                b, b.fadd(load_w(b, out, j, vec), load_w(b, row, j, vec)), out, j, vec), "sa")
        else:
            with loop(b, 0, width, 1, "sa") as a:
                base = b.mul(a, i32c(inner))
                part = hsum(b, inner, lambda i, vec: load_w(b, row, b.add(base, i), vec), "si")
                store(b, b.fadd(load(b, out, a), part), out, a)


register("sum_except", sample=((f32(BATCH, 3, 6),), {"axis": 1}), shape=_sum_except_shape,
         ref=_sum_except_ref, lower=_sum_except_lower,
         doc="Σ over every dimension except `axis` (batch included): f32[shape[axis]]")
