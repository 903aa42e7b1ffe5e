"""Benchmark: fedc's GEMM kernels in wasmtime vs one-thread numpy and the SIMD128 peak, GFLOP/s.

Run: python bench/bench_gemm.py [--reps 7] [--seconds 0.15] [--runners wasm simd128,native]
Each measurement is one call of a module export that loops over the kernel `iters` times (so
the host's call overhead is amortised). The Wasm builds (simd128, relaxed-simd), the same IR
compiled natively for the host CPU (MCJIT), numpy and the peak loop are interleaved rep by rep,
and the table shows the median with the min–max spread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
from llvmlite import ir

SIZES = ((32, 128, 64), (128, 128, 128), (256, 256, 256), (512, 512, 512))  # M, N, K
KINDS = ("nn", "nt", "tn")
PEAK_CHAINS = 12


def _shapes(kind: str, m: int, n: int, k: int) -> list[tuple[int, int]]:
    return {"nn": [(m, k), (k, n), (m, n)], "nt": [(m, n), (k, n), (m, k)],
            "tn": [(m, k), (m, n), (k, n)]}[kind]


def _numpy_case(kind: str, m: int, n: int, k: int) -> Callable[[], None]:
    rng = np.random.default_rng(0)
    a, b, c = (rng.uniform(-1, 1, s).astype(np.float32) for s in _shapes(kind, m, n, k))
    if kind == "nn":
        return lambda: np.matmul(a, b, out=c)
    if kind == "nt":
        return lambda: np.matmul(a, b.T, out=c)
    return lambda: np.matmul(a.T, b, out=c)


def _numpy_worker() -> None:
    """Child process (OPENBLAS_CORETYPE unset by the parent): one line of rates per 'rep'."""
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(1)
    cases = [(kind, size, _numpy_case(kind, *size)) for size in SIZES for kind in KINDS]
    blas = [{k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for p in threadpool_info()]
    print(json.dumps(blas), flush=True)
    seconds = float(sys.stdin.readline())
    for _ in sys.stdin:
        rates = {}
        for kind, (m, n, k), fn in cases:
            fn()
            reps, t0 = 0, time.perf_counter()
            while (dt := time.perf_counter() - t0) < seconds:
                fn()
                reps += 1
            rates[f"{kind} {m}x{n}x{k}"] = 2 * m * n * k * reps / dt / 1e9
        print(json.dumps(rates), flush=True)


def _loop(b: ir.IRBuilder, count: ir.Value, carried: list[ir.Value],
          body: Callable[[list[ir.Value]], list[ir.Value]]) -> list[ir.Value]:
    """Run body `count` times (count ≥ 1) threading `carried` through it."""
    from fedc.lower.gemm import I32

    pre, loop, done = b.block, b.append_basic_block("loop"), b.append_basic_block("done")
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(I32)
    phis = [b.phi(v.type) for v in carried]
    new = body(list(phis))
    nxt = b.add(i, ir.Constant(I32, 1))
    for phi, v0, v1 in zip([i, *phis], [ir.Constant(I32, 0), *carried], [nxt, *new],
                           strict=True):
        phi.add_incoming(v0, pre)
        phi.add_incoming(v1, b.block)
    b.cbranch(b.icmp_signed("<", nxt, count), loop, done)
    b.position_at_end(done)
    return new


def _peak_function(mod: ir.Module, builder: type[ir.IRBuilder] = ir.IRBuilder) -> None:
    """`peak(iters, x, y)`: PEAK_CHAINS independent <4 x float> chains, half `v *= x`, half
    `v += y` (the mix a GEMM issues), results stored so nothing is optimised away."""
    from fedc.lower import gemm

    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [gemm.I32, gemm.F32, gemm.F32]),
                     "peak")
    b = builder(fn.append_basic_block())
    splat = ir.Constant(ir.VectorType(gemm.I32, 4), [0] * 4)
    x, y = (b.shuffle_vector(v, v, splat) for v in (
        b.insert_element(gemm.ZERO4, arg, ir.Constant(gemm.I32, 0)) for arg in fn.args[1:]))
    init = [b.fadd(y, ir.Constant(gemm.V4, [float(i)] * 4)) for i in range(PEAK_CHAINS)]
    acc = _loop(b, fn.args[0], init,
                lambda vs: [b.fmul(v, x) if i % 2 else b.fadd(v, y) for i, v in enumerate(vs)])
    total = acc[0]
    for v in acc[1:]:
        total = b.fadd(total, v)
    b.store(total, b.inttoptr(ir.Constant(gemm.I32, 16 * 1024), gemm.PTR), align=16)
    b.ret_void()


Cases = list[tuple[str, str, tuple[int, int, int]]]


def build_module(madd: bool = False, native: bool = False
                 ) -> tuple[ir.Module, Cases, list[int]]:
    """One module: `bench_<kind>_<M>(iters, m)` for every case sharing buffers, and `peak`;
    with the byte addresses of A, B, C and scratch and the arena's end (5 numbers). `native`
    addresses memory through @fedc_base (fedc/lower/address)."""
    from fedc.link import ARENA_BASE
    from fedc.lower import gemm
    from fedc.lower.address import builder_class

    builder = builder_class(frozenset({"native"} if native else ()))
    roles = [max(4 * r * c for kind in KINDS for size in SIZES
                 for r, c in [_shapes(kind, *size)[i]]) for i in range(3)]
    roles.append(max(gemm.scratch_bytes(kind, m, n, k) for kind in KINDS for m, n, k in SIZES))
    addrs = [ARENA_BASE + sum(roles[:i]) for i in range(4)]
    mod, cases = ir.Module("bench_gemm"), []
    for kind in KINDS:
        for m, n, k in SIZES:
            name = f"bench_{kind}_{m}x{n}x{k}"
            fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [gemm.I32, gemm.I32]), name)
            b = builder(fn.append_basic_block())
            p = [b.inttoptr(ir.Constant(gemm.I32, x), gemm.PTR) for x in addrs]

            def body(_: list[ir.Value], b: ir.IRBuilder = b, fn: ir.Function = fn,
                     p: list[ir.Value] = p, kind: str = kind, n: int = n, k: int = k,
                     ) -> list[ir.Value]:
                gemm.emit_matmul(b, kind=kind, m=fn.args[1], n=n, k=k,  # type: ignore[arg-type]
                                 a=p[0], bmat=p[1], c=p[2], scratch=p[3], madd=madd)
                return []

            _loop(b, fn.args[0], [], body)
            b.ret_void()
            cases.append((name, kind, (m, n, k)))
    _peak_function(mod, builder)
    return mod, cases, [*addrs, addrs[3] + roles[3]]


def _build_wasm(variant: str) -> tuple[bytes, Cases, list[int]]:
    from fedc.emit import emit
    from fedc.link import link

    mod, cases, addrs = build_module(madd=variant == "relaxed-simd")
    obj = emit(str(mod), variant).object_code
    return link(obj, addrs[-1], [c[0] for c in cases] + ["peak"]), cases, addrs


class _Runner:
    """Calibrated calls of the benchmark exports; subclasses provide `_invoke`."""

    cases: Cases
    iters: dict[str, int]

    def _invoke(self, name: str, iters: int, m: int) -> None:
        raise NotImplementedError

    def _verify_all(self, buf: np.ndarray, addrs: list[int]) -> None:
        """Each case once against numpy on the random operands, before anything is timed: a
        kernel that skipped work would otherwise show as an impossible rate."""
        for name, kind, size in self.cases:
            a, bm, c = (buf[at:at + 4 * r * k].view(np.float32).reshape(r, k)
                        for at, (r, k) in zip(addrs[:3], _shapes(kind, *size), strict=True))
            c[...] = np.nan
            self._invoke(name, 1, size[0])
            a64, b64 = a.astype(np.float64), bm.astype(np.float64)
            want = a64 @ b64 if kind == "nn" else a64 @ b64.T if kind == "nt" else a64.T @ b64
            if not np.allclose(c, want, rtol=1e-4, atol=1e-3 * max(1.0, float(np.abs(want).max()))):
                raise SystemExit(f"bench_gemm: {name} computed a wrong product "
                                 f"(max error {np.nanmax(np.abs(c - want))})")

    def _calibrate_all(self, seconds: float) -> None:
        self.iters = {name: self._calibrate(name, seconds) for name, _, _ in self.cases}
        self.iters["peak"] = self._calibrate("peak", seconds)

    def _call(self, name: str, iters: int) -> float:
        m = 0 if name == "peak" else next(size[0] for n, _, size in self.cases if n == name)
        t0 = time.perf_counter()
        self._invoke(name, iters, m)
        return time.perf_counter() - t0

    def _calibrate(self, name: str, seconds: float) -> int:
        iters = 1
        while (dt := self._call(name, iters)) < seconds / 8:
            iters *= 2
        return max(1, int(iters * seconds / dt))

    def rate(self, name: str) -> float:
        iters = self.iters[name]
        dt = self._call(name, iters)
        if name == "peak":
            return PEAK_CHAINS * 4 * iters / dt / 1e9
        m, n, k = next(size for nm, _, size in self.cases if nm == name)
        return 2 * m * n * k * iters / dt / 1e9


def _random_fill(buf: np.ndarray, start: int, end: int) -> None:
    """Random operands in the arena [start, end) only: the module's own data (after the arena:
    the trip counts the kernels read, fedc/lower/kernels.py opaque_count) must stay intact."""
    arena = buf[start:end].view(np.uint8)
    words = arena[:len(arena) // 4 * 4].view(np.float32)
    words[:] = np.random.default_rng(0).uniform(-1, 1, words.shape)


class NativeRunner(_Runner):
    """The same IR compiled for the host CPU (llvmlite MCJIT), memory in a numpy buffer."""

    def __init__(self, seconds: float) -> None:
        import ctypes

        import llvmlite.binding as llvm

        from fedc.emit import optimize
        from fedc.link import ARENA_BASE, memory_size
        from fedc.lower.address import BASE_GLOBAL
        from fedc.native import ALIGN, host_target_machine

        mod, self.cases, addrs = build_module(native=True)
        end = addrs[-1]
        tm = host_target_machine()
        self.engine = llvm.create_mcjit_compiler(optimize(str(mod), tm), tm)
        self.engine.finalize_object()
        size = memory_size(end)
        raw = np.zeros(size + ALIGN, np.uint8)
        self.buf = raw[-raw.ctypes.data % ALIGN:][:size]
        ctypes.c_void_p.from_address(
            self.engine.get_global_value_address(BASE_GLOBAL)).value = self.buf.ctypes.data
        _random_fill(self.buf, ARENA_BASE, end)
        proto = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_int32)
        peak = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_float, ctypes.c_float)
        self.fns = {name: proto(self.engine.get_function_address(name))
                    for name, _, _ in self.cases}
        self.fns["peak"] = peak(self.engine.get_function_address("peak"))
        self._verify_all(self.buf, addrs)
        self._calibrate_all(seconds)

    def _invoke(self, name: str, iters: int, m: int) -> None:
        if name == "peak":
            self.fns[name](iters, 1.0, 0.0)
        else:
            self.fns[name](iters, m)


class WasmRunner(_Runner):
    """The benchmark module of one build variant instantiated in wasmtime."""

    def __init__(self, variant: str, seconds: float) -> None:
        import wasmtime

        from fedc.link import ARENA_BASE

        wasm, self.cases, addrs = _build_wasm(variant)
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        self.exports = wasmtime.Instance(self.store, wasmtime.Module(engine, wasm), []).exports(
            self.store)
        mem = self.exports["memory"]
        buf = np.ctypeslib.as_array(mem.data_ptr(self.store), shape=(mem.data_len(self.store),))
        _random_fill(buf, ARENA_BASE, addrs[-1])
        self._verify_all(buf, addrs)
        self._calibrate_all(seconds)

    def _invoke(self, name: str, iters: int, m: int) -> None:
        args = (iters, 1.0, 0.0) if name == "peak" else (iters, m)
        self.exports[name](self.store, *args)


def _numpy_process(seconds: float) -> tuple[subprocess.Popen[str], list[dict[str, object]]]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, __file__, "--numpy-worker"], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin and proc.stdout
    blas = json.loads(proc.stdout.readline())
    proc.stdin.write(f"{seconds}\n")
    return proc, blas


def _summary(rates: list[float]) -> str:
    return f"{np.median(rates):6.1f} ({min(rates):5.1f}–{max(rates):5.1f})"


RUNNERS = ("wasm simd128", "wasm relaxed-simd", "native")


def run(reps: int, seconds: float, runners: tuple[str, ...] = RUNNERS
        ) -> tuple[Cases, dict[str, dict[str, list[float]]], list[dict[str, object]]]:
    """GFLOP/s per runner ("numpy" added) and case name ("peak" too), one entry per rep."""
    ours: dict[str, _Runner] = {
        name: NativeRunner(seconds) if name == "native" else
        WasmRunner(name.removeprefix("wasm "), seconds) for name in runners}
    proc, blas = _numpy_process(seconds)
    assert proc.stdin and proc.stdout
    cases = next(iter(ours.values())).cases
    rates: dict[str, dict[str, list[float]]] = {r: {} for r in [*ours, "numpy"]}
    for _ in range(reps):  # one measurement at a time: the runners may share a core
        for name, _, _ in [*cases, ("peak", "", (0, 0, 0))]:
            for r, runner in ours.items():
                rates[r].setdefault(name, []).append(runner.rate(name))
        proc.stdin.write("rep\n")
        proc.stdin.flush()
        for key, value in json.loads(proc.stdout.readline()).items():
            kind, size = key.split()
            rates["numpy"].setdefault(f"bench_{kind}_{size}", []).append(value)
    proc.stdin.close()
    proc.wait()
    return cases, rates, blas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.15, help="per measurement")
    parser.add_argument("--runners", default=",".join(RUNNERS),
                        help=f"comma-separated subset of {', '.join(RUNNERS)}")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--numpy-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.numpy_worker:
        _numpy_worker()
        return
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    runners = tuple(args.runners.split(","))
    cases, rates, blas = run(args.reps, args.seconds, runners)
    if args.json:
        print(json.dumps({"cases": cases, "rates": rates, "blas": blas}))
        return
    print(f"GFLOP/s, median (min–max) of {args.reps} interleaved reps")
    print(f"numpy: {blas}")
    cols = [*runners, "numpy"]
    print(f"{'kind':4} {'M×N×K':>12}  " + "  ".join(f"{c:>20}" for c in cols))
    for name, kind, (m, n, k) in [*cases, ("peak", "peak", (0, 0, 0))]:
        label = "SIMD128 mul+add peak" if name == "peak" else f"{kind:4} {f'{m}x{n}x{k}':>12}"
        print(f"{label:17}  " + "  ".join(
            f"{_summary(rates[c][name]) if name in rates[c] else '':>20}" for c in cols))


if __name__ == "__main__":
    main()
