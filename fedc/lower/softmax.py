"""Lowering helpers: per-row softmax statistics (max, Σ e^(z − max)) on <4 x float> chunks.

A row of `c` floats is read as ⌊c/4⌋ full vectors and, for c mod 4 ≠ 0, one partial vector whose
missing lanes hold a pad value (−inf for the max and the exponentials, 0 for sums), so 10
classes cost three vector exps and no scalar tail. Rows of up to UNROLL_MAX floats are
straight-line code that keeps the whole row in registers; longer rows loop over full vectors.
Reductions use a fixed order, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llvmlite import ir

from . import mathfn
from .kernels import (
    F32,
    I32,
    LANES,
    V4,
    accumulate,
    const_like,
    i32c,
    load,
    load4,
    loop,
    reduce_add4,
    splat,
    transpose4,
)

UNROLL_MAX = 64  # floats per row handled as straight-line code (16 vectors)
NEG_INF = float("-inf")
# e^(z − max) is taken as 0 below e^FLUSH_BELOW (≈ 7.8e-20 of the row's largest term, far below
# float32's rounding of the sum, which is ≥ 1). A model that has learned its classes pushes the
# other classes' probabilities far lower, into the denormal range, and their gradients and the
# products they feed then run in microcode on Intel cores: a memorised digits MLP's epochs
# measured 166–308 µs a batch, 49–51 with the flush (docs/math.md). The ops' numpy references
# flush the same terms (fedc.ops.activations.flushed_exp).
FLUSH_BELOW = -44.0


def shifted_exp(b: ir.IRBuilder, d: ir.Value) -> ir.Value:
    """e^d for d = z − max ≤ 0, exactly 0 where d < FLUSH_BELOW (NaN stays NaN). The exp is
    computed at max(d, FLUSH_BELOW): e^d's own last multiply would otherwise round to a denormal
    below d ≈ −87 and take the microcode assist even though its result is dropped (a memorised
    digits MLP's step: 60 µs with the select alone, 49 with the clamp too)."""
    lo = const_like(d, FLUSH_BELOW)
    tiny = b.fcmp_ordered("<", d, lo)
    return b.select(tiny, const_like(d, 0.0), mathfn.exp(b, b.select(tiny, lo, d)))


def _const4(x: float) -> ir.Constant:
    return ir.Constant(V4, [x] * LANES)


def _i(j: ir.Value | int) -> ir.Value:
    return i32c(j) if isinstance(j, int) else j


def load_chunk(b: ir.IRBuilder, row: ir.Value, j: ir.Value | int, lanes: int,
               pad: float) -> ir.Value:
    """row[j : j + lanes] in the first lanes of a vector, `pad` in the others; reads no further."""
    if lanes == LANES:
        return load4(b, row, j)
    v: ir.Value = _const4(pad)
    for lane in range(lanes):
        x = load(b, row, j + lane if isinstance(j, int) else b.add(j, i32c(lane)))
        v = b.insert_element(v, x, i32c(lane))
    return v


def store_chunk(b: ir.IRBuilder, v: ir.Value, row: ir.Value, j: ir.Value | int,
                lanes: int) -> None:
    """Store the first `lanes` lanes of v at row[j]; writes no further."""
    if lanes == LANES:
        b.store(v, b.gep(row, [_i(j)], source_etype=F32), align=4)
        return
    for lane in range(lanes):
        x = b.extract_element(v, i32c(lane))
        b.store(x, b.gep(row, [_i(j + lane if isinstance(j, int) else b.add(j, i32c(lane)))],
                         source_etype=F32), align=4)


def vmax(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """Lane-wise max by fcmp+select (Wasm pmax; never llvm.maxnum, an import on wasm32)."""
    return b.select(b.fcmp_ordered(">", x, y), x, y)


def hmax4(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """The largest lane of v as a float."""
    mask = ir.VectorType(I32, LANES)
    v = vmax(b, v, b.shuffle_vector(v, v, ir.Constant(mask, [2, 3, 0, 1])))
    v = vmax(b, v, b.shuffle_vector(v, v, ir.Constant(mask, [1, 0, 3, 2])))
    return b.extract_element(v, i32c(0))


def _tree(b: ir.IRBuilder, vs: list[ir.Value], op: Callable[[ir.Value, ir.Value], ir.Value]
          ) -> ir.Value:
    """op-reduce vs pairwise (a balanced tree: short dependency chains, fixed order)."""
    while len(vs) > 1:
        vs = [op(vs[i], vs[i + 1]) if i + 1 < len(vs) else vs[i] for i in range(0, len(vs), 2)]
    return vs[0]


@dataclass
class RowStats:
    """One row's softmax statistics; `exps` are the e^(z − max) chunks (straight-line rows)."""

    max: ir.Value  # float
    sum: ir.Value  # float: Σ_j e^(z_j − max)
    exps: list[ir.Value]


def chunks(c: int) -> list[tuple[int, int]]:
    """(first column, lanes) of every chunk of a row of c floats."""
    return [(j, min(LANES, c - j)) for j in range(0, c, LANES)]


def row_stats(b: ir.IRBuilder, row: ir.Value, c: int, out: ir.Value | None = None) -> RowStats:
    """max and Σ e^(z − max) of row[0:c].

    A straight-line row keeps its exponentials in registers (RowStats.exps); a longer one
    stores them at `out` when given, for scale_row to rescale in place.
    """
    if c <= UNROLL_MAX:
        zs = [load_chunk(b, row, j, n, NEG_INF) for j, n in chunks(c)]
        mx = hmax4(b, _tree(b, zs, lambda x, y: vmax(b, x, y)))
        mxv = splat(b, mx)
        # padding lanes are e^(−inf) = exactly 0 (mathfn.exp clamps), so they add nothing
        exps = [shifted_exp(b, b.fsub(z, mxv)) for z in zs]
        return RowStats(mx, reduce_add4(b, _tree(b, exps, b.fadd)), exps)
    return _row_stats_loop(b, row, c, out)


def _row_stats_loop(b: ir.IRBuilder, row: ir.Value, c: int, out: ir.Value | None) -> RowStats:
    full, rest = c // LANES * LANES, c % LANES
    acc = accumulate(b, i32c(full), lambda j, a: vmax(b, a, load4(b, row, j)),
                     load4(b, row, 0), LANES, "smx", start=LANES)
    if rest:
        acc = vmax(b, acc, load_chunk(b, row, full, rest, NEG_INF))
    mx = hmax4(b, acc)
    mxv = splat(b, mx)

    def exp_at(j: ir.Value | int, lanes: int) -> ir.Value:
        e = shifted_exp(b, b.fsub(load_chunk(b, row, j, lanes, NEG_INF), mxv))
        if out is not None:
            store_chunk(b, e, out, j, lanes)
        return e

    total = accumulate(b, i32c(full), lambda j, a: b.fadd(a, exp_at(j, LANES)), _const4(0.0),
                       LANES, "sse")
    if rest:
        total = b.fadd(total, exp_at(full, rest))
    return RowStats(mx, reduce_add4(b, total), [])


def row_sum(b: ir.IRBuilder, row: ir.Value, c: int) -> ir.Value:
    """Σ_j row[j] over c floats (vector chunks, fixed order)."""
    if c <= UNROLL_MAX:
        return reduce_add4(b, _tree(b, [load_chunk(b, row, j, n, 0.0) for j, n in chunks(c)],
                                    b.fadd))
    full, rest = c // LANES * LANES, c % LANES
    acc = accumulate(b, i32c(full), lambda j, a: b.fadd(a, load4(b, row, j)), _const4(0.0),
                     LANES, "rs")
    if rest:
        acc = b.fadd(acc, load_chunk(b, row, full, rest, 0.0))
    return reduce_add4(b, acc)


def scale_row(b: ir.IRBuilder, stats: RowStats, out: ir.Value, c: int, k: ir.Value,
              shift: ir.Value | None = None) -> None:
    """out[j] = k·e^(z_j − max) (− shift): from the registers of a straight-line row, else by
    rescaling the exponentials row_stats stored in out."""
    kv = splat(b, k)
    sv = splat(b, shift) if shift is not None else None

    def fix(e: ir.Value) -> ir.Value:
        p = b.fmul(e, kv)
        return b.fsub(p, sv) if sv is not None else p

    if stats.exps:
        for e, (j, n) in zip(stats.exps, chunks(c), strict=True):
            store_chunk(b, fix(e), out, j, n)
        return
    full, rest = c // LANES * LANES, c % LANES
    with loop(b, 0, full, LANES, "srs") as j:
        store_chunk(b, fix(load4(b, out, j)), out, j, LANES)
    if rest:
        store_chunk(b, fix(load_chunk(b, out, full, rest, 0.0)), out, full, rest)


# --- four rows at a time, one row per lane -------------------------------------------------
#
# With a row per lane, a group's max, exponentials' sum and log are lane-wise vector ops: no
# horizontal max or sum per row and one vector log for four rows, where a row at a time is a
# chain of shuffles, three exps and a scalar log. Every lane repeats its row's arithmetic in
# row_stats' order (the same chunk tree, then the same horizontal step), so its results are
# bit-identical to the row path's (tests/test_softmax_kernels.py compares the two). A batch's
# last rows fill a group by repeating its last row, whose lanes then compute (and store)
# exactly what that row's own lane does.

GROUP = LANES  # rows per group
GROUP_MAX = 16  # widest row (classes) the grouped path takes (its stack buffer's columns)


@dataclass
class GroupStats:
    """Four rows' softmax statistics, lane r for row r; cols[j] is column j of the rows."""

    max: ir.Value  # <4 x float>
    sum: ir.Value  # <4 x float>: Σ_j e^(z_j − max) per row
    cols: list[ir.Value]
    exps: list[ir.Value]  # e^(z_j − max) per column


def load_cols(b: ir.IRBuilder, rows: list[ir.Value], c: int) -> list[ir.Value]:
    """Columns 0..c−1 of four rows of c floats: full chunks by 4×4 transposes, the rest by lane."""
    cols: list[ir.Value] = []
    for j, n in chunks(c):
        if n == LANES:
            cols += transpose4(b, [load4(b, r, j) for r in rows])
            continue
        for jj in range(j, j + n):
            v: ir.Value = _const4(0.0)
            for lane, r in enumerate(rows):
                v = b.insert_element(v, load(b, r, jj), i32c(lane))
            cols.append(v)
    return cols


def store_cols(b: ir.IRBuilder, cols: list[ir.Value], rows: list[ir.Value], c: int) -> None:
    """The inverse of load_cols: write column vectors back to four rows of c floats."""
    for j, n in chunks(c):
        if n == LANES:
            for r, v in zip(rows, transpose4(b, cols[j:j + LANES]), strict=True):
                b.store(v, b.gep(r, [i32c(j)], source_etype=F32), align=4)
            continue
        for jj in range(j, j + n):
            for lane, r in enumerate(rows):
                b.store(b.extract_element(cols[jj], i32c(lane)),
                        b.gep(r, [i32c(jj)], source_etype=F32), align=4)


def _lanewise(b: ir.IRBuilder, cols: list[ir.Value], pad: float,
              op: Callable[[ir.Value, ir.Value], ir.Value]) -> ir.Value:
    """Per lane, cols reduced by op in the row path's order: the tree over a row's chunks
    (lane k of chunk i is column 4i + k; a partial last chunk's missing lanes hold pad), then
    the horizontal step of hmax4/reduce_add4, (s0 ∘ s2) ∘ (s1 ∘ s3)."""
    padded = cols + [_const4(pad)] * (-len(cols) % LANES)
    s = [_tree(b, padded[k::LANES], op) for k in range(LANES)]
    return op(op(s[0], s[2]), op(s[1], s[3]))


def lane_sum(b: ir.IRBuilder, cols: list[ir.Value]) -> ir.Value:
    """Per lane, Σ_j cols[j] exactly as row_sum adds a row."""
    return _lanewise(b, cols, 0.0, b.fadd)


def group_stats(b: ir.IRBuilder, rows: list[ir.Value], c: int) -> GroupStats:
    """row_stats for four rows of c ≤ GROUP_MAX floats at once, lane r for row r.

    The exponentials run in a loop over the columns, through a stack buffer: one inlined exp
    instead of c. Unrolled, the two cross-entropy kernels were an eighth of the digits CNN's
    IR and added 0.06 s to its compile (1.5 s is the limit), for 0.1–0.15 µs per kernel.
    """
    cols = load_cols(b, rows, c)
    mx = _lanewise(b, cols, NEG_INF, lambda x, y: vmax(b, x, y))
    with b.goto_entry_block():
        buf = b.alloca(ir.ArrayType(V4, GROUP_MAX), name="sm.cols")
    at = [b.gep(buf, [i32c(0), i32c(j)], inbounds=True) for j in range(c)]
    for z, p in zip(cols, at, strict=True):
        b.store(z, p, align=16)
    with loop(b, 0, c, 1, "sme") as j:
        p = b.gep(buf, [i32c(0), j], inbounds=True)
        b.store(shifted_exp(b, b.fsub(b.load(p, typ=V4, align=16), mx)), p, align=16)
    exps = [b.load(p, typ=V4, align=16) for p in at]
    return GroupStats(mx, lane_sum(b, exps), cols, exps)


def pick(b: ir.IRBuilder, cols: list[ir.Value], labels: ir.Value) -> ir.Value:
    """Lane r of cols[labels[r]] (labels <4 x i32> in 0..len(cols)−1)."""
    out = cols[-1]
    for j in range(len(cols) - 2, -1, -1):
        hit = b.icmp_signed("==", labels, ir.Constant(ir.VectorType(I32, LANES), [j] * LANES))
        out = b.select(hit, cols[j], out)
    return out


def lanes(b: ir.IRBuilder, v: ir.Value) -> list[ir.Value]:
    return [b.extract_element(v, i32c(lane)) for lane in range(LANES)]
