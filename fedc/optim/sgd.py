"""SGD with momentum, Nesterov and weight decay: torch.optim.SGD (dampening 0) as a fused update."""

from __future__ import annotations

from collections.abc import Sequence

from llvmlite import ir

from .._lazy import np
from .base import HParam, OptimizerDef, Scalars, boolean, nonneg, positive, register, unit


def _ref(p: np.ndarray, g: np.ndarray, state: list[np.ndarray], hp: dict[str, float],
         t: int) -> None:
    d = g + hp["weight_decay"] * p
    if state:
        v = state[0]
        v *= hp["momentum"]
        v += d
        d = d + hp["momentum"] * v if hp["nesterov"] else v
    p -= hp["lr"] * d


def _update(b: ir.IRBuilder, h: Scalars, static: dict[str, float], p: ir.Value, g: ir.Value,
            state: Sequence[ir.Value]) -> tuple[ir.Value, list[ir.Value]]:
    d = b.fadd(g, b.fmul(h["weight_decay"], p))
    if not state:
        return b.fsub(p, b.fmul(h["lr"], d)), []
    # torch's first step sets the buffer to d; from a zero buffer momentum·0 + d is the same
    v = b.fadd(b.fmul(h["momentum"], state[0]), d)
    step = b.fadd(d, b.fmul(h["momentum"], v)) if static["nesterov"] else v
    return b.fsub(p, b.fmul(h["lr"], step)), [v]


def _validate(hp: dict[str, float]) -> list[tuple[str, str]]:
    if hp["nesterov"] and hp["momentum"] <= 0:
        return [("nesterov", "nesterov=true needs momentum > 0 (e.g. momentum=0.9)")]
    return []


register(OptimizerDef(
    name="sgd",
    hparams={
        "lr": HParam(None, positive, "> 0"),
        "momentum": HParam(0.0, unit, "in [0, 1)"),
        "weight_decay": HParam(0.0, nonneg, ">= 0"),
        "nesterov": HParam(0.0, boolean, "true or false", structural=True),
    },
    # the momentum buffer exists only when compiled with momentum > 0
    slots=lambda hp: ("momentum_buffer",) if hp["momentum"] > 0 else (),
    update=_update,
    ref=_ref,
    validate=_validate,
    torch="torch.optim.SGD(lr, momentum, weight_decay=weight_decay, nesterov=nesterov)",
    doc="v ← momentum·v + (g + weight_decay·p); p ← p − lr·v (Nesterov: p ← p − lr·(d + "
        "momentum·v))",
))
