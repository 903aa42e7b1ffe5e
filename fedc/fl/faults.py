"""Simulated faults: a seed and settings → dropped clients, stragglers and Byzantine updates.

Every draw comes from its own seeded stream, so changing one setting (say the dropout rate)
does not reshuffle another (which clients are Byzantine, or how fast each client is).

- Dropout: each selected client fails with probability P this round (a Bernoulli draw per
  client per round); it sends nothing.
- Stragglers: client k has a fixed speed ``s_k`` in samples per second, drawn once from a
  lognormal distribution (``median · exp(sigma · z)``, z ~ N(0, 1)): device speeds are skewed,
  a few are much slower. A round's update takes ``local_epochs · n_k / s_k`` simulated seconds;
  one later than the deadline is refused, as a server that closes the round would.
- Byzantine clients: K of the N clients, chosen once, train honestly and then send a forged
  model. ``scale:F`` sends ``global + F · (honest − global)`` (F = −10 is the sign-flipping,
  boosted attack of e.g. Fang et al., USENIX Security 2020).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..diagnostics import UsageError

# stream tags: the second word of every seed sequence, one per kind of draw
SELECT, TRAIN, SPEED, BYZANTINE, LOCAL_SPLIT = 1, 2, 3, 4, 5

ATTACKS = ("scale:F",)


@dataclass(frozen=True)
class Attack:
    """A model-poisoning rule applied to a Byzantine client's honest model."""

    kind: str
    factor: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.factor:g}"

    def forge(self, global_weights: np.ndarray, honest: np.ndarray) -> np.ndarray:
        """The model a Byzantine client sends instead of its honest one (float32)."""
        g = np.asarray(global_weights, np.float64)
        return (g + self.factor * (np.asarray(honest, np.float64) - g)).astype(np.float32)


def parse_attack(text: str) -> Attack:
    """``scale:F`` (F any finite number, e.g. -10) → Attack; UsageError otherwise."""
    kind, sep, arg = str(text).strip().lower().partition(":")
    if kind != "scale":
        raise UsageError.at(f"unknown attack {text!r} (expected {', '.join(ATTACKS)}, "
                            "e.g. scale:-10)")
    try:
        factor = float(arg) if sep else float("nan")
    except ValueError:
        factor = float("nan")
    if not np.isfinite(factor):
        raise UsageError.at(f"attack {text!r}: F must be a finite number, e.g. scale:-10")
    return Attack(kind, factor)


def byzantine_clients(num_clients: int, count: int, seed: int) -> frozenset[int]:
    """The ids of the ``count`` Byzantine clients, fixed for the whole run."""
    rng = np.random.default_rng([seed, BYZANTINE])
    return frozenset(int(k) for k in rng.choice(num_clients, size=count, replace=False))


def client_speeds(num_clients: int, seed: int, median: float, sigma: float) -> np.ndarray:
    """Samples per second of every client: lognormal with the given median and log-std."""
    rng = np.random.default_rng([seed, SPEED])
    with np.errstate(over="ignore", under="ignore"):  # Inf or 0: the simulation refuses them
        return median * np.exp(sigma * rng.standard_normal(num_clients))


def select_clients(num_clients: int, per_round: int, seed: int, rnd: int,
                   dropout: float) -> tuple[list[int], list[int]]:
    """This round's sampled clients (sorted) and, of those, the ones that drop out."""
    rng = np.random.default_rng([seed, SELECT, rnd])
    chosen = sorted(int(k) for k in rng.choice(num_clients, size=per_round, replace=False))
    fails = rng.random(len(chosen)) < dropout
    return chosen, [k for k, f in zip(chosen, fails, strict=True) if f]
