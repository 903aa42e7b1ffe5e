"""Matrix products of dense training, row-major f32: y = x·W (+b), dy·Wᵀ, xᵀ·dy, Σ rows."""

from __future__ import annotations

from llvmlite import ir

from .context import LowerCtx
from .kernels import (
    accumulate,
    bcast_w,
    emit_cols,
    i32c,
    load,
    load4,
    load_w,
    loop,
    reduce_add4,
    store,
    store_w,
    zero_w,
)


def nn(ctx: LowerCtx, *, m: ir.Value, n: int, k: int, a: ir.Value, b: ir.Value, c: ir.Value,
       bias: ir.Value | None = None) -> None:
    """C[m,n] = A[m,k] · B[k,n] (+ bias[n])."""
    bld = ctx.b
    with loop(bld, 0, m, 1, "mi") as i:
        a_row = bld.mul(i, i32c(k))
        c_row = bld.mul(i, i32c(n))

        def col(j: ir.Value, vec: bool) -> None:
            init = load_w(bld, bias, j, vec) if bias is not None else zero_w(vec)

            def step(kk: ir.Value, acc: ir.Value) -> ir.Value:
                av = bcast_w(bld, load(bld, a, bld.add(a_row, kk)), vec)
                bv = load_w(bld, b, bld.add(bld.mul(kk, i32c(n)), j), vec)
                return bld.fadd(acc, bld.fmul(av, bv))

            acc = accumulate(bld, i32c(k), step, init, 1, "mk")
            store_w(bld, acc, c, bld.add(c_row, j), vec)

        emit_cols(bld, n, col)


def nt(ctx: LowerCtx, *, m: ir.Value, n: int, k: int, a: ir.Value, b: ir.Value,
       c: ir.Value) -> None:
    """C[m,n] = A[m,k] · Bᵀ with B stored [n,k]: row-by-row dot products."""
    bld = ctx.b
    with loop(bld, 0, m, 1, "ti") as i:
        a_row = bld.mul(i, i32c(k))
        with loop(bld, 0, n, 1, "tj") as j:
            b_row = bld.mul(j, i32c(k))
            total = _dot(ctx, a, a_row, b, b_row, k)
            store(bld, total, c, bld.add(bld.mul(i, i32c(n)), j))


def _dot(ctx: LowerCtx, a: ir.Value, a_off: ir.Value, b: ir.Value, b_off: ir.Value,
         k: int) -> ir.Value:
    bld = ctx.b
    vec_end = k // 4 * 4
    acc: ir.Value = zero_w(False)
    if vec_end:
        def vstep(kk: ir.Value, acc4: ir.Value) -> ir.Value:
            av = load4(bld, a, bld.add(a_off, kk))
            bv = load4(bld, b, bld.add(b_off, kk))
            return bld.fadd(acc4, bld.fmul(av, bv))
        acc = reduce_add4(bld, accumulate(bld, i32c(vec_end), vstep, zero_w(True), 4, "dv"))

    def sstep(kk: ir.Value, acc1: ir.Value) -> ir.Value:
        return bld.fadd(acc1, bld.fmul(load(bld, a, bld.add(a_off, kk)),
                                       load(bld, b, bld.add(b_off, kk))))
    if vec_end < k:
        acc = accumulate(bld, i32c(k), sstep, acc, 1, "ds", start=vec_end)
    return acc


def tn(ctx: LowerCtx, *, m: ir.Value, n: int, k: int, a: ir.Value, b: ir.Value,
       c: ir.Value) -> None:
    """C[k,n] = Aᵀ · B with A stored [m,k], B [m,n]: the reduction runs over the batch m."""
    bld = ctx.b
    with loop(bld, 0, k, 1, "wk") as kk:
        def col(j: ir.Value, vec: bool) -> None:
            def step(i: ir.Value, acc: ir.Value) -> ir.Value:
                av = bcast_w(bld, load(bld, a, bld.add(bld.mul(i, i32c(k)), kk)), vec)
                bv = load_w(bld, b, bld.add(bld.mul(i, i32c(n)), j), vec)
                return bld.fadd(acc, bld.fmul(av, bv))
            acc = accumulate(bld, m, step, zero_w(vec), 1, "wm")
            store_w(bld, acc, c, bld.add(bld.mul(kk, i32c(n)), j), vec)
        emit_cols(bld, n, col)


def sum_rows(ctx: LowerCtx, *, m: ir.Value, n: int, a: ir.Value, c: ir.Value) -> None:
    """C[n] = Σ_i A[i, n]."""
    bld = ctx.b

    def col(j: ir.Value, vec: bool) -> None:
        def step(i: ir.Value, acc: ir.Value) -> ir.Value:
            return bld.fadd(acc, load_w(bld, a, bld.add(bld.mul(i, i32c(n)), j), vec))
        store_w(bld, accumulate(bld, m, step, zero_w(vec), 1, "sr"), c, j, vec)

    emit_cols(bld, n, col)
