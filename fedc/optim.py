"""Optimizers: hyper-parameters, state, numpy reference and the fused update lowering."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
import numpy as np
from llvmlite import ir

from .lower.kernels import emit_zip, splat


@dataclass(frozen=True)
class HParam:
    default: float | None  # None: required
    check: Callable[[float], bool]
    rule: str  # what `check` requires, for the error message
    structural: bool = False  # changes the code or the state layout: fixed at compile time


@dataclass(frozen=True)
class OptimizerDef:
    """An optimizer: its hyper-parameters, state slots per parameter, reference and lowering.

    ref(p, g, state, hp) updates p and state in place (numpy);
    lower(b, hp, static, p, g, state, count) emits one fused pass over the contiguous regions;
    `hp` holds the run-time hyper-parameters (loaded from the hparams buffer, so a host may
    change them between steps) and `static` the structural ones, fixed at compile time.
    """

    name: str
    hparams: dict[str, HParam]
    state_slots: Callable[[dict[str, float]], int]
    ref: Callable[[np.ndarray, np.ndarray, list[np.ndarray], dict[str, float]], None]
    lower: Callable[[ir.IRBuilder, dict[str, ir.Value], dict[str, float], ir.Value, ir.Value,
                     Sequence[ir.Value], ir.Value], None]
    doc: str = ""


OPTIMIZERS: dict[str, OptimizerDef] = {}


def register(opt: OptimizerDef) -> None:
    OPTIMIZERS[opt.name] = opt


# --- SGD with momentum, Nesterov and weight decay (PyTorch's torch.optim.SGD semantics) ----

def _sgd_ref(p: np.ndarray, g: np.ndarray, state: list[np.ndarray], hp: dict[str, float]) -> None:
    d = g + hp["weight_decay"] * p
    if state:
        v = state[0]
        v *= hp["momentum"]
        v += d
        d = d + hp["momentum"] * v if hp["nesterov"] else v
    p -= hp["lr"] * d


def _sgd_lower(b: ir.IRBuilder, hp: dict[str, ir.Value], static: dict[str, float],
               p: ir.Value, g: ir.Value, state: Sequence[ir.Value], count: ir.Value) -> None:
    nesterov = bool(static["nesterov"])

    def update(bb: ir.IRBuilder, vals: Sequence[ir.Value]) -> list[ir.Value]:
        vec = isinstance(vals[0].type, ir.VectorType)
        h = {k: (splat(bb, v) if vec else v) for k, v in hp.items()}
        pv, gv = vals[0], vals[1]
        d = bb.fadd(gv, bb.fmul(h["weight_decay"], pv))
        if not state:
            return [bb.fsub(pv, bb.fmul(h["lr"], d))]
        v = bb.fadd(bb.fmul(h["momentum"], vals[2]), d)
        step = bb.fadd(d, bb.fmul(h["momentum"], v)) if nesterov else v
        return [bb.fsub(pv, bb.fmul(h["lr"], step)), v]

    emit_zip(b, count, update, [p, g, *state], [p, *state])


register(OptimizerDef(
    name="sgd",
    hparams={
        "lr": HParam(None, lambda v: v > 0, "> 0"),
        "momentum": HParam(0.0, lambda v: 0 <= v < 1, "in [0, 1)"),
        "weight_decay": HParam(0.0, lambda v: v >= 0, ">= 0"),
        "nesterov": HParam(0.0, lambda v: v in (0.0, 1.0), "true or false", structural=True),
    },
    state_slots=lambda hp: 1 if hp["momentum"] > 0 else 0,
    ref=_sgd_ref,
    lower=_sgd_lower,
    doc="p ← p − lr·v, v ← momentum·v + (g + weight_decay·p)  (PyTorch SGD, dampening 0)",
))

