"""Coordinate-wise trimmed mean: client models → per-coordinate mean without the extremes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import ClientUpdate, Strategy, as_global, register, require, stack_updates


@register
@dataclass(eq=False)
class TrimmedMean(Strategy):
    """For every coordinate j: drop the ``⌊beta·n⌋`` largest and smallest ``w_k[j]`` of the n
    clients and average the rest, unweighted.

    Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML 2018. beta ∈ [0, 0.5), default 0.2 as in Flower's FedTrimmedAvg.
    """

    name: ClassVar[str] = "trimmed_mean"
    beta: float = 0.2

    def __post_init__(self) -> None:
        require(0 <= self.beta < 0.5,
                f"trimmed_mean: beta must be in [0, 0.5) but got {self.beta}")

    def aggregate(self, global_weights: np.ndarray,
                  updates: Sequence[ClientUpdate]) -> np.ndarray:
        matrix, _ = stack_updates(global_weights, updates, self.name)
        n = len(matrix)
        cut = int(self.beta * n)
        kept = np.sort(matrix, axis=0)[cut:n - cut]
        return as_global(kept.mean(axis=0))
