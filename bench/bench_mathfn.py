"""Benchmark and error sweep of fedc.lower.mathfn in Wasm: elements/s vs numpy, worst-case error."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

# The Wasm test module (apply_<fn>(n) over a buffer in linear memory) is built by the tests.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from test_mathfn import CAP, FNS, Kernels, ref  # noqa: E402

NUMPY32: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exp": np.exp,
    "log": np.log,
    "tanh": np.tanh,
    "sigmoid": lambda x: np.float32(1.0) / (np.float32(1.0) + np.exp(-x)),
}
BENCH_RANGE = {
    "exp": (-80.0, 80.0),
    "log": (1e-3, 1e3),
    "tanh": (-5.0, 5.0),
    "sigmoid": (-10.0, 10.0),
}
# (lo, hi, metric) ranges for --sweep, which evaluates every float32 in each; docs/math.md's table
SWEEP: dict[str, list[tuple[float, float, str]]] = {
    "exp": [(-87.0, 88.0, "rel"), (88.0, 88.72283, "rel"), (-104.0, -87.0, "rel")],
    "log": [(1e-30, 1e30, "rel"), (1e-45, 3.4028235e38, "rel")],
    "tanh": [(-20.0, 20.0, "abs")],
    "sigmoid": [(-20.0, 20.0, "abs"), (-104.0, -20.0, "abs")],
}


def best_of(f: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(repeat: int) -> None:
    """Melem/s of apply_<fn> in the simd128 and scalar builds, and of numpy on float32."""
    n = CAP
    builds = {"simd128": Kernels("simd128"), "scalar": Kernels("scalar")}
    print(f"{'fn':8} {'wasm simd128':>14} {'wasm scalar':>14} {'numpy f32':>14}   (Melem/s, n={n})")
    for fn in FNS:
        x = np.linspace(*BENCH_RANGE[fn], n, dtype=np.float32)
        rates = []
        for k in builds.values():
            k.src[:n] = x
            t = best_of(partial(k.funcs[f"apply_{fn}"], k.store, n), repeat)
            rates.append(n / t / 1e6)
        with np.errstate(all="ignore"):
            rates.append(n / best_of(partial(NUMPY32[fn], x), repeat) / 1e6)
        print(f"{fn:8}" + "".join(f" {r:14.0f}" for r in rates))


def float_bits(lo: float, hi: float) -> tuple[int, int]:
    a, b = np.array([lo, hi], dtype=np.float32).view(np.int32).tolist()
    return a, b


def sweep(k: Kernels, fn: str, lo: float, hi: float, metric: str) -> None:
    """Every float32 in [lo, hi], in chunks; prints the worst relative/absolute and ULP error."""
    np.seterr(all="ignore")  # r == 0 (x = 0 or 1) gives 0/0; those points use the absolute error
    # ordered runs of bit patterns: the negative half (if any) then the non-negative half
    runs = []
    if lo < 0:
        runs.append(float_bits(-0.0, lo) if hi >= 0 else float_bits(hi, lo))
    if hi >= 0:
        runs.append(float_bits(max(lo, 0.0), hi))
    worst = {"err": (0.0, 0.0), "ulp": (0.0, 0.0)}
    for a, b in runs:
        for start in range(min(a, b), max(a, b) + 1, CAP):
            bits = np.arange(start, min(start + CAP, max(a, b) + 1), dtype=np.int64)
            x = bits.astype(np.int32).view(np.float32)
            y = k.call(fn, x).astype(np.float64)
            r = ref(fn, x)
            d = np.abs(y - r)
            err = d / np.abs(r) if metric == "rel" else d
            err = np.where(r == 0, d, err)
            ulp = d / np.spacing(np.abs(r).astype(np.float32)).astype(np.float64)
            for name, e in (("err", err), ("ulp", ulp)):
                i = int(np.argmax(e))
                if e[i] > worst[name][0]:
                    worst[name] = (float(e[i]), float(x[i]))
    (e, xe), (u, xu) = worst["err"], worst["ulp"]
    print(
        f"{fn:8} [{lo:g}, {hi:g}]  max {metric} err {e:.3g} at x={xe:.9g}"
        f"   max ULP {u:.3g} at x={xu:.9g}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--sweep",
        nargs="*",
        metavar="FN",
        help="exhaustive error sweep (all functions if none named; minutes each)",
    )
    args = ap.parse_args()
    if args.sweep is None:
        bench(args.repeat)
    else:
        k = Kernels("simd128")
        for fn in args.sweep or list(FNS):
            for lo, hi, metric in SWEEP[fn]:
                sweep(k, fn, lo, hi, metric)


if __name__ == "__main__":
    main()
