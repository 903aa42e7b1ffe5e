"""Row-wise kernel helpers (llvmlite.ir only): vector sums and maxima over contiguous rows."""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from ..ir import TensorType
from .context import LowerCtx
from .kernels import (
    F32,
    I32,
    LANES,
    V4,
    accumulate,
    f32c,
    i32c,
    load,
    load4,
    reduce_add4,
    splat,
    zero_w,
)

# term(j, vec): the value at column j (vec=False) or the 4 lanes at columns j..j+3 (vec=True)
Term = Callable[[ir.Value, bool], ir.Value]


def like(b: ir.IRBuilder, x: ir.Value, other: ir.Value) -> ir.Value:
    """The scalar x broadcast to other's type (<4 x float> or float)."""
    return splat(b, x) if isinstance(other.type, ir.VectorType) else x


def rows(ctx: LowerCtx, t: TensorType, width: int) -> ir.Value:
    """How many rows of `width` consecutive elements a tensor of type t holds in this batch."""
    per_example = t.row_size // width
    return ctx.b.mul(ctx.n, i32c(per_example)) if t.batched else i32c(per_example)


def row_ptr(b: ir.IRBuilder, base: ir.Value, row: ir.Value, width: int) -> ir.Value:
    return b.gep(base, [b.mul(row, i32c(width))], source_etype=F32)


def hsum(b: ir.IRBuilder, count: int | ir.Value, term: Term, name: str = "hs") -> ir.Value:
    """Σ_{j < count} term(j): one <4 x float> accumulator, fixed-order reduction, scalar tail.

    `count` may be a Python int (the vector/tail split is then static) or an i32 value.
    """
    if isinstance(count, int):
        vec_end: ir.Value = i32c(count // LANES * LANES)
        has_vec, has_tail = count >= LANES, count % LANES != 0
        stop: ir.Value = i32c(count)
    else:
        vec_end, has_vec, has_tail, stop = b.and_(count, i32c(~(LANES - 1))), True, True, count
    total: ir.Value = f32c(0.0)
    if has_vec:
        acc = accumulate(b, vec_end, lambda j, a: b.fadd(a, term(j, True)), zero_w(True),
                         LANES, f"{name}v")
        total = reduce_add4(b, acc)
    if has_tail:
        total = accumulate(b, stop, lambda j, a: b.fadd(a, term(j, False)), total, 1,
                           f"{name}t", start=vec_end)
    return total


def _max(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    # fcmp+select (Wasm pmax), never llvm.maxnum: that becomes an fmaxf import on wasm32
    return b.select(b.fcmp_ordered(">", x, y), x, y)


def _shuffle(b: ir.IRBuilder, v: ir.Value, mask: list[int]) -> ir.Value:
    return b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, LANES), mask))


def hmax(b: ir.IRBuilder, base: ir.Value, count: int, name: str = "hm") -> ir.Value:
    """max of base[0..count) (count ≥ 1)."""
    vec_end = count // LANES * LANES
    if vec_end:
        acc = accumulate(b, i32c(vec_end), lambda j, a: _max(b, load4(b, base, j), a),
                         load4(b, base, 0), LANES, f"{name}v", start=LANES)
        acc = _max(b, acc, _shuffle(b, acc, [2, 3, 0, 1]))
        acc = _max(b, acc, _shuffle(b, acc, [1, 0, 3, 2]))
        best = b.extract_element(acc, i32c(0))
        start = vec_end
    else:
        best, start = load(b, base, 0), 1
    if start < count:
        best = accumulate(b, i32c(count), lambda j, a: _max(b, load(b, base, j), a), best, 1,
                          f"{name}t", start=start)
    return best


def vec_type(vec: bool) -> ir.Type:
    return V4 if vec else F32
