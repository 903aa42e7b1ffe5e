"""Lowering: max and average pooling over NCHW planes (and their gradients), global average.

Pooling is O(N·C·H·W) against a convolution's O(N·C·O·H·W·k²), so these kernels stay scalar:
one loop over the N·C planes, two over the output positions, and the window's taps unrolled
at compile time. A bounds check is emitted only along a padded dimension.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from ..ops.window import Window
from .context import LowerCtx
from .kernels import (
    const_like,
    emit_cols,
    emit_map,
    f32c,
    fsum,
    gep,
    i32c,
    load,
    loop,
    splat,
    store,
    store_w,
)

Tap = tuple[ir.Value, ir.Value | None]  # (element index in the plane, in-bounds flag or None)


def _tap(b: ir.IRBuilder, win: Window, oh: ir.Value, ow: ir.Value, i: int, j: int) -> Tap:
    """The plane index of tap (i, j) of output (oh, ow); clamped to 0 where out of bounds."""
    (h, w), (sh, sw), (ph, pw) = win.size, win.stride, win.padding
    ih = b.add(b.mul(oh, i32c(sh)), i32c(i - ph))
    iw = b.add(b.mul(ow, i32c(sw)), i32c(j - pw))
    inb: ir.Value | None = None
    for pad, coord, size in ((ph, ih, h), (pw, iw, w)):
        if pad:  # unsigned: a negative coordinate is out of range too
            ok = b.icmp_unsigned("<", coord, i32c(size))
            inb = ok if inb is None else b.and_(inb, ok)
    idx = b.add(b.mul(ih, i32c(w)), iw)
    return (idx if inb is None else b.select(inb, idx, i32c(0))), inb


Body = Callable[[ir.Value, ir.Value, list[Tap]], None]  # (plane q, output index o, taps)


def _each_output(ctx: LowerCtx, win: Window, planes: int, body: Body) -> None:
    """body(q, o, taps) for every plane q < n·planes and output position o of the window."""
    b = ctx.b
    ho, wo = win.out
    with loop(b, 0, b.mul(ctx.n, i32c(planes)), 1, "q") as q:
        with loop(b, 0, ho, 1, "oh") as oh:
            with loop(b, 0, wo, 1, "ow") as ow:
                taps = [_tap(b, win, oh, ow, i, j)
                        for i in range(win.kernel[0]) for j in range(win.kernel[1])]
                body(q, b.add(b.mul(oh, i32c(wo)), ow), taps)


def _plane(b: ir.IRBuilder, base: ir.Value, q: ir.Value, size: int) -> ir.Value:
    return gep(b, base, b.mul(q, i32c(size)))


def _argmax(b: ir.IRBuilder, plane: ir.Value, taps: list[Tap]) -> tuple[ir.Value, ir.Value]:
    """(max, its index) over the in-bounds taps, first maximum in scan order; a NaN wins
    (PyTorch's `val > max || isnan(val)`)."""
    best: ir.Value = f32c(float("-inf"))
    at: ir.Value = i32c(0)
    for idx, inb in taps:
        v = load(b, plane, idx)
        take = b.or_(b.fcmp_ordered(">", v, best), b.fcmp_unordered("uno", v, v))
        if inb is not None:
            take = b.and_(take, inb)
        best = b.select(take, v, best)
        at = b.select(take, idx, at)
    return best, at


def _zero(b: ir.IRBuilder, dst: ir.Value, count: ir.Value) -> None:
    emit_map(b, count, lambda bb, v: const_like(v[0], 0.0), [dst], dst)


def max_pool(ctx: LowerCtx, win: Window, planes: int, x: ir.Value, out: ir.Value) -> None:
    b = ctx.b

    def body(q: ir.Value, o: ir.Value, taps: list[Tap]) -> None:
        best, _ = _argmax(b, _plane(b, x, q, win.plane), taps)
        store(b, best, _plane(b, out, q, win.out_plane), o)
    _each_output(ctx, win, planes, body)


def max_pool_grad(ctx: LowerCtx, win: Window, planes: int, dy: ir.Value, x: ir.Value,
                  dx: ir.Value) -> None:
    """dx[argmax of each window] += dy (windows may overlap); the argmax is recomputed."""
    b = ctx.b
    _zero(b, dx, b.mul(ctx.n, i32c(planes * win.plane)))

    def body(q: ir.Value, o: ir.Value, taps: list[Tap]) -> None:
        _, at = _argmax(b, _plane(b, x, q, win.plane), taps)
        d = _plane(b, dx, q, win.plane)
        store(b, b.fadd(load(b, d, at), load(b, _plane(b, dy, q, win.out_plane), o)), d, at)
    _each_output(ctx, win, planes, body)


def avg_pool(ctx: LowerCtx, win: Window, planes: int, x: ir.Value, out: ir.Value) -> None:
    """Mean over the window, padding counted as zeros (PyTorch's count_include_pad=True)."""
    b = ctx.b

    def body(q: ir.Value, o: ir.Value, taps: list[Tap]) -> None:
        src = _plane(b, x, q, win.plane)
        total: ir.Value = f32c(0.0)
        for idx, inb in taps:
            v = load(b, src, idx)
            total = b.fadd(total, v if inb is None else b.select(inb, v, f32c(0.0)))
        store(b, b.fdiv(total, f32c(float(win.taps))), _plane(b, out, q, win.out_plane), o)
    _each_output(ctx, win, planes, body)


def avg_pool_grad(ctx: LowerCtx, win: Window, planes: int, dy: ir.Value, dx: ir.Value) -> None:
    b = ctx.b
    _zero(b, dx, b.mul(ctx.n, i32c(planes * win.plane)))

    def body(q: ir.Value, o: ir.Value, taps: list[Tap]) -> None:
        g = b.fdiv(load(b, _plane(b, dy, q, win.out_plane), o), f32c(float(win.taps)))
        d = _plane(b, dx, q, win.plane)
        for idx, inb in taps:
            add = g if inb is None else b.select(inb, g, f32c(0.0))
            store(b, b.fadd(load(b, d, idx), add), d, idx)
    _each_output(ctx, win, planes, body)


def global_avg_pool(ctx: LowerCtx, planes: int, size: int, x: ir.Value, out: ir.Value) -> None:
    b = ctx.b
    with loop(b, 0, b.mul(ctx.n, i32c(planes)), 1, "q") as q:
        total = fsum(b, gep(b, x, b.mul(q, i32c(size))), size)
        store(b, b.fdiv(total, f32c(float(size))), out, q)


def global_avg_pool_grad(ctx: LowerCtx, planes: int, size: int, dy: ir.Value,
                         dx: ir.Value) -> None:
    b = ctx.b
    with loop(b, 0, b.mul(ctx.n, i32c(planes)), 1, "q") as q:
        g = b.fdiv(load(b, dy, q), f32c(float(size)))
        row = gep(b, dx, b.mul(q, i32c(size)))
        emit_cols(b, size, lambda j, vec: store_w(b, splat(b, g) if vec else g, row, j, vec))

