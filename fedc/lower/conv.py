"""Lowering: convolution (forward, input and weight gradients), im2col + GEMM or direct.

Strategy "each": per example and group, the window rows of the input are copied into a column matrix
col[K = C/g·kh·kw, P = Ho·Wo] in scratch (zeros where the window overhangs the padding), and
the convolution is one GEMM from fedc.lower.gemm on contiguous NCHW slices:

    out_g[O/g, P]  = W_g[O/g, K] · col[K, P]        (+ bias, prefilled)    "nn"
    dcol[K, P]     = W_gᵀ · dy_g[O/g, P]            then col2im into dx    "tn"
    dW_g[O/g, K]  += dy_g[O/g, P] · colᵀ            summed over examples   "nt"

The window offsets (i, j) are unrolled at compile time, so every bound of the copy loops is a
constant and the interior copies are plain (vectorised when the stride is 1) runs.

Strategy "direct" (fedc.lower.conv_direct) skips the column matrix for the forward pass and the
input gradient of horizontal-stride-1 convolutions, and computes their weight gradient as dot
products over output positions; `strategy` picks per kernel by the measurements in
docs/examples.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llvmlite import ir

from ..ops.window import Window
from . import conv_direct, gemm, winograd
from .context import LowerCtx
from .kernels import (
    LANES,
    V4,
    carry_loop,
    const_like,
    emit_cols,
    emit_map,
    f32c,
    gep,
    i32c,
    load,
    load4,
    load_w,
    loop,
    reduce_add4,
    splat,
    store,
    store_w,
    zero_w,
)


@dataclass(frozen=True)
class ConvShape:
    """A grouped convolution's static sizes."""

    win: Window
    channels: int  # input channels C
    out_channels: int  # O
    groups: int

    @property
    def cg(self) -> int:
        return self.channels // self.groups

    @property
    def og(self) -> int:
        return self.out_channels // self.groups

    @property
    def k(self) -> int:
        """Rows of the column matrix: the reduction depth of the GEMM."""
        return self.cg * self.win.taps

    @property
    def p(self) -> int:
        return self.win.out_plane

    def col_bytes(self) -> int:
        return (self.k * self.p + LANES - 1) // LANES * LANES * 4


def _inside(o_count: int, i: int, pad: int, stride: int, size: int) -> tuple[int, int]:
    """[lo, hi): the outputs o whose tap o·stride + i − pad falls inside [0, size)."""
    lo = max(0, -(-(pad - i) // stride))
    last = size - 1 + pad - i
    hi = last // stride + 1 if last >= 0 else 0
    lo = min(lo, o_count)
    return lo, max(lo, min(hi, o_count))


def _zero_run(b: ir.IRBuilder, dst: ir.Value, count: int) -> None:
    emit_cols(b, count, lambda j, vec: store_w(b, zero_w(vec), dst, j, vec), "z")


def _move_run(b: ir.IRBuilder, dst: ir.Value, dst_stride: int, src: ir.Value, src_stride: int,
              count: int, add: bool) -> None:
    """dst[t·dst_stride] (+)= src[t·src_stride] for t < count; vectorised when contiguous."""
    if dst_stride == src_stride == 1:
        def body(j: ir.Value, vec: bool) -> None:
            v = load_w(b, src, j, vec)
            store_w(b, b.fadd(load_w(b, dst, j, vec), v) if add else v, dst, j, vec)
        emit_cols(b, count, body, "mv")
        return
    if not count:
        return
    with loop(b, 0, count, 1, "ms") as t:
        v = load(b, src, b.mul(t, i32c(src_stride)))
        at = b.mul(t, i32c(dst_stride))
        store(b, b.fadd(load(b, dst, at), v) if add else v, dst, at)


def _each_tap(b: ir.IRBuilder, s: ConvShape, image: ir.Value, col: ir.Value,
              gather: bool, ld: int | None = None) -> None:
    """im2col (gather: col ← image) or its adjoint col2im (image += col) for one example and
    group; `image` points at the group's first channel [C/g, H, W], col is [K, P] with rows
    `ld` floats apart (default P)."""
    win = s.win
    (h, w), (kh, kw), (sh, sw), (ph, pw) = win.size, win.kernel, win.stride, win.padding
    ho, wo = win.out
    for i in range(kh):
        oh_lo, oh_hi = _inside(ho, i, ph, sh, h)
        for j in range(kw):
            ow_lo, ow_hi = _inside(wo, j, pw, sw, w)
            with loop(b, 0, s.cg, 1, "c") as c:
                tap = b.add(b.mul(c, i32c(kh * kw)), i32c(i * kw + j))
                row = gep(b, col, b.mul(tap, i32c(ld or s.p)))
                plane = gep(b, image, b.mul(c, i32c(h * w)))
                if gather:  # window rows wholly in the padding
                    _zero_run(b, row, oh_lo * wo)
                    _zero_run(b, gep(b, row, oh_hi * wo), (ho - oh_hi) * wo)
                if oh_lo < oh_hi:
                    with loop(b, oh_lo, oh_hi, 1, "oh") as oh:
                        ih = b.add(b.mul(oh, i32c(sh)), i32c(i - ph))
                        seg = gep(b, row, b.mul(oh, i32c(wo)))
                        first = b.add(b.mul(ih, i32c(w)), i32c(ow_lo * sw + j - pw))
                        src, dst = gep(b, plane, first), gep(b, seg, ow_lo)
                        if gather:
                            _zero_run(b, seg, ow_lo)
                            _zero_run(b, gep(b, seg, ow_hi), wo - ow_hi)
                            _move_run(b, dst, 1, src, sw, ow_hi - ow_lo, add=False)
                        else:
                            _move_run(b, src, sw, dst, 1, ow_hi - ow_lo, add=True)


def _zero(b: ir.IRBuilder, dst: ir.Value, count: ir.Value) -> None:
    emit_map(b, count, lambda bb, v: const_like(v[0], 0.0), [dst], dst)


def _each_group(ctx: LowerCtx, s: ConvShape,
                body: Callable[[ir.Value, ir.Value], None]) -> None:
    """body(n, g) for every example n < ctx.n and group g."""
    b = ctx.b
    with loop(b, 0, ctx.n, 1, "n") as n:
        with loop(b, 0, s.groups, 1, "g") as g:
            body(n, g)


def _slice(b: ir.IRBuilder, base: ir.Value, n: ir.Value, per_n: int, g: ir.Value,
           per_g: int) -> ir.Value:
    return gep(b, base, b.add(b.mul(n, i32c(per_n)), b.mul(g, i32c(per_g))))


# --- strategy "each": one GEMM per example and group, col [K, P] -----------------------------


def _forward_each(ctx: LowerCtx, s: ConvShape, x: ir.Value, w: ir.Value,
                  bias: ir.Value | None, out: ir.Value) -> None:
    b = ctx.b
    col = ctx.addr_ptr(ctx.scratch)
    weights = ctx.scratch + s.col_bytes()  # every group's packed weight, packed once per call
    pack = ctx.addr_ptr(weights + s.groups * gemm.packed_a_bytes(s.og, s.k))

    def packed_w(g: ir.Value) -> ir.Value:
        return gep(b, ctx.addr_ptr(weights), b.mul(g, i32c(gemm.packed_a_bytes(s.og, s.k) // 4)))

    with loop(b, 0, s.groups, 1, "pw") as g:
        gemm.emit_pack_a(b, m=s.og, k=s.k, a=gep(b, w, b.mul(g, i32c(s.og * s.k))),
                         dst=packed_w(g))

    def body(n: ir.Value, g: ir.Value) -> None:
        _each_tap(b, s, _slice(b, x, n, s.channels * s.win.plane, g, s.cg * s.win.plane), col,
                  gather=True)
        dst = _slice(b, out, n, s.out_channels * s.p, g, s.og * s.p)
        if bias is not None:
            with loop(b, 0, s.og, 1, "o") as o:
                v = load(b, bias, b.add(b.mul(g, i32c(s.og)), o))
                row = gep(b, dst, b.mul(o, i32c(s.p)))
                emit_cols(b, s.p, lambda j, vec: store_w(b, splat(b, v) if vec else v, row, j,
                                                         vec), "bf")
        gemm.emit_matmul(b, kind="nn", m=s.og, n=s.p, k=s.k, a=packed_w(g), bmat=col, c=dst,
                         scratch=pack, accumulate=bias is not None, madd=ctx.madd, a_packed=True)

    _each_group(ctx, s, body)


def _grad_input_each(ctx: LowerCtx, s: ConvShape, dy: ir.Value, w: ir.Value, dx: ir.Value) -> None:
    b = ctx.b
    dcol = ctx.addr_ptr(ctx.scratch)
    pack = ctx.addr_ptr(ctx.scratch + s.col_bytes())
    _zero(b, dx, b.mul(ctx.n, i32c(s.channels * s.win.plane)))

    def body(n: ir.Value, g: ir.Value) -> None:
        src = _slice(b, dy, n, s.out_channels * s.p, g, s.og * s.p)
        gemm.emit_matmul(b, kind="tn", m=s.og, n=s.p, k=s.k,
                         a=gep(b, w, b.mul(g, i32c(s.og * s.k))), bmat=src, c=dcol, scratch=pack,
                         madd=ctx.madd)
        _each_tap(b, s, _slice(b, dx, n, s.channels * s.win.plane, g, s.cg * s.win.plane), dcol,
                  gather=False)

    _each_group(ctx, s, body)


# The weight gradient reduces over examples and positions: a GEMM per example reduces over only
# P positions (16 for an 8×8 image after one pooling), so each 4×8 tile of dW is loaded, added
# to and stored again after a few steps. Chunks of CHUNK_DEPTH // P examples side by side in
# one column matrix make the reduction CHUNK_DEPTH deep; the examples past the last whole
# chunk take the per-example path. Only for P ≤ CHUNK_MAX_P: at 32–128 positions the copies
# into the chunk cost more than the deeper reduction gains (conv 1→16 on 8×8: 28.6 µs per
# example, 31.7 chunked; waveforms' 1-D layers 2–12% slower chunked), at 16 it gained 5%.
CHUNK_DEPTH = 256
MAX_CHUNK = 16
CHUNK_MAX_P = 16


def _chunk(s: ConvShape) -> int:
    return 1 if s.p > CHUNK_MAX_P else max(1, min(MAX_CHUNK, CHUNK_DEPTH // s.p))


def _grad_weight_each(ctx: LowerCtx, s: ConvShape, x: ir.Value, dy: ir.Value, dw: ir.Value) -> None:
    b = ctx.b
    e, col = _chunk(s), ctx.addr_ptr(ctx.scratch)
    _zero(b, dw, i32c(s.out_channels * s.k))
    whole = b.mul(b.udiv(ctx.n, i32c(e)), i32c(e)) if e > 1 else i32c(0)
    if e > 1:
        col_b, dys_b, _ = _chunk_bytes(s)
        dys = ctx.addr_ptr(ctx.scratch + col_b)  # [O/g, e·P]
        pack = ctx.addr_ptr(ctx.scratch + col_b + dys_b)
        with loop(b, 0, whole, e, "ch") as n0:
            with loop(b, 0, s.groups, 1, "g") as g:
                with loop(b, 0, e, 1, "e") as i:
                    n = b.add(n0, i)
                    _each_tap(b, s, _slice(b, x, n, s.channels * s.win.plane, g,
                                           s.cg * s.win.plane), gep(b, col, b.mul(i, i32c(s.p))),
                              gather=True, ld=e * s.p)
                    src = _slice(b, dy, n, s.out_channels * s.p, g, s.og * s.p)
                    _move_rows(b, s.og, s.p, src, s.p, gep(b, dys, b.mul(i, i32c(s.p))), e * s.p)
                gemm.emit_matmul(b, kind="nt", m=s.og, n=e * s.p, k=s.k, a=dys, bmat=col,
                                 c=gep(b, dw, b.mul(g, i32c(s.og * s.k))), scratch=pack,
                                 accumulate=True, madd=ctx.madd)
    pack = ctx.addr_ptr(ctx.scratch + s.col_bytes())
    with loop(b, whole, ctx.n, 1, "n") as n:
        with loop(b, 0, s.groups, 1, "g") as g:
            _each_tap(b, s, _slice(b, x, n, s.channels * s.win.plane, g, s.cg * s.win.plane),
                      col, gather=True)
            gemm.emit_matmul(b, kind="nt", m=s.og, n=s.p, k=s.k,
                             a=_slice(b, dy, n, s.out_channels * s.p, g, s.og * s.p), bmat=col,
                             c=gep(b, dw, b.mul(g, i32c(s.og * s.k))), scratch=pack,
                             accumulate=True, madd=ctx.madd)


def _move_rows(b: ir.IRBuilder, rows: int, count: int, src: ir.Value, src_ld: int,
               dst: ir.Value, dst_ld: int) -> None:
    """dst[r·dst_ld + j] = src[r·src_ld + j] for r < rows, j < count."""
    with loop(b, 0, rows, 1, "mr") as r:
        _move_run(b, gep(b, dst, b.mul(r, i32c(dst_ld))), 1, gep(b, src, b.mul(r, i32c(src_ld))),
                  1, count, add=False)


def _chunk_bytes(s: ConvShape) -> tuple[int, int, int]:
    """A chunk's column matrix [K, e·P], dy rows [O/g, e·P] and GEMM scratch, 16-byte units."""
    e = _chunk(s)
    return (_up16(4 * s.k * e * s.p), _up16(4 * s.og * e * s.p),
            gemm.scratch_bytes("nt", s.og, e * s.p, s.k))


def _up16(n: int) -> int:
    return (n + 15) // 16 * 16


def _grad_weight_bytes(s: ConvShape) -> int:
    per_example = s.col_bytes() + gemm.scratch_bytes("nt", s.og, s.p, s.k)
    return per_example if _chunk(s) == 1 else max(per_example, sum(_chunk_bytes(s)))


# --- strategy "direct": no column matrix (fedc.lower.conv_direct), horizontal stride 1 -------


def _direct_forward(s: ConvShape) -> conv_direct.Direct | None:
    win = s.win
    if win.stride[1] != 1:
        return None
    return conv_direct.Direct(s.groups, s.cg, s.og, win.size, win.kernel, win.padding,
                              win.stride[0], (s.k, win.taps, 1, 0))


def _direct_input(s: ConvShape) -> conv_direct.Direct | None:
    """dx as a convolution of dy with the kernel flipped and channels swapped (stride 1)."""
    win = s.win
    (kh, kw), (ph, pw) = win.kernel, win.padding
    if win.stride != (1, 1) or ph > kh - 1 or pw > kw - 1:
        return None
    return conv_direct.Direct(s.groups, s.og, s.cg, win.out, win.kernel, (kh - 1 - ph, kw - 1 - pw),
                              1, (win.taps, s.k, -1, win.taps - 1))


def _forward_direct(ctx: LowerCtx, s: ConvShape, x: ir.Value, w: ir.Value,
                    bias: ir.Value | None, out: ir.Value) -> None:
    d = _direct_forward(s)
    assert d is not None
    conv_direct.run(ctx, d, x, w, bias, out)


def _grad_input_direct(ctx: LowerCtx, s: ConvShape, dy: ir.Value, w: ir.Value,
                       dx: ir.Value) -> None:
    d = _direct_input(s)
    assert d is not None
    conv_direct.run(ctx, d, dy, w, None, dx)


def _grad_weight_direct(ctx: LowerCtx, s: ConvShape, x: ir.Value, dy: ir.Value,
                        dw: ir.Value) -> None:
    d = _direct_forward(s)
    assert d is not None
    conv_direct.run_weight(ctx, d, x, dy, dw)


# --- dispatch ------------------------------------------------------------------------------

WINOGRAD = {"winograd": 2, "winograd4": 4}  # strategy → output tile size m of F(m×m, 3×3)


def _wino(s: ConvShape, how: str, which: Which) -> winograd.Wino:
    wg = winograd.of(s, WINOGRAD[how], which)
    assert wg is not None
    return wg


def _wino_kernels(how: str) -> tuple[Callable[..., None], ...]:
    def fwd(ctx: LowerCtx, s: ConvShape, x: ir.Value, w: ir.Value, bias: ir.Value | None,
            out: ir.Value) -> None:
        winograd.forward(ctx, _wino(s, how, 0), x, w, bias, out)

    def dx(ctx: LowerCtx, s: ConvShape, dy: ir.Value, w: ir.Value, dx: ir.Value) -> None:
        winograd.grad_input(ctx, _wino(s, how, 1), dy, w, dx)

    def dw(ctx: LowerCtx, s: ConvShape, x: ir.Value, dy: ir.Value, dw: ir.Value) -> None:
        winograd.grad_weight(ctx, _wino(s, how, 2), x, dy, dw)
    return fwd, dx, dw


STRATEGIES = ("each", "direct", "winograd", "winograd4")
FORCE: str | None = None  # tests and benchmarks pin a strategy here (where it applies)
Which = int  # 0 forward, 1 input gradient, 2 weight gradient

_KERNELS: dict[str, tuple[Callable[..., None] | None, ...]] = {
    "each": (_forward_each, _grad_input_each, _grad_weight_each),
    "direct": (_forward_direct, _grad_input_direct, _grad_weight_direct),
    **{how: _wino_kernels(how) for how in WINOGRAD},
}


def _direct(s: ConvShape, which: Which) -> conv_direct.Direct | None:
    """The direct kernel's geometry: the weight gradient runs on the forward one's."""
    return _direct_input(s) if which == 1 else _direct_forward(s)


def strategy(s: ConvShape, which: Which) -> str:
    """The fastest measured (bench/bench_conv.py --strategies, docs/examples.md): Winograd
    F(4×4) where it applies and the outputs come in fours or F(2×2)'s tiles would have to be
    looped, else F(2×2) where it applies; else direct with at least 4 output channels to fill a
    tile's lanes and output rows of 8 or more (the weight gradient: rows in whole segments of 4
    and at least 32 positions); else im2col ("each")."""
    d = _direct(s, which)
    if FORCE is not None:
        usable = {"direct": d is not None,
                  **{how: winograd.of(s, m) is not None for how, m in WINOGRAD.items()}}
        return FORCE if usable.get(FORCE, True) else "each"
    f4, f2 = winograd.of(s, 4), winograd.of(s)
    # F(2×2) only where its tiles are few enough to unroll and F(4×4)'s would waste a margin
    if f4 is not None and (all(n % 4 == 0 for n in s.win.out) or f2 is None or f2.padded):
        return "winograd4"
    if f2 is not None:
        return "winograd"
    if which == 2:  # dot products over positions: whole segments, and enough of them per tile
        return "direct" if d is not None and d.out[1] % 4 == 0 and s.p >= 32 else "each"
    return "direct" if d is not None and d.cout >= 4 and d.out[1] >= 8 else "each"


def forward(ctx: LowerCtx, s: ConvShape, x: ir.Value, w: ir.Value, bias: ir.Value | None,
            out: ir.Value) -> None:
    """out[N, O, Ho, Wo] = conv(x[N, C, H, W], w[O, C/g, kh, kw]) (+ bias[O])."""
    _run(s, 0)(ctx, s, x, w, bias, out)


def grad_input(ctx: LowerCtx, s: ConvShape, dy: ir.Value, w: ir.Value, dx: ir.Value) -> None:
    """dx[N, C, H, W] = the adjoint of the convolution applied to dy[N, O, Ho, Wo]."""
    _run(s, 1)(ctx, s, dy, w, dx)


def grad_weight(ctx: LowerCtx, s: ConvShape, x: ir.Value, dy: ir.Value, dw: ir.Value) -> None:
    """dw[O, C/g, kh, kw] = Σ over examples of dy_g · im2col(x)ᵀ."""
    _run(s, 2)(ctx, s, x, dy, dw)


def _run(s: ConvShape, which: Which) -> Callable[..., None]:
    fn = _KERNELS[strategy(s, which)][which]
    assert fn is not None
    return fn


def scratch_bytes(s: ConvShape, which: Which, max_batch: int) -> int:
    """Scratch for one of the three kernels (0 forward, 1 input, 2 weight gradient)."""
    d = _direct(s, which)
    how = strategy(s, which)
    if how == "direct" and d is not None:
        return conv_direct.weight_scratch_bytes(d) if which == 2 else d.scratch_bytes()
    if how in WINOGRAD:
        return _wino(s, how, which).scratch_bytes()
    if which == 2:
        return _grad_weight_bytes(s)
    kind: gemm.Kind = ("nn", "tn", "nt")[which]  # type: ignore[assignment]
    packed_w = s.groups * gemm.packed_a_bytes(s.og, s.k) if which == 0 else 0
    return s.col_bytes() + packed_w + gemm.scratch_bytes(kind, s.og, s.p, s.k, a_packed=which == 0)


SUM_ACCS = 4  # independent <4 x float> partial sums of channel_sum (the add latency)


def channel_sum(ctx: LowerCtx, *, channels: int, plane: int, src: ir.Value,
                dst: ir.Value) -> None:
    """dst[c] = Σ_n Σ_p src[n, c, p]: a convolution's bias gradient.

    Per channel, the plane's vectors go round-robin into SUM_ACCS partial sums carried over the
    examples (a scalar one for a tail of plane % 4), reduced once at the end in a fixed order.
    """
    b = ctx.b
    vecs, tail = plane // LANES, plane % LANES
    accs = min(SUM_ACCS, vecs)
    with loop(b, 0, channels, 1, "c") as c:
        def step(n: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
            row = gep(b, src, b.mul(b.add(b.mul(n, i32c(channels)), c), i32c(plane)))
            vs, scalar = list(acc[:accs]), acc[accs] if tail else None
            if vecs > SUM_ACCS * 2:  # long planes: a loop over groups of SUM_ACCS vectors
                whole = vecs // accs * accs
                vs = carry_loop(b, 0, whole * LANES, accs * LANES, vs, lambda j, a: [
                    b.fadd(a[q], load4(b, row, b.add(j, i32c(q * LANES)))) for q in range(accs)],
                    "cs")
                first = whole
            else:
                first = 0
            for v in range(first, vecs):
                vs[v % accs] = b.fadd(vs[v % accs], load4(b, row, v * LANES))
            if scalar is not None:
                for t in range(vecs * LANES, plane):
                    scalar = b.fadd(scalar, load(b, row, t))
                return [*vs, scalar]
            return vs

        init = [ir.Constant(V4, [0.0] * LANES)] * accs + ([f32c(0.0)] if tail else [])
        acc = carry_loop(b, 0, ctx.n, 1, init, step, "cn")
        total: ir.Value = f32c(0.0)
        if accs:
            v = acc[0]
            for q in range(1, accs):
                v = b.fadd(v, acc[q])
            total = reduce_add4(b, v)
        if tail:
            total = b.fadd(total, acc[accs])
        store(b, total, dst, c)
