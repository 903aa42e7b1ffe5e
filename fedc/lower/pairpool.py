"""Lowering: max pooling over disjoint width-2 windows (kernel (kh, 2) = stride, no padding) and
its gradient, optionally fused with a relu, four windows per <4 x float> and no scalar tail.

The output is covered by chunks of four consecutive output elements. A chunk's taps are
gathered with vector loads and shuffles: two neighbouring windows of a row share one 4-float
load per kernel row, a lone window takes a 2-float load. Rows of fewer than four windows are
grouped (two rows of two windows, four planes of one, …), and where a row, a plane or the batch
does not divide into chunks the last chunk overlaps the one before it instead of falling back to
scalar code: recomputing a window writes the same values, and disjoint windows never write each
other's taps. Only a whole tensor smaller than one group (a few elements) runs the scalar path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from llvmlite import ir

from ..ops.window import Window
from .context import LowerCtx
from .kernels import (
    F32,
    I32,
    V4,
    emit_cols,
    gep,
    i32c,
    load4,
    loop,
    store,
    store4,
    store_w,
    where_positive,
    zero_w,
)

V2 = ir.VectorType(F32, 2)
MASK = ir.VectorType(I32, 4)
MAX_CHUNKS = 16  # per statically unrolled group of whole planes (code size)


def applies(win: Window) -> bool:
    """Disjoint windows of width 2 that tile the input from the top-left corner."""
    return win.padding == (0, 0) and win.stride == win.kernel and win.kernel[1] == 2


@dataclass(frozen=True)
class Chunk:
    """Four windows: the input offset of each one's first tap, and the output offset of the
    first (the four outputs are consecutive). Offsets are relative to a runtime base."""

    taps: tuple[int, ...]
    out: int


@dataclass(frozen=True)
class Geometry:
    kh: int
    h: int
    w: int
    ho: int
    wo: int

    @classmethod
    def of(cls, win: Window) -> Geometry:
        return cls(win.kernel[0], *win.size, *win.out)

    def chunk(self, outs: list[tuple[int, int, int]]) -> Chunk:
        """The chunk of four (plane, output row, output column) positions."""
        taps = tuple(q * self.h * self.w + oh * self.kh * self.w + 2 * ow for q, oh, ow in outs)
        q, oh, ow = outs[0]
        return Chunk(taps, q * self.ho * self.wo + oh * self.wo + ow)

    def chunks(self, planes: int, rows: int, cols: int) -> list[Chunk]:
        """The outputs of `planes` planes × `rows` rows × `cols` columns, in memory order."""
        outs = [(q, r, c) for q in range(planes) for r in range(rows) for c in range(cols)]
        assert len(outs) % 4 == 0
        return [self.chunk(outs[i:i + 4]) for i in range(0, len(outs), 4)]


ChunkFn = Callable[[ir.Value, ir.Value, Chunk], None]  # (input base, output base, chunk)
Offsets = Callable[[ir.Value, ir.Value], None]  # a unit's body at (input base, output base)


def _cover(b: ir.IRBuilder, count: ir.Value | int, least: int, unit: int,
           strides: tuple[int, int], base: tuple[ir.Value, ir.Value], body: Offsets,
           fallback: Callable[[], None] | None = None) -> None:
    """body at items i = 0, unit, 2·unit, … while i + unit ≤ count, then once at count − unit
    when unit does not divide count (overlapping the unit before). `least` is the smallest
    count possible; fallback() runs instead when 0 < count < unit."""
    def at(i: ir.Value) -> None:
        body(b.add(base[0], b.mul(i, i32c(strides[0]))),
             b.add(base[1], b.mul(i, i32c(strides[1]))))

    if isinstance(count, int):
        assert count >= unit
        with loop(b, 0, count - unit + 1, unit, "u") as i:
            at(i)
        if count % unit:
            at(i32c(count - unit))
        return
    with loop(b, 0, b.sub(count, i32c(unit - 1)), unit, "u") as i:
        at(i)
    if unit == 1:
        return
    with b.if_then(b.icmp_unsigned("!=", b.urem(count, i32c(unit)), i32c(0))):
        if least >= unit:
            at(b.sub(count, i32c(unit)))
            return
        assert fallback is not None
        with b.if_else(b.icmp_unsigned(">=", count, i32c(unit))) as (whole, small):
            with whole:
                at(b.sub(count, i32c(unit)))
            with small:
                fallback()


def each_chunk(ctx: LowerCtx, win: Window, planes: int, fn: ChunkFn,
               fallback: Callable[[], None]) -> None:
    """fn(input base, output base, chunk) over chunks covering every output of n·planes planes.

    Small planes: a group of whole planes (as many as make a multiple of four outputs) unrolled.
    Large ones: rows, each in chunks of four windows (rows of fewer windows in groups)."""
    b, g = ctx.b, Geometry.of(win)
    zero = (i32c(0), i32c(0))
    p = g.ho * g.wo
    group = math.lcm(p, 4) // p
    if group * p <= 4 * MAX_CHUNKS:
        _cover(b, b.mul(ctx.n, i32c(planes)), planes, group, (g.h * g.w, p), zero,
               _unrolled(fn, g.chunks(group, g.ho, g.wo)), fallback)
        return
    rows: Offsets
    if g.wo >= 4:
        (four,) = g.chunks(1, 1, 4)

        def rows(i: ir.Value, o: ir.Value) -> None:
            _cover(b, g.wo, g.wo, 4, (2, 1), (i, o), _unrolled(fn, [four]))
        unit_rows = 1
    else:  # a tall plane of narrow rows (≥ 4·MAX_CHUNKS/3 of them): groups of rows
        unit_rows = math.lcm(g.wo, 4) // g.wo
        rows = _unrolled(fn, g.chunks(1, unit_rows, g.wo))
    strides = (g.kh * g.w, g.wo)
    if g.h == g.kh * g.ho:  # no input rows below the windows: rows run on across planes
        _cover(b, b.mul(ctx.n, i32c(planes * g.ho)), planes * g.ho, unit_rows, strides, zero,
               rows)
        return
    _cover(b, b.mul(ctx.n, i32c(planes)), planes, 1, (g.h * g.w, p), zero,
           lambda i, o: _cover(b, g.ho, g.ho, unit_rows, strides, (i, o), rows))


def _unrolled(fn: ChunkFn, chunks: list[Chunk]) -> Offsets:
    def body(i: ir.Value, o: ir.Value) -> None:
        for c in chunks:
            fn(i, o, c)
    return body


# --- gathering and scattering a chunk's taps -------------------------------------------------

def _runs(taps: tuple[int, ...]) -> list[tuple[int, int]]:
    """(first lane, length) of each run of windows that are neighbours in memory."""
    runs, start = [], 0
    for lane in range(1, len(taps) + 1):
        if lane == len(taps) or taps[lane] != taps[lane - 1] + 2:
            runs.append((start, lane - start))
            start = lane
    return runs


def _load_run(b: ir.IRBuilder, base: ir.Value, at: ir.Value, floats: int) -> list[ir.Value]:
    """`floats` (2…8) consecutive floats as <4 x float> pieces (a 2-float tail widened)."""
    pieces = []
    for k in range(0, floats, 4):
        if floats - k >= 4:
            pieces.append(load4(b, base, b.add(at, i32c(k))))
        else:
            pair = b.load(gep(b, base, b.add(at, i32c(k))), typ=V2, align=4)
            pieces.append(b.shuffle_vector(pair, pair, ir.Constant(MASK, [0, 1, 0, 1])))
    return pieces


def _assemble(b: ir.IRBuilder, lanes: list[tuple[ir.Value, int]]) -> ir.Value:
    """The <4 x float> whose lane l is lanes[l] = (vector, element), by two-input shuffles."""
    vectors: list[ir.Value] = []
    for v, _ in lanes:
        if not any(v is u for u in vectors):
            vectors.append(v)
    # where each lane's value sits in the vector built so far (None: not there yet)
    pos: list[int | None] = [e if u is vectors[0] else None for u, e in lanes]
    if len(vectors) == 1:
        return vectors[0] if pos == [0, 1, 2, 3] else b.shuffle_vector(
            vectors[0], vectors[0], ir.Constant(MASK, pos))
    acc = vectors[0]
    for v in vectors[1:]:
        mask = [4 + e if u is v else (0 if p is None else p)  # 0: filled later
                for (u, e), p in zip(lanes, pos, strict=True)]
        acc = b.shuffle_vector(acc, v, ir.Constant(MASK, mask))
        pos = [lane if p is not None or u is v else None
               for lane, ((u, _), p) in enumerate(zip(lanes, pos, strict=True))]
    return acc


def gather(b: ir.IRBuilder, x: ir.Value, base: ir.Value, c: Chunk, g: Geometry) -> list[ir.Value]:
    """The chunk's taps as <4 x float> (lane = window) in scan order: per kernel row its left
    then its right taps."""
    taps = []
    for i in range(g.kh):
        lanes: list[tuple[ir.Value, int]] = []
        for start, n in _runs(c.taps):
            at = b.add(base, i32c(c.taps[start] + i * g.w))
            pieces = _load_run(b, x, at, 2 * n)
            lanes += [(pieces[2 * k // 4], 2 * k % 4) for k in range(n)]
        taps += [_assemble(b, [(v, e + j) for v, e in lanes]) for j in (0, 1)]
    return taps


def scatter(b: ir.IRBuilder, dx: ir.Value, base: ir.Value, c: Chunk, g: Geometry,
            taps: list[ir.Value]) -> None:
    """The inverse of gather: write each window's taps back to its place."""
    for i in range(g.kh):
        left, right = taps[2 * i], taps[2 * i + 1]
        for start, n in _runs(c.taps):
            at = b.add(base, i32c(c.taps[start] + i * g.w))
            for k in range(0, 2 * n, 4):
                width = min(4, 2 * n - k)
                idx = [start + f // 2 + 4 * (f % 2) for f in range(k, k + width)]
                piece = b.shuffle_vector(left, right, ir.Constant(ir.VectorType(I32, width), idx))
                b.store(piece, gep(b, dx, b.add(at, i32c(k))), align=4)


def zero_uncovered(ctx: LowerCtx, win: Window, planes: int, dx: ir.Value) -> None:
    """dx = 0 where no window reaches: the last column of an odd width, rows below the windows."""
    b, g = ctx.b, Geometry.of(win)
    below = g.h - g.kh * g.ho
    if not below and g.w == 2 * g.wo:
        return
    with loop(b, 0, b.mul(ctx.n, i32c(planes)), 1, "q") as q:
        plane = gep(b, dx, b.mul(q, i32c(g.h * g.w)))
        if g.w != 2 * g.wo:
            with loop(b, 0, g.kh * g.ho, 1, "r") as r:
                store(b, zero_w(False), plane, b.add(b.mul(r, i32c(g.w)), i32c(g.w - 1)))
        if below:
            rest = gep(b, plane, i32c(g.kh * g.ho * g.w))
            emit_cols(b, below * g.w, lambda j, vec: store_w(b, zero_w(vec), rest, j, vec))


# --- the kernels -------------------------------------------------------------------------------

ONES = ir.Constant(MASK, [-1] * 4)


def _mask(b: ir.IRBuilder, cmp: ir.Value) -> ir.Value:
    """A lane mask as <4 x i32> (all ones where true): bitwise logic on it needs no
    re-normalising of <4 x i1> lanes."""
    return b.sext(cmp, MASK)


def _keep(b: ir.IRBuilder, mask: ir.Value, v: ir.Value) -> ir.Value:
    """v where mask, else +0.0 (a bitwise and)."""
    return b.bitcast(b.and_(mask, b.bitcast(v, MASK)), V4)


@dataclass(frozen=True)
class Max:
    """Four windows' maxima: `best` (exact for windows without a NaN), `nan` (the mask of the
    windows that hold one, or None where they count as not holding one) and the taps."""

    best: ir.Value
    nan: ir.Value | None
    taps: list[ir.Value]
    b: ir.IRBuilder

    def value(self) -> ir.Value:
        """The max of each window, NaN where the window has one."""
        b = self.b
        assert self.nan is not None
        return b.bitcast(b.or_(b.bitcast(self.best, MASK), self.nan), V4)

    def winners(self) -> list[ir.Value]:
        """Per tap, the mask of the windows it wins, as PyTorch's scan `val > max ||
        isnan(val)` picks: the first maximum, or in a window with NaNs the last NaN."""
        b = self.b
        hits = _claim(b, [_mask(b, b.fcmp_ordered("==", v, self.best)) for v in self.taps])
        if self.nan is None:
            return hits
        nans = _claim(b, [_mask(b, b.fcmp_unordered("uno", v, v)) for v in self.taps[::-1]])
        keep = b.xor(self.nan, ONES)
        return [b.or_(b.and_(h, keep), b.and_(n, self.nan))
                for h, n in zip(hits, nans[::-1], strict=True)]


def _claim(b: ir.IRBuilder, hits: list[ir.Value]) -> list[ir.Value]:
    """Each lane's first true mask in list order: hits[t] and none before it."""
    out, seen = [hits[0]], hits[0]
    for h in hits[1:]:
        out.append(b.and_(h, b.xor(seen, ONES)))
        seen = b.or_(seen, h)
    return out


def window_max(b: ir.IRBuilder, taps: list[ir.Value]) -> Max:
    """Max of four windows' taps: a chain of `best < v ? v : best` (f32x4.pmax: the strict
    `>` of the scan keeps the first of equal values), and which windows hold a NaN."""
    best, nan = taps[0], _mask(b, b.fcmp_unordered("uno", taps[0], taps[0]))
    for v in taps[1:]:
        best = b.select(b.fcmp_ordered("<", best, v), v, best)
    for k in range(1, len(taps) - 1, 2):
        nan = b.or_(nan, _mask(b, b.fcmp_unordered("uno", taps[k], taps[k + 1])))
    if len(taps) % 2 == 0:
        nan = b.or_(nan, _mask(b, b.fcmp_unordered("uno", taps[-1], taps[-1])))
    return Max(best, nan, taps, b)


def max_pool(ctx: LowerCtx, win: Window, planes: int, x: ir.Value, out: ir.Value, relu: bool,
             fallback: Callable[[], None]) -> None:
    """out = max over each window (then relu, where `relu`)."""
    b, g = ctx.b, Geometry.of(win)

    def chunk(i: ir.Value, o: ir.Value, c: Chunk) -> None:
        mx = window_max(b, gather(b, x, i, c, g))
        if relu:  # relu(NaN) = 0: a window with a NaN gives 0
            val = _keep(b, b.xor(mx.nan, ONES), where_positive(b, mx.best, mx.best))
        else:
            val = mx.value()
        store4(b, val, out, b.add(o, i32c(c.out)))
    each_chunk(ctx, win, planes, chunk, fallback)


def max_pool_grad(ctx: LowerCtx, win: Window, planes: int, dy: ir.Value, x: ir.Value,
                  dx: ir.Value, relu: bool, fallback: Callable[[], None]) -> None:
    """dx = dy at each window's first maximum, 0 elsewhere; where `relu`, only for windows
    whose maximum is > 0 (the gradient of relu then max pooling, from the pre-activation)."""
    b, g = ctx.b, Geometry.of(win)
    zero_uncovered(ctx, win, planes, dx)

    def chunk(i: ir.Value, o: ir.Value, c: Chunk) -> None:
        mx = window_max(b, gather(b, x, i, c, g))
        grad = load4(b, dy, b.add(o, i32c(c.out)))
        if relu:  # only windows whose max is > 0, so none with a NaN: the first maximum
            grad = _keep(b, b.xor(mx.nan, ONES), where_positive(b, mx.best, grad))
            mx = Max(mx.best, None, mx.taps, b)
        scatter(b, dx, i, c, g, [_keep(b, m, grad) for m in mx.winners()])
    each_chunk(ctx, win, planes, chunk, fallback)
