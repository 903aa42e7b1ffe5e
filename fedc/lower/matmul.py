"""Matrix products of dense training, row-major f32: y = x·W (+b), dy·Wᵀ, xᵀ·dy, Σ rows."""

from __future__ import annotations

from llvmlite import ir

from . import gemm
from .context import LowerCtx
from .kernels import accumulate, emit_cols, i32c, load_w, store_w, zero_w


def nn(ctx: LowerCtx, *, m: ir.Value, n: int, k: int, a: ir.Value, b: ir.Value, c: ir.Value,
       bias: ir.Value | None = None, relu: bool = False, b_panels: bool = False) -> None:
    """C[m,n] = A[m,k] · B[k,n] (+ bias[n]) (then relu): the register-blocked forward kernel;
    B stored in panels if b_panels (fedc/layout.py)."""
    gemm.emit_matmul(ctx.b, kind="nn", m=m, n=n, k=k, a=a, bmat=b, c=c,
                     scratch=ctx.addr_ptr(ctx.scratch), bias=bias, madd=ctx.madd, relu=relu,
                     b_packed=b_panels)


def nt(ctx: LowerCtx, *, m: ir.Value, n: int, k: int, a: ir.Value, b: ir.Value,
       c: ir.Value, mask: ir.Value | None = None, b_panels: bool = False) -> None:
    """C[m,n] = A[m,k] · Bᵀ with B stored [n,k] (the input gradient; no explicit transpose),
    zero where mask[m,n] ≤ 0 when a mask (laid out like C) is given; B in panels if b_panels."""
    gemm.emit_matmul(ctx.b, kind="nt", m=m, n=k, k=n, a=a, bmat=b, c=c,
                     scratch=ctx.addr_ptr(ctx.scratch), madd=ctx.madd, mask=mask,
                     b_packed=b_panels)


def tn(ctx: LowerCtx, *, m: ir.Value, n: int, k: int, a: ir.Value, b: ir.Value,
       c: ir.Value, c_panels: bool = False) -> None:
    """C[k,n] = Aᵀ · B with A stored [m,k], B [m,n]: the weight gradient, reducing over m;
    C written in panels if c_panels (a weight's gradient, fedc/layout.py)."""
    gemm.emit_matmul(ctx.b, kind="tn", m=m, n=n, k=k, a=a, bmat=b, c=c,
                     scratch=ctx.addr_ptr(ctx.scratch), madd=ctx.madd, c_packed=c_panels)


def scratch(kind: gemm.Kind, max_batch: int, n: int, k: int, *, b_panels: bool = False) -> int:
    """Scratch bytes of nn/nt/tn in this module's argument convention (nn's B in panels needs
    no room for B)."""
    return gemm.scratch_bytes(kind, max_batch, *((k, n) if kind == "nt" else (n, k)),
                              b_packed=b_panels)


def sum_rows(ctx: LowerCtx, *, m: ir.Value, n: int, a: ir.Value, c: ir.Value) -> None:
    """C[n] = Σ_i A[i, n]."""
    bld = ctx.b

    def col(j: ir.Value, vec: bool) -> None:
        def step(i: ir.Value, acc: ir.Value) -> ir.Value:
            return bld.fadd(acc, load_w(bld, a, bld.add(bld.mul(i, i32c(n)), j), vec))
        store_w(bld, accumulate(bld, m, step, zero_w(vec), 1, "sr"), c, j, vec)

    emit_cols(bld, n, col)
