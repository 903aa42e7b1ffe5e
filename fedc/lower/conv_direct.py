"""Lowering: direct convolution for horizontal stride 1, vectorised over output width.

No column matrix: per example and group the input channels are copied into a zero-bordered
scratch image (the padding), and a register tile of 4 output channels × 2 segments (a
segment is 4 consecutive outputs of one row; so 8 outputs of a wide row, or 4 of two narrow
rows) accumulates Σ_c Σ_taps w · x: per (channel, tap) step one load of the 4 output channels'
weights, pre-packed as broadcasts (each weight four times, as gemm's splat A panels: no
shuffles in the loop), 2 unaligned input loads, 8 mul+add.

The input gradient of a stride-1 convolution is itself such a convolution (of dy, with the
kernel flipped, channels swapped and padding k−1−p), so both use the same kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from .context import LowerCtx
from .kernels import (
    F32,
    I32,
    LANES,
    V4,
    carry_loop,
    gep,
    i32c,
    imin,
    load,
    load4,
    load_split,
    loop,
    mul_add,
    opaque_count,
    reduce_add4,
    splat,
    store,
    store4,
)

ZERO4 = ir.Constant(V4, [0.0] * 4)
TILE_O = 4  # output channels per tile
SPLAT = LANES  # copies of each packed weight (one <4 x float> broadcast per output channel)
TILE_W = TILE_O * SPLAT  # packed floats per (channel, tap) step
SEGS = 2  # segments per tile


@dataclass(frozen=True)
class Direct:
    """A grouped stride-(sh, 1) convolution read as out[G·O, Ho, Wo] from src[G·C, H, W].

    Weight element (g, o, c, tap) of the packed kernel sits in the source weight array at
    g·O·C·taps + o·so + c·sc + t0 + tap·st, which covers both the forward layout and the
    flipped, transposed view the input gradient needs.
    """

    groups: int
    cin: int  # per group
    cout: int  # per group
    size: tuple[int, int]  # input H, W
    kernel: tuple[int, int]
    padding: tuple[int, int]
    stride_h: int
    w_strides: tuple[int, int, int, int]  # so, sc, st, t0

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def out(self) -> tuple[int, int]:
        (h, w), (kh, kw), (ph, pw) = self.size, self.kernel, self.padding
        return (h + 2 * ph - kh) // self.stride_h + 1, w + 2 * pw - kw + 1

    @property
    def padded(self) -> tuple[int, int]:
        return self.size[0] + 2 * self.padding[0], self.size[1] + 2 * self.padding[1]

    @property
    def o_tiles(self) -> int:
        return -(-self.cout // TILE_O)

    def pack_floats(self) -> int:
        return self.groups * self.o_tiles * self.cin * self.taps * TILE_W

    def image_floats(self) -> int:
        hp, wp = self.padded
        return (self.cin * hp * wp + 2 * LANES + LANES - 1) // LANES * LANES  # + read slack

    def table_ints(self) -> int:
        return (self.cin * self.taps + LANES - 1) // LANES * LANES

    def scratch_bytes(self) -> int:
        return 4 * (self.pack_floats() + self.image_floats() + self.table_ints())


def _pack(b: ir.IRBuilder, d: Direct, w: ir.Value, dst: ir.Value) -> None:
    """dst[g][tile][c][tap][lane][0:SPLAT] = weight (g, tile·4 + lane, c, tap), broadcast;
    zero past cout."""
    so, sc, st, t0 = d.w_strides
    per_g = d.cout * d.cin * d.taps
    with loop(b, 0, d.groups * d.o_tiles, 1, "pk") as gt:
        g = b.udiv(gt, i32c(d.o_tiles))
        o0 = b.mul(b.urem(gt, i32c(d.o_tiles)), i32c(TILE_O))
        base = b.add(b.mul(g, i32c(per_g)), i32c(t0))
        out = b.mul(gt, i32c(d.cin * d.taps * TILE_W))
        with loop(b, 0, d.cin, 1, "pc") as c:
            for tap in range(d.taps):
                for lane in range(TILE_O):
                    o = b.add(o0, i32c(lane))
                    ok = b.icmp_signed("<", o, i32c(d.cout))
                    at = b.add(base, b.add(b.mul(b.select(ok, o, i32c(0)), i32c(so)),
                                           b.add(b.mul(c, i32c(sc)), i32c(tap * st))))
                    v = b.select(ok, load(b, w, at), ir.Constant(F32, 0.0))
                    slot = b.add(out, b.mul(c, i32c(d.taps * TILE_W)))
                    store4(b, splat(b, v), dst, b.add(slot, i32c(tap * TILE_W + lane * SPLAT)))


def _zero(b: ir.IRBuilder, dst: ir.Value, count: int) -> None:
    with loop(b, 0, count // LANES * LANES, LANES, "zi") as i:
        store4(b, ZERO4, dst, i)
    for i in range(count // LANES * LANES, count):
        store(b, ir.Constant(F32, 0.0), dst, i)


def _fill(b: ir.IRBuilder, d: Direct, src: ir.Value, img: ir.Value) -> None:
    """The interior of the padded image ← one example's group of input channels."""
    (h, w), (hp, wp), (ph, pw) = d.size, d.padded, d.padding
    with loop(b, 0, d.cin * h, 1, "fr") as r:  # input rows, all channels
        c, y = b.udiv(r, i32c(h)), b.urem(r, i32c(h))
        dst = gep(b, img, b.add(b.mul(b.add(b.mul(c, i32c(hp)), b.add(y, i32c(ph))), i32c(wp)),
                                i32c(pw)))
        row = gep(b, src, b.mul(r, i32c(w)))
        with loop(b, 0, w // LANES * LANES, LANES, "fv") as x:
            store4(b, load4(b, row, x), dst, x)
        for x in range(w // LANES * LANES, w):
            store(b, load(b, row, x), dst, x)


def _offsets(b: ir.IRBuilder, d: Direct, table: ir.Value) -> None:
    """table[c·taps + i·kw + j] = c·plane + i·Wp + j: each step's offset into the image."""
    hp, wpad = d.padded
    kh, kw = d.kernel
    with loop(b, 0, d.cin, 1, "oc") as c:
        base = b.mul(c, i32c(hp * wpad))
        for i in range(kh):
            for j in range(kw):
                at = b.add(b.mul(c, i32c(d.taps)), i32c(i * kw + j))
                store(b, b.add(base, i32c(i * wpad + j)), table, at)


def _tile(b: ir.IRBuilder, d: Direct, wp: ir.Value, img: ir.Value, table: ir.Value,
          starts: list[ir.Value], init: list[ir.Value], madd: bool) -> list[list[ir.Value]]:
    """acc[r][s] = init[r] + Σ_t wp[t][r] · img[starts[s] + table[t]] over t < cin·taps.

    One step per (channel, tap), not unrolled: with the taps unrolled LLVM hoisted their
    loads and Cranelift spilled the accumulators."""
    def step(t: ir.Value, accs: list[ir.Value]) -> list[ir.Value]:
        off = load(b, table, t, I32)
        rows = load_split(b, wp, b.mul(t, i32c(TILE_W)), TILE_W, align=16)  # no shuffles
        xs = [load4(b, img, b.add(st, off)) for st in starts]
        return [mul_add(b, rows[r], xs[s], accs[r * SEGS + s], madd)
                for r in range(TILE_O) for s in range(SEGS)]

    first = [x for x in init for _ in range(SEGS)]
    accs = carry_loop(b, 0, opaque_count(b, d.cin * d.taps), 1, first, step, "tc")
    return [[accs[r * SEGS + s] for s in range(SEGS)] for r in range(TILE_O)]


def _store(b: ir.IRBuilder, v: ir.Value, dst: ir.Value, at: ir.Value, partial: ir.Value | None,
           rem: int) -> None:
    """All 4 lanes at dst[at], or only the first `rem` where `partial` (a row's last segment)."""
    if partial is None:
        store4(b, v, dst, at)
        return
    with b.if_else(partial) as (short, full):
        with short:
            for lane in range(rem):
                store(b, b.extract_element(v, i32c(lane)), dst, b.add(at, i32c(lane)))
        with full:
            store4(b, v, dst, at)


def run(ctx: LowerCtx, d: Direct, src: ir.Value, w: ir.Value, bias: ir.Value | None,
        out: ir.Value) -> None:
    """out[n, g·O + o] = Σ conv of src[n, g·C …] for every example n < ctx.n."""
    b = ctx.b
    pack = ctx.addr_ptr(ctx.scratch)
    img = ctx.addr_ptr(ctx.scratch + 4 * d.pack_floats())
    table = ctx.addr_ptr(ctx.scratch + 4 * (d.pack_floats() + d.image_floats()))
    _pack(b, d, w, pack)
    _offsets(b, d, table)
    _zero(b, img, d.image_floats())  # borders stay zero: each example rewrites the interior
    (h, w_in), (ho, wo), wpad = d.size, d.out, d.padded[1]
    seg_row = -(-wo // LANES)
    n_segs = ho * seg_row
    with loop(b, 0, ctx.n, 1, "n") as n:
        with loop(b, 0, d.groups, 1, "g") as g:
            ex = b.add(b.mul(n, i32c(d.groups)), g)
            _fill(b, d, gep(b, src, b.mul(ex, i32c(d.cin * h * w_in))), img)
            dst = gep(b, out, b.mul(ex, i32c(d.cout * ho * wo)))
            with loop(b, 0, d.o_tiles, 1, "ot") as ot:
                wp = gep(b, pack, b.mul(b.add(b.mul(g, i32c(d.o_tiles)), ot),
                                        i32c(d.cin * d.taps * TILE_W)))
                o0 = b.mul(ot, i32c(TILE_O))
                init = _bias(b, d, bias, g, o0)
                with loop(b, 0, n_segs, SEGS, "sg") as s0:
                    segs = [s0] + [imin(b, b.add(s0, i32c(k)), i32c(n_segs - 1))
                                   for k in range(1, SEGS)]
                    pos = [(b.udiv(s, i32c(seg_row)), b.mul(b.urem(s, i32c(seg_row)), i32c(4)))
                           for s in segs]
                    starts = [b.add(b.mul(b.mul(oh, i32c(d.stride_h)), i32c(wpad)), ow)
                              for oh, ow in pos]
                    acc = _tile(b, d, wp, img, table, starts, init, ctx.madd)
                    _emit_tile(b, d, acc, dst, o0, segs, pos, s0, n_segs, seg_row)


def _bias(b: ir.IRBuilder, d: Direct, bias: ir.Value | None, g: ir.Value,
          o0: ir.Value) -> list[ir.Value]:
    if bias is None:
        return [ZERO4] * TILE_O
    out = []
    for r in range(TILE_O):
        o = b.add(o0, i32c(r))
        ok = b.icmp_signed("<", o, i32c(d.cout))
        at = b.add(b.mul(g, i32c(d.cout)), b.select(ok, o, i32c(0)))
        out.append(splat(b, b.select(ok, load(b, bias, at), ir.Constant(F32, 0.0))))
    return out


def _emit_tile(b: ir.IRBuilder, d: Direct, acc: list[list[ir.Value]], dst: ir.Value,
               o0: ir.Value, segs: list[ir.Value], pos: list[tuple[ir.Value, ir.Value]],
               s0: ir.Value, n_segs: int, seg_row: int) -> None:
    """Store the tile's valid rows (o < cout) and segments (s < n_segs), partial at row ends."""
    ho, wo = d.out
    rem = wo % LANES
    for s, (seg, (oh, ow)) in enumerate(zip(segs, pos, strict=True)):
        partial = (b.icmp_signed("==", b.urem(seg, i32c(seg_row)), i32c(seg_row - 1))
                   if rem else None)
        valid = b.icmp_signed("<", b.add(s0, i32c(s)), i32c(n_segs)) if s else None
        for r in range(TILE_O):
            o = b.add(o0, i32c(r))
            ok = b.icmp_signed("<", o, i32c(d.cout)) if d.cout % TILE_O else None
            cond = ok if valid is None else (valid if ok is None else b.and_(ok, valid))
            at = b.add(b.mul(b.add(b.mul(o, i32c(ho)), oh), i32c(wo)), ow)
            if cond is None:
                _store(b, acc[r][s], dst, at, partial, rem)
            else:
                with b.if_then(cond):
                    _store(b, acc[r][s], dst, at, partial, rem)


# --- the weight gradient: dot products over output positions -----------------------------
#
# dW[g, o, t] = Σ_n Σ_q dy[n, g·O + o, q] · img_n[start(q) + table[t]] for t = (c, tap): the
# same image, offsets and segments as the forward pass, with the reduction running over the
# segments (4 consecutive outputs of a row: the vector lanes) instead of over the taps. A
# register tile is 4 output channels × 2 taps: per segment 4 dy loads, 2 unaligned image loads
# and 8 mul+add into vector partial sums, which persist across examples in scratch
# ([G][4·o_tiles][K][4], reduced horizontally once at the end). Rows whose width is not a
# multiple of 4 read dy from a copy with zeroed row tails, so the lanes past a row add nothing.
DW_TAPS = 2  # taps per register tile
# A row of at most this many segments is unrolled, longer ones loop: with 7–8 unrolled LLVM
# hoisted their loads and Cranelift spilled (28×28: 2.8 ms unrolled, 1.5 looped).
DW_UNROLL_SEGS = 2


def _dw_k(d: Direct) -> int:
    return d.cin * d.taps


def _dw_seg_row(d: Direct) -> int:
    return -(-d.out[1] // LANES)


def _dw_partial_floats(d: Direct) -> int:
    return d.groups * d.o_tiles * TILE_O * _dw_k(d) * LANES


def _dw_dy_floats(d: Direct) -> int:
    """dy rows padded to whole segments (0 where the rows already are)."""
    ho, wo = d.out
    return 0 if wo % LANES == 0 else d.cout * ho * _dw_seg_row(d) * LANES


def weight_scratch_bytes(d: Direct) -> int:
    return 4 * (_dw_partial_floats(d) + d.image_floats() + d.table_ints() + _dw_dy_floats(d))


def _dw_tile(b: ir.IRBuilder, d: Direct, img: ir.Value, offs: list[ir.Value],
             dys_at: list[ir.Value], dy_row: int, acc: list[ir.Value],
             madd: bool) -> list[ir.Value]:
    """acc[r·len(offs) + j] += Σ_q dy_r[q] · img[start(q) + offs[j]] over one example's
    segments, dy_r the plane at dys_at[r] (rows dy_row floats apart)."""
    ho, _ = d.out
    wpad = d.padded[1]
    seg_row = _dw_seg_row(d)
    nt = len(offs)

    def segment(start: ir.Value, at: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        xs = [load4(b, img, b.add(start, off)) for off in offs]
        dys = [load4(b, p, at) for p in dys_at]
        return [mul_add(b, dys[r], xs[j], acc[r * nt + j], madd)
                for r in range(TILE_O) for j in range(nt)]

    def row(oh: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        start = b.mul(oh, i32c(d.stride_h * wpad))
        at = b.mul(oh, i32c(dy_row))
        if seg_row <= DW_UNROLL_SEGS:
            for s in range(seg_row):
                acc = segment(b.add(start, i32c(LANES * s)), b.add(at, i32c(LANES * s)), acc)
            return acc
        return carry_loop(b, 0, seg_row * LANES, LANES, acc,
                          lambda x, a: segment(b.add(start, x), b.add(at, x), a), "dws")

    return carry_loop(b, 0, ho, 1, acc, row, "dwr")


def run_weight(ctx: LowerCtx, d: Direct, x: ir.Value, dy: ir.Value, dw: ir.Value) -> None:
    """dw[g·O + o, c, taps] = Σ_n correlation of dy[n, g·O + o] with x[n, g·C + c] (x: src of
    the forward convolution d, dy: its output's gradient)."""
    b = ctx.b
    k = _dw_k(d)
    (h, w_in), (ho, wo) = d.size, d.out
    seg_row = _dw_seg_row(d)
    partial = ctx.addr_ptr(ctx.scratch)
    img = ctx.addr_ptr(ctx.scratch + 4 * _dw_partial_floats(d))
    table = ctx.addr_ptr(ctx.scratch + 4 * (_dw_partial_floats(d) + d.image_floats()))
    dyp = ctx.addr_ptr(ctx.scratch + 4 * (_dw_partial_floats(d) + d.image_floats()
                                          + d.table_ints()))
    padded_dy = wo % LANES != 0
    dy_row = seg_row * LANES if padded_dy else wo
    _offsets(b, d, table)
    _zero(b, img, d.image_floats())
    _zero(b, partial, _dw_partial_floats(d))
    if padded_dy:
        _zero(b, dyp, _dw_dy_floats(d))
    per_tile = k * LANES  # floats of one output channel's partial sums
    with loop(b, 0, ctx.n, 1, "n") as n:
        with loop(b, 0, d.groups, 1, "g") as g:
            ex = b.add(b.mul(n, i32c(d.groups)), g)
            _fill(b, d, gep(b, x, b.mul(ex, i32c(d.cin * h * w_in))), img)
            src = gep(b, dy, b.mul(ex, i32c(d.cout * ho * wo)))
            if padded_dy:
                _copy_rows(b, src, wo, dyp, dy_row, d.cout * ho)
                src = dyp
            part_g = gep(b, partial, b.mul(g, i32c(d.o_tiles * TILE_O * per_tile)))
            with loop(b, 0, d.o_tiles, 1, "dwo") as ot:
                o0 = b.mul(ot, i32c(TILE_O))
                # rows past cout read the last real plane; their partial sums are never reduced
                rows = [b.add(o0, i32c(r)) for r in range(TILE_O)]
                if d.cout % TILE_O:
                    rows = [imin(b, o, i32c(d.cout - 1)) for o in rows]
                dys_at = [gep(b, src, b.mul(o, i32c(ho * dy_row))) for o in rows]
                part = gep(b, part_g, b.mul(o0, i32c(per_tile)))
                _dw_taps(b, d, img, table, dys_at, dy_row, part, per_tile, k, ctx.madd)
    with loop(b, 0, d.groups * d.cout, 1, "dwg") as go:  # groups × output channels in order
        g, o = b.udiv(go, i32c(d.cout)), b.urem(go, i32c(d.cout))
        base = gep(b, partial, b.add(b.mul(g, i32c(d.o_tiles * TILE_O * per_tile)),
                                     b.mul(o, i32c(per_tile))))
        with loop(b, 0, k, 1, "dwk") as t:
            v = b.load(gep(b, base, b.mul(t, i32c(LANES))), typ=V4, align=16)
            store(b, reduce_add4(b, v), dw, b.add(b.mul(go, i32c(k)), t))


def _dw_taps(b: ir.IRBuilder, d: Direct, img: ir.Value, table: ir.Value,
             dys_at: list[ir.Value], dy_row: int, part: ir.Value, per_tile: int, k: int,
             madd: bool) -> None:
    """The 4 × DW_TAPS tiles of one output-channel tile over every tap (a 4 × 1 tile for an
    odd last tap), added into the tile's partial sums."""
    def tile(t0: ir.Value, nt: int) -> None:
        offs = [load(b, table, b.add(t0, i32c(j)), I32) for j in range(nt)]
        slots = [b.add(b.mul(b.add(t0, i32c(j)), i32c(LANES)), i32c(r * per_tile))
                 for r in range(TILE_O) for j in range(nt)]
        acc = [b.load(gep(b, part, at), typ=V4, align=16) for at in slots]
        acc = _dw_tile(b, d, img, offs, dys_at, dy_row, acc, madd)
        for v, at in zip(acc, slots, strict=True):
            b.store(v, gep(b, part, at), align=16)

    whole = k // DW_TAPS * DW_TAPS
    if whole:
        with loop(b, 0, whole, DW_TAPS, "dwt") as t0:
            tile(t0, DW_TAPS)
    if whole < k:
        tile(i32c(whole), k - whole)


def _copy_rows(b: ir.IRBuilder, src: ir.Value, width: int, dst: ir.Value, dst_row: int,
               rows: int) -> None:
    """dst[r·dst_row + j] = src[r·width + j] for r < rows, j < width (the tails stay as they
    are: zero)."""
    with loop(b, 0, rows, 1, "cr") as r:
        s, t = gep(b, src, b.mul(r, i32c(width))), gep(b, dst, b.mul(r, i32c(dst_row)))
        with loop(b, 0, width // LANES * LANES, LANES, "cv") as j:
            store4(b, load4(b, s, j), t, j)
        for j in range(width // LANES * LANES, width):
            store(b, load(b, s, j), t, j)
