"""A checked optimizer line (+ FedProx μ) → hparams layout, manifest section, numpy reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._lazy import np
from ..diagnostics import Span
from .base import OPTIMIZERS, OptimizerDef
from .schedules import SCHEDULES, scheduled_lr_ref

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: coef = max_norm / (total_norm + 1e-6)


@dataclass(frozen=True)
class ScheduleSpec:
    kind: str = "constant"
    args: dict[str, float] = field(default_factory=dict)  # every parameter, defaults filled

    def runtime(self) -> dict[str, float]:
        """The float parameters: they live in the hparams buffer."""
        return {k: v for k, v in self.args.items() if not SCHEDULES[self.kind].params[k].integer}

    def to_json(self) -> dict[str, Any]:
        params = SCHEDULES[self.kind].params
        return {"kind": self.kind,
                **{k: int(v) if params[k].integer else v for k, v in self.args.items()}}


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything train_step's update does after the backward pass, as the checker resolved it."""

    name: str
    hparams: dict[str, float]  # the optimizer's own, defaults filled
    span: Span | None = None
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    warmup: int = 0  # linear warm-up steps before the schedule starts
    clip_norm: float | None = None  # global-norm gradient clipping
    proximal_mu: float = 0.0  # FedProx μ (from the federated block); > 0 adds μ(w − anchor)

    @property
    def definition(self) -> OptimizerDef:
        return OPTIMIZERS[self.name]

    @property
    def proximal(self) -> bool:
        return self.proximal_mu > 0

    def slots(self) -> tuple[str, ...]:
        return self.definition.slots(self.hparams)

    def static_hparams(self) -> dict[str, float]:
        hp = self.definition.hparams
        return {k: v for k, v in self.hparams.items() if hp[k].structural}

    def runtime_hparams(self) -> dict[str, float]:
        """The hparams buffer's contents, in order: the optimizer's run-time hyper-parameters
        (lr first), then clip_norm, the schedule's float parameters and proximal_mu."""
        hp = self.definition.hparams
        out = {k: v for k, v in self.hparams.items() if not hp[k].structural}
        if self.clip_norm is not None:
            out["clip_norm"] = self.clip_norm
        out.update(self.schedule.runtime())
        if self.proximal:
            out["proximal_mu"] = self.proximal_mu
        return out

    def to_json(self) -> dict[str, Any]:
        runtime = self.runtime_hparams()
        return {"name": self.name, "hparams": {**self.hparams, **runtime},
                "hparams_order": list(runtime), "schedule": self.schedule.to_json(),
                "warmup": self.warmup, "clip_norm": self.clip_norm,
                "proximal_mu": self.proximal_mu, "torch": self.definition.torch}


def reference_update(spec: OptimizerSpec, p: np.ndarray, g: np.ndarray, state: list[np.ndarray],
                     k: int, anchor: np.ndarray | None = None,
                     hparams: dict[str, float] | None = None) -> None:
    """train_step's update in numpy (in place): step k (0-based) given the raw gradients g.

    `hparams` overrides run-time hyper-parameters, as a host rewriting the buffer would.
    """
    hp = {**spec.hparams, **spec.runtime_hparams(), **(hparams or {})}
    args = {**spec.schedule.args, **{k_: hp[k_] for k_ in spec.schedule.runtime()}}
    lr = scheduled_lr_ref(spec.schedule.kind, args, spec.warmup, hp["lr"], k)
    if spec.proximal:
        assert anchor is not None, "a FedProx update needs the anchor weights"
        g = g + hp["proximal_mu"] * (p - anchor)
    if spec.clip_norm is not None:
        norm = float(np.sqrt(np.sum(np.square(g, dtype=np.float64))))
        g = g * min(1.0, hp["clip_norm"] / (norm + CLIP_EPS))
    spec.definition.ref(p, g, state, {**hp, "lr": lr}, k + 1)
