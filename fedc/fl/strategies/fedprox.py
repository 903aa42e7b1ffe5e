"""FedProx: the server side of FedProx, which is FedAvg; the clients add the proximal term."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import register, require
from .fedavg import FedAvg


@register
@dataclass(eq=False)
class FedProx(FedAvg):
    """FedProx: server update as FedAvg, ``w ← Σ_k n_k·w_k / Σ_k n_k``.

    Li, Sahu, Zaheer, Sanjabi, Talwalkar & Smith, "Federated Optimization in Heterogeneous
    Networks", MLSys 2020. Each client minimises ``F_k(w) + (mu/2)·‖w − w_global‖²``; that
    proximal term lives in the compiled client kernel, so the server only records ``mu``
    (Flower's ``proximal_mu`` is accepted as an alias). ``mu = 0`` is plain FedAvg, which is
    also Flower's default.
    """

    name: ClassVar[str] = "fedprox"
    mu: float = 0.0

    def __post_init__(self) -> None:
        require(self.mu >= 0, f"fedprox: mu must be >= 0 but got {self.mu}")
