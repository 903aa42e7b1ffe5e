"""Benchmark: fedc's GEMM kernels in wasmtime vs one-thread numpy and the SIMD128 peak, GFLOP/s.

Run: python bench/bench_gemm.py [--reps 7] [--seconds 0.15]
Each measurement is one call of a module export that loops over the kernel `iters` times (so
the host's call overhead is amortised); wasm cases, numpy and the peak loop are interleaved rep by
rep, and the table shows the median with the min–max spread.
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


def _peak_function(mod: ir.Module) -> None:
    """`peak(iters, x, y)`: PEAK_CHAINS independent <4 x float> chains, half `v *= x`, half
    `v += y` (the mix a GEMM issues), results stored so nothing is optimised away."""
    from fedc.lower import gemm

    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [gemm.I32, gemm.F32, gemm.F32]),
                     "peak")
    b = ir.IRBuilder(fn.append_basic_block())
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


def _build_wasm(variant: str) -> tuple[bytes, list[tuple[str, str, tuple[int, int, int]]]]:
    """One module: `bench_<kind>_<M>(iters, m)` for every case sharing buffers, and `peak`."""
    from fedc.emit import emit
    from fedc.link import ARENA_BASE, link
    from fedc.lower import gemm

    roles = [max(4 * r * c for kind in KINDS for size in SIZES
                 for r, c in [_shapes(kind, *size)[i]]) for i in range(3)]
    roles.append(max(gemm.scratch_bytes(kind, m, n, k) for kind in KINDS for m, n, k in SIZES))
    addrs = [ARENA_BASE + sum(roles[:i]) for i in range(4)]
    mod, cases = ir.Module("bench_gemm"), []
    for kind in KINDS:
        for m, n, k in SIZES:
            name = f"bench_{kind}_{m}x{n}x{k}"
            fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [gemm.I32, gemm.I32]), name)
            b = ir.IRBuilder(fn.append_basic_block())
            p = [b.inttoptr(ir.Constant(gemm.I32, x), gemm.PTR) for x in addrs]

            def body(_: list[ir.Value], b: ir.IRBuilder = b, fn: ir.Function = fn,
                     p: list[ir.Value] = p, kind: str = kind, n: int = n, k: int = k,
                     ) -> list[ir.Value]:
                gemm.emit_matmul(b, kind=kind, m=fn.args[1], n=n, k=k,  # type: ignore[arg-type]
                                 a=p[0], bmat=p[1], c=p[2], scratch=p[3],
                                 madd=variant == "relaxed-simd")
                return []

            _loop(b, fn.args[0], [], body)
            b.ret_void()
            cases.append((name, kind, (m, n, k)))
    _peak_function(mod)
    obj = emit(str(mod), variant).object_code
    return link(obj, addrs[3] + roles[3], [c[0] for c in cases] + ["peak"]), cases


class WasmRunner:
    """The benchmark module instantiated in wasmtime; `rate(name)` measures one export."""

    def __init__(self, variant: str, seconds: float) -> None:
        import wasmtime

        wasm, self.cases = _build_wasm(variant)
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        self.exports = wasmtime.Instance(self.store, wasmtime.Module(engine, wasm), []).exports(
            self.store)
        mem = self.exports["memory"]
        buf = np.ctypeslib.as_array(mem.data_ptr(self.store), shape=(mem.data_len(self.store),))
        from fedc.link import ARENA_BASE

        arena = buf[ARENA_BASE:].view(np.uint8)
        words = arena[:len(arena) // 4 * 4].view(np.float32)
        words[:] = np.random.default_rng(0).uniform(-1, 1, words.shape)
        self.iters = {name: self._calibrate(name, seconds) for name, _, _ in self.cases}
        self.iters["peak"] = self._calibrate("peak", seconds)

    def _call(self, name: str, iters: int) -> float:
        args = (iters, 1.0, 0.0) if name == "peak" else (iters, self._m(name))
        t0 = time.perf_counter()
        self.exports[name](self.store, *args)
        return time.perf_counter() - t0

    def _m(self, name: str) -> int:
        return next(size[0] for n, _, size in self.cases if n == name)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.15, help="per measurement")
    parser.add_argument("--variant", default="simd128",
                        choices=["simd128", "scalar", "relaxed-simd"])
    parser.add_argument("--numpy-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.numpy_worker:
        _numpy_worker()
        return
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    wasm = WasmRunner(args.variant, args.seconds)
    proc, blas = _numpy_process(args.seconds)
    assert proc.stdin and proc.stdout
    ours: dict[str, list[float]] = {name: [] for name in [*wasm.iters]}
    theirs: dict[str, list[float]] = {}
    for _ in range(args.reps):  # one process runs at a time: the two may share a core
        for name in ours:
            ours[name].append(wasm.rate(name))
        proc.stdin.write("rep\n")
        proc.stdin.flush()
        for key, value in json.loads(proc.stdout.readline()).items():
            theirs.setdefault(key, []).append(value)
    proc.stdin.close()
    proc.wait()
    print(f"GFLOP/s, median (min–max) of {args.reps} interleaved reps; variant {args.variant}")
    print(f"numpy: {blas}")
    print(f"SIMD128 peak (f32x4.mul and f32x4.add chains): {_summary(ours.pop('peak'))}")
    print(f"{'kind':4} {'M×N×K':>12}  {'fedc wasm':>20}  {'numpy 1 thread':>20}")
    for name, kind, (m, n, k) in wasm.cases:
        print(f"{kind:4} {f'{m}x{n}x{k}':>12}  {_summary(ours[name]):>20}  "
              f"{_summary(theirs[f'{kind} {m}x{n}x{k}']):>20}")


if __name__ == "__main__":
    main()
