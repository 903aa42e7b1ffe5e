"""FedAdagrad: Adagrad as the server optimiser on the clients' pseudo-gradient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import register, require
from .fedopt import FedOpt


@register
@dataclass(eq=False)
class FedAdagrad(FedOpt):
    """FedAdagrad: FedOpt's step (see fedopt.py) with ``v ← v + Δ²``.

    Reddi et al., "Adaptive Federated Optimization", ICLR 2021. Defaults as in Flower 1.42:
    eta = 0.1, eta_l = 0.1, tau = 1e-3, and beta1 = 0 (so ``m = Δ``; Flower fixes it at 0, fedc
    lets it be set). beta2 is unused and must stay 0.
    """

    name: ClassVar[str] = "fedadagrad"
    eta: float = 1e-1
    eta_l: float = 1e-1
    beta1: float = 0.0
    tau: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.beta2 == 0, f"fedadagrad: beta2 is not used by adagrad (got {self.beta2})")

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return v + delta**2
