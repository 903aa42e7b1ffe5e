"""Learning-rate schedules computed in train_step from the step counter (torch's lr_scheduler)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from llvmlite import ir

from ..lower.kernels import F32, f32c, i32c
from ..lower.scalarmath import cos_pi_ratio, powi, to_f32, to_f64
from .base import Scalars

MAX_STEPS = 1 << 24  # integer settings stay exact as float32 and 2·t_max fits an i32


@dataclass(frozen=True)
class ScheduleParam:
    default: float | None  # None: required
    integer: bool  # integers (step counts) are compile-time; floats are run-time hparams
    check: Callable[[float], bool]
    rule: str


@dataclass(frozen=True)
class ScheduleDef:
    """lr_k for the k-th step (k = steps completed since the reset, 0-based).

    ref(lr, k, args) in float64; lower(b, lr, k, runtime, static) → float32 lr_k, where k is
    an i32, `runtime` the float parameters loaded from the hparams buffer and `static` the
    integer ones.
    """

    name: str
    params: dict[str, ScheduleParam]
    ref: Callable[[float, int, dict[str, float]], float]
    lower: Callable[[ir.IRBuilder, ir.Value, ir.Value, Scalars, dict[str, float]], ir.Value]
    torch: str
    doc: str


SCHEDULES: dict[str, ScheduleDef] = {}


def _register(s: ScheduleDef) -> None:
    SCHEDULES[s.name] = s


def _steps(v: float) -> bool:
    return v == int(v) and 1 <= v <= MAX_STEPS


STEPS_RULE = f"a positive integer ≤ {MAX_STEPS}"

_register(ScheduleDef(
    name="constant", params={},
    ref=lambda lr, k, a: lr,
    lower=lambda b, lr, k, rt, st: lr,
    torch="no scheduler", doc="lr on every step",
))


def _step_lower(b: ir.IRBuilder, lr: ir.Value, k: ir.Value, rt: Scalars,
                st: dict[str, float]) -> ir.Value:
    drops = b.udiv(k, i32c(int(st["step_size"])))
    return to_f32(b, b.fmul(to_f64(b, lr), powi(b, to_f64(b, rt["gamma"]), drops)))


_register(ScheduleDef(
    name="step",
    params={"step_size": ScheduleParam(None, True, _steps, STEPS_RULE),
            "gamma": ScheduleParam(0.1, False, lambda v: v > 0, "> 0")},
    ref=lambda lr, k, a: lr * a["gamma"] ** (k // int(a["step_size"])),
    lower=_step_lower,
    torch="torch.optim.lr_scheduler.StepLR(step_size, gamma)",
    doc="lr·gamma^⌊k/step_size⌋",
))


def _cosine_lower(b: ir.IRBuilder, lr: ir.Value, k: ir.Value, rt: Scalars,
                  st: dict[str, float]) -> ir.Value:
    # (1 + cos(πk/T))/2 = cos²(πk/2T), which has period 2T in k: reducing k in integers
    # keeps the angle exact and the squared form avoids cancellation next to eta_min
    period = 2 * int(st["t_max"])
    c = cos_pi_ratio(b, b.urem(k, i32c(period)), period)
    return b.fadd(rt["eta_min"], b.fmul(b.fsub(lr, rt["eta_min"]), b.fmul(c, c)))


_register(ScheduleDef(
    name="cosine",
    params={"t_max": ScheduleParam(None, True, _steps, STEPS_RULE),
            "eta_min": ScheduleParam(0.0, False, lambda v: v >= 0, ">= 0")},
    ref=lambda lr, k, a: a["eta_min"] + (lr - a["eta_min"])
    * (1 + math.cos(math.pi * k / a["t_max"])) / 2,
    lower=_cosine_lower,
    torch="torch.optim.lr_scheduler.CosineAnnealingLR(T_max=t_max, eta_min)",
    doc="eta_min + (lr − eta_min)·(1 + cos(π·k/t_max))/2; like torch it rises again after "
        "t_max (period 2·t_max)",
))


def scheduled_lr_ref(kind: str, args: dict[str, float], warmup: int, lr: float, k: int) -> float:
    """The learning rate of step k (0-based): linear warm-up, then the schedule from 0."""
    if k < warmup:
        return lr * (k + 1) / warmup
    return SCHEDULES[kind].ref(lr, k - warmup, args)


def lower_scheduled_lr(b: ir.IRBuilder, kind: str, args: dict[str, float], warmup: int,
                       lr: ir.Value, k: ir.Value, runtime: Scalars) -> ir.Value:
    """scheduled_lr_ref as float32 IR; k is the i32 step counter."""
    static = {n: args[n] for n, p in SCHEDULES[kind].params.items() if p.integer}
    if not warmup:
        return SCHEDULES[kind].lower(b, lr, k, runtime, static)
    in_warmup = b.icmp_unsigned("<", k, i32c(warmup))
    after = SCHEDULES[kind].lower(b, lr, b.select(in_warmup, i32c(0), b.sub(k, i32c(warmup))),
                                  runtime, static)
    ramp = b.fdiv(b.fmul(lr, b.uitofp(b.add(k, i32c(1)), F32)), f32c(float(warmup)))
    return b.select(in_warmup, ramp, after)


__all__ = ["MAX_STEPS", "SCHEDULES", "ScheduleDef", "ScheduleParam",
           "lower_scheduled_lr", "scheduled_lr_ref"]
