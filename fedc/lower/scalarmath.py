"""Per-step scalar math as inline llvmlite.ir (no libm): cos(πx), sqrt and integer powers.

Learning-rate schedules and bias corrections need a cosine and β^t once per train_step; Wasm
has no libm, so cos is a range-reduced Cephes polynomial and β^t binary exponentiation (the
same float32 rounding in every engine, which is what keeps JS and Python hosts identical).
"""

from __future__ import annotations

from llvmlite import ir

from .kernels import F32, I32, f32c, i32c

# Cephes sinf / cosf minimax polynomials on [-π/4, π/4] (about 1 ulp in float32).
_SIN_P = (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)
_COS_P = (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)
_PI = 3.14159265358979323846


def _intrinsic(module: ir.Module, name: str, ty: ir.Type) -> ir.Function:
    """Declare (once) an overloaded float intrinsic such as llvm.sqrt.v4f32."""
    suffix = f"v{ty.count}f32" if isinstance(ty, ir.VectorType) else "f32"
    full = f"{name}.{suffix}"
    existing = module.globals.get(full)
    if isinstance(existing, ir.Function):
        return existing
    return ir.Function(module, ir.FunctionType(ty, [ty]), full)


def sqrt(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """√x for float or <4 x float>: llvm.sqrt is one f32.sqrt / f32x4.sqrt (IEEE, no call)."""
    return b.call(_intrinsic(b.module, "llvm.sqrt", x.type), [x])


def _poly(b: ir.IRBuilder, z: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
    acc: ir.Value = f32c(coeffs[0])
    for c in coeffs[1:]:
        acc = b.fadd(b.fmul(acc, z), f32c(c))
    return acc


def cos_pi(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """cos(π·x) for a float x in [0, 1], by symmetry reduced to an angle in [0, π/4].

    cos(πx) = −cos(π(1−x)) folds x into [0, 1/2]; above 1/4 it is sin(π(1/2−x)). Both
    subtractions are exact in float32 (Sterbenz), so the only rounding is π·x and the
    polynomial's own.
    """
    upper = b.fcmp_ordered(">", x, f32c(0.5))
    x = b.select(upper, b.fsub(f32c(1.0), x), x)
    sign = b.select(upper, f32c(-1.0), f32c(1.0))
    use_sin = b.fcmp_ordered(">", x, f32c(0.25))
    a = b.fmul(b.select(use_sin, b.fsub(f32c(0.5), x), x), f32c(_PI))
    z = b.fmul(a, a)
    s = b.fadd(a, b.fmul(b.fmul(a, z), _poly(b, z, _SIN_P)))
    c = b.fadd(b.fsub(f32c(1.0), b.fmul(z, f32c(0.5))), b.fmul(b.fmul(z, z), _poly(b, z, _COS_P)))
    return b.fmul(sign, b.select(use_sin, s, c))


def powi(b: ir.IRBuilder, base: ir.Value, n: ir.Value) -> ir.Value:
    """base^n for a float base and an i32 n ≥ 0 by binary exponentiation (≤ 31 squarings)."""
    pre = b.block
    head = b.append_basic_block("powi.head")
    body = b.append_basic_block("powi.body")
    done = b.append_basic_block("powi.done")
    b.branch(head)
    b.position_at_end(head)
    acc = b.phi(F32, name="powi.acc")
    sq = b.phi(F32, name="powi.sq")
    e = b.phi(I32, name="powi.e")
    acc.add_incoming(f32c(1.0), pre)
    sq.add_incoming(base, pre)
    e.add_incoming(n, pre)
    b.cbranch(b.icmp_unsigned("!=", e, i32c(0)), body, done)
    b.position_at_end(body)
    odd = b.icmp_unsigned("!=", b.and_(e, i32c(1)), i32c(0))
    acc.add_incoming(b.select(odd, b.fmul(acc, sq), acc), body)
    sq.add_incoming(b.fmul(sq, sq), body)
    e.add_incoming(b.lshr(e, i32c(1)), body)
    b.branch(head)
    b.position_at_end(done)
    return acc


def fmin(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """min(x, y) as fcmp+select (never llvm.minnum, which wasm32 turns into a call)."""
    return b.select(b.fcmp_ordered("<", y, x), y, x)


def fmax(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.fcmp_ordered(">", y, x), y, x)
