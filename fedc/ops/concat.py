"""concat along one non-batch axis, and slice (its gradient): row-chunk copies."""

from __future__ import annotations

import math
from typing import Any

from .._lazy import np
from ..ir import BATCH, Node, TensorType, Value, f32
from ..lower.context import LowerCtx
from ..lower.kernels import F32, emit_map, i32c, loop
from . import ShapeError, register
from .surface import NUMBER, REQUIRED, TENSOR, GradBuilder, SurfaceCtx, SurfaceError, bind

Attrs = dict[str, Any]


def _layout(t: TensorType, axis: int) -> tuple[int, int]:
    """(outer rows per example, elements per step along axis): t is [N·outer, axis, inner]."""
    dims = t.row_shape
    return math.prod(dims[:axis - 1]), math.prod(dims[axis:])


def _check_axis(op: str, t: TensorType, axis: int) -> None:
    if t.dtype != "f32" or not t.batched or not 1 <= axis < len(t.shape):
        raise ShapeError(f"{op} expects batched f32 tensors and an axis in 1..{len(t.shape) - 1} "
                         f"but got {t} and axis {axis}")


def _copy_chunks(ctx: LowerCtx, src: Value, src_at: int, src_row: int, dst: Value, dst_at: int,
                 dst_row: int, count: int, outer: int) -> None:
    """dst[o·dst_row + dst_at + i] = src[o·src_row + src_at + i] for all outer rows o, i < count."""
    b = ctx.b
    sp, dp = ctx.ptr(src), ctx.ptr(dst)
    with loop(b, 0, b.mul(ctx.n, i32c(outer)), 1, "co") as o:
        s = b.gep(sp, [b.add(b.mul(o, i32c(src_row)), i32c(src_at))], source_etype=F32)
        d = b.gep(dp, [b.add(b.mul(o, i32c(dst_row)), i32c(dst_at))], source_etype=F32)
        emit_map(b, count, lambda bb, v: v[0], [s], d)


# --- concat(a, b, axis) ----------------------------------------------------------------------

def _concat_shape(ins: tuple[TensorType, ...], attrs: Attrs) -> TensorType:
    a, b = ins
    axis = int(attrs["axis"])
    for t in ins:
        _check_axis("concat", t, axis)
    if len(a.shape) != len(b.shape) or any(
            x != y for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if i != axis):
        raise ShapeError(f"concat expects tensors that differ only along axis {axis} but got "
                         f"{a} and {b}")
    shape = list(a.shape)
    shape[axis] = int(a.shape[axis]) + int(b.shape[axis])
    return f32(*shape)


def _concat_lower(ctx: LowerCtx, node: Node) -> None:
    a, b = node.inputs
    axis = int(node.attr("axis"))
    outer, inner = _layout(a.type, axis)
    na, nb = int(a.type.shape[axis]) * inner, int(b.type.shape[axis]) * inner
    _copy_chunks(ctx, a, 0, na, node.out, 0, na + nb, na, outer)
    _copy_chunks(ctx, b, 0, nb, node.out, na, na + nb, nb, outer)


def _concat_grad(g: GradBuilder, node: Node, dy: Value,
                 needs: tuple[bool, ...]) -> tuple[Value | None, ...]:
    a, b = node.inputs
    axis = int(node.attr("axis"))
    size_a = int(a.type.shape[axis])
    da = g.emit("slice", [dy], {"axis": axis, "start": 0, "size": size_a}) if needs[0] else None
    db = g.emit("slice", [dy], {"axis": axis, "start": size_a,
                                "size": int(b.type.shape[axis])}) if needs[1] else None
    return da, db


def _concat_surface(ctx: SurfaceCtx, args: list[Any], kwargs: Attrs) -> Value:
    a, b, axis = bind("concat", args, kwargs, [("a", TENSOR, REQUIRED), ("b", TENSOR, REQUIRED),
                                               ("axis", NUMBER, -1)])
    rank = len(a.type.shape)
    if rank < 2:  # no axis to offer: "one of  (dim 0 …)" listed none
        raise SurfaceError(f"concat joins tensors along a non-batch axis, but {a.type} has "
                           "none (one value per example)", 0)
    if axis != int(axis) or not (1 <= axis < rank or -rank < axis < 0):
        choices = ", ".join(str(d) for d in [*range(1, rank), *range(1 - rank, 0)])
        raise SurfaceError(f"concat expects axis to be one of {choices} (dim 0 is the batch) "
                           f"for {a.type} but got {axis:g}", "axis")
    return ctx.emit("concat", [a, b], {"axis": int(axis) % rank})


register("concat", sample=((f32(BATCH, 2, 3, 2), f32(BATCH, 2, 1, 2)), {"axis": 2}),
         shape=_concat_shape, ref=lambda xs, a: np.concatenate(xs, axis=a["axis"]),
         lower=_concat_lower, grad=_concat_grad, surface=_concat_surface,
         doc="concat(a, b, axis=-1): a and b joined along axis (1 = the first non-batch dim)")


# --- slice(x, axis, start, size) ---------------------------------------------------------------

def _slice_shape(ins: tuple[TensorType, ...], attrs: Attrs) -> TensorType:
    (x,) = ins
    axis, start, size = (int(attrs[k]) for k in ("axis", "start", "size"))
    _check_axis("slice", x, axis)
    if start < 0 or size < 1 or start + size > int(x.shape[axis]):
        raise ShapeError(f"slice [{start}, {start + size}) is outside axis {axis} of {x}")
    shape = list(x.shape)
    shape[axis] = size
    return f32(*shape)


def _slice_ref(xs: list[np.ndarray], attrs: Attrs) -> np.ndarray:
    return np.take(xs[0], range(attrs["start"], attrs["start"] + attrs["size"]), axis=attrs["axis"])


def _slice_lower(ctx: LowerCtx, node: Node) -> None:
    (x,) = node.inputs
    axis, start, size = (int(node.attr(k)) for k in ("axis", "start", "size"))
    outer, inner = _layout(x.type, axis)
    row = int(x.type.shape[axis]) * inner
    _copy_chunks(ctx, x, start * inner, row, node.out, 0, size * inner, size * inner, outer)


register("slice", sample=((f32(BATCH, 2, 5, 3),), {"axis": 2, "start": 1, "size": 3}),
         shape=_slice_shape, ref=_slice_ref, lower=_slice_lower,
         grad=None, doc="x[..., start:start+size, ...] along axis (concat's gradient)")
