"""Tests: fedc.lower.gemm's nn/nt/tn kernels run in wasmtime against numpy float64."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
import pytest
import wasmtime
from llvmlite import ir

from fedc.emit import emit
from fedc.link import ARENA_BASE, PAGE, link
from fedc.lower import gemm

M_MAX = 33
M_VALUES = (0, 1, 2, 3, 5, 32, 33)
# 34: splat A panels (n ≥ SPLAT_MIN_COLS) with a padded remainder; narrower remainders are
# columns groups (gemm._groups); 5 … 12 are columns groups only (`wide`): one (5), two (7, 10,
# 12), of unequal widths (11: 6 + 5)
N_VALUES = (1, 3, 4, 5, 7, 8, 10, 11, 12, 13, 34, 128)
# 261: packed where shorter depths read in place; at n = 128 (rows 512 bytes apart, 8 of L1's
# sets) 64 is the deepest read in place and 65 is packed
K_VALUES = (1, 3, 8, 64, 65, 261)
GUARD = 48  # NaN-filled bytes before and after every buffer
SHAPES = {"nn": ("mk", "kn", "mn"), "nt": ("mn", "kn", "mk"), "tn": ("mk", "mn", "kn")}
EPS = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class Case:
    kind: gemm.Kind
    n: int
    k: int
    extra: bool  # nn: bias; tn: row_sum; nt: mask (the fused relu gradient)
    accumulate: bool
    relu: bool = False  # nn only
    # B given as gemm.packed_b_index lays it out: tn's first m rows; nn's and nt's weight B[k, n]
    b_packed: bool = False
    c_packed: bool = False  # tn only: C (a weight's gradient [k, n]) written in panels

    @property
    def name(self) -> str:
        return (f"{self.kind}_n{self.n}_k{self.k}_{int(self.extra)}{int(self.accumulate)}"
                f"{int(self.relu)}{int(self.b_packed)}{int(self.c_packed)}")

    def shapes(self) -> list[tuple[int, int]]:
        dims = {"m": M_MAX, "n": self.n, "k": self.k}
        return [(dims[s[0]], dims[s[1]]) for s in SHAPES[self.kind]]

    def sizes(self) -> list[int]:
        """Bytes of a, b, c, the fused vector (0 if none) and scratch."""
        mats = [4 * r * c for r, c in self.shapes()]
        extra = mats[2] if self.kind == "nt" else 4 * self.n  # a mask is shaped like C
        return [*mats, extra if self.extra else 0,
                gemm.scratch_bytes(self.kind, M_MAX, self.n, self.k, b_packed=self.b_packed)]


def _cases(ns: tuple[int, ...], ks: tuple[int, ...]) -> list[Case]:
    """Every kind × n × k, cycling through the fused-bias/mask/row-sum, accumulate and relu
    flags."""
    out = []
    for i, (kind, n, k) in enumerate(itertools.product(("nn", "nt", "tn"), ns, ks)):
        out.append(Case(kind, n, k, extra=i % 2 == 0, accumulate=i % 3 == 1,  # type: ignore
                        relu=kind == "nn" and i % 4 < 2))
    return out


def _emit_case(mod: ir.Module, case: Case, addrs: list[int], madd: bool = False) -> None:
    """An export `<case.name>(m: i32)` running the case's matmul on fixed addresses."""
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [gemm.I32]), case.name)
    b = ir.IRBuilder(fn.append_basic_block())
    p = [b.inttoptr(ir.Constant(gemm.I32, x), gemm.PTR) for x in addrs]
    role = {"nn": "bias", "nt": "mask", "tn": "row_sum"}[case.kind]
    extra = {role: p[3]} if case.extra else {}
    gemm.emit_matmul(b, kind=case.kind, m=fn.args[0], n=case.n, k=case.k, a=p[0], bmat=p[1],
                     c=p[2], scratch=p[4], accumulate=case.accumulate, madd=madd,
                     relu=case.relu, b_packed=case.b_packed, c_packed=case.c_packed, **extra)
    b.ret_void()


class Module:
    """An instantiated module of cases, each with its operands' addresses, and its memory."""

    def __init__(self, cases: list[Case], addrs: list[list[int]], arena_end: int,
                 variant: str = "simd128") -> None:
        mod = ir.Module("test_gemm")
        for case, case_addrs in zip(cases, addrs, strict=True):
            _emit_case(mod, case, case_addrs, madd=variant == "relaxed-simd")
        wasm = link(emit(str(mod), variant).object_code, arena_end, [c.name for c in cases])
        self.cases, self.addrs = cases, addrs
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        instance = wasmtime.Instance(self.store, wasmtime.Module(engine, wasm), [])
        self.exports = instance.exports(self.store)
        mem = self.exports["memory"]
        self.mem = np.ctypeslib.as_array(mem.data_ptr(self.store),
                                         shape=(mem.data_len(self.store),))

    def view(self, addr: int, shape: tuple[int, ...]) -> np.ndarray:
        return self.mem[addr:addr + 4 * int(np.prod(shape))].view(np.float32).reshape(shape)


def _guarded_module(cases: list[Case], variant: str) -> Module:
    """Cases side by side in the arena, every buffer between NaN-filled guard bytes."""
    addr, addrs = ARENA_BASE, []
    for case in cases:
        addrs.append([])
        for size in case.sizes():
            addr = (addr + GUARD + 15) // 16 * 16
            addrs[-1].append(addr)
            addr += size
    mod = Module(cases, addrs, addr + GUARD, variant)
    mod.mem[ARENA_BASE:addr + GUARD] = 0xFF
    return mod


def _reference(case: Case, m: int, a: np.ndarray, bm: np.ndarray, c0: np.ndarray,
               x0: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Expected C, the magnitude |A|·|B| (+|C|) scaling the tolerance, and expected row_sum."""
    a64, b64 = a[:m].astype(np.float64), bm.astype(np.float64)
    rs = None
    if case.kind == "nn":
        ref, mag = a64 @ b64, np.abs(a64) @ np.abs(b64)
        if x0 is not None:
            ref, mag = ref + x0, mag + np.abs(x0)
        if case.relu:
            ref = np.maximum(ref, 0)
    elif case.kind == "nt":
        ref, mag = a64 @ b64.T, np.abs(a64) @ np.abs(b64.T)
        if x0 is not None:
            ref = np.where(x0[:m] > 0, ref, 0)
    else:
        g64 = b64[:m]
        ref, mag = a64.T @ g64, np.abs(a64.T) @ np.abs(g64)
        if x0 is not None:
            rs = g64.sum(0) + (x0 if case.accumulate else 0)
    if case.accumulate:
        c = c0[:ref.shape[0]]
        ref, mag = ref + c, mag + np.abs(c)
    return ref, mag, rs


def _to_panels(x: np.ndarray) -> np.ndarray:
    """A row-major [rows, n] matrix as gemm.packed_b_index lays it out, flat."""
    rows, n = x.shape
    return x.reshape(rows, n // gemm.NR, gemm.NR).transpose(1, 0, 2).ravel()


def _from_panels(flat: np.ndarray, rows: int, n: int) -> np.ndarray:
    return flat.reshape(n // gemm.NR, rows, gemm.NR).transpose(1, 0, 2).reshape(rows, n)


def _run_and_check(mod: Module, i: int, m: int, rng: np.random.Generator,
                   check_writes: bool = True) -> None:
    case, addrs = mod.cases[i], mod.addrs[i]
    ops = [mod.view(addr, shape) for addr, shape in zip(addrs, case.shapes(), strict=False)]
    for op in ops:
        op[...] = rng.uniform(-1, 1, op.shape)
    extra_shape = case.shapes()[2] if case.kind == "nt" else (case.n,)
    x = mod.view(addrs[3], extra_shape) if case.extra else None
    x0 = None
    if x is not None:
        x[...] = rng.uniform(-1, 1, extra_shape)
        x0 = x.copy()
    b_logical = ops[1]
    if case.b_packed:  # tn: the first m rows of B; nn, nt: all of B[k, n]
        b_logical = ops[1].copy()
        ops[1].reshape(-1)[:] = 0
        rows = m if case.kind == "tn" else case.k
        packed = _to_panels(b_logical[:rows])
        ops[1].reshape(-1)[:packed.size] = packed
    c0 = ops[2].copy()
    if case.c_packed:
        ops[2].reshape(-1)[:] = _to_panels(c0)
    start, end = addrs[0] - GUARD, addrs[4] + case.sizes()[4] + GUARD
    before = mod.mem[start:end].copy()
    mod.exports[case.name](mod.store, m)  # traps on any access outside linear memory

    ref, mag, rs = _reference(case, m, ops[0], b_logical, c0, x0)
    depth = {"nn": case.k, "nt": case.n, "tn": m}[case.kind]
    got = _from_panels(ops[2].reshape(-1), *ops[2].shape) if case.c_packed else ops[2]
    err = np.abs(got[:ref.shape[0]] - ref)
    assert np.all(err <= 2 * (depth + 2) * EPS * mag), f"{case.name} m={m}: error {err.max()}"
    if rs is not None:
        bound = 2 * (m + 2) * EPS * (np.abs(ops[1][:m]).sum(0) + np.abs(x0))
        assert np.all(np.abs(x - rs) <= bound), f"{case.name} m={m}: row_sum"
    if check_writes:  # only C's first rows (all of C for tn), row_sum and scratch may change
        allowed = np.zeros(end - start, bool)
        c_bytes = 4 * ref.shape[0] * ref.shape[1]
        row_sum = 4 * case.n if case.kind == "tn" else 0
        for addr, size in ((addrs[2], c_bytes), (addrs[3], row_sum), (addrs[4], case.sizes()[4])):
            allowed[addr - start:addr - start + size] = True
        changed = mod.mem[start:end] != before
        assert not np.any(changed & ~allowed), f"{case.name} m={m}: wrote outside its outputs"


@pytest.fixture(scope="module")
def simd_module() -> Module:
    return _guarded_module(_cases(N_VALUES, K_VALUES), "simd128")


@pytest.mark.parametrize("kind", ["nn", "nt", "tn"])
def test_matmul_matches_numpy_on_every_remainder_path(simd_module: Module, kind: str) -> None:
    rng = np.random.default_rng(0)
    for i, case in enumerate(simd_module.cases):
        if case.kind == kind:
            for m in M_VALUES:
                _run_and_check(simd_module, i, m, rng)


def test_scalar_variant_matches_numpy() -> None:
    mod = _guarded_module(_cases((3, 10), (5, 8)), "scalar")
    rng = np.random.default_rng(1)
    for i in range(len(mod.cases)):
        for m in (1, 5, 33):
            _run_and_check(mod, i, m, rng)


def test_relaxed_simd_variant_matches_numpy() -> None:
    """f32x4.relaxed_madd in the micro-kernel, on every remainder path, and at widths where
    simd128 would use splat A panels (relaxed-simd never does)."""
    mod = _guarded_module(_cases((1, 3, 4, 10, 13, 40), (1, 5, 8, 37, 65)), "relaxed-simd")
    rng = np.random.default_rng(2)
    for i in range(len(mod.cases)):
        for m in (1, 3, 4, 5, 33):  # tn's depth is m: odd and even (4×4 tiles' two chains)
            _run_and_check(mod, i, m, rng)


def _flush_module(case: Case, role: int) -> Module:
    """A module where operand `role` (0 a, 1 b, 2 c, 3 bias/row_sum, 4 scratch) ends exactly
    at the end of linear memory, so that touching one byte past it traps."""
    addrs, addr = [], ARENA_BASE
    for size in case.sizes():
        addrs.append(addr)
        addr = (addr + size + 15) // 16 * 16
    mem_bytes = (addr + PAGE + PAGE - 1) // PAGE * PAGE  # fedc.link's sizing rule
    addrs[role] = mem_bytes - case.sizes()[role]
    mod = Module([case], [addrs], addr)
    assert len(mod.mem) == mem_bytes
    return mod


@pytest.mark.parametrize("kind", ["nn", "nt", "tn"])
@pytest.mark.parametrize("role", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("n,k", [(10, 7), (12, 8)])  # packed remainders; every panel in place
def test_matmul_never_touches_bytes_past_its_operands(kind: str, role: int, n: int,
                                                      k: int) -> None:
    case = Case(kind, n, k, extra=True, accumulate=True, relu=kind == "nn")  # type: ignore
    mod = _flush_module(case, role)
    rng = np.random.default_rng(2)
    for m in (1, 2, 5, M_MAX):
        _run_and_check(mod, 0, m, rng, check_writes=False)


def test_emit_matmul_rejects_misplaced_fusions() -> None:
    fn = ir.Function(ir.Module(), ir.FunctionType(ir.VoidType(), []), "f")
    b = ir.IRBuilder(fn.append_basic_block())
    p, one = ir.Constant(gemm.PTR, None), ir.Constant(gemm.I32, 1)
    with pytest.raises(ValueError, match="bias"):
        gemm.emit_matmul(b, kind="tn", m=one, n=4, k=4, a=p, bmat=p, c=p, scratch=p, bias=p)
    with pytest.raises(ValueError, match="row_sum"):
        gemm.emit_matmul(b, kind="nn", m=one, n=4, k=4, a=p, bmat=p, c=p, scratch=p, row_sum=p)
    with pytest.raises(ValueError, match="relu"):
        gemm.emit_matmul(b, kind="nt", m=one, n=4, k=4, a=p, bmat=p, c=p, scratch=p, relu=True)
    with pytest.raises(ValueError, match="mask"):
        gemm.emit_matmul(b, kind="nn", m=one, n=4, k=4, a=p, bmat=p, c=p, scratch=p, mask=p)
    with pytest.raises(ValueError, match="pre-packed"):
        gemm.emit_matmul(b, kind="tn", m=one, n=4, k=4, a=p, bmat=p, c=p, scratch=p,
                         a_packed=True)
    with pytest.raises(ValueError, match="pre-packed B"):
        gemm.emit_matmul(b, kind="tn", m=one, n=8, k=4, a=p, bmat=p, c=p, scratch=p,
                         row_sum=p, b_packed=True)
    with pytest.raises(ValueError, match="not stored in panels"):  # read in place instead
        gemm.emit_matmul(b, kind="nn", m=one, n=16, k=64, a=p, bmat=p, c=p, scratch=p,
                         b_packed=True)
    with pytest.raises(ValueError, match="multiples"):
        gemm.emit_matmul(b, kind="nt", m=one, n=12, k=64, a=p, bmat=p, c=p, scratch=p,
                         b_packed=True)
    with pytest.raises(ValueError, match="writes C in panels"):
        gemm.emit_matmul(b, kind="nn", m=one, n=256, k=784, a=p, bmat=p, c=p, scratch=p,
                         c_packed=True)


def test_b_panels_are_read_in_place_only_where_their_rows_fit_l1_sets() -> None:
    assert gemm.l1_rows(10) == gemm.l1_rows(36) == 512  # rows not line-aligned: every set
    assert gemm.l1_rows(128) == 64  # 512 bytes apart: 8 sets × 8 ways
    assert gemm.l1_rows(1024) == 8  # 4 KB apart: one set
    assert gemm.l1_rows(48) == 512  # 3 lines apart: coprime to the 64 sets
    assert gemm._in_place_b("nn", 128, 64) and not gemm._in_place_b("nn", 128, 65)
    assert gemm._in_place_b("nn", 32, 256) and not gemm._in_place_b("tn", 32, 16)


def test_tn_reads_a_pre_packed_b() -> None:
    """The layout gemm.packed_b_index describes (Winograd's weight gradient writes its Z so)."""
    cases = [Case("tn", n, k, extra=False, accumulate=acc, b_packed=True)
             for n, k, acc in ((8, 16, True), (32, 16, False), (16, 5, True), (128, 64, False))]
    mod = _guarded_module(cases, "simd128")
    rng = np.random.default_rng(3)
    for i in range(len(cases)):
        for m in M_VALUES:
            _run_and_check(mod, i, m, rng)
    with pytest.raises(ValueError, match="multiples"):
        gemm.packed_b_index(ir.IRBuilder(), 12, ir.Constant(gemm.I32, 1),
                            ir.Constant(gemm.I32, 0), 0)


def test_weights_in_panels_are_read_and_their_gradients_written_so() -> None:
    """A weight W[k, n] stored in panels (gemm.weight_panels): nn reads it as it is, nt reads
    it in panels (depth n), tn writes its gradient in panels; plain, fused, accumulating, and
    under relaxed_madd (its column layout) and the scalar build."""
    assert gemm.weight_panels(256, 784) and gemm.weight_panels(128, 256)
    assert not gemm.weight_panels(128, 64)  # read in place (l1_rows), never packed
    assert not gemm.weight_panels(10, 300) and not gemm.weight_panels(8, 600)  # not all full
    assert gemm.weight_panels(16, 600)
    shapes = ((16, 600), (128, 65), (24, 261), (32, 300))
    assert all(gemm.weight_panels(n, k) for n, k in shapes)
    cases = []
    for i, (n, k) in enumerate(shapes):
        cases += [Case("nn", n, k, extra=i % 2 == 0, accumulate=i == 1, relu=i < 2,
                       b_packed=True),
                  Case("nt", n, k, extra=i % 2 == 1, accumulate=i == 2, b_packed=True),
                  Case("nt", 8 * (i + 3), k, extra=False, accumulate=False, b_packed=True),
                  Case("tn", n, k, extra=i % 2 == 0, accumulate=i == 3, c_packed=True)]
    rng = np.random.default_rng(4)
    for variant in ("simd128", "relaxed-simd", "scalar"):
        mod = _guarded_module(cases, variant)
        for i in range(len(cases)):
            for m in (M_VALUES if variant == "simd128" else (1, 33)):
                _run_and_check(mod, i, m, rng)


def test_a_panels_are_packed_just_in_time_into_one_panels_room() -> None:
    """A's packed panels (nn, nt; tn where A is not read in place and has two full panels or
    more) are packed one at a time as the tiles reach them, so scratch holds one panel of A
    (tn: plus its packed remainder), splat or not; nn with B packed just in time packs all of
    A up front instead (every remainder path runs in the tests above)."""
    m, s4 = 33, gemm.SPLAT
    assert gemm._packed_a_floats("nn", m, 40, 64, splat=True) == s4 * gemm.MR * 64
    assert gemm._packed_a_floats("nt", m, 40, 64, splat=False) == gemm.MR * 40
    assert gemm._packed_a_floats("nn", m, 20, 261, splat=False) == 36 * 261  # _jit_b: all of A
    assert gemm._packed_a_floats("tn", m, 40, 200, splat=True) == s4 * gemm.MR * m
    assert gemm._packed_a_floats("tn", m, 10, 201, splat=False) == 2 * gemm.MR * m  # + 1 column
    assert gemm._packed_a_floats("tn", m, 40, 6, splat=True) == s4 * 8 * m  # one panel and a half


def test_splat_layout_broadcasts_each_float() -> None:
    """A splat A panel is four times the packed one (each float once per lane), and only
    where each float of A feeds SPLAT_MIN_COLS columns of C or more."""
    wide, narrow = gemm.SPLAT_MIN_COLS, gemm.SPLAT_MIN_COLS - 1
    assert gemm.scratch_bytes("nn", 5, wide, 3) == 4 * gemm.SPLAT * 4 * 3  # B read in place
    assert gemm.scratch_bytes("tn", 5, wide, 200) == 4 * (wide * 5 + gemm.SPLAT * 4 * 5)
    assert gemm.scratch_bytes("nt", 5, 3, wide) == 4 * (wide * 3 + gemm.SPLAT * 4 * 3)
    # 31 columns of C: three 8-wide panels, a 4-wide one and a columns group of 3 broadcasts
    assert gemm.scratch_bytes("nt", 5, 3, narrow) == 4 * ((24 + 4 + 3 * gemm.SPLAT) * 3 + 4 * 3)
    assert gemm._tn_a_in_place(narrow, 64) and not gemm._tn_a_in_place(wide, 64)
    # with relaxed_madd's FMAs the shuffles are free: no splat, tn's A in place again
    assert gemm._splat_a("nn", wide, 3) and not gemm._splat_a("nn", wide, 3, madd=True)
    assert gemm._tn_a_in_place(wide, 64, madd=True)


def test_remainder_columns_are_columns_groups_unless_a_is_splat() -> None:
    """Past the 8-wide panels: a full 4-wide panel if there is one, then the last 1–3
    columns as a columns group (a 4×w tile of column vectors). Where A's panels are splat
    the remainder is one padded panel, as before columns groups existed."""
    def layout(n: int, columns: bool) -> list[tuple[int, int, int, bool]]:
        return [(g.first, g.width, g.last_valid, g.columns)
                for g in gemm._groups(n, gemm.NR, True, columns)]

    assert layout(10, True) == [(0, 8, 8, False), (8, 2, 2, True)]
    assert layout(13, True) == [(0, 8, 8, False), (8, 4, 4, False), (12, 1, 1, True)]
    assert layout(12, True) == [(0, 8, 8, False), (8, 4, 4, False)]
    assert layout(3, True) == [(0, 3, 3, True)]
    assert layout(10, False) == [(0, 8, 8, False), (8, 4, 2, False)]
    assert layout(13, False) == [(0, 8, 8, False), (8, 8, 5, False)]


def test_narrow_c_is_columns_groups_only_under_mul_add() -> None:
    """`wide` (simd128's mul + add): 5…12 columns of C as columns groups of nearly equal widths
    up to WIDE_COLUMNS; 4 or fewer, 13 or more, and relaxed-simd keep the layout above."""
    def widths(n: int) -> list[tuple[int, int, bool]]:
        return [(g.first, g.width, g.columns)
                for g in gemm._groups(n, gemm.NR, True, columns=True, wide=True)]

    assert widths(10) == [(0, 5, True), (5, 5, True)]
    assert widths(11) == [(0, 6, True), (6, 5, True)]
    assert widths(5) == [(0, 5, True)]
    assert widths(12) == [(0, 6, True), (6, 6, True)]
    assert widths(4) == [(0, 4, False)]
    assert widths(13) == [(0, 8, False), (8, 4, False), (12, 1, True)]
    assert gemm._groups(10, gemm.NR, True, columns=False, wide=True) == gemm._groups(
        10, gemm.NR, True)  # splat A: never columns
    # scratch fits the wide layout (10 broadcasts a unit of depth) as well as relaxed-simd's
    assert gemm.scratch_bytes("nn", 33, 10, 7) >= 4 * (10 * gemm.SPLAT * 7 + gemm.MR * 7)
    assert gemm._panel_floats(10, gemm.NR, True, columns=True) == 8 + 2 * gemm.SPLAT
    # scratch holds the larger layout: simd128's splat A with a padded B remainder, or
    # relaxed-simd's plain A with a columns group (here the former)
    splat_a, plain_a = gemm.SPLAT * 4 * 3, 4 * 3  # one panel of A's (just in time), depth 3
    assert gemm.scratch_bytes("nn", 5, 34, 3) == 4 * max(splat_a + 4 * 3,
                                                         plain_a + 2 * gemm.SPLAT * 3)


def test_nn_packs_b_panels_just_in_time() -> None:
    """Where nn packs B and A's panels are not splat, each full 8-wide B panel is packed into
    one panel's room just before its tiles (gemm._jit_b); the remainder is packed up front."""
    assert gemm._jit_b("nn", 20, 261, True) and not gemm._jit_b("nn", 20, 64, True)  # in place
    assert not gemm._jit_b("nn", 128, 65, False)  # splat A: every B panel packed up front
    assert gemm._jit_b("nn", 128, 65, True) and not gemm._jit_b("tn", 20, 261, True)
    # n = 20: two full panels share 8 floats a unit of depth, the 4-wide remainder has 4
    assert gemm._packed_b_floats("nn", 0, 20, 261, True) == (8 + 4) * 261
    assert gemm._packed_b_floats("nn", 0, 20, 261, False) == (16 + 4) * 261
    shapes = {"simd128": [(16, 261), (20, 300), (29, 261)],  # narrow: A never splat
              "relaxed-simd": [(128, 65), (40, 261)]}  # 128: rows in 8 L1 sets, packed at 65
    for i, (variant, nk) in enumerate(shapes.items()):
        cases = [Case("nn", n, k, extra=j % 2 == 0, accumulate=j % 2 == 1, relu=j < 2)
                 for j, (n, k) in enumerate(nk)]
        mod = _guarded_module(cases, variant)
        rng = np.random.default_rng(6 + i)
        for c in range(len(cases)):
            for m in M_VALUES:
                _run_and_check(mod, c, m, rng)


def test_tn_reads_b_in_place_up_to_a_row_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """tn without row sums chooses at run time: B's full panels in place at m ≤
    tn_b_in_place_rows(n), packed above. With the bound at 3 rows every width runs both."""
    assert gemm.tn_b_in_place_rows(128) == 32  # rows 512 bytes apart: 64 fit L1, half of them
    assert gemm.tn_b_in_place_rows(10) == gemm.IN_PLACE_DEPTH
    monkeypatch.setattr(gemm, "tn_b_in_place_rows", lambda n: 3)
    cases = [Case("tn", n, k, extra=False, accumulate=acc)
             for n, k, acc in ((8, 5, False), (13, 8, True), (34, 3, False), (128, 64, True))]
    mod = _guarded_module(cases, "simd128")
    rng = np.random.default_rng(5)
    for i in range(len(cases)):
        for m in (1, 3, 4, 33):
            _run_and_check(mod, i, m, rng)


def test_wasm_depth_loops_carry_their_addresses_and_native_ones_index():
    """The Wasm build's depth loops bump one address per operand behind an empty asm
    (gemm._walk: wasmtime then needs no zero-extending move per load); the native build
    indexes from the depth (x86 addressing modes), with kernels of their own names."""
    from fedc.native import native_ir
    from fedc.pipeline import compile_source

    src = ("model M:\n    input x: f32[64]\n    target y: class[10]\n"
           "    loss = softmax_cross_entropy(dense(relu(dense(x, 128)), 10), y)\n"
           "optimizer sgd(lr=0.1)\n")
    art = compile_source(src, "m.fed")
    walks = len(re.findall(r'call ptr asm\s+"", "=r,0"', art.llvm_ir))
    assert walks >= 2 * 5  # two operands in each product's depth loop (five products)
    native = native_ir(art)
    assert not re.search(r"asm\s", native) and ".native" in native


def _kernel_ir(kind: gemm.Kind, n: int, k: int, **kw: bool) -> dict[str, str]:
    """Each GEMM kernel's LLVM IR (by name) in a module with one emit_matmul call."""
    mod = ir.Module("t")
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [gemm.I32]), "f")
    b = ir.IRBuilder(fn.append_basic_block())
    p = b.inttoptr(ir.Constant(gemm.I32, ARENA_BASE), gemm.PTR)
    gemm.emit_matmul(b, kind=kind, m=fn.args[0], n=n, k=k, a=p, bmat=p, c=p, scratch=p, **kw)
    b.ret_void()
    return {f.name: str(f) for f in mod.functions if f.name.startswith("fedc.gemm")}


def test_long_depth_loops_run_two_steps_an_iteration():
    """gemm._paired: a static depth of PAIR_MIN_DEPTH or more, and tn's run-time depth (the
    batch), loop over pairs of steps split by a never-taken exit on an opaque counter;
    shorter static depths, and relaxed_madd's tn (which spilled paired), step one at a time.
    Odd and even depths of both forms are checked against numpy above (K 64, 65, 261; tn's
    m 0-33; relaxed-simd K 65)."""
    guard = re.compile(r'call i32 asm\s+"", "=r,0"')  # the opaque pair counter
    long = gemm.PAIR_MIN_DEPTH
    for kind, n, k in (("nn", 64, long), ("nt", long, 64), ("tn", 64, 8)):
        (text,) = _kernel_ir(kind, n, k).values()
        assert "kp.second" in text and guard.search(text), (kind, n, k)
    for kind, n, k in (("nn", 64, long - 1), ("nt", long - 1, 64)):
        (text,) = _kernel_ir(kind, n, k).values()
        assert "kp." not in text and "call ptr asm" in text, (kind, n, k)  # one step, carried
    (madd_tn,) = _kernel_ir("tn", 64, 8, madd=True).values()
    assert "kp." not in madd_tn
    (madd_nn,) = _kernel_ir("nn", 64, long, madd=True).values()
    assert "kp.second" in madd_nn
