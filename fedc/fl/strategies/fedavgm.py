"""FedAvgM: FedAvg with server momentum on the pseudo-gradient (global − average)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .base import (
    AggregationError,
    ClientUpdate,
    Strategy,
    as_global,
    register,
    require,
    stack_updates,
    weighted_mean,
)


@register
@dataclass(eq=False)
class FedAvgM(Strategy):
    """Server momentum: ``g = w − avg``, ``v ← momentum·v + g``, ``w ← w − server_lr·v``.

    Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated
    Visual Classification", 2019 (arXiv:1909.06335). ``avg`` is FedAvg's weighted mean and
    ``v`` starts at 0, as in Flower's FedAvgM (PyTorch SGD convention, no Nesterov).
    Defaults: ``server_lr = 1``, ``momentum = 0.9`` (Flower's default momentum is 0, which is
    plain FedAvg). Flower's ``server_learning_rate``/``server_momentum`` are accepted as aliases.
    """

    name: ClassVar[str] = "fedavgm"
    server_lr: float = 1.0
    momentum: float = 0.9
    velocity: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        require(self.server_lr > 0, f"fedavgm: server_lr must be > 0 but got {self.server_lr}")
        require(0 <= self.momentum < 1,
                f"fedavgm: momentum must be in [0, 1) but got {self.momentum}")

    def aggregate(self, global_weights: np.ndarray,
                  updates: Sequence[ClientUpdate]) -> np.ndarray:
        matrix, counts = stack_updates(global_weights, updates, self.name)
        w = np.asarray(global_weights, dtype=np.float64).reshape(-1)
        pseudo_gradient = w - weighted_mean(matrix, counts, self.name)
        if self.velocity is None:
            self.velocity = np.zeros_like(w)
        if self.velocity.shape != w.shape:
            raise AggregationError.at(f"fedavgm: the model changed size from "
                                      f"{self.velocity.size} to {w.size} weights between rounds")
        self.velocity = self.momentum * self.velocity + pseudo_gradient
        return as_global(w - self.server_lr * self.velocity)
