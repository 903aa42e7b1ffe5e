"""FedOpt: the shared step of FedAdam, FedYogi and FedAdagrad (adaptive server optimisers)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .base import (
    AggregationError,
    ClientUpdate,
    Strategy,
    as_global,
    require,
    stack_updates,
    weighted_mean,
)


@dataclass(eq=False)
class FedOpt(Strategy):
    """Reddi et al. 2021, Algorithm 2, on the pseudo-gradient ``Δ = avg − w``:

    ``m ← beta1·m + (1 − beta1)·Δ``;  ``v ←`` the subclass's second-moment rule;
    ``w ← w + eta_t·m / (√v + tau)`` with ``m = v = 0`` before the first round.

    Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar & McMahan, "Adaptive Federated
    Optimization", ICLR 2021. ``avg`` is FedAvg's weighted mean; ``eta`` is the server learning
    rate and ``eta_l`` the clients' (recorded only, as Flower does). ``eta_t = eta`` except where
    a subclass says otherwise.
    """

    eta: float = 1e-1
    eta_l: float = 1e-1
    beta1: float = 0.0
    beta2: float = 0.0
    tau: float = 1e-3
    m: np.ndarray | None = field(default=None, init=False, repr=False)
    v: np.ndarray | None = field(default=None, init=False, repr=False)
    rounds: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        n = self.name
        require(self.eta > 0, f"{n}: eta must be > 0 but got {self.eta}")
        require(self.eta_l > 0, f"{n}: eta_l must be > 0 but got {self.eta_l}")
        require(0 <= self.beta1 < 1, f"{n}: beta1 must be in [0, 1) but got {self.beta1}")
        require(0 <= self.beta2 < 1, f"{n}: beta2 must be in [0, 1) but got {self.beta2}")
        require(self.tau > 0, f"{n}: tau must be > 0 but got {self.tau}")

    @abstractmethod
    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The new v from the old v and this round's pseudo-gradient."""

    def step_size(self) -> float:
        return self.eta

    def aggregate(self, global_weights: np.ndarray,
                  updates: Sequence[ClientUpdate]) -> np.ndarray:
        matrix, counts = stack_updates(global_weights, updates, self.name)
        w = np.asarray(global_weights, dtype=np.float64).reshape(-1)
        delta = weighted_mean(matrix, counts, self.name) - w
        if self.m is None or self.v is None:
            self.m, self.v = np.zeros_like(w), np.zeros_like(w)
        if self.m.shape != w.shape:
            raise AggregationError.at(f"{self.name}: the model changed size from "
                                      f"{self.m.size} to {w.size} weights between rounds")
        self.rounds += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * delta
        self.v = self.second_moment(self.v, delta)
        return as_global(w + self.step_size() * self.m / (np.sqrt(self.v) + self.tau))
