"""Per-step scalar math as inline llvmlite.ir (no libm): cos(π·r/d), sqrt and integer powers.

Learning-rate schedules and bias corrections need a cosine and β^t once per train_step; Wasm
has no libm, so cos is an integer-range-reduced Cephes polynomial and β^t binary
exponentiation (IEEE operations only: the same bits in every engine, so JS and Python hosts
train identically).
"""

from __future__ import annotations

from llvmlite import ir

from .kernels import F32, I32, f32c, i32c

F64 = ir.DoubleType()

# Cephes sinf / cosf minimax polynomials on [-π/4, π/4] (about 1 ulp in float32).
_SIN_P = (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)
_COS_P = (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)
_PI = 3.14159265358979323846


def _intrinsic(module: ir.Module, name: str, ty: ir.Type) -> ir.Function:
    """Declare (once) an overloaded float intrinsic such as llvm.sqrt.v4f32."""
    suffix = (f"v{ty.count}f32" if isinstance(ty, ir.VectorType)
              else "f64" if isinstance(ty, ir.DoubleType) else "f32")
    full = f"{name}.{suffix}"
    existing = module.globals.get(full)
    if isinstance(existing, ir.Function):
        return existing
    return ir.Function(module, ir.FunctionType(ty, [ty]), full)


def sqrt(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """√x for float, double or <4 x float>: one f32.sqrt / f64.sqrt / f32x4.sqrt (IEEE, no call)."""
    return b.call(_intrinsic(b.module, "llvm.sqrt", x.type), [x])


def _poly(b: ir.IRBuilder, z: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
    acc: ir.Value = f32c(coeffs[0])
    for c in coeffs[1:]:
        acc = b.fadd(b.fmul(acc, z), f32c(c))
    return acc


def cos_pi_ratio(b: ir.IRBuilder, r: ir.Value, d: int) -> ir.Value:
    """cos(π·r/d) as float32 for an i32 0 ≤ r ≤ d (d ≤ 2^28), reduced in integers.

    cos(πr/d) = −cos(π(d−r)/d) folds r into [0, d/2]; above d/4 it is sin(π(d−2r)/2d).
    Either way the angle is π·m/2d with 0 ≤ m ≤ d/2 computed exactly, so the result carries
    one rounding of m/2d, one of π·(…) and the polynomial's: about 1 ulp of the angle, even
    where the cosine itself is near 0.
    """
    upper = b.icmp_unsigned(">", b.shl(r, i32c(1)), i32c(d))
    r = b.select(upper, b.sub(i32c(d), r), r)
    use_sin = b.icmp_unsigned(">", b.shl(r, i32c(2)), i32c(d))
    m = b.select(use_sin, b.sub(i32c(d), b.shl(r, i32c(1))), b.shl(r, i32c(1)))
    a = b.fmul(b.fdiv(b.uitofp(m, F32), f32c(float(2 * d))), f32c(_PI))
    z = b.fmul(a, a)
    s = b.fadd(a, b.fmul(b.fmul(a, z), _poly(b, z, _SIN_P)))
    c = b.fadd(b.fsub(f32c(1.0), b.fmul(z, f32c(0.5))), b.fmul(b.fmul(z, z), _poly(b, z, _COS_P)))
    v = b.select(use_sin, s, c)
    return b.select(upper, b.fneg(v), v)


def powi(b: ir.IRBuilder, base: ir.Value, n: ir.Value) -> ir.Value:
    """base^n for an i32 n ≥ 0 by binary exponentiation (≤ 31 squarings), in base's type.

    The relative error grows like n·ulp, so callers pass a double (Wasm f64 is native) when
    n can be large, as torch computes β^t and γ^k in Python floats.
    """
    one = ir.Constant(base.type, 1.0)
    pre = b.block
    head = b.append_basic_block("powi.head")
    body = b.append_basic_block("powi.body")
    done = b.append_basic_block("powi.done")
    b.branch(head)
    b.position_at_end(head)
    acc = b.phi(base.type, name="powi.acc")
    sq = b.phi(base.type, name="powi.sq")
    e = b.phi(I32, name="powi.e")
    acc.add_incoming(one, pre)
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


def to_f64(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    return b.fpext(x, F64)


def to_f32(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    return b.fptrunc(x, F32)


def fmin(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """min(x, y) as fcmp+select (never llvm.minnum, which wasm32 turns into a call)."""
    return b.select(b.fcmp_ordered("<", y, x), y, x)


def fmax(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.fcmp_ordered(">", y, x), y, x)
