"""The optimizer registry's contract: hyper-parameters, state slots, update rule, reference."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llvmlite import ir

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class HParam:
    default: float | None  # None: required
    check: Callable[[float], bool]
    rule: str  # what `check` requires, for the error message
    structural: bool = False  # changes the code or the state layout: fixed at compile time

    @property
    def flag(self) -> bool:
        """A true/false setting (nesterov, amsgrad): the only kind a boolean may set."""
        return self.check is boolean


# One step's run-time scalars by name: the hyper-parameters (lr already scheduled) and whatever
# `prepare` derived from them. In `update` they match the element type (splatted for vectors).
Scalars = dict[str, ir.Value]
Prepare = Callable[[ir.IRBuilder, Scalars, ir.Value], Scalars]
ElementUpdate = Callable[[ir.IRBuilder, Scalars, dict[str, float], ir.Value, ir.Value,
                          Sequence[ir.Value]], tuple[ir.Value, list[ir.Value]]]
RefUpdate = Callable[["np.ndarray", "np.ndarray", list["np.ndarray"], dict[str, float], int],
                     None]


@dataclass(frozen=True)
class OptimizerDef:
    """An optimizer, PyTorch's torch.optim semantics, as one fused pass over the parameters.

    slots(hp): names of its per-parameter state arrays (each params-sized float32, zero after
      a reset), e.g. ("exp_avg", "exp_avg_sq").
    prepare(b, scalars, t): once per step, before the pass: derived scalars such as Adam's
      bias corrections; `t` is the i32 step number, 1 on the first step after a reset.
    update(b, h, static, p, g, state) -> (p', state'): the element-wise rule on float or
      <4 x float>; `g` is the gradient after clipping and the FedProx term; `static` holds the
      structural hyper-parameters (fixed at compile time).
    ref(p, g, state, hp, t): the same rule in numpy, updating p and state in place.
    validate(hp): rules tying hyper-parameters together → [(name, message)].
    """

    name: str
    hparams: dict[str, HParam]
    slots: Callable[[dict[str, float]], tuple[str, ...]]
    update: ElementUpdate
    ref: RefUpdate
    prepare: Prepare | None = None
    validate: Callable[[dict[str, float]], list[tuple[str, str]]] | None = None
    torch: str = ""  # the PyTorch class it matches
    doc: str = ""


OPTIMIZERS: dict[str, OptimizerDef] = {}


def register(opt: OptimizerDef) -> OptimizerDef:
    OPTIMIZERS[opt.name] = opt
    return opt


def nonneg(v: float) -> bool:
    return v >= 0


def positive(v: float) -> bool:
    return v > 0


def unit(v: float) -> bool:
    """In [0, 1): a decay rate such as momentum or β."""
    return 0 <= v < 1


def boolean(v: float) -> bool:
    return v in (0.0, 1.0)
