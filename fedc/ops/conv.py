"""Convolutions: conv1d and conv2d (PyTorch layouts and init), their gradients, channel_sum."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .._lazy import np
from ..ir import BATCH, Node, TensorType, Value, f32
from ..lower import conv as lconv
from ..lower.context import LowerCtx
from . import ShapeError, register
from .surface import (
    BOOL,
    NONNEG_INT,
    POS_INT,
    REQUIRED,
    TENSOR,
    GradBuilder,
    SurfaceCtx,
    SurfaceError,
    bind,
    fits,
)
from .window import (
    Window,
    as2d,
    from2d,
    spatial_of,
    unwindow,
    window_args,
    window_spec,
    windows,
)

# --- geometry ------------------------------------------------------------------------------


def _batched(op: str, t: TensorType, rank: int, what: str) -> tuple[int, ...]:
    if t.dtype != "f32" or not t.batched:
        want = "f32[N, channels, length]" if rank == 1 else "f32[N, channels, height, width]"
        raise ShapeError(f"{op} expects {what} of type {want} but got {t}")
    spatial_of(op, t.row_shape, rank, what)
    return t.row_shape


def _geometry(op: str, rank: int, channels: int, spatial: tuple[int, ...],
              w: tuple[int, ...], attrs: dict[str, Any]) -> lconv.ConvShape:
    """Validate a convolution's configuration; w is the weight's shape [O, C/g, *kernel]."""
    groups = int(attrs.get("groups", 1))
    if len(w) != rank + 2:
        raise ShapeError(f"{op} expects a weight of rank {rank + 2} but got shape {list(w)}")
    out_ch = w[0]
    if groups < 1 or channels % groups or out_ch % groups:
        raise ShapeError(f"{op}: groups={groups} must divide both the input channels "
                         f"({channels}) and out_channels ({out_ch})")
    if w[1] * groups != channels:
        raise ShapeError(f"{op} expects a weight [{out_ch}, {channels // groups}, ...] for "
                         f"{channels} input channels in {groups} group(s) but got {list(w)}")
    win = Window.of(spatial, w[2:], attrs["stride"], attrs["padding"])
    win.validate(op)
    return lconv.ConvShape(win, channels, out_ch, groups)


def _node_shape(node: Node) -> lconv.ConvShape:
    """The ConvShape of any conv node from its types and attrs."""
    attrs = dict(node.attrs)
    rank = len(attrs["stride"])
    if node.op.endswith("_grad_input"):
        weight = node.inputs[1].type.row_shape
        c = weight[1] * int(attrs["groups"])
        return _geometry(node.op, rank, c, tuple(attrs["in_size"]), weight, attrs)
    x = node.inputs[0].type.row_shape
    if node.op.endswith("_grad_weight"):
        dy = node.inputs[1].type.row_shape
        weight = (dy[0], x[0] // int(attrs["groups"]), *attrs["kernel"])
    else:
        weight = node.inputs[1].type.row_shape
    return _geometry(node.op, rank, x[0], x[1:], weight, attrs)


# --- the forward op ------------------------------------------------------------------------


def _conv_shape(rank: int) -> Callable[[tuple[TensorType, ...], dict[str, Any]], TensorType]:
    op = f"conv{rank}d"

    def rule(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
        if len(ins) not in (2, 3):
            raise ShapeError(f"{op} takes 2 or 3 inputs, got {len(ins)}")
        x = _batched(op, ins[0], rank, "an input")
        s = _geometry(op, rank, x[0], x[1:], ins[1].row_shape, attrs)
        if len(ins) == 3 and ins[2].shape != (s.out_channels,):
            raise ShapeError(f"{op} expects a bias f32[{s.out_channels}] but got {ins[2]}")
        return f32(BATCH, s.out_channels, *s.win.out_spatial)
    return rule


def _grouped(a: np.ndarray, groups: int) -> np.ndarray:
    """[N, C, ...] → [N, groups, C/groups, ...]."""
    return a.reshape(a.shape[0], groups, a.shape[1] // groups, *a.shape[2:])


def _weights(w: np.ndarray, rank: int, groups: int) -> np.ndarray:
    """[O, C/g, *kernel] → [G, O/g, C/g, kh, kw]."""
    w2 = as2d(w, rank)
    return w2.reshape(groups, w2.shape[0] // groups, *w2.shape[1:])


def _conv_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x, w = xs[0], xs[1]
    rank, groups = x.ndim - 2, int(attrs["groups"])
    win = Window.of(x.shape[2:], w.shape[2:], attrs["stride"], attrs["padding"])
    cols = _grouped(windows(as2d(x, rank), win), groups)  # [N, G, Cg, Ho, Wo, kh, kw]
    wg = _weights(w, rank, groups)
    y = np.einsum("ngchwij,gocij->ngohw", cols, wg)
    y = from2d(y.reshape(y.shape[0], -1, *win.out), rank)
    return y + xs[2].reshape(1, -1, *([1] * rank)) if len(xs) == 3 else y


def _conv_grad(rank: int) -> Callable[..., tuple[Value | None, ...]]:
    def rule(g: GradBuilder, node: Node, dy: Value,
             needs: tuple[bool, ...]) -> tuple[Value | None, ...]:
        x, w = node.inputs[0], node.inputs[1]
        attrs = dict(node.attrs)
        dx = g.emit(f"conv{rank}d_grad_input", [dy, w],
                    {**attrs, "in_size": x.type.row_shape[1:]}) if needs[0] else None
        dw = g.emit(f"conv{rank}d_grad_weight", [x, dy],
                    {**attrs, "kernel": w.type.row_shape[2:]}) if needs[1] else None
        if len(node.inputs) == 2:
            return dx, dw
        return dx, dw, g.emit("channel_sum", [dy]) if needs[2] else None
    return rule


def _conv_lower(ctx: LowerCtx, node: Node) -> None:
    bias = ctx.ptr(node.inputs[2]) if len(node.inputs) == 3 else None
    lconv.forward(ctx, _node_shape(node), ctx.ptr(node.inputs[0]), ctx.ptr(node.inputs[1]), bias,
                  ctx.ptr(node.out))


def _scratch(which: int) -> Callable[[Node, int, frozenset[int]], int]:
    """Scratch of the forward (0), input-gradient (1) or weight-gradient (2) kernel."""
    return lambda node, max_batch, _: lconv.scratch_bytes(_node_shape(node), which, max_batch)


# --- surface: conv1d(x, out_channels, kernel_size, …) ---------------------------------------

def _conv_surface(rank: int) -> Callable[[SurfaceCtx, list[Any], dict[str, Any]], Value]:
    op = f"conv{rank}d"

    def surface(ctx: SurfaceCtx, args: list[Any], kwargs: dict[str, Any]) -> Value:
        spec = [("x", TENSOR, REQUIRED), ("out_channels", POS_INT, REQUIRED),
                ("kernel_size", POS_INT, None), ("stride", POS_INT, 1),
                ("padding", NONNEG_INT, 0), ("groups", POS_INT, 1), ("bias", BOOL, True),
                *window_spec(rank)]
        vals = dict(zip((s[0] for s in spec), bind(op, args, kwargs, spec), strict=True))
        x: Value = vals["x"]
        shape = _batched(op, x.type, rank, "an input")
        kernel, stride, padding = window_args(op, rank, vals)
        groups, out_ch = vals["groups"], vals["out_channels"]
        if shape[0] % groups or out_ch % groups:
            raise SurfaceError(f"{op}: groups={groups} must divide both the input channels "
                               f"({shape[0]}) and out_channels ({out_ch})", "groups")
        name = ctx.layer_name(op)
        weight = (out_ch, shape[0] // groups, *kernel)
        fits(f"{name}.weight is f32[{','.join(map(str, weight))}]", weight)  # before √fan_in
        fan_in = shape[0] // groups * math.prod(kernel)
        bound = 1.0 / math.sqrt(fan_in)  # PyTorch: kaiming_uniform(a=√5) = U(±1/√fan_in)
        init = {"kind": "uniform", "low": -bound, "high": bound}
        ins = [x, ctx.param(name, "weight", weight, init)]
        if vals["bias"]:
            ins.append(ctx.param(name, "bias", (out_ch,), init))
        return ctx.emit(op, ins, {"stride": stride, "padding": padding, "groups": groups})
    return surface


# --- gradient ops --------------------------------------------------------------------------


def _grad_input_shape(rank: int) -> Callable[[tuple[TensorType, ...], dict[str, Any]], TensorType]:
    op = f"conv{rank}d_grad_input"

    def rule(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
        dy = _batched(op, ins[0], rank, "a gradient")
        w = ins[1].row_shape
        s = _geometry(op, rank, w[1] * int(attrs["groups"]), tuple(attrs["in_size"]), w, attrs)
        if dy != (s.out_channels, *s.win.out_spatial):
            raise ShapeError(f"{op}: gradient {ins[0]} does not match the window's output")
        return f32(BATCH, s.channels, *attrs["in_size"])
    return rule


def _grad_input_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    dy, w = xs
    rank, groups = dy.ndim - 2, int(attrs["groups"])
    win = Window.of(tuple(attrs["in_size"]), w.shape[2:], attrs["stride"], attrs["padding"])
    dyg = _grouped(as2d(dy, rank), groups)  # [N, G, Og, Ho, Wo]
    wg = _weights(w, rank, groups)
    dcols = np.einsum("ngohw,gocij->ngchwij", dyg, wg)
    dcols = dcols.reshape(dcols.shape[0], -1, *dcols.shape[3:])
    return from2d(unwindow(dcols, win), rank)


def _grad_weight_shape(rank: int) -> Callable[[tuple[TensorType, ...], dict[str, Any]],
                                                TensorType]:
    op = f"conv{rank}d_grad_weight"

    def rule(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
        x = _batched(op, ins[0], rank, "an input")
        dy = _batched(op, ins[1], rank, "a gradient")
        groups = int(attrs["groups"])
        w = (dy[0], x[0] // max(groups, 1), *attrs["kernel"])
        s = _geometry(op, rank, x[0], x[1:], w, attrs)
        if dy[1:] != s.win.out_spatial:
            raise ShapeError(f"{op}: gradient {ins[1]} does not match the window's output")
        return f32(*w)
    return rule


def _grad_weight_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x, dy = xs
    rank, groups = x.ndim - 2, int(attrs["groups"])
    kernel = tuple(attrs["kernel"])
    win = Window.of(x.shape[2:], kernel, attrs["stride"], attrs["padding"])
    cols = _grouped(windows(as2d(x, rank), win), groups)
    dyg = _grouped(as2d(dy, rank), groups)
    dw = np.einsum("ngohw,ngchwij->gocij", dyg, cols)
    return dw.reshape(-1, dw.shape[2], *kernel)


def _grad_input_lower(ctx: LowerCtx, node: Node) -> None:
    dy, w = node.inputs
    lconv.grad_input(ctx, _node_shape(node), ctx.ptr(dy), ctx.ptr(w), ctx.ptr(node.out))


def _grad_weight_lower(ctx: LowerCtx, node: Node) -> None:
    x, dy = node.inputs
    lconv.grad_weight(ctx, _node_shape(node), ctx.ptr(x), ctx.ptr(dy), ctx.ptr(node.out))


# --- registrations -------------------------------------------------------------------------

_ATTRS_1D = {"stride": (2,), "padding": (2,), "groups": 1}
_ATTRS_2D = {"stride": (2, 1), "padding": (1, 1), "groups": 2}

register("conv1d", sample=((f32(BATCH, 3, 11), f32(4, 3, 5), f32(4)), _ATTRS_1D),
         shape=_conv_shape(1), ref=_conv_ref, grad=_conv_grad(1), lower=_conv_lower,
         surface=_conv_surface(1), scratch=_scratch(0),
         doc="conv1d(x, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=true) "
             "on f32[N, C, L]; weight [O, C/groups, k], PyTorch init")

register("conv1d_grad_input", sample=((f32(BATCH, 4, 6), f32(4, 3, 5)),
                                      {**_ATTRS_1D, "in_size": (11,)}),
         shape=_grad_input_shape(1), ref=_grad_input_ref, lower=_grad_input_lower,
         scratch=_scratch(1), doc="the input gradient of conv1d (a transposed convolution)")

register("conv1d_grad_weight", sample=((f32(BATCH, 3, 11), f32(BATCH, 4, 6)),
                                       {**_ATTRS_1D, "kernel": (5,)}),
         shape=_grad_weight_shape(1), ref=_grad_weight_ref, lower=_grad_weight_lower,
         scratch=_scratch(2), doc="the weight gradient of conv1d, summed over the batch")

register("conv2d", sample=((f32(BATCH, 4, 6, 5), f32(6, 2, 3, 2), f32(6)), _ATTRS_2D),
         shape=_conv_shape(2), ref=_conv_ref, grad=_conv_grad(2), lower=_conv_lower,
         surface=_conv_surface(2), scratch=_scratch(0),
         doc="conv2d(x, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=true) "
             "on f32[N, C, H, W]; kernel_h/kernel_w, stride_h/…, padding_h/… for asymmetric "
             "windows; weight [O, C/groups, kh, kw], PyTorch init")

register("conv2d_grad_input", sample=((f32(BATCH, 6, 3, 6), f32(6, 2, 3, 2)),
                                      {**_ATTRS_2D, "in_size": (6, 5)}),
         shape=_grad_input_shape(2), ref=_grad_input_ref, lower=_grad_input_lower,
         scratch=_scratch(1), doc="the input gradient of conv2d (a transposed convolution)")

register("conv2d_grad_weight", sample=((f32(BATCH, 4, 6, 5), f32(BATCH, 6, 3, 6)),
                                       {**_ATTRS_2D, "kernel": (3, 2)}),
         shape=_grad_weight_shape(2), ref=_grad_weight_ref, lower=_grad_weight_lower,
         scratch=_scratch(2), doc="the weight gradient of conv2d, summed over the batch")


# --- channel_sum: Σ over the batch and spatial dims (a convolution's bias gradient) ---------

def _channel_sum_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    t = ins[0]
    if t.dtype != "f32" or not t.batched or len(t.shape) < 3:
        raise ShapeError(f"channel_sum expects f32[N, channels, ...] but got {t}")
    return f32(t.row_shape[0])


def _channel_sum_lower(ctx: LowerCtx, node: Node) -> None:
    c, *spatial = node.inputs[0].type.row_shape
    lconv.channel_sum(ctx, channels=c, plane=math.prod(spatial), src=ctx.ptr(node.inputs[0]),
                      dst=ctx.ptr(node.out))


register("channel_sum", sample=((f32(BATCH, 5, 7),), {}), shape=_channel_sum_shape,
         ref=lambda xs, _: xs[0].sum(axis=(0, *range(2, xs[0].ndim))),
         lower=_channel_sum_lower, doc="Σ over the batch and spatial dims, per channel")
