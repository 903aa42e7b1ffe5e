"""fedc.lower.mathfn compiled to Wasm (simd128 and scalar) against numpy float64 on dense grids."""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.binding as llvm
import numpy as np
import pytest
import wasmtime
from llvmlite import ir

from fedc.emit import emit, target_machine
from fedc.link import ARENA_BASE, link
from fedc.lower import mathfn

FNS: dict[str, Callable[[ir.IRBuilder, ir.Value], ir.Value]] = {
    "exp": mathfn.exp,
    "log": mathfn.log,
    "tanh": mathfn.tanh,
    "sigmoid": mathfn.sigmoid,
}
F32 = ir.FloatType()
I32 = ir.IntType(32)
V4 = ir.VectorType(F32, 4)
PTR = ir.PointerType()
CAP = 1 << 21  # floats per call: the input buffer, then the output buffer of the same size
IN_ADDR = ARENA_BASE
OUT_ADDR = ARENA_BASE + 4 * CAP
ARENA_END = OUT_ADDR + 4 * CAP


def _loop(b: ir.IRBuilder, start: ir.Value, stop: ir.Value, step: int, body: Callable) -> None:
    """for (i = start; i < stop; i += step) body(i), leaving b after the loop."""
    pre = b.block
    head = b.append_basic_block("head")
    loop = b.append_basic_block("loop")
    done = b.append_basic_block("done")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I32)
    i.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", i, stop), loop, done)
    b.position_at_end(loop)
    body(i)
    i.add_incoming(b.add(i, ir.Constant(I32, step)), b.block)
    b.branch(head)
    b.position_at_end(done)


def _map(b: ir.IRBuilder, fn: Callable, ty: ir.Type, start: ir.Value, stop: ir.Value) -> None:
    """OUT[i] = fn(IN[i]) for i in [start, stop), `ty` (float or <4 x float>) at a time."""
    src = b.inttoptr(ir.Constant(I32, IN_ADDR), PTR)
    dst = b.inttoptr(ir.Constant(I32, OUT_ADDR), PTR)

    def body(i: ir.Value) -> None:
        x = b.load(b.gep(src, [i], source_etype=F32), typ=ty, align=4)
        b.store(fn(b, x), b.gep(dst, [i], source_etype=F32), align=4)

    _loop(b, start, stop, getattr(ty, "count", 1), body)


def build_ir() -> str:
    """apply_<fn>(n): <4 x float> body plus scalar tail; apply_<fn>_scalar(n): scalar only."""
    mod = ir.Module("mathfn_test")
    for name, fn in FNS.items():
        f = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I32]), f"apply_{name}")
        b = ir.IRBuilder(f.append_basic_block("entry"))
        (n,) = f.args
        n4 = b.and_(n, ir.Constant(I32, -4))
        _map(b, fn, V4, ir.Constant(I32, 0), n4)
        _map(b, fn, F32, n4, n)
        b.ret_void()
        f = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I32]), f"apply_{name}_scalar")
        b = ir.IRBuilder(f.append_basic_block("entry"))
        _map(b, fn, F32, ir.Constant(I32, 0), f.args[0])
        b.ret_void()
    return str(mod)


EXPORTS = [f"apply_{n}{s}" for n in FNS for s in ("", "_scalar")]


class Kernels:
    """One instantiated test module: call(fn, x) maps a float32 array through the Wasm code."""

    def __init__(self, variant: str) -> None:
        self.wasm = link(emit(build_ir(), variant=variant).object_code, ARENA_END, EXPORTS)
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        self.module = wasmtime.Module(engine, self.wasm)
        inst = wasmtime.Instance(self.store, self.module, [])
        ex = inst.exports(self.store)
        self.funcs: dict[str, wasmtime.Func] = {}
        for name in EXPORTS:
            func = ex[name]
            assert isinstance(func, wasmtime.Func)
            self.funcs[name] = func
        mem = ex["memory"]
        assert isinstance(mem, wasmtime.Memory)
        raw = np.ctypeslib.as_array(mem.data_ptr(self.store), shape=(mem.data_len(self.store),))
        self.src = raw[IN_ADDR:OUT_ADDR].view(np.float32)
        self.dst = raw[OUT_ADDR:ARENA_END].view(np.float32)

    def call(self, fn: str, x: np.ndarray, scalar: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32).ravel()
        out = np.empty_like(x)
        f = self.funcs[f"apply_{fn}_scalar" if scalar else f"apply_{fn}"]
        for lo in range(0, x.size, CAP):
            chunk = x[lo : lo + CAP]
            self.src[: chunk.size] = chunk
            f(self.store, chunk.size)
            out[lo : lo + chunk.size] = self.dst[: chunk.size]
        return out


@pytest.fixture(scope="module")
def simd() -> Kernels:
    return Kernels("simd128")


@pytest.fixture(scope="module")
def scalar_build() -> Kernels:
    return Kernels("scalar")


def ref(fn: str, x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        if fn == "sigmoid":
            return 1.0 / (1.0 + np.exp(-x64))
        return getattr(np, fn)(x64)


def ulp_error(y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """|y - r| in float32 ULPs of the exact result (denormal spacing below FLT_MIN)."""
    spacing = np.spacing(np.abs(r).astype(np.float32)).astype(np.float64)
    return np.abs(y.astype(np.float64) - r) / spacing


def rel_error(y: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.abs(y.astype(np.float64) - r) / np.abs(r)


def all_floats_between(lo: float, hi: float, count: int, seed: int = 0) -> np.ndarray:
    """`count` float32 values spread evenly over the bit patterns between lo and hi (same sign)."""
    a, b = np.array([lo, hi], dtype=np.float32).view(np.int32)
    bits = np.linspace(min(a, b), max(a, b), count).astype(np.int32)
    rng = np.random.default_rng(seed)
    jitter = rng.integers(0, 2, bits.size, dtype=np.int32)
    return np.clip(bits + jitter, min(a, b), max(a, b)).astype(np.int32).view(np.float32)


def grid(lo: float, hi: float, count: int) -> np.ndarray:
    return np.linspace(lo, hi, count, dtype=np.float64).astype(np.float32)


SPECIALS = np.array(
    [
        0.0,
        -0.0,
        np.inf,
        -np.inf,
        np.nan,
        1e-45,
        -1e-45,
        1e-40,
        -1e-40,
        1.17549435e-38,
        3.4028235e38,
        -3.4028235e38,
        1.0,
        -1.0,
    ],
    dtype=np.float32,
)


def f32s(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equal, except that any NaN equals any NaN."""
    nan = np.isnan(a) & np.isnan(b)
    return bool(np.all((a.view(np.int32) == b.view(np.int32)) | nan))


# --- exp ----------------------------------------------------------------------------------------


def test_exp_relative_error_on_normal_range(simd: Kernels) -> None:
    x = np.concatenate(
        [
            grid(-87.0, 88.0, 1_000_001),
            all_floats_between(1e-8, 88.0, 500_000),
            -all_floats_between(1e-8, 87.0, 500_000),
        ]
    )
    r = ref("exp", x)
    y = simd.call("exp", x)
    assert rel_error(y, r).max() <= 2e-7
    assert ulp_error(y, r).max() <= 1.0  # 0.99 over every float in [-87, 88]


def test_exp_overflow_underflow_and_denormal_results(simd: Kernels) -> None:
    x = grid(-110.0, 95.0, 1_000_000)
    with np.errstate(over="ignore"):  # inf / 0 / denormal, as float32
        r = ref("exp", x).astype(np.float32).astype(np.float64)
    y = simd.call("exp", x)
    assert np.array_equal(np.isinf(y), np.isinf(r))
    assert ulp_error(y[np.isfinite(r)], r[np.isfinite(r)]).max() <= 1.0  # in denormal spacing
    # the largest finite result, the first overflow, FLT_MIN, 2^-149 and the first zero
    edge = f32s([88.72283, 88.72284, -87.33654, -103.27893, -103.97207, -103.97209])
    ye = simd.call("exp", edge)
    assert np.isfinite(ye[0]) and ye[1] == np.inf and ye[5] == 0.0
    assert ulp_error(ye[[0, 2, 3, 4]], ref("exp", edge[[0, 2, 3, 4]])).max() <= 1.0


# --- log ----------------------------------------------------------------------------------------


def test_log_relative_error(simd: Kernels) -> None:
    x = np.concatenate(
        [
            np.logspace(-30, 30, 1_000_000, dtype=np.float64).astype(np.float32),
            all_floats_between(1e-30, 1e30, 1_000_000),
            all_floats_between(0.5, 2.0, 500_000),  # around 1, where log(x) → 0
        ]
    )
    x = x[x != 1.0]
    r = ref("log", x)
    y = simd.call("log", x)
    assert rel_error(y, r).max() <= 2e-7
    assert ulp_error(y, r).max() <= 1.0  # 0.83 over every positive float


def test_log_denormal_and_extreme_inputs(simd: Kernels) -> None:
    x = np.concatenate(
        [
            all_floats_between(1e-45, 1.1754942e-38, 200_000),
            all_floats_between(1e30, 3.4028235e38, 200_000),
        ]
    )
    r = ref("log", x)
    y = simd.call("log", x)
    assert ulp_error(y, r).max() <= 1.0


# --- special values (bitwise, so ±0 and ±inf are told apart) -----------------------------------

INF, NAN, FLT_MAX, TINY = float("inf"), float("nan"), 3.4028235e38, 1e-45
# fmt: off
SPECIAL_CASES: dict[str, list[tuple[float, float]]] = {
    "exp": [(0.0, 1.0), (-0.0, 1.0), (INF, INF), (-INF, 0.0), (NAN, NAN), (TINY, 1.0),
            (-TINY, 1.0), (-1e-40, 1.0), (FLT_MAX, INF), (-FLT_MAX, 0.0), (89.0, INF),
            (-104.0, 0.0)],
    "log": [(0.0, -INF), (-0.0, -INF), (INF, INF), (-INF, NAN), (NAN, NAN), (-TINY, NAN),
            (-5.0, NAN), (-FLT_MAX, NAN), (1.0, 0.0)],
    "tanh": [(0.0, 0.0), (-0.0, -0.0), (INF, 1.0), (-INF, -1.0), (NAN, NAN), (TINY, TINY),
             (-1e-40, -1e-40), (FLT_MAX, 1.0), (-FLT_MAX, -1.0), (9.02, 1.0), (-1e4, -1.0)],
    "sigmoid": [(0.0, 0.5), (-0.0, 0.5), (INF, 1.0), (-INF, 0.0), (NAN, NAN), (TINY, 0.5),
                (FLT_MAX, 1.0), (-FLT_MAX, 0.0), (20.0, 1.0), (-104.0, 0.0)],
}
# fmt: on


@pytest.mark.parametrize("fn", list(FNS))
def test_special_values(simd: Kernels, fn: str) -> None:
    x, want = (f32s(list(c)) for c in zip(*SPECIAL_CASES[fn], strict=True))
    y = simd.call(fn, x)
    assert same(y, want), [(a, b, c) for a, b, c in zip(x, want, y, strict=True)]


def test_saturation_and_underflow_ranges(simd: Kernels) -> None:
    assert np.all(simd.call("tanh", grid(9.02, 1e4, 1000)) == 1.0)
    assert np.all(simd.call("tanh", grid(-1e4, -9.02, 1000)) == -1.0)
    assert np.all(simd.call("sigmoid", grid(-200.0, -104.0, 1000)) == 0.0)
    assert np.all(simd.call("exp", grid(-200.0, -104.0, 1000)) == 0.0)
    assert np.all(simd.call("exp", grid(88.73, 200.0, 1000)) == INF)


# --- tanh and sigmoid ---------------------------------------------------------------------------


ULP_BOUND = {"tanh": 1.5, "sigmoid": 2.5}  # every float in [-20, 20]: 1.33 and 2.4


@pytest.mark.parametrize("fn", ["tanh", "sigmoid"])
def test_absolute_error_on_minus_20_to_20(simd: Kernels, fn: str) -> None:
    x = np.concatenate([grid(-20.0, 20.0, 1_000_001), grid(-1.0, 1.0, 500_000)])
    y, r = simd.call(fn, x), ref(fn, x)
    assert np.abs(y - r).max() <= 3e-7
    assert ulp_error(y, r).max() <= ULP_BOUND[fn]


@pytest.mark.parametrize("fn", ["tanh", "sigmoid"])
def test_relative_error_where_the_result_is_small(simd: Kernels, fn: str) -> None:
    # tanh near 0 and sigmoid far left: tiny results must stay accurate, not just near 0
    x = (
        all_floats_between(1e-30, 1.0, 500_000)
        if fn == "tanh"
        else -all_floats_between(1e-3, 87.0, 500_000)
    )
    assert rel_error(simd.call(fn, x), ref(fn, x)).max() <= 4e-7


@pytest.mark.parametrize("fn", ["tanh", "sigmoid"])
def test_symmetry_about_zero(simd: Kernels, fn: str) -> None:
    x = grid(0.0, 20.0, 100_000)
    y, ym = simd.call(fn, x), simd.call(fn, -x)
    if fn == "tanh":
        assert np.array_equal(ym, -y)
    else:  # sigmoid(-x) = 1 - sigmoid(x), up to one rounding of the larger side
        assert np.abs((ym.astype(np.float64) + y) - 1.0).max() <= 1.2e-7


# --- both code paths and both builds ------------------------------------------------------------


@pytest.mark.parametrize("fn", list(FNS))
def test_vector_scalar_and_scalar_build_agree_bitwise(
    simd: Kernels, scalar_build: Kernels, fn: str
) -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            rng.integers(-(2**31), 2**31, 300_001, dtype=np.int64)
            .astype(np.int32)
            .view(np.float32),
            grid(-120.0, 120.0, 100_003),
            SPECIALS,
        ]
    )
    y = simd.call(fn, x)
    assert same(y, simd.call(fn, x, scalar=True))
    assert same(y, scalar_build.call(fn, x))
    assert same(y, scalar_build.call(fn, x, scalar=True))
    tail = f32s([0.5, -0.5, np.nan, 3.0, 2.0, 7.0, -1e-40])  # 4 vector lanes + 3 tail
    assert same(simd.call(fn, tail), simd.call(fn, tail, scalar=True))


def test_modules_import_nothing(simd: Kernels, scalar_build: Kernels) -> None:
    assert list(simd.module.imports) == []
    assert list(scalar_build.module.imports) == []


def _wasm_asm(mod: ir.Module) -> str:
    """The simd128 assembly of the one function `v` in mod, after fedc's O3 pipeline."""
    asm = target_machine("simd128").emit_assembly(llvm.parse_assembly(emit(str(mod)).optimized_ir))
    return asm[asm.index("v:") : asm.index("end_function")]


# What each float intrinsic becomes on wasm32+simd128 (None: a libcall, i.e. an import).
INTRINSICS = {
    "llvm.fabs": (1, "f32x4.abs"),
    "llvm.floor": (1, "f32x4.floor"),
    "llvm.sqrt": (1, "f32x4.sqrt"),
    "llvm.rint": (1, "f32x4.nearest"),
    "llvm.copysign": (2, "v128.or"),  # and/and/or, no call
    "llvm.fma": (3, None),
    "llvm.minnum": (2, None),
    "llvm.maxnum": (2, None),
    "llvm.round": (1, None),
}


@pytest.mark.parametrize("name", list(INTRINSICS))
def test_which_intrinsics_lower_to_simd128_instructions(name: str) -> None:
    arity, op = INTRINSICS[name]
    mod = ir.Module("one")
    f = ir.Function(mod, ir.FunctionType(V4, [V4] * arity), "v")
    intrinsic = ir.Function(mod, ir.FunctionType(V4, [V4] * arity), f"{name}.v4f32")
    b = ir.IRBuilder(f.append_basic_block("entry"))
    b.ret(b.call(intrinsic, list(f.args)))
    body = _wasm_asm(mod)
    if op is None:
        assert "call" in body
    else:
        assert op in body and "call" not in body and "extract_lane" not in body


@pytest.mark.parametrize("fn", list(FNS))
def test_vector_code_is_pure_simd128(fn: str) -> None:
    """<4 x float> in, <4 x float> out: no calls, no lane extraction (nothing scalarised)."""
    mod = ir.Module("one")
    f = ir.Function(mod, ir.FunctionType(V4, [V4]), "v")
    b = ir.IRBuilder(f.append_basic_block("entry"))
    b.ret(FNS[fn](b, f.args[0]))
    body = _wasm_asm(mod)
    for banned in ("call", "extract_lane", "replace_lane", "f32.", "fma", "madd"):
        assert banned not in body, f"{fn}: {banned!r} in\n{body}"
    assert "f32x4.mul" in body
