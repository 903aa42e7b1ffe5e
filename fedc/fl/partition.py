"""Partitioners: labels + scheme string → one index array per simulated client.

Schemes (``partition(labels, num_clients, scheme, seed)``):

- ``iid``: a seeded shuffle cut into near-equal parts.
- ``dirichlet:ALPHA``: label skew (Hsu, Qi & Brown 2019, "Measuring the effects of
  non-identical data distribution"). For every class, the class's samples are divided among the
  clients in proportions drawn from Dir(ALPHA·1); the usual implementation of Hsu et al.'s
  model (also Flower Datasets' DirichletPartitioner). Smaller ALPHA → more skew.
- ``shards:K``: the pathological split of McMahan et al. 2017: samples sorted by label, cut into
  ``num_clients·K`` shards, K random shards per client. Shards are cut inside each class (sizes
  proportional to the class), so when ``num_clients·K`` ≥ the number of classes every shard holds
  one label and every client at most K labels.
- ``quantity:ALPHA``: quantity skew: client sizes in proportions drawn from Dir(ALPHA·1),
  labels IID.

Every result is disjoint, covers every sample, is deterministic per seed and gives every client
at least one sample (a client left empty takes one random sample from the largest client).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..diagnostics import Diagnostic, UsageError, did_you_mean

SCHEMES = {"iid": None, "dirichlet": "ALPHA", "shards": "K", "quantity": "ALPHA"}


@dataclass(frozen=True)
class Scheme:
    """A parsed scheme string: its kind and its one parameter (alpha or shards per client)."""

    kind: str
    param: float | int | None = None

    def __str__(self) -> str:
        return self.kind if self.param is None else f"{self.kind}:{self.param}"


@dataclass(frozen=True)
class ClientRow:
    """One client's share, for display: sample count and per-class label counts."""

    client: int
    samples: int
    label_counts: tuple[int, ...]


def _usage(message: str) -> UsageError:
    return UsageError([Diagnostic(message)])


def _expected() -> str:
    return ", ".join(k if v is None else f"{k}:{v}" for k, v in SCHEMES.items())


def parse_scheme(text: str) -> Scheme:
    """Parse ``iid``, ``dirichlet:ALPHA``, ``shards:K`` or ``quantity:ALPHA``; UsageError if bad."""
    kind, sep, arg = str(text).strip().lower().partition(":")
    kind, arg = kind.strip(), arg.strip()
    if kind not in SCHEMES:
        raise _usage(f"unknown partition scheme {text!r}{did_you_mean(kind, SCHEMES)} "
                     f"(expected one of {_expected()})")
    if SCHEMES[kind] is None:
        if sep:
            raise _usage(f"partition scheme 'iid' takes no parameter, got {text!r}")
        return Scheme(kind)
    if not arg:
        raise _usage(f"partition scheme {kind!r} needs a parameter: {kind}:{SCHEMES[kind]}")
    if kind == "shards":
        return Scheme(kind, _positive_int(arg, text))
    return Scheme(kind, _positive_float(arg, text))


def _positive_int(arg: str, text: str) -> int:
    try:
        value = int(arg)
    except ValueError:
        raise _usage(f"partition scheme {text!r}: K must be a whole number, got {arg!r}") from None
    if value < 1:
        raise _usage(f"partition scheme {text!r}: K must be at least 1, got {value}")
    return value


def _positive_float(arg: str, text: str) -> float:
    try:
        value = float(arg)
    except ValueError:
        raise _usage(f"partition scheme {text!r}: ALPHA must be a number, got {arg!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise _usage(f"partition scheme {text!r}: ALPHA must be a positive number, got {arg}")
    return value


# --- schemes -------------------------------------------------------------------------------------


def _iid(labels: np.ndarray, n: int, _: object, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(len(labels)), n))


def _cut(indices: np.ndarray, proportions: np.ndarray) -> list[np.ndarray]:
    """Split indices into len(proportions) runs sized by largest-remainder rounding."""
    counts = _round_counts(proportions, len(indices))
    return list(np.split(indices, np.cumsum(counts)[:-1]))


def _round_counts(proportions: np.ndarray, total: int) -> np.ndarray:
    exact = proportions / proportions.sum() * total
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def _draw_dirichlet(rng: np.random.Generator, n: int, alpha: Any, kind: str) -> np.ndarray:
    """Proportions from Dir(alpha·1). numpy's draw overflows for a huge alpha (its n gamma
    variates sum to Inf): all zeros, which _cut turned into NaN counts and a lopsided split."""
    p = rng.dirichlet(np.full(n, float(alpha)))
    if not (np.isfinite(p).all() and p.sum() > 0):
        raise _usage(f"partition scheme '{kind}:{alpha:g}': ALPHA is too large to draw "
                     f"proportions for {n} clients from (numpy's Dirichlet overflows); a "
                     "split this even is iid")
    return p


def _dirichlet(labels: np.ndarray, n: int, alpha: Any,
               rng: np.random.Generator) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        for client, run in enumerate(_cut(members, _draw_dirichlet(rng, n, alpha, "dirichlet"))):
            parts[client].append(run)
    return [np.concatenate(p) for p in parts]


def _quantity(labels: np.ndarray, n: int, alpha: Any,
              rng: np.random.Generator) -> list[np.ndarray]:
    sizes = _draw_dirichlet(rng, n, alpha, "quantity")
    return _cut(rng.permutation(len(labels)), sizes)


def _shard_counts(class_sizes: np.ndarray, shards: int) -> np.ndarray | None:
    """Shards per class, proportional to class size (D'Hondt), each class ≥ 1; None if too few."""
    if shards < len(class_sizes):
        return None
    shards = min(shards, int(class_sizes.sum()))
    counts = np.ones_like(class_sizes)
    while counts.sum() < shards:
        quotient = np.where(counts < class_sizes, class_sizes / (counts + 1), -1.0)
        counts[int(np.argmax(quotient))] += 1
    return counts


def _shards(labels: np.ndarray, n: int, k: Any, rng: np.random.Generator) -> list[np.ndarray]:
    classes, sizes = np.unique(labels, return_counts=True)
    counts = _shard_counts(sizes, n * int(k))
    pieces: list[np.ndarray] = []
    if counts is None:  # fewer shards than classes: cut the label-sorted order instead
        pieces = list(np.array_split(np.argsort(labels, kind="stable"), n * int(k)))
    else:
        for c, count in zip(classes, counts, strict=True):
            members = rng.permutation(np.flatnonzero(labels == c))
            pieces.extend(np.array_split(members, int(count)))
    pieces = [pieces[i] for i in rng.permutation(len(pieces))]
    return [np.concatenate(pieces[i::n]) if pieces[i::n] else np.empty(0, np.int64)
            for i in range(n)]


_Splitter = Callable[[np.ndarray, int, Any, np.random.Generator], list[np.ndarray]]
_SPLITTERS: dict[str, _Splitter] = {
    "iid": _iid, "dirichlet": _dirichlet, "shards": _shards, "quantity": _quantity,
}


def _fill_empty(parts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Give every empty client one random sample taken from the currently largest client."""
    parts = [np.asarray(p, dtype=np.int64) for p in parts]
    for i in range(len(parts)):
        if len(parts[i]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            take = int(rng.integers(len(parts[donor])))
            parts[i] = parts[donor][take:take + 1]
            parts[donor] = np.delete(parts[donor], take)
    return [np.sort(p) for p in parts]


# --- public API ----------------------------------------------------------------------------------


def _check_inputs(labels: np.ndarray, num_clients: int, scheme: Scheme) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise _usage(f"partition needs a non-empty 1-D label array, got shape {list(labels.shape)}")
    if isinstance(num_clients, bool) or int(num_clients) != num_clients or num_clients < 1:
        raise _usage(f"number of clients must be a positive whole number, got {num_clients}")
    if num_clients > labels.size:
        raise _usage(f"cannot give {num_clients} clients at least one sample each from "
                     f"{labels.size} samples")
    if scheme.kind in ("dirichlet", "shards"):
        if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
            raise _usage(f"partition scheme {scheme.kind!r} needs class labels, but the labels "
                         "are not whole numbers (use iid or quantity for regression data)")
    return labels


def partition(labels: np.ndarray, num_clients: int, scheme: str, seed: int) -> list[np.ndarray]:
    """Split sample indices among clients: disjoint, covering, every client ≥ 1 sample."""
    parsed = parse_scheme(scheme)
    labels = _check_inputs(labels, num_clients, parsed)
    n = int(num_clients)
    rng = np.random.default_rng(seed)
    parts = _SPLITTERS[parsed.kind](labels, n, parsed.param, rng)
    return _fill_empty(parts, rng)


def summarize(labels: np.ndarray, parts: list[np.ndarray],
              num_classes: int | None) -> list[ClientRow]:
    """Per-client rows (samples, label histogram); no histogram when num_classes is None."""
    labels = np.asarray(labels)
    rows = []
    for i, idx in enumerate(parts):
        counts: tuple[int, ...] = ()
        if num_classes is not None:
            hist = np.bincount(labels[idx].astype(np.int64), minlength=num_classes)
            counts = tuple(int(c) for c in hist)
        rows.append(ClientRow(i, int(len(idx)), counts))
    return rows
