"""Vectorisable float32 exp, log, tanh and sigmoid as inline llvmlite.ir, for Wasm without libm."""

from __future__ import annotations

from llvmlite import ir

# Every helper emits straight-line IR at the builder's position; `x` is `float` or `<4 x float>`
# and the result has the same type. Only instructions that map to one Wasm (SIMD128) opcode are
# used: fadd/fsub/fmul/fdiv/fneg, fcmp+select (f32x4.pmin/pmax or bitselect), bitcast, integer
# add/sub/shl/ashr/and/or, sitofp, and the intrinsic llvm.fabs (f32.abs / f32x4.abs). Never
# llvm.fma, llvm.minnum/maxnum or llvm.round: on wasm32 they become calls to fmaf, fminf/fmaxf
# and roundf, i.e. imports (tests/test_mathfn.py checks this). Polynomials are plain Horner steps
# with no fast-math flags: the rounding tricks below rely on exact IEEE evaluation order.

F32 = ir.FloatType()
I32 = ir.IntType(32)

_LOG2E = 1.44269504088896341
# Cody–Waite split of ln 2: LN2_HI has 9 significant bits, so k·LN2_HI is exact for |k| < 2^15.
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
# Adding 1.5·2^23 rounds a float with |v| < 2^22 to an integer held in the low mantissa bits.
_ROUND_MAGIC = 12582912.0
_ROUND_MAGIC_BITS = 0x4B400000
# exp's argument is clamped into [_EXP_LO, _EXP_HI]: wide enough that the result is exactly 0 below
# and +inf above (e^-104 < half the smallest denormal; e^89 > FLT_MAX), narrow enough that both
# halves of the split 2^k scale stay normal floats.
_EXP_LO = -104.0
_EXP_HI = 89.0
# Cephes expf: e^r ≈ 1 + r + r²·P(r) on |r| ≤ ln2/2.
_EXP_P = (
    1.9875691500e-4,
    1.3981999507e-3,
    8.3334519073e-3,
    4.1665795894e-2,
    1.6666665459e-1,
    5.0000001201e-1,
)
# Cephes logf: log(1+f) ≈ f - f²/2 + f³·P(f) on sqrt(2)/2 - 1 ≤ f < sqrt(2) - 1.
_LOG_P = (
    7.0376836292e-2,
    -1.1514610310e-1,
    1.1676998740e-1,
    -1.2420140846e-1,
    1.4249322787e-1,
    -1.6668057665e-1,
    2.0000714765e-1,
    -2.4999993993e-1,
    3.3333331174e-1,
)
_SQRT_HALF_BITS = 0x3F3504F3  # float32 bits of sqrt(2)/2
_MANTISSA_MASK = 0x007FFFFF
_SIGN_MASK = -0x80000000  # 0x80000000 as a signed i32
_FLT_MIN = 1.17549435e-38  # smallest normal float32
_DENORMAL_SCALE = 8388608.0  # 2^23: lifts every denormal into the normal range
# Cephes tanhf: tanh(x) ≈ x + x³·Q(x²) for |x| ≤ 0.625; above that 1 - 2/(e^{2|x|} + 1),
# which rounds to exactly 1.0f from |x| ≈ 9.011 (below that 1 - 2^-24 is the nearer float).
_TANH_Q = (
    -5.70498872745e-3,
    2.06390887954e-2,
    -5.37397155531e-2,
    1.33314422036e-1,
    -3.33332819422e-1,
)
_TANH_SMALL = 0.625


def exp(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e^x. NaN → NaN, x > 88.72 → +inf, x < -103.97 → 0, gradual (not flushed) denormals."""
    x = _clamp(b, x, _EXP_LO, _EXP_HI)  # NaN passes through both selects
    t = b.fadd(b.fmul(x, _f(x, _LOG2E)), _f(x, _ROUND_MAGIC))
    k = b.sub(_bits(b, t), _i(x, _ROUND_MAGIC_BITS))  # round(x·log2 e) as an integer
    kf = b.fsub(t, _f(x, _ROUND_MAGIC))  # the same integer as a float, exactly
    r = b.fsub(x, b.fmul(kf, _f(x, _LN2_HI)))
    r = b.fsub(r, b.fmul(kf, _f(x, _LN2_LO)))
    p = _horner(b, r, _EXP_P)
    er = b.fadd(b.fadd(b.fmul(p, b.fmul(r, r)), r), _f(x, 1.0))
    # 2^k = 2^k1 · 2^k2 with both halves normal, so e^x can be a denormal or overflow to inf
    # through ordinary rounding of the last multiply.
    k1 = b.ashr(k, _i(x, 1))
    k2 = b.sub(k, k1)
    return b.fmul(b.fmul(er, _pow2(b, x, k1)), _pow2(b, x, k2))


def log(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Natural log. log(±0) = -inf, log(x < 0) = NaN, log(+inf) = +inf, NaN → NaN."""
    denormal = b.fcmp_ordered("<", x, _f(x, _FLT_MIN))
    xs = b.select(denormal, b.fmul(x, _f(x, _DENORMAL_SCALE)), x)
    # x = 2^k · m with m in [sqrt(2)/2, sqrt(2)), read straight off the bits (x > 0 here).
    ix = b.sub(_bits(b, xs), _i(x, _SQRT_HALF_BITS))
    k = b.ashr(ix, _i(x, 23))
    m = _float(b, b.add(b.and_(ix, _i(x, _MANTISSA_MASK)), _i(x, _SQRT_HALF_BITS)), x)
    kf = b.fsub(b.sitofp(k, x.type), b.select(denormal, _f(x, 23.0), _f(x, 0.0)))
    f = b.fsub(m, _f(x, 1.0))
    z = b.fmul(f, f)
    y = b.fmul(b.fmul(_horner(b, f, _LOG_P), f), z)
    y = b.fadd(y, b.fmul(kf, _f(x, _LN2_LO)))
    y = b.fadd(y, b.fmul(z, _f(x, -0.5)))
    y = b.fadd(b.fadd(f, y), b.fmul(kf, _f(x, _LN2_HI)))
    y = b.select(b.fcmp_ordered("==", x, _f(x, float("inf"))), x, y)
    y = b.select(b.fcmp_unordered("<", x, _f(x, 0.0)), _f(x, float("nan")), y)  # x < 0 or NaN
    return b.select(b.fcmp_ordered("==", x, _f(x, 0.0)), _f(x, float("-inf")), y)


def tanh(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """tanh(x): odd polynomial for |x| ≤ 0.625, else ±(1 - 2/(e^{2|x|} + 1)); ±1 from |x| ≈ 9.01."""
    # Work on |x| and put x's sign back last, so tanh(-0) = -0 and the result is exactly odd.
    ax = fabs(b, x)
    z = b.fmul(ax, ax)
    small = b.fadd(b.fmul(b.fmul(_horner(b, z, _TANH_Q), z), ax), ax)  # NaN stays NaN
    e = exp(b, b.fadd(ax, ax))  # +inf past |x| ≈ 44, so 2/(e + 1) = 0 and tanh = ±1 exactly
    large = b.fsub(_f(x, 1.0), b.fdiv(_f(x, 2.0), b.fadd(e, _f(x, 1.0))))
    t = b.select(b.fcmp_ordered(">", ax, _f(x, _TANH_SMALL)), large, small)
    return _float(b, b.or_(_bits(b, t), b.and_(_bits(b, x), _i(x, _SIGN_MASK))), x)


def sigmoid(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """1/(1 + e^-x), as e^-|x| over 1 + e^-|x| for x < 0 so neither sign overflows; NaN → NaN."""
    return sigmoid_of(b, x, exp(b, b.fneg(fabs(b, x))))


def sigmoid_of(b: ir.IRBuilder, x: ir.Value, e: ir.Value) -> ir.Value:
    """sigmoid(x) from e = e^-|x| (computed by the caller: bce_with_logits flushes it)."""
    num = b.select(b.fcmp_ordered("<", x, _f(x, 0.0)), e, _f(x, 1.0))
    return b.fdiv(num, b.fadd(e, _f(x, 1.0)))


def fabs(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """|x| via llvm.fabs (one f32.abs / f32x4.abs), declared in the builder's module if needed."""
    return b.call(_unary_intrinsic(b.module, "llvm.fabs", x.type), [x])


def _unary_intrinsic(module: ir.Module, name: str, ty: ir.Type) -> ir.Function:
    """Declare (once) an overloaded float → float intrinsic, e.g. llvm.fabs.v4f32.

    Spelled out because llvmlite's declare_intrinsic cannot mangle vector types.
    """
    suffix = f"v{ty.count}f32" if isinstance(ty, ir.VectorType) else "f32"
    full = f"{name}.{suffix}"
    existing = module.globals.get(full)
    if isinstance(existing, ir.Function):
        return existing
    return ir.Function(module, ir.FunctionType(ty, [ty]), full)


def _horner(b: ir.IRBuilder, x: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
    """c0·x^(n-1) + … + c(n-1), highest degree first, as separate fmul/fadd (no contraction)."""
    acc: ir.Value = _f(x, coeffs[0])
    for c in coeffs[1:]:
        acc = b.fadd(b.fmul(acc, x), _f(x, c))
    return acc


def _pow2(b: ir.IRBuilder, like: ir.Value, k: ir.Value) -> ir.Value:
    """2^k as a float built from its exponent bits; k must lie in [-126, 127]."""
    return _float(b, b.shl(b.add(k, _i(like, 127)), _i(like, 23)), like)


def _clamp(b: ir.IRBuilder, x: ir.Value, lo: float, hi: float) -> ir.Value:
    return _min(b, _max(b, x, lo), hi)


def _min(b: ir.IRBuilder, x: ir.Value, hi: float) -> ir.Value:
    """min(x, hi) that keeps NaN (fcmp+select, i.e. Wasm pmin, not minnum)."""
    c = _f(x, hi)
    return b.select(b.fcmp_ordered(">", x, c), c, x)


def _max(b: ir.IRBuilder, x: ir.Value, lo: float) -> ir.Value:
    c = _f(x, lo)
    return b.select(b.fcmp_ordered("<", x, c), c, x)


def _int_type(like: ir.Value) -> ir.Type:
    if isinstance(like.type, ir.VectorType):
        return ir.VectorType(I32, like.type.count)
    return I32


def _f(like: ir.Value, value: float) -> ir.Constant:
    """A float constant of like's type (splatted for vectors)."""
    if isinstance(like.type, ir.VectorType):
        return ir.Constant(like.type, [value] * like.type.count)
    return ir.Constant(F32, value)


def _i(like: ir.Value, value: int) -> ir.Constant:
    """An i32 constant shaped like the float value `like` (splatted for vectors)."""
    ty = _int_type(like)
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [value] * ty.count)
    return ir.Constant(ty, value)


def _bits(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    return b.bitcast(x, _int_type(x))


def _float(b: ir.IRBuilder, i: ir.Value, like: ir.Value) -> ir.Value:
    return b.bitcast(i, like.type)
