"""Shape ops: flatten and reshape of each example (the batch dim stays); lowered as a copy."""

from __future__ import annotations

import math
from typing import Any

from ..ir import BATCH, Node, TensorType, Value, f32
from ..lower.context import LowerCtx
from ..lower.kernels import emit_map
from . import ShapeError, register
from .surface import REQUIRED, TENSOR, GradBuilder, SurfaceCtx, SurfaceError, bind, shown


def _batched_f32(op: str, t: TensorType) -> tuple[int, ...]:
    if t.dtype != "f32" or not t.batched or len(t.shape) < 2:
        raise ShapeError(f"{op} expects a batched f32[N, ...] tensor but got {t}")
    return t.row_shape


def _copy_lower(ctx: LowerCtx, node: Node) -> None:
    """Row-major data is unchanged by a reshape: copy it into the output's buffer."""
    emit_map(ctx.b, ctx.count(node.out.type), lambda b, v: v[0], [ctx.ptr(node.inputs[0])],
             ctx.ptr(node.out))


def _back(g: GradBuilder, node: Node, dy: Value,
          needs: tuple[bool, ...]) -> tuple[Value | None, ...]:
    return (g.emit("reshape", [dy], {"shape": node.inputs[0].type.row_shape}),)


# --- flatten: f32[N, ...] → f32[N, prod(...)] ----------------------------------------------

def _flatten_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    return f32(BATCH, math.prod(_batched_f32("flatten", ins[0])))


def _flatten_surface(ctx: SurfaceCtx, args: list[Any], kwargs: dict[str, Any]) -> Value:
    (x,) = bind("flatten", args, kwargs, [("x", TENSOR, REQUIRED)])
    return ctx.emit("flatten", [x])


register("flatten", sample=((f32(BATCH, 3, 2, 5),), {}), shape=_flatten_shape,
         ref=lambda xs, _: xs[0].reshape(xs[0].shape[0], -1), grad=_back, lower=_copy_lower,
         surface=_flatten_surface, doc="flatten(x): f32[N, ...] → f32[N, features]")


# --- reshape(x, d1, d2, …): each example's shape; one dim may be -1 -------------------------

def _reshape_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    row = _batched_f32("reshape", ins[0])
    shape = tuple(attrs["shape"])
    if not shape or any(d < 1 for d in shape) or math.prod(shape) != math.prod(row):
        raise ShapeError(f"reshape cannot turn f32[N,{','.join(map(str, row))}] "
                         f"({math.prod(row)} values per example) into "
                         f"[N, {', '.join(map(str, shape))}]")
    return f32(BATCH, *shape)


def _reshape_surface(ctx: SurfaceCtx, args: list[Any], kwargs: dict[str, Any]) -> Value:
    if kwargs:
        raise SurfaceError("reshape takes the tensor and its new per-example dimensions as "
                           "positional arguments, e.g. reshape(x, 1, 8, 8)", next(iter(kwargs)))
    if not args:
        raise SurfaceError("reshape is missing its argument 'x'")
    x, dims = args[0], args[1:]
    if not isinstance(x, Value):
        raise SurfaceError(f"reshape expects a tensor for 'x' but got {shown(x)}", 0)
    if not dims:
        raise SurfaceError("reshape needs the new per-example dimensions, e.g. "
                           "reshape(x, 1, 8, 8)")
    for i, d in enumerate(dims, start=1):
        if isinstance(d, bool) or not isinstance(d, int) or (d < 1 and d != -1):
            raise SurfaceError(f"reshape expects positive integer dimensions (or one -1) but "
                               f"got {shown(d)}", i)
    if dims.count(-1) > 1:
        raise SurfaceError("reshape accepts at most one -1 dimension", len(dims))
    size = math.prod(_batched_f32("reshape", x.type))
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims and size % known == 0:
        dims = [size // known if d == -1 else d for d in dims]
    return ctx.emit("reshape", [x], {"shape": tuple(dims)})


register("reshape", sample=((f32(BATCH, 3, 10),), {"shape": (5, 2, 3)}), shape=_reshape_shape,
         ref=lambda xs, attrs: xs[0].reshape(xs[0].shape[0], *attrs["shape"]), grad=_back,
         lower=_copy_lower, surface=_reshape_surface,
         doc="reshape(x, d1, d2, …): each example's new shape (one dim may be -1)")
