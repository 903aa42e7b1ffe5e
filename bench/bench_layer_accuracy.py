"""Float32 error of the gelu, softmax and log_softmax Wasm kernels (and PyTorch's, if installed)
against the float64 numpy references: the numbers in docs/math.md."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
from fedc.ops import REGISTRY  # noqa: E402
from tests.op_harness import WasmKernel  # noqa: E402


def _torch(op: str, x: np.ndarray) -> np.ndarray | None:
    try:
        import torch
    except ImportError:
        return None
    t = torch.as_tensor(x)
    f = torch.nn.functional
    if op == "gelu":
        return f.gelu(t, approximate="tanh").numpy()
    return getattr(f, op)(t, dim=-1).numpy()


def _report(op: str, x: np.ndarray, label: str) -> None:
    rows = len(x)
    want = REGISTRY[op].ref([x.astype(np.float64)], {})
    results = {"fedc": WasmKernel(op, max_batch=rows)([x], rows), "torch": _torch(op, x)}
    normal = np.abs(want) > 1e-30
    for who, got in results.items():
        if got is None:
            continue
        err = np.abs(got.astype(np.float64) - want)
        rel = err[normal] / np.abs(want[normal])
        print(f"{op:12s} {label:14s} {who:6s} max abs {err.max():.3g}  max abs/max(1,|y|) "
              f"{(err / np.maximum(1, np.abs(want))).max():.3g}  max rel (|y| > 1e-30) "
              f"{rel.max():.3g}")


def main() -> None:
    rows = 150_000
    x = np.linspace(-12, 12, rows * 7).astype(np.float32).reshape(rows, 7)  # gelu's sample
    _report("gelu", x, "x in [-12, 12]")
    _report("gelu", x[np.abs(x).max(axis=1) <= 3], "x in [-3, 3]")
    z = np.random.default_rng(0).normal(0, 5, (100_000, 2, 7)).astype(np.float32)
    for op in ("softmax", "log_softmax"):
        _report(op, z, "z ~ N(0, 5²)")


if __name__ == "__main__":
    main()
