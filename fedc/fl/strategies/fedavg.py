"""FedAvg: client models → their example-weighted mean as the new global model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import ClientUpdate, Strategy, as_global, register, stack_updates, weighted_mean


@register
@dataclass(eq=False)
class FedAvg(Strategy):
    """Federated averaging: ``w ← Σ_k n_k·w_k / Σ_k n_k`` over the round's clients k.

    McMahan, Moore, Ramage, Hampson & Agüera y Arcas, "Communication-Efficient Learning of Deep
    Networks from Decentralized Data", AISTATS 2017. ``n_k`` is the client's ``num_examples``.
    """

    name: ClassVar[str] = "fedavg"

    def aggregate(self, global_weights: np.ndarray,
                  updates: Sequence[ClientUpdate]) -> np.ndarray:
        matrix, counts = stack_updates(global_weights, updates, self.name)
        return as_global(weighted_mean(matrix, counts, self.name))
