"""Adam and AdamW (optionally AMSGrad): torch.optim.Adam / AdamW as one fused update."""

from __future__ import annotations

from collections.abc import Sequence

from llvmlite import ir

from .._lazy import np
from ..lower.kernels import f32c
from ..lower.scalarmath import F64, fmax, powi, sqrt, to_f32, to_f64
from .base import (
    ElementUpdate,
    HParam,
    OptimizerDef,
    RefUpdate,
    Scalars,
    boolean,
    nonneg,
    positive,
    register,
    unit,
)


def _hparams(weight_decay: float) -> dict[str, HParam]:
    return {
        "lr": HParam(0.001, positive, "> 0"),
        "beta1": HParam(0.9, unit, "in [0, 1)"),
        "beta2": HParam(0.999, unit, "in [0, 1)"),
        "eps": HParam(1e-8, positive, "> 0"),
        "weight_decay": HParam(weight_decay, nonneg, ">= 0"),
        "amsgrad": HParam(0.0, boolean, "true or false", structural=True),
    }


def _slots(hp: dict[str, float]) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if hp["amsgrad"] else \
        ("exp_avg", "exp_avg_sq")


def _prepare(b: ir.IRBuilder, h: Scalars, t: ir.Value) -> Scalars:
    """Bias corrections from the step number, in double as torch computes them (Python floats)."""
    one, one_d = f32c(1.0), ir.Constant(F64, 1.0)
    lr = to_f64(b, h["lr"])
    bc1 = b.fsub(one_d, powi(b, to_f64(b, h["beta1"]), t))
    bc2 = b.fsub(one_d, powi(b, to_f64(b, h["beta2"]), t))
    decay = b.fsub(one_d, b.fmul(lr, to_f64(b, h["weight_decay"])))
    return {"step_size": to_f32(b, b.fdiv(lr, bc1)), "bc2_sqrt": to_f32(b, sqrt(b, bc2)),
            "one_minus_beta1": b.fsub(one, h["beta1"]),
            "one_minus_beta2": b.fsub(one, h["beta2"]),
            "decay": to_f32(b, decay)}


def _element(decoupled: bool) -> ElementUpdate:
    def update(b: ir.IRBuilder, h: Scalars, static: dict[str, float], p: ir.Value, g: ir.Value,
               state: Sequence[ir.Value]) -> tuple[ir.Value, list[ir.Value]]:
        if decoupled:
            p = b.fmul(p, h["decay"])  # AdamW: p·(1 − lr·weight_decay) before the step
        else:
            g = b.fadd(g, b.fmul(h["weight_decay"], p))
        m = b.fadd(state[0], b.fmul(h["one_minus_beta1"], b.fsub(g, state[0])))  # lerp
        v = b.fadd(b.fmul(state[1], h["beta2"]), b.fmul(b.fmul(h["one_minus_beta2"], g), g))
        out = [m, v]
        if static["amsgrad"]:
            v = fmax(b, state[2], v)
            out.append(v)
        denom = b.fadd(b.fdiv(sqrt(b, v), h["bc2_sqrt"]), h["eps"])
        return b.fsub(p, b.fmul(h["step_size"], b.fdiv(m, denom))), out

    return update


def _reference(decoupled: bool) -> RefUpdate:
    def ref(p: np.ndarray, g: np.ndarray, state: list[np.ndarray], hp: dict[str, float],
            t: int) -> None:
        lr, b1, b2, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"]
        if decoupled:
            p *= 1 - lr * wd
        else:
            g = g + wd * p
        m, v = state[0], state[1]
        m += (1 - b1) * (g - m)
        v *= b2
        v += (1 - b2) * g * g
        if hp["amsgrad"]:
            np.maximum(state[2], v, out=state[2])
            v = state[2]
        denom = np.sqrt(v) / np.sqrt(1 - b2 ** t) + hp["eps"]
        p -= lr / (1 - b1 ** t) * (m / denom)

    return ref


_DOC = ("m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; p ← p − lr/(1−β1^t) · m / "
        "(√v/√(1−β2^t) + eps)")

register(OptimizerDef(
    name="adam", hparams=_hparams(0.0), slots=_slots, update=_element(False),
    ref=_reference(False), prepare=_prepare,
    torch="torch.optim.Adam(lr, betas=(beta1, beta2), eps, weight_decay, amsgrad)",
    doc=_DOC + "; weight_decay adds weight_decay·p to g (L2)",
))

register(OptimizerDef(
    name="adamw", hparams=_hparams(0.01), slots=_slots, update=_element(True),
    ref=_reference(True), prepare=_prepare,
    torch="torch.optim.AdamW(lr, betas=(beta1, beta2), eps, weight_decay, amsgrad)",
    doc=_DOC + "; weight_decay is decoupled: p ← p·(1 − lr·weight_decay) first",
))
