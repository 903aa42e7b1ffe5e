"""FedYogi: Yogi as the server optimiser on the clients' pseudo-gradient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import register
from .fedopt import FedOpt


@register
@dataclass(eq=False)
class FedYogi(FedOpt):
    """FedYogi: FedOpt's step (see fedopt.py) with ``v ← v − (1 − beta2)·Δ²·sign(v − Δ²)``.

    Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Yogi: Zaheer et al., NeurIPS
    2018). Defaults as in Flower 1.42: eta = 0.01, eta_l = 0.0316, beta1 = 0.9, beta2 = 0.99,
    tau = 1e-3; v starts at 0 as in Flower (the paper allows any v₀ ≥ tau²).
    """

    name: ClassVar[str] = "fedyogi"
    eta: float = 1e-2
    eta_l: float = 0.0316
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        d2 = delta**2
        return v - (1 - self.beta2) * d2 * np.sign(v - d2)
