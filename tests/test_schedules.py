"""In-module learning-rate schedules and their scalar math, compiled to Wasm, against float64."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import wasmtime
from llvmlite import ir

from fedc.emit import emit
from fedc.link import ARENA_BASE, link
from fedc.lower.kernels import F32, I32, f32c
from fedc.lower.scalarmath import cos_pi_ratio, powi, to_f32, to_f64
from fedc.optim.schedules import lower_scheduled_lr, scheduled_lr_ref


def _export(ty: ir.FunctionType, body: Callable[[ir.IRBuilder, list[ir.Value]], ir.Value]
            ) -> Callable[..., float]:
    """One exported function `f` built by body(builder, args), linked and instantiated."""
    mod = ir.Module(name="t")
    mod.triple = "wasm32-unknown-unknown"
    fn = ir.Function(mod, ty, "f")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(body(b, list(fn.args)))
    wasm = link(emit(str(mod)).object_code, ARENA_BASE, ["f"])
    store = wasmtime.Store()
    f = wasmtime.Instance(store, wasmtime.Module(store.engine, wasm), []).exports(store)["f"]
    return lambda *a: f(store, *a)


@pytest.mark.parametrize("d", [1, 2, 3, 7, 64, 1000, 2 * 12345])
def test_cos_pi_ratio_is_accurate_relative_to_the_angle(d: int) -> None:
    f = _export(ir.FunctionType(F32, [I32]), lambda b, a: cos_pi_ratio(b, a[0], d))
    rs = np.unique(np.linspace(0, d, min(d + 1, 2001)).astype(np.int64))
    got = np.array([f(int(r)) for r in rs])
    want = np.cos(np.pi * rs / d)
    # 2 ulp of the value, and close to a zero (r ≈ d/2) still relative: the angle is exact
    assert np.all(np.abs(got - want) <= 2.4e-7 * np.maximum(np.abs(want), 2 ** -3)), \
        np.abs(got - want).max()
    assert f(0) == 1.0 and f(d) == -1.0


@pytest.mark.parametrize("base", [0.9, 0.999, 0.5, 1.0])
def test_powi_in_double_matches_numpy_power(base: float) -> None:
    def body(b: ir.IRBuilder, a: list[ir.Value]) -> ir.Value:
        return to_f32(b, powi(b, to_f64(b, a[0]), a[1]))

    f = _export(ir.FunctionType(F32, [F32, I32]), body)
    for n in (0, 1, 2, 3, 7, 100, 1000, 12345, 2 ** 24):
        want = np.float64(np.float32(base)) ** n
        assert f(float(np.float32(base)), n) == pytest.approx(want, rel=1.2e-7, abs=1e-37)


SCHEDULES = [
    ("constant", {}, 0),
    ("constant", {}, 7),
    ("step", {"step_size": 30.0, "gamma": 0.5}, 0),
    ("step", {"step_size": 4.0, "gamma": 0.9}, 10),
    ("cosine", {"t_max": 1000.0, "eta_min": 0.001}, 0),
    ("cosine", {"t_max": 37.0, "eta_min": 0.0}, 100),
]


@pytest.mark.parametrize("kind,args,warmup", SCHEDULES)
def test_scheduled_lr_matches_float64_reference(kind: str, args: dict[str, float],
                                                warmup: int) -> None:
    lr = 0.1

    def body(b: ir.IRBuilder, a: list[ir.Value]) -> ir.Value:
        runtime = {k: f32c(v) for k, v in args.items()}
        return lower_scheduled_lr(b, kind, args, warmup, f32c(lr), a[0], runtime)

    f = _export(ir.FunctionType(F32, [I32]), body)
    f32_args = {k: float(np.float32(v)) for k, v in args.items()}
    ks = list(range(0, 3000, 7)) + [warmup - 1, warmup, warmup + 1, 2 ** 24]
    for k in (k for k in ks if k >= 0):
        # the module holds lr and the float parameters as float32: so does the reference
        want = scheduled_lr_ref(kind, f32_args, warmup, float(np.float32(lr)), k)
        assert f(k) == pytest.approx(want, rel=1e-6, abs=1e-9), f"step {k}"
