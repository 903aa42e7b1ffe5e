"""Client training: the compiled module + each client's data + the global model → client models.

One Wasm instance (or, with ModelSpec.native_ir, one native build of the same module) trains
every client in turn: the global weights go in by a memory copy (``set_weights``), the
optimizer state is zeroed, the client trains its local epochs, and its model comes out by
another copy. Client optimizer state does NOT persist across rounds: every
round starts fresh, like a Flower ClientApp that keeps no ``context.state`` (a client sampled
every tenth round would otherwise resume momentum from a model ten rounds old).

With W workers, the round's clients are split into W groups balanced by sample count; the
calling process trains the first group while W − 1 spawned processes (each instantiating the
module once, at start-up; a native build is JIT-compiled in each) train the others. A client's
result depends only on the global weights, its data and its seed, and the caller aggregates in
client-id order, so the outcome is bit-identical for any W.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from .faults import TRAIN

ClientResult = tuple[np.ndarray, float]  # (client model, mean training loss)


@dataclass(frozen=True)
class ModelSpec:
    """What any process needs to make the model clients train in: the Wasm module and its
    manifest, and for a native build (the server's fast path, bit-identical on the tested
    models: docs/abi.md) the training module lowered for the host (fedc.native.native_ir)."""

    wasm: bytes
    manifest: dict[str, Any]
    native_ir: str | None = None

    @property
    def target(self) -> str:
        return "wasm" if self.native_ir is None else "native"

    def build(self) -> Any:
        """A fresh fedc.runtime.Model, or fedc.native.NativeModel (same API)."""
        if self.native_ir is None:
            from ..runtime import Model
            return Model(self.wasm, self.manifest)
        from ..native import NativeModel, jit_ir
        return NativeModel(jit_ir(self.native_ir, self.manifest), self.manifest)


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


def _serve(conn: Connection, spec: ModelSpec, x: np.ndarray, y: np.ndarray,
           parts: list[np.ndarray], settings: ClientSettings) -> None:
    """A worker process: instantiate the module once, then train groups until told to stop."""
    try:
        trainer = Trainer(spec.build(), x, y, parts, settings)
        conn.send((True, None))  # ready
        while (job := conn.recv()) is not None:
            try:
                conn.send((True, trainer.train_group(*job)))
            except Exception as exc:  # noqa: BLE001 - the parent re-raises it
                conn.send((False, exc))
    except (EOFError, KeyboardInterrupt):  # the parent went away or was interrupted
        pass


class _Worker:
    """One spawned process and the pipe to it (a direct pipe: ~0.1 ms per round trip, where
    concurrent.futures' queues and helper threads cost 1–5 ms per round)."""

    def __init__(self, ctx: Any, args: tuple[Any, ...]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, *args), daemon=True)
        self.process.start()
        child.close()

    def send(self, job: tuple[Any, ...] | None) -> None:
        self.conn.send(job)

    def outcome(self) -> tuple[bool, Any]:
        """(True, result) or (False, the exception) of the job sent last."""
        try:
            return self.conn.recv()  # type: ignore[no-any-return]
        except EOFError:
            return False, RuntimeError(f"simulation worker process {self.process.pid} died "
                                       f"(exit code {self.process.exitcode})")

    def receive(self) -> Any:
        ok, value = self.outcome()
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()


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

    def __init__(self, model: Any, spec: ModelSpec, x: np.ndarray, y: np.ndarray,
                 parts: list[np.ndarray], settings: ClientSettings, workers: int = 1) -> None:
        self.local = Trainer(model, x, y, parts, settings)
        self.sizes = [len(p) for p in parts]
        self.pool: list[_Worker] = []
        # spawn, not fork: wasmtime's compiler threads do not survive a fork
        ctx = multiprocessing.get_context("spawn")
        args = (spec, x, y, parts, settings)
        self.pool = [_Worker(ctx, args) for _ in range(workers - 1)]

    def train(self, global_weights: np.ndarray, rnd: int,
              clients: list[int]) -> dict[int, ClientResult]:
        """Every listed client's result, keyed by client id."""
        mine, *theirs = balance(clients, self.sizes, len(self.pool) + 1)
        busy = [(w, g) for w, g in zip(self.pool, theirs, strict=True) if g]
        for worker, group in busy:
            worker.send((global_weights, rnd, group))
        try:
            local = self.local.train_group(global_weights, rnd, mine)
        finally:  # drain every pipe, even on an error, so no stale reply reaches the next round
            outcomes = [worker.outcome() for worker, _ in busy]
        results = dict(zip(mine, local, strict=True))
        for (_, group), (ok, value) in zip(busy, outcomes, strict=True):
            if not ok:
                raise value
            results.update(zip(group, value, strict=True))
        return results

    def warm_up(self) -> None:
        """Wait until every worker has instantiated the module (start-up is not round 1's)."""
        for worker in self.pool:
            worker.receive()

    def close(self) -> None:
        for worker in self.pool:
            worker.stop()
        self.pool = []

    def __enter__(self) -> ClientRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
