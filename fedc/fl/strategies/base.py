"""Server strategies' common interface: client updates + global weights → new global weights.

Weights are one flat float32 vector (the model's contiguous parameter region). Every strategy
sums in float64 and returns float32, so results do not depend on the order of float32 rounding.
Strategies are dataclasses: their init fields are the user-settable options (validated in
``__post_init__`` with a UsageError), other fields are state kept across rounds.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ...diagnostics import FedcError, UsageError, did_you_mean


class AggregationError(FedcError):
    """A round's client updates cannot be aggregated (none arrived, shapes differ, too few)."""


@dataclass(frozen=True, eq=False)  # holds arrays: compare their fields, not these
class ClientUpdate:
    """One client's reply: its new model as a flat float32 vector, and its example count."""

    weights: np.ndarray
    num_examples: int
    client_id: str = ""


# Flower's spellings, accepted so a Flower configuration can be carried over unchanged
ALIASES = {
    "beta_1": "beta1",
    "beta_2": "beta2",
    "proximal_mu": "mu",
    "server_learning_rate": "server_lr",
    "server_momentum": "momentum",
    "num_malicious_nodes": "f",
    "num_nodes_to_select": "m",
}


class Strategy(ABC):
    """A server-side aggregation rule; subclasses are dataclasses whose init fields are options."""

    name: ClassVar[str]

    @abstractmethod
    def aggregate(self, global_weights: np.ndarray,
                  updates: Sequence[ClientUpdate]) -> np.ndarray:
        """The new global weights (flat float32) from this round's client updates."""

    def check_clients(self, n: int, note: str = "") -> None:  # noqa: B027 - most take any n
        """UsageError if this rule can never aggregate a round of at most n client updates
        (`note` says where n comes from). Rules that take any n ≥ 1 accept every n."""

    def options(self) -> dict[str, Any]:
        """The option values this strategy was made with, as plain Python values (for logs,
        manifests and JSON)."""
        values = {f.name: getattr(self, f.name) for f in _option_fields(type(self))}
        return {k: v.item() if isinstance(v, np.generic) else v for k, v in values.items()}


REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy reachable by its ``name`` through make_strategy."""
    REGISTRY[cls.name] = cls
    return cls


# --- shared helpers ------------------------------------------------------------------------------


def stack_updates(global_weights: np.ndarray, updates: Sequence[ClientUpdate],
                  strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """Check a round's updates and return (float64 matrix n×d, float64 example counts)."""
    if len(updates) == 0:
        raise AggregationError.at(f"{strategy}: no client updates to aggregate this round")
    size = np.asarray(global_weights).size
    rows = []
    for i, u in enumerate(updates):
        w = np.asarray(u.weights)
        if w.size != size:
            who = u.client_id or f"#{i}"
            raise AggregationError.at(f"{strategy}: client {who} sent {w.size} weights but the "
                                      f"global model has {size}")
        rows.append(w.reshape(-1).astype(np.float64))
    counts = np.array([u.num_examples for u in updates], dtype=np.float64)
    if (counts < 0).any() or not np.isfinite(counts).all():
        raise AggregationError.at(f"{strategy}: example counts must be non-negative, got "
                                  f"{[u.num_examples for u in updates]}")
    return np.stack(rows), counts


def weighted_mean(matrix: np.ndarray, counts: np.ndarray, strategy: str) -> np.ndarray:
    """Σ n_i·w_i / Σ n_i in float64 (FedAvg's average)."""
    total = counts.sum()
    if total <= 0:
        raise AggregationError.at(f"{strategy}: the clients reported 0 training examples in "
                                  "total; cannot weight their updates")
    return (counts / total) @ matrix


def as_global(vector: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vector, dtype=np.float32)


def require(ok: bool, message: str) -> None:
    """Raise a UsageError for a bad option value (messages read 'fedadam: beta1 must ...')."""
    if not ok:
        raise UsageError.at(message)


# --- the registry's front door -------------------------------------------------------------------


def _option_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _coerce(strategy: str, option: str, hint: Any, value: Any) -> Any:
    """Accept numbers, numeric strings (from a CLI flag) and true/false for an option's type."""
    allowed = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    if value is None and type(None) in allowed:
        return None
    if bool in allowed:
        if isinstance(value, bool) or str(value).lower() in ("true", "false"):
            return value if isinstance(value, bool) else str(value).lower() == "true"
        raise UsageError.at(f"{strategy}: {option} must be true or false, got {value!r}")
    try:
        if float in allowed:
            return float(value)
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError.at(f"{strategy}: {option} must be a number, got {value!r}") from None
    if number != int(number):
        raise UsageError.at(f"{strategy}: {option} must be a whole number, got {value!r}")
    return int(number)


def make_strategy(name: str, **options: Any) -> Strategy:
    """Build a registered strategy by name; UsageError naming the valid names or options."""
    key = str(name).strip().lower()
    if key not in REGISTRY:
        raise UsageError.at(f"unknown strategy {name!r}{did_you_mean(key, REGISTRY)} "
                            f"(expected one of {', '.join(REGISTRY)})")
    cls = REGISTRY[key]
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in _option_fields(cls)]
    kwargs: dict[str, Any] = {}
    for given, value in options.items():
        option = ALIASES.get(given, given)
        if option not in valid:
            listing = ", ".join(valid) or "none"
            raise UsageError.at(f"{key}: unknown option {given!r} (valid options: {listing})")
        kwargs[option] = _coerce(key, option, hints[option], value)
    return cls(**kwargs)
