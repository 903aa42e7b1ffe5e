"""RMSprop (optionally centered, with momentum): torch.optim.RMSprop as one fused update."""

from __future__ import annotations

from collections.abc import Sequence

from llvmlite import ir

from .._lazy import np
from ..lower.kernels import f32c
from ..lower.scalarmath import sqrt
from .base import HParam, OptimizerDef, Scalars, boolean, nonneg, positive, register, unit


def _slots(hp: dict[str, float]) -> tuple[str, ...]:
    return (("square_avg",) + (("momentum_buffer",) if hp["momentum"] > 0 else ())
            + (("grad_avg",) if hp["centered"] else ()))


def _prepare(b: ir.IRBuilder, h: Scalars, t: ir.Value) -> Scalars:
    return {"one_minus_alpha": b.fsub(f32c(1.0), h["alpha"])}


def _update(b: ir.IRBuilder, h: Scalars, static: dict[str, float], p: ir.Value, g: ir.Value,
            state: Sequence[ir.Value]) -> tuple[ir.Value, list[ir.Value]]:
    g = b.fadd(g, b.fmul(h["weight_decay"], p))
    sq = b.fadd(b.fmul(state[0], h["alpha"]), b.fmul(b.fmul(h["one_minus_alpha"], g), g))
    out = [sq]
    # the momentum buffer exists iff compiled with momentum > 0 (its value stays run-time)
    momentum = len(state) > 1 + int(static["centered"])
    if static["centered"]:
        ga_old = state[2 if momentum else 1]
        ga = b.fadd(ga_old, b.fmul(h["one_minus_alpha"], b.fsub(g, ga_old)))  # lerp
        avg = sqrt(b, b.fsub(sq, b.fmul(ga, ga)))
    else:
        avg = sqrt(b, sq)
    avg = b.fadd(avg, h["eps"])
    if momentum:
        buf = b.fadd(b.fmul(state[1], h["momentum"]), b.fdiv(g, avg))
        out.append(buf)
        p = b.fsub(p, b.fmul(h["lr"], buf))
    else:
        p = b.fsub(p, b.fmul(h["lr"], b.fdiv(g, avg)))
    if static["centered"]:
        out.append(ga)
    return p, out


def _ref(p: np.ndarray, g: np.ndarray, state: list[np.ndarray], hp: dict[str, float],
         t: int) -> None:
    g = g + hp["weight_decay"] * p
    sq = state[0]
    sq *= hp["alpha"]
    sq += (1 - hp["alpha"]) * g * g
    momentum = len(state) > 1 + int(hp["centered"])
    if hp["centered"]:
        ga = state[-1]
        ga += (1 - hp["alpha"]) * (g - ga)
        avg = np.sqrt(sq - ga * ga) + hp["eps"]
    else:
        avg = np.sqrt(sq) + hp["eps"]
    if momentum:
        buf = state[1]
        buf *= hp["momentum"]
        buf += g / avg
        p -= hp["lr"] * buf
    else:
        p -= hp["lr"] * g / avg


register(OptimizerDef(
    name="rmsprop",
    hparams={
        "lr": HParam(0.01, positive, "> 0"),
        "alpha": HParam(0.99, unit, "in [0, 1)"),
        "eps": HParam(1e-8, positive, "> 0"),
        "weight_decay": HParam(0.0, nonneg, ">= 0"),
        "momentum": HParam(0.0, unit, "in [0, 1)"),
        "centered": HParam(0.0, boolean, "true or false", structural=True),
    },
    slots=_slots, update=_update, ref=_ref, prepare=_prepare,
    torch="torch.optim.RMSprop(lr, alpha, eps, weight_decay, momentum, centered)",
    doc="s ← α·s + (1−α)·g²; p ← p − lr·g/(√s + eps); centered subtracts the squared mean "
        "gradient from s; momentum accumulates g/(√s + eps) in a buffer",
))
