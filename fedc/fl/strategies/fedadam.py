"""FedAdam: Adam as the server optimiser on the clients' pseudo-gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import register
from .fedopt import FedOpt


@register
@dataclass(eq=False)
class FedAdam(FedOpt):
    """FedAdam: FedOpt's step (see fedopt.py) with ``v ← beta2·v + (1 − beta2)·Δ²``.

    Reddi et al., "Adaptive Federated Optimization", ICLR 2021. Defaults as in Flower 1.42:
    eta = 0.1, eta_l = 0.1, beta1 = 0.9, beta2 = 0.99, tau = 1e-3. Like Flower, the step is
    bias-corrected, ``eta_t = eta·√(1 − beta2^(t+1)) / (1 − beta1^(t+1))`` in round t = 1, 2, …
    (Flower's exponent; Kingma & Ba use t); ``bias_correction=False`` gives the paper's
    Algorithm 2 exactly (``eta_t = eta``).
    """

    name: ClassVar[str] = "fedadam"
    eta: float = 1e-1
    eta_l: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    bias_correction: bool = True

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * delta**2

    def step_size(self) -> float:
        if not self.bias_correction:
            return self.eta
        t = self.rounds + 1
        return self.eta * math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
