"""Pooling: max_pool1d/2d, avg_pool1d/2d (PyTorch semantics), global_avg_pool; their gradients."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .._lazy import np
from ..ir import BATCH, Node, TensorType, Value, f32
from ..lower import pool as lpool
from ..lower.context import LowerCtx
from . import ShapeError, register
from .surface import NONNEG_INT, POS_INT, REQUIRED, TENSOR, GradBuilder, SurfaceCtx, bind
from .window import Window, as2d, from2d, spatial_of, unwindow, window_args, window_spec, windows

Rule = Callable[[tuple[TensorType, ...], dict[str, Any]], TensorType]


def _input(op: str, t: TensorType, rank: int, what: str = "an input") -> tuple[int, ...]:
    if t.dtype != "f32" or not t.batched:
        want = "f32[N, channels, length]" if rank == 1 else "f32[N, channels, height, width]"
        raise ShapeError(f"{op} expects {what} of type {want} but got {t}")
    spatial_of(op, t.row_shape, rank, what)
    return t.row_shape


def _window(op: str, spatial: tuple[int, ...], attrs: dict[str, Any]) -> Window:
    win = Window.of(spatial, attrs["kernel"], attrs["stride"], attrs["padding"])
    win.validate(op)
    for k, p in zip(win.kernel, win.padding, strict=True):
        if p > k // 2:  # PyTorch's rule: every window must hold at least one real element
            raise ShapeError(f"{op}: padding {p} must be at most half the kernel size {k} "
                             f"({win.describe()})")
    return win


def _pool_shape(op: str) -> Rule:
    rank = int(op[-2])

    def rule(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
        x = _input(op, ins[0], rank)
        return f32(BATCH, x[0], *_window(op, x[1:], attrs).out_spatial)
    return rule


def _win_of(x: np.ndarray, attrs: dict[str, Any]) -> Window:
    return Window.of(x.shape[2:], attrs["kernel"], attrs["stride"], attrs["padding"])


def _pool_surface(op: str) -> Callable[[SurfaceCtx, list[Any], dict[str, Any]], Value]:
    rank = int(op[-2])

    def surface(ctx: SurfaceCtx, args: list[Any], kwargs: dict[str, Any]) -> Value:
        spec = [("x", TENSOR, REQUIRED), ("kernel_size", POS_INT, None),
                ("stride", POS_INT, None), ("padding", NONNEG_INT, 0), *window_spec(rank)]
        vals = dict(zip((s[0] for s in spec), bind(op, args, kwargs, spec), strict=True))
        _input(op, vals["x"].type, rank)
        kernel, stride, padding = window_args(op, rank, vals, stride_is_kernel=True)
        return ctx.emit(op, [vals["x"]], {"kernel": kernel, "stride": stride,
                                          "padding": padding})
    return surface


def _planes(node: Node) -> tuple[int, Window]:
    """(channels, window) of a pooling node or its gradient, from the pooled input's type."""
    x = node.inputs[-1].type.row_shape if node.op.startswith("max") else None
    attrs = dict(node.attrs)
    if x is None:  # avg_pool (input x) or avg_pool_grad (input dy, attr in_size)
        t = node.inputs[0].type.row_shape
        x = (t[0], *attrs["in_size"]) if "in_size" in attrs else t
    return x[0], _window(node.op, x[1:], attrs)


# --- max pooling ---------------------------------------------------------------------------


def _max_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x = xs[0]
    rank = x.ndim - 2
    return from2d(windows(as2d(x, rank), _win_of(x, attrs), -np.inf).max(axis=(-2, -1)), rank)


def _winner(flat: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The tap PyTorch's CPU scan ends on, along the last axis: it starts at the first
    in-bounds tap and takes `val > maxval || isnan(val)`, so the first maximum, in a window
    with NaNs the last NaN, in a window of -inf its first in-bounds tap (never padding)."""
    nan = np.isnan(flat)
    last_nan = flat.shape[-1] - 1 - np.argmax(nan[..., ::-1], axis=-1)
    best = np.where(inside, flat, -np.inf).max(axis=-1, keepdims=True)
    first_max = np.argmax(inside & (flat == best), axis=-1)
    return np.where(nan.any(axis=-1), last_nan, first_max)


def _max_grad_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    dy, x = xs
    rank = x.ndim - 2
    win = _win_of(x, attrs)
    x2 = as2d(x, rank)
    cols = windows(x2, win, -np.inf)
    flat = cols.reshape(*cols.shape[:4], -1)
    inside = windows(np.ones(x2.shape, bool), win, False).reshape(flat.shape)
    onehot = (np.arange(flat.shape[-1]) == _winner(flat, inside)[..., None]) * \
        as2d(dy, rank)[..., None]
    return from2d(unwindow(onehot.reshape(cols.shape).astype(dy.dtype), win), rank)


def _max_grad_shape(op: str) -> Rule:
    rank = int(op[len("max_pool")])

    def rule(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
        x = _input(op, ins[1], rank)
        out = (x[0], *_window(op, x[1:], attrs).out_spatial)
        if ins[0].row_shape != out or not ins[0].batched:
            raise ShapeError(f"{op} expects a gradient f32[N,{','.join(map(str, out))}] "
                             f"but got {ins[0]}")
        return ins[1]
    return rule


def _max_lower(ctx: LowerCtx, node: Node) -> None:
    c, win = _planes(node)
    lpool.max_pool(ctx, win, c, ctx.ptr(node.inputs[0]), ctx.ptr(node.out))


def _max_grad_lower(ctx: LowerCtx, node: Node) -> None:
    c, win = _planes(node)
    dy, x = node.inputs
    lpool.max_pool_grad(ctx, win, c, ctx.ptr(dy), ctx.ptr(x), ctx.ptr(node.out))


def _max_grad(rank: int) -> Callable[..., tuple[Value | None, ...]]:
    def rule(g: GradBuilder, node: Node, dy: Value,
             needs: tuple[bool, ...]) -> tuple[Value | None, ...]:
        return (g.emit(f"max_pool{rank}d_grad", [dy, node.inputs[0]], dict(node.attrs)),)
    return rule


_P1 = {"kernel": (3,), "stride": (2,), "padding": (1,)}
_P2 = {"kernel": (3, 2), "stride": (2, 2), "padding": (1, 1)}
_DOC = ("(x, kernel_size, stride=kernel_size, padding=0){extra}: {what} over each window "
        "of f32[N, C, {dims}]")

register("max_pool1d", sample=((f32(BATCH, 3, 11),), _P1), shape=_pool_shape("max_pool1d"),
         ref=_max_ref, grad=_max_grad(1), lower=_max_lower, surface=_pool_surface("max_pool1d"),
         doc="max_pool1d" + _DOC.format(extra="", what="max", dims="L"))

register("max_pool1d_grad", sample=((f32(BATCH, 3, 6), f32(BATCH, 3, 11)), _P1),
         shape=_max_grad_shape("max_pool1d_grad"), ref=_max_grad_ref, lower=_max_grad_lower,
         doc="dy routed to the first maximum of each window (the gradient of max_pool1d)")

register("max_pool2d", sample=((f32(BATCH, 3, 7, 6),), _P2), shape=_pool_shape("max_pool2d"),
         ref=_max_ref, grad=_max_grad(2), lower=_max_lower, surface=_pool_surface("max_pool2d"),
         doc="max_pool2d" + _DOC.format(extra=", kernel_h=, …", what="max", dims="H, W"))

register("max_pool2d_grad", sample=((f32(BATCH, 3, 4, 4), f32(BATCH, 3, 7, 6)), _P2),
         shape=_max_grad_shape("max_pool2d_grad"), ref=_max_grad_ref, lower=_max_grad_lower,
         doc="dy routed to the first maximum of each window (the gradient of max_pool2d)")


# --- average pooling (padding counts as zeros: PyTorch's count_include_pad=True) -----------


def _avg_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x = xs[0]
    rank = x.ndim - 2
    return from2d(windows(as2d(x, rank), _win_of(x, attrs)).mean(axis=(-2, -1)), rank)


def _avg_grad_shape(op: str) -> Rule:
    rank = int(op[len("avg_pool")])

    def rule(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
        c = _input(op, ins[0], rank, "a gradient")[0]
        win = _window(op, tuple(attrs["in_size"]), attrs)
        if ins[0].row_shape[1:] != win.out_spatial:
            raise ShapeError(f"{op}: gradient {ins[0]} does not match the window's output")
        return f32(BATCH, c, *attrs["in_size"])
    return rule


def _avg_grad_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    dy = xs[0]
    rank = dy.ndim - 2
    win = Window.of(tuple(attrs["in_size"]), attrs["kernel"], attrs["stride"], attrs["padding"])
    cols = np.broadcast_to(as2d(dy, rank)[..., None, None] / win.taps,
                           (*as2d(dy, rank).shape, *win.kernel))
    return from2d(unwindow(np.ascontiguousarray(cols), win), rank)


def _avg_lower(ctx: LowerCtx, node: Node) -> None:
    c, win = _planes(node)
    lpool.avg_pool(ctx, win, c, ctx.ptr(node.inputs[0]), ctx.ptr(node.out))


def _avg_grad_lower(ctx: LowerCtx, node: Node) -> None:
    c, win = _planes(node)
    lpool.avg_pool_grad(ctx, win, c, ctx.ptr(node.inputs[0]), ctx.ptr(node.out))


def _avg_grad(rank: int) -> Callable[..., tuple[Value | None, ...]]:
    def rule(g: GradBuilder, node: Node, dy: Value,
             needs: tuple[bool, ...]) -> tuple[Value | None, ...]:
        in_size = node.inputs[0].type.row_shape[1:]
        return (g.emit(f"avg_pool{rank}d_grad", [dy], {**dict(node.attrs), "in_size": in_size}),)
    return rule


register("avg_pool1d", sample=((f32(BATCH, 3, 11),), _P1), shape=_pool_shape("avg_pool1d"),
         ref=_avg_ref, grad=_avg_grad(1), lower=_avg_lower, surface=_pool_surface("avg_pool1d"),
         doc="avg_pool1d" + _DOC.format(extra="", what="mean (padding counts as 0)", dims="L"))

register("avg_pool1d_grad", sample=((f32(BATCH, 3, 6),), {**_P1, "in_size": (11,)}),
         shape=_avg_grad_shape("avg_pool1d_grad"), ref=_avg_grad_ref, lower=_avg_grad_lower,
         doc="dy / window size spread over each window (the gradient of avg_pool1d)")

register("avg_pool2d", sample=((f32(BATCH, 3, 7, 6),), _P2), shape=_pool_shape("avg_pool2d"),
         ref=_avg_ref, grad=_avg_grad(2), lower=_avg_lower, surface=_pool_surface("avg_pool2d"),
         doc="avg_pool2d" + _DOC.format(extra=", kernel_h=, …", what="mean (padding counts "
                                        "as 0)", dims="H, W"))

register("avg_pool2d_grad", sample=((f32(BATCH, 3, 4, 4),), {**_P2, "in_size": (7, 6)}),
         shape=_avg_grad_shape("avg_pool2d_grad"), ref=_avg_grad_ref, lower=_avg_grad_lower,
         doc="dy / window size spread over each window (the gradient of avg_pool2d)")


# --- global average pooling: f32[N, C, ...] → f32[N, C] ------------------------------------


def _gap_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    t = ins[0]
    if t.dtype != "f32" or not t.batched or len(t.shape) < 3:
        raise ShapeError(f"global_avg_pool expects f32[N, channels, ...spatial] but got {t}")
    return f32(BATCH, t.row_shape[0])


def _gap_lower(ctx: LowerCtx, node: Node) -> None:
    c, *spatial = node.inputs[0].type.row_shape
    lpool.global_avg_pool(ctx, c, math.prod(spatial), ctx.ptr(node.inputs[0]), ctx.ptr(node.out))


def _gap_surface(ctx: SurfaceCtx, args: list[Any], kwargs: dict[str, Any]) -> Value:
    (x,) = bind("global_avg_pool", args, kwargs, [("x", TENSOR, REQUIRED)])
    return ctx.emit("global_avg_pool", [x])


def _gap_grad(g: GradBuilder, node: Node, dy: Value,
              needs: tuple[bool, ...]) -> tuple[Value | None, ...]:
    in_size = node.inputs[0].type.row_shape[1:]
    return (g.emit("global_avg_pool_grad", [dy], {"in_size": in_size}),)


def _gap_grad_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    t = ins[0]
    if t.dtype != "f32" or not t.batched or len(t.shape) != 2:
        raise ShapeError(f"global_avg_pool_grad expects f32[N, channels] but got {t}")
    return f32(BATCH, t.row_shape[0], *attrs["in_size"])


def _gap_grad_lower(ctx: LowerCtx, node: Node) -> None:
    size = math.prod(node.attr("in_size"))
    lpool.global_avg_pool_grad(ctx, node.inputs[0].type.row_shape[0], size,
                               ctx.ptr(node.inputs[0]), ctx.ptr(node.out))


def _gap_grad_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    dy, in_size = xs[0], tuple(attrs["in_size"])
    scaled = (dy / math.prod(in_size)).reshape(*dy.shape, *([1] * len(in_size)))
    return np.broadcast_to(scaled, (*dy.shape, *in_size)).copy()


register("global_avg_pool", sample=((f32(BATCH, 3, 4, 5),), {}), shape=_gap_shape,
         ref=lambda xs, _: xs[0].mean(axis=tuple(range(2, xs[0].ndim))), grad=_gap_grad,
         lower=_gap_lower, surface=_gap_surface,
         doc="global_avg_pool(x): f32[N, C, ...] → f32[N, C], the mean over all spatial dims")

register("global_avg_pool_grad", sample=((f32(BATCH, 3),), {"in_size": (4, 5)}),
         shape=_gap_grad_shape, ref=_gap_grad_ref, lower=_gap_grad_lower,
         doc="dy / spatial size broadcast over the plane (the gradient of global_avg_pool)")
