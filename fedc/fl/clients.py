"""Client training: the compiled module + each client's data + the global model → client models.

One Wasm instance trains every client in turn: the global weights go in by a memory copy
(``set_weights``), the optimizer state is zeroed, the client trains its local epochs, and its
model comes out by another copy. Client optimizer state does NOT persist across rounds: every
round starts fresh, like a Flower ClientApp that keeps no ``context.state`` (a client sampled
every tenth round would otherwise resume momentum from a model ten rounds old).

With W workers, the round's clients are split into W groups balanced by sample count; the
calling process trains the first group while W − 1 spawned processes (each instantiating the
module once, at start-up) train the others. A client's result depends only on the global
weights, its data and its seed, and the caller aggregates in client-id order, so the outcome is
bit-identical for any W.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .faults import TRAIN

ClientResult = tuple[np.ndarray, float]  # (client model, mean training loss)


@dataclass(frozen=True)
class ClientSettings:
    """How every client trains; ``proximal_mu`` is None unless the strategy is FedProx."""

    local_epochs: int
    batch_size: int
    seed: int
    lr: float | None = None
    proximal_mu: float | None = None


class Trainer:
    """One Wasm instance that trains any client in turn (weights swapped by memory copy)."""

    def __init__(self, model: Any, x: np.ndarray, y: np.ndarray, parts: list[np.ndarray],
                 settings: ClientSettings) -> None:
        self.model = model
        self.settings = settings
        # gathered once: a client's rows are read every round it is sampled
        self.data = [(np.ascontiguousarray(x[idx]), np.ascontiguousarray(y[idx])) for idx in parts]
        if settings.lr is not None:
            model.set_hparam("lr", settings.lr)
        # the term exists only in a module compiled with proximal_mu > 0 (it has an anchor)
        self.proximal = settings.proximal_mu is not None and \
            getattr(model, "anchor", None) is not None
        if "proximal_mu" in model.manifest["optimizer"]["hparams_order"]:
            # μ is a run-time hyper-parameter: 0 switches the term off for other strategies
            model.set_hparam("proximal_mu", settings.proximal_mu or 0.0)

    def train(self, global_weights: np.ndarray, rnd: int, client: int) -> ClientResult:
        """Client ``client``'s model after its local epochs of round ``rnd``."""
        m, s = self.model, self.settings
        m.set_weights(global_weights)
        m.reset_optimizer()
        if self.proximal:  # FedProx: the kernel pulls towards this round's global model
            m.set_anchor(global_weights)
        x, y = self.data[client]
        rng = np.random.default_rng([s.seed, TRAIN, rnd, client])
        losses = [m.train_epoch(x, y, s.batch_size, rng) for _ in range(s.local_epochs)]
        return m.get_weights(), float(np.mean(losses))

    def train_group(self, global_weights: np.ndarray, rnd: int,
                    clients: list[int]) -> list[ClientResult]:
        return [self.train(global_weights, rnd, k) for k in clients]


# --- worker processes ----------------------------------------------------------------------------

_WORKER: Trainer | None = None


def _init_worker(wasm: bytes, manifest: dict[str, Any], x: np.ndarray, y: np.ndarray,
                 parts: list[np.ndarray], settings: ClientSettings) -> None:
    global _WORKER
    from ..runtime import Model

    _WORKER = Trainer(Model(wasm, manifest), x, y, parts, settings)


def _train_group(global_weights: np.ndarray, rnd: int, clients: list[int]) -> list[ClientResult]:
    assert _WORKER is not None, "worker used before its initializer ran"
    return _WORKER.train_group(global_weights, rnd, clients)


def balance(clients: list[int], sizes: list[int], groups: int) -> list[list[int]]:
    """Split clients into ``groups`` lists with near-equal total samples (largest first)."""
    loads = [0] * groups
    out: list[list[int]] = [[] for _ in range(groups)]
    for k in sorted(clients, key=lambda c: (-sizes[c], c)):
        g = loads.index(min(loads))
        out[g].append(k)
        loads[g] += sizes[k]
    return [sorted(g) for g in out]


class ClientRunner:
    """Trains a round's clients here, or here and in W − 1 worker processes."""

    def __init__(self, model: Any, wasm: bytes, x: np.ndarray, y: np.ndarray,
                 parts: list[np.ndarray], settings: ClientSettings, workers: int = 1) -> None:
        self.local = Trainer(model, x, y, parts, settings)
        self.sizes = [len(p) for p in parts]
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:  # spawn, not fork: wasmtime's compiler threads do not survive a fork
            self.pool = ProcessPoolExecutor(
                workers - 1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(wasm, dict(model.manifest), x, y, parts, settings))

    def train(self, global_weights: np.ndarray, rnd: int,
              clients: list[int]) -> dict[int, ClientResult]:
        """Every listed client's result, keyed by client id."""
        if self.pool is None or len(clients) < 2:
            return dict(zip(clients, self.local.train_group(global_weights, rnd, clients),
                            strict=True))
        mine, *theirs = balance(clients, self.sizes, self.workers)
        futures: list[Future[list[ClientResult]]] = [
            self.pool.submit(_train_group, global_weights, rnd, g) for g in theirs if g]
        results = dict(zip(mine, self.local.train_group(global_weights, rnd, mine), strict=True))
        for group, future in zip([g for g in theirs if g], futures, strict=True):
            results.update(zip(group, future.result(), strict=True))
        return results

    def warm_up(self) -> None:
        """Start every worker process now (so start-up is not charged to round 1)."""
        if self.pool is not None:
            for f in [self.pool.submit(int, 0) for _ in range(self.workers - 1)]:
                f.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> ClientRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
