"""Coordinate-wise median: client models → their per-coordinate median (Byzantine-robust)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import ClientUpdate, Strategy, as_global, register, stack_updates


@register
@dataclass(eq=False)
class Median(Strategy):
    """``w[j] ← median_k w_k[j]`` for every coordinate j, unweighted (mean of the two middle
    values when the number of clients is even).

    Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML 2018. Flower: FedMedian.
    """

    name: ClassVar[str] = "median"

    def aggregate(self, global_weights: np.ndarray,
                  updates: Sequence[ClientUpdate]) -> np.ndarray:
        matrix, _ = stack_updates(global_weights, updates, self.name)
        return as_global(np.median(matrix, axis=0))
