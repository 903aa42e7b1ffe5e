"""Krum and multi-Krum: client models → the one(s) closest to their n − f − 2 neighbours."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


def krum_scores(matrix: np.ndarray, f: int) -> np.ndarray:
    """score(k) = Σ of the n − f − 2 smallest squared distances ‖w_k − w_i‖², i ≠ k."""
    n = len(matrix)
    dist = np.empty((n, n))
    for k in range(n):  # exact differences, not the ‖a‖² + ‖b‖² − 2a·b shortcut that cancels
        dist[k] = np.square(matrix - matrix[k]).sum(axis=1)
    np.fill_diagonal(dist, np.inf)
    return np.sort(dist, axis=1)[:, : n - f - 2].sum(axis=1)


@register
@dataclass(eq=False)
class MultiKrum(Strategy):
    """Multi-Krum: pick the m clients with the lowest Krum score, then FedAvg over them.

    Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS 2017. ``score(k)`` sums the squared distances from
    ``w_k`` to its n − f − 2 nearest other updates; needs n ≥ 2f + 3 updates. f = the number of
    Byzantine clients tolerated (Flower: num_malicious_nodes, default 0); m defaults to n − f
    (Flower: num_nodes_to_select). The selected models are averaged weighted by num_examples,
    as Flower does (the paper's plain mean when counts are equal). Ties keep client order.
    """

    name: ClassVar[str] = "multikrum"
    f: int = 0
    m: int | None = None

    def __post_init__(self) -> None:
        require(self.f >= 0, f"{self.name}: f must be >= 0 but got {self.f}")
        require(self.m is None or self.m >= 1, f"{self.name}: m must be >= 1 but got {self.m}")

    def selected(self, n: int) -> int:
        return n - self.f if self.m is None else self.m

    def check_clients(self, n: int, note: str = "") -> None:
        where = f" ({note})" if note else ""
        require(n > 2 * self.f + 2,
                f"{self.name} with f={self.f} needs n > 2f + 2 = {2 * self.f + 2} client updates "
                f"per round, but a round has at most n = {n}{where}")
        m = self.selected(n)
        require(m <= n, f"{self.name}: m={m} is more than the {n} client updates a round has at "
                        f"most{where}")

    def aggregate(self, global_weights: np.ndarray,
                  updates: Sequence[ClientUpdate]) -> np.ndarray:
        matrix, counts = stack_updates(global_weights, updates, self.name)
        n = len(matrix)
        if n < 2 * self.f + 3:
            raise AggregationError.at(f"{self.name} with f={self.f} needs at least 2f+3 = "
                                      f"{2 * self.f + 3} client updates per round, got {n}")
        m = self.selected(n)
        if m > n:
            raise AggregationError.at(f"{self.name}: m={m} is more than the {n} client updates")
        chosen = np.argsort(krum_scores(matrix, self.f), kind="stable")[:m]
        return as_global(weighted_mean(matrix[chosen], counts[chosen], self.name))


@register
@dataclass(eq=False)
class Krum(MultiKrum):
    """Krum: the new global model is the single client model with the lowest Krum score.

    Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017 (see MultiKrum); multi-Krum with
    m = 1. f = the number of Byzantine clients tolerated; needs n ≥ 2f + 3 updates.
    """

    name: ClassVar[str] = "krum"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.m in (None, 1), f"krum selects one update; got m={self.m} (use multikrum)")

    def selected(self, n: int) -> int:
        return 1
