"""Server strategies: a registry of aggregation rules, each in its own module."""

from . import (  # noqa: F401  (importing a module registers its strategies)
    fedadagrad,
    fedadam,
    fedavg,
    fedavgm,
    fedprox,
    fedyogi,
    krum,
    median,
    trimmed_mean,
)
from .base import REGISTRY, AggregationError, ClientUpdate, Strategy, make_strategy

# the order users read in `--help` and in error messages
ORDER = ("fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad", "median",
         "trimmed_mean", "krum", "multikrum")
for _name in sorted(REGISTRY, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
    REGISTRY[_name] = REGISTRY.pop(_name)

__all__ = ["REGISTRY", "AggregationError", "ClientUpdate", "Strategy", "make_strategy"]
