"""Adagrad with learning-rate decay: torch.optim.Adagrad as one fused update."""

from __future__ import annotations

from collections.abc import Sequence

from llvmlite import ir

from .._lazy import np
from ..lower.kernels import F32, f32c, i32c
from ..lower.scalarmath import sqrt
from .base import HParam, OptimizerDef, Scalars, nonneg, positive, register


def _prepare(b: ir.IRBuilder, h: Scalars, t: ir.Value) -> Scalars:
    """clr = lr / (1 + (t − 1)·lr_decay), torch's decayed rate for step t."""
    steps_before = b.sitofp(b.sub(t, i32c(1)), F32)
    return {"clr": b.fdiv(h["lr"], b.fadd(f32c(1.0), b.fmul(steps_before, h["lr_decay"])))}


def _update(b: ir.IRBuilder, h: Scalars, static: dict[str, float], p: ir.Value, g: ir.Value,
            state: Sequence[ir.Value]) -> tuple[ir.Value, list[ir.Value]]:
    g = b.fadd(g, b.fmul(h["weight_decay"], p))
    # the slot holds Σg² without the initial value, so a zeroed state is a fresh optimizer
    s = b.fadd(state[0], b.fmul(g, g))
    std = b.fadd(sqrt(b, b.fadd(s, h["initial_accumulator_value"])), h["eps"])
    return b.fsub(p, b.fmul(h["clr"], b.fdiv(g, std))), [s]


def _ref(p: np.ndarray, g: np.ndarray, state: list[np.ndarray], hp: dict[str, float],
         t: int) -> None:
    g = g + hp["weight_decay"] * p
    state[0] += g * g
    std = np.sqrt(state[0] + hp["initial_accumulator_value"]) + hp["eps"]
    p -= hp["lr"] / (1 + (t - 1) * hp["lr_decay"]) * (g / std)


register(OptimizerDef(
    name="adagrad",
    hparams={
        "lr": HParam(0.01, positive, "> 0"),
        "lr_decay": HParam(0.0, nonneg, ">= 0"),
        "weight_decay": HParam(0.0, nonneg, ">= 0"),
        "initial_accumulator_value": HParam(0.0, nonneg, ">= 0"),
        "eps": HParam(1e-10, positive, "> 0"),
    },
    slots=lambda hp: ("sum",),
    update=_update, ref=_ref, prepare=_prepare,
    torch="torch.optim.Adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)",
    doc="s ← s + g²; p ← p − lr/(1 + (t−1)·lr_decay) · g/(√(s + initial_accumulator_value) "
        "+ eps)",
))
