"""Normalisation kernels (layer and group norm): per-segment statistics, forward and gradients.

A tensor is a run of *segments*, each normalised on its own: rows × groups segments of
cg·s contiguous floats, where a segment holds cg channels of s consecutive elements each and
channel c of group g uses affine parameter g·cg + c. Layer norm over the last dim D is
(groups 1, cg D, s 1) with one segment per row; group norm on [N, C, spatial…] is
(groups G, cg C/G, s = Π spatial). Lanes run over channels when s = 1 (contiguous
parameters) and over the elements of one channel otherwise (a broadcast parameter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llvmlite import ir

from .context import LowerCtx
from .kernels import (
    F32,
    accumulate,
    bcast_w,
    emit_cols,
    f32c,
    i32c,
    load,
    load_w,
    loop,
    store,
    store_w,
    zero_w,
)
from .rows import hsum


@dataclass(frozen=True)
class Geometry:
    per_example: int  # segment rows per example
    groups: int
    cg: int  # channels per group
    s: int  # elements per channel

    @property
    def size(self) -> int:
        return self.cg * self.s


# body(offset in the segment, channel in the group, vec, channel-contiguous lanes)
Body = Callable[[ir.Value, ir.Value, bool, bool], ir.Value]


def param(b: ir.IRBuilder, ptr: ir.Value, base: ir.Value, ch: ir.Value, vec: bool,
          contiguous: bool) -> ir.Value:
    """Parameter base+ch for the lanes: 4 consecutive channels, or one channel broadcast."""
    idx = b.add(base, ch)
    return load_w(b, ptr, idx, vec) if contiguous else bcast_w(b, load(b, ptr, idx), vec)


def seg_sum(b: ir.IRBuilder, geo: Geometry, term: Body) -> ir.Value:
    """Σ over one segment of term(offset, channel, vec, contiguous)."""
    if geo.s == 1:
        return hsum(b, geo.cg, lambda j, vec: term(j, j, vec, True), "ns")

    def channel(c: ir.Value, acc: ir.Value) -> ir.Value:
        base = b.mul(c, i32c(geo.s))
        return b.fadd(acc, hsum(b, geo.s, lambda j, vec: term(b.add(base, j), c, vec, False),
                                "nss"))

    return accumulate(b, i32c(geo.cg), channel, f32c(0.0), 1, "nc")


def seg_each(b: ir.IRBuilder, geo: Geometry, body: Callable[[ir.Value, ir.Value, bool, bool],
                                                             None]) -> None:
    """body(offset, channel, vec, contiguous) over one segment, 4 lanes where possible."""
    if geo.s == 1:
        emit_cols(b, geo.cg, lambda j, vec: body(j, j, vec, True), "ne")
        return
    with loop(b, 0, geo.cg, 1, "nec") as c:
        base = b.mul(c, i32c(geo.s))
        emit_cols(b, geo.s, lambda j, vec: body(b.add(base, j), c, vec, False), "nes")


@dataclass(frozen=True)
class Stats:
    seg: ir.Value  # segment index
    group_base: ir.Value  # first affine parameter of the segment's group
    mean: ir.Value
    rstd: ir.Value  # 1 / sqrt(var + eps), var the biased (population) variance


def for_segments(ctx: LowerCtx, geo: Geometry, x: ir.Value, eps: float,
                 body: Callable[[Stats, Callable[[ir.Value], ir.Value]], None]) -> None:
    """For every segment: its statistics (two passes: mean, then Σ(x − mean)²), then
    body(stats, ptr_of) where ptr_of(buffer) is that buffer's pointer to the segment start."""
    b = ctx.b
    rows = b.mul(ctx.n, i32c(geo.per_example))
    with loop(b, 0, rows, 1, "nr") as r, loop(b, 0, geo.groups, 1, "ng") as g:
        seg = b.add(b.mul(r, i32c(geo.groups)), g)
        start = b.mul(seg, i32c(geo.size))

        def ptr_of(base: ir.Value) -> ir.Value:
            return b.gep(base, [start], source_etype=F32)

        xs = ptr_of(x)
        inv_m = f32c(1.0 / geo.size)
        mean = b.fmul(seg_sum(b, geo, lambda o, c, vec, cont: load_w(b, xs, o, vec)), inv_m)

        def sq(o: ir.Value, c: ir.Value, vec: bool, cont: bool) -> ir.Value:
            d = b.fsub(load_w(b, xs, o, vec), bcast_w(b, mean, vec))
            return b.fmul(d, d)

        var = b.fmul(seg_sum(b, geo, sq), inv_m)
        rstd = b.fdiv(f32c(1.0), sqrt(b, b.fadd(var, f32c(eps))))
        body(Stats(seg, b.mul(g, i32c(geo.cg)), mean, rstd), ptr_of)


def xhat(b: ir.IRBuilder, st: Stats, xs: ir.Value, o: ir.Value, vec: bool) -> ir.Value:
    """(x − mean) · rstd at offset o of the segment."""
    d = b.fsub(load_w(b, xs, o, vec), bcast_w(b, st.mean, vec))
    return b.fmul(d, bcast_w(b, st.rstd, vec))


def forward(ctx: LowerCtx, geo: Geometry, eps: float, x: ir.Value, w: ir.Value, bias: ir.Value,
            out: ir.Value) -> None:
    """out = xhat · w[channel] + bias[channel]."""
    b = ctx.b

    def seg(st: Stats, ptr_of: Callable[[ir.Value], ir.Value]) -> None:
        xs, ys = ptr_of(x), ptr_of(out)

        def elem(o: ir.Value, c: ir.Value, vec: bool, cont: bool) -> None:
            scale = param(b, w, st.group_base, c, vec, cont)
            shift = param(b, bias, st.group_base, c, vec, cont)
            store_w(b, b.fadd(b.fmul(xhat(b, st, xs, o, vec), scale), shift), ys, o, vec)

        seg_each(b, geo, elem)

    for_segments(ctx, geo, x, eps, seg)


def input_grad(ctx: LowerCtx, geo: Geometry, eps: float, dy: ir.Value, x: ir.Value,
               w: ir.Value, out: ir.Value) -> None:
    """dx = rstd · (g − mean(g) − xhat · mean(g · xhat)), g = dy · w[channel]."""
    b = ctx.b
    inv_m = f32c(1.0 / geo.size)

    def seg(st: Stats, ptr_of: Callable[[ir.Value], ir.Value]) -> None:
        xs, dys, dxs = ptr_of(x), ptr_of(dy), ptr_of(out)

        def g(o: ir.Value, c: ir.Value, vec: bool, cont: bool) -> ir.Value:
            return b.fmul(load_w(b, dys, o, vec), param(b, w, st.group_base, c, vec, cont))

        mean_g = b.fmul(seg_sum(b, geo, g), inv_m)
        mean_gx = b.fmul(seg_sum(b, geo, lambda o, c, vec, cont: b.fmul(
            g(o, c, vec, cont), xhat(b, st, xs, o, vec))), inv_m)

        def elem(o: ir.Value, c: ir.Value, vec: bool, cont: bool) -> None:
            centred = b.fsub(g(o, c, vec, cont), bcast_w(b, mean_g, vec))
            d = b.fsub(centred, b.fmul(xhat(b, st, xs, o, vec), bcast_w(b, mean_gx, vec)))
            store_w(b, b.fmul(d, bcast_w(b, st.rstd, vec)), dxs, o, vec)

        seg_each(b, geo, elem)

    for_segments(ctx, geo, x, eps, seg)


def weight_grad(ctx: LowerCtx, geo: Geometry, eps: float, dy: ir.Value, x: ir.Value,
                out: ir.Value) -> None:
    """out[g·cg + c] = Σ over every segment of group g of dy · xhat on channel c."""
    b = ctx.b
    zero(b, out, geo.groups * geo.cg)

    def seg(st: Stats, ptr_of: Callable[[ir.Value], ir.Value]) -> None:
        xs, dys = ptr_of(x), ptr_of(dy)

        def term(o: ir.Value, vec: bool) -> ir.Value:
            return b.fmul(load_w(b, dys, o, vec), xhat(b, st, xs, o, vec))

        if geo.s == 1:  # lanes are channels: accumulate 4 parameters at a time
            def add4(j: ir.Value, vec: bool) -> None:
                idx = b.add(st.group_base, j)
                store_w(b, b.fadd(load_w(b, out, idx, vec), term(j, vec)), out, idx, vec)
            emit_cols(b, geo.cg, add4, "nw")
            return
        with loop(b, 0, geo.cg, 1, "nwc") as c:
            base = b.mul(c, i32c(geo.s))
            part = hsum(b, geo.s, lambda j, vec: term(b.add(base, j), vec), "nws")
            idx = b.add(st.group_base, c)
            store(b, b.fadd(load(b, out, idx), part), out, idx)

    for_segments(ctx, geo, x, eps, seg)


def zero(b: ir.IRBuilder, out: ir.Value, count: int) -> None:
    emit_cols(b, count, lambda j, vec: store_w(b, zero_w(vec), out, j, vec), "nz")


def sqrt(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """llvm.sqrt.f32: one f32.sqrt on wasm32 (no libm call; see docs/math.md)."""
    fn = b.module.globals.get("llvm.sqrt.f32")
    if not isinstance(fn, ir.Function):
        fn = ir.Function(b.module, ir.FunctionType(F32, [F32]), "llvm.sqrt.f32")
    return b.call(fn, [x])
