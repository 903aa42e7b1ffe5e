"""Federated simulation: a compiled module + a dataset + SimConfig → per-round metrics and the
final global model, with every client training inside the Wasm module.

A round: sample M of the N clients (seeded), drop some (``dropout``), refuse the ones slower
than the deadline, train the rest from the global model (fedc/fl/clients.py), let the Byzantine
ones forge their models, aggregate in client-id order with the strategy, and evaluate the new
global model on the held-out test split (and, with ``federated_eval``, on every client's local
test split). The same seed gives bit-identical weights, whatever the number of workers.

A round in which clients failed and the strategy cannot aggregate what arrived (nothing, or
fewer than Krum needs) keeps the global model and is marked not aggregated. If aggregation
yields NaN or Inf the run stops there and is marked diverged: no client can train from it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..check import FEDPROX_DEFAULT_MU
from ..data import MAX_SEED, Dataset
from ..diagnostics import UsageError
from .clients import ClientRunner, ClientSettings, ModelSpec
from .faults import (
    LOCAL_SPLIT,
    byzantine_clients,
    client_speeds,
    parse_attack,
    select_clients,
)
from .partition import ClientRow, parse_scheme, partition, summarize
from .strategies import AggregationError, ClientUpdate, Strategy, make_strategy


@dataclass(frozen=True)
class SimConfig:
    """Everything that decides a simulation's outcome (``workers`` only decides its speed)."""

    clients: int = 10
    rounds: int = 10
    clients_per_round: int | float = 10  # a count, or a float fraction of the clients in (0, 1]
    local_epochs: int = 1
    batch_size: int = 32
    strategy: str = "fedavg"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    partition: str = "iid"
    seed: int = 0
    lr: float | None = None
    test_fraction: float = 0.2
    dropout: float = 0.0
    deadline: float | None = None  # simulated seconds; None: wait for every client
    speed_median: float = 1000.0  # samples per second
    speed_sigma: float = 1.0
    byzantine: int = 0
    attack: str = "scale:-10"
    federated_eval: bool = False
    local_test_fraction: float = 0.2
    workers: int = 1

    @property
    def per_round(self) -> int:
        """Clients sampled each round (a fraction f means max(1, ⌊f·N⌋), as Flower rounds)."""
        m = self.clients_per_round
        if isinstance(m, float):
            return max(1, int(m * self.clients + 1e-9))
        return int(m)

    def validate(self) -> None:
        """UsageError naming the first setting that cannot work."""
        _need(self.clients >= 1, f"the number of clients must be at least 1, got {self.clients}")
        for name in ("rounds", "local_epochs", "batch_size", "workers"):
            value = getattr(self, name)
            _need(value >= 1, f"{name.replace('_', ' ')} must be at least 1, got {value}")
        m = self.clients_per_round
        _need(m > 0 and (not isinstance(m, float) or m <= 1),
              f"clients per round must be a count ≥ 1 or a fraction in (0, 1], got {m}")
        _need(self.per_round <= self.clients, f"clients per round ({self.per_round}) is more "
              f"than the number of clients ({self.clients})")
        _need(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _need(self.deadline is None or 0 < self.deadline < float("inf"),
              f"deadline must be a finite number > 0 seconds, got {self.deadline}")
        _need(0 < self.speed_median < float("inf") and 0 <= self.speed_sigma < float("inf"),
              f"client speeds need a finite median > 0 and sigma ≥ 0, got {self.speed_median} "
              f"and {self.speed_sigma}")
        _need(0 <= self.byzantine <= self.clients, f"byzantine clients must be in 0..{self.clients}"
              f" (the number of clients), got {self.byzantine}")
        _need(not isinstance(self.seed, bool) and isinstance(self.seed, int | np.integer)
              and 0 <= self.seed <= MAX_SEED,
              f"the seed must be an integer in 0..{MAX_SEED}, got {self.seed!r}")
        _need(self.lr is None or 0 < self.lr < float("inf"),
              f"learning rate must be a finite number > 0, got {self.lr}")
        _need(0 < self.test_fraction < 1 and 0 < self.local_test_fraction < 1,
              "test fractions must be between 0 and 1")
        parse_scheme(self.partition)
        parse_attack(self.attack)
        # e.g. Krum's f: a round that can never be aggregated fails here, before any training
        make_strategy(self.strategy, **self.strategy_options).check_clients(
            self.per_round, "the clients sampled per round")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["strategy_options"] = dict(self.strategy_options)
        out["clients_per_round"] = self.per_round
        return out


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError.at(message)


def config_from(federated: Mapping[str, Any], **overrides: Any) -> SimConfig:
    """A SimConfig from a manifest's ``federated`` block; overrides that are None are skipped."""
    base: dict[str, Any] = {k: federated[k] for k in
                            ("rounds", "clients_per_round", "local_epochs", "batch_size",
                             "strategy") if k in federated}
    given = {k: v for k, v in overrides.items() if v is not None}
    base.update(given)
    per_round = base.get("clients_per_round", 10)
    if "clients" not in base:  # every client takes part in every round
        base["clients"] = per_round if isinstance(per_round, int) else \
            int(federated.get("clients_per_round", 10))
    elif "clients_per_round" not in given and isinstance(per_round, int):
        base["clients_per_round"] = min(per_round, base["clients"])  # the file's, capped
    options = dict(base.get("strategy_options") or {})
    if base.get("strategy") == "fedprox" and not {"mu", "proximal_mu"} & set(options):
        # the block's mu, or fedc's FedProx default when the block leaves it at 0
        options["mu"] = float(federated.get("proximal_mu") or FEDPROX_DEFAULT_MU)
    base["strategy_options"] = options
    return SimConfig(**base)


@dataclass
class RoundResult:
    """One round's participation and metrics (None: not measured this round)."""

    round: int
    selected: list[int]
    dropped: list[int]
    stragglers: list[int]
    updates: list[int]  # clients whose model reached the server
    byzantine: list[int]  # of those, the forged ones
    aggregated: bool
    train_loss: float | None
    test_loss: float
    test_accuracy: float | None
    simulated_seconds: float
    seconds: float  # wall time of the whole round
    train_seconds: float  # wall time of the clients' training (all workers)
    federated_loss: float | None = None
    federated_accuracy: float | None = None
    federated_accuracy_min: float | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in asdict(self).items()}


def _finite(v: Any) -> Any:
    """JSON has no NaN/Inf: a diverged model's loss is written as null."""
    return None if isinstance(v, float) and not np.isfinite(v) else v


@dataclass
class SimResult:
    config: SimConfig
    rounds: list[RoundResult]
    weights: np.ndarray
    partition: list[ClientRow]
    byzantine: list[int]
    warnings: list[str]
    seconds: float
    startup_seconds: float
    diverged: bool
    strategy_options: dict[str, Any] = field(default_factory=dict)  # every option, as used
    target: str = "wasm"  # where clients trained: the Wasm module, or "native" (same results)

    @property
    def final(self) -> RoundResult:
        return self.rounds[-1]

    def summary(self) -> dict[str, Any]:
        """The run as one JSON-ready object (what `fedc simulate --json` prints)."""
        updates = sum(len(r.updates) for r in self.rounds)
        round_s = sum(r.seconds for r in self.rounds)
        train_s = sum(r.train_seconds for r in self.rounds)
        return {
            "config": self.config.to_json(),
            "target": self.target,
            "strategy": {"name": self.config.strategy, "options": self.strategy_options},
            "rounds": [r.to_json() for r in self.rounds],
            "final_test_accuracy": self.final.test_accuracy,
            "final_test_loss": _finite(self.final.test_loss),
            "diverged": self.diverged,
            "byzantine_clients": self.byzantine,
            "client_updates": updates,
            "seconds": self.seconds,
            "startup_seconds": self.startup_seconds,
            "rounds_per_second": len(self.rounds) / round_s if round_s > 0 else None,
            "seconds_per_client_update": train_s / updates if updates else None,
            "simulated_seconds": sum(r.simulated_seconds for r in self.rounds),
            "weights_sha256": hashlib.sha256(self.weights.tobytes()).hexdigest(),
            "warnings": self.warnings,
        }


def split_local(parts: list[np.ndarray], fraction: float,
                seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's indices → (local train, local test): ⌊fraction·n⌋ test rows, ≥ 1 train."""
    train, test = [], []
    for k, idx in enumerate(parts):
        order = np.random.default_rng([seed, LOCAL_SPLIT, k]).permutation(idx)
        cut = min(int(fraction * len(order)), len(order) - 1)
        test.append(np.sort(order[:cut]))
        train.append(np.sort(order[cut:]))
    return train, test


class Simulation:
    """The server's side of the loop; one instance runs one simulation."""

    def __init__(self, wasm: bytes, manifest: Mapping[str, Any], data: Dataset,
                 config: SimConfig, native_ir: str | None = None) -> None:
        """native_ir (fedc.native.native_ir of the same artifacts): every client trains in the
        module compiled for this CPU rather than in Wasm; the results are the same."""
        config.validate()
        self.config, self.data = config, data
        spec = ModelSpec(wasm, dict(manifest), native_ir)
        self.target = spec.target
        self.model = spec.build()
        _need(config.batch_size <= self.model.max_batch, f"batch size {config.batch_size} exceeds "
              f"the module's max batch {self.model.max_batch} (compile with --max-batch)")
        self.strategy: Strategy = make_strategy(config.strategy, **config.strategy_options)
        self.attack = parse_attack(config.attack)
        parts = partition(data.y_train, config.clients, config.partition, config.seed)
        self.rows = summarize(data.y_train, parts, data.num_classes)
        self.local_test: list[np.ndarray] = [np.empty(0, np.int64)] * len(parts)
        if config.federated_eval:
            parts, self.local_test = split_local(parts, config.local_test_fraction, config.seed)
        self.sizes = [len(p) for p in parts]
        self.speeds = client_speeds(config.clients, config.seed, config.speed_median,
                                    config.speed_sigma)
        _check_times(config, self.sizes, self.speeds)
        self.byzantine = byzantine_clients(config.clients, config.byzantine, config.seed)
        self.warnings = _proximal_warnings(self.strategy, self.model)
        self.model.init_weights(config.seed)
        self.weights = self.model.get_weights()
        settings = ClientSettings(config.local_epochs, config.batch_size, config.seed,
                                  config.lr, client_proximal_mu(self.strategy))
        # a round trains at most per_round clients: more workers would be processes (each
        # instantiating the module) that never get a client
        workers = min(config.workers, config.per_round)
        if workers < config.workers:
            self.warnings.append(f"workers: a round trains at most {config.per_round} clients, "
                                 f"so {workers} of the {config.workers} workers are used")
        start = time.perf_counter()
        self.runner = ClientRunner(self.model.clone(), spec, data.x_train, data.y_train, parts,
                                   settings, workers)
        self.runner.warm_up()
        self.startup_seconds = time.perf_counter() - start

    def run(self, on_round: Callable[[RoundResult], None] | None = None) -> SimResult:
        start = time.perf_counter()
        rounds: list[RoundResult] = []
        diverged = False
        try:
            for rnd in range(1, self.config.rounds + 1):
                result, diverged = self.play_round(rnd)
                rounds.append(result)
                if on_round is not None:
                    on_round(result)
                if diverged:
                    break
        finally:
            self.runner.close()
        return SimResult(self.config, rounds, self.weights, self.rows, sorted(self.byzantine),
                         self.warnings, time.perf_counter() - start, self.startup_seconds,
                         diverged, self.strategy.options(), self.target)

    def play_round(self, rnd: int) -> tuple[RoundResult, bool]:
        """Sample, fail, train, forge, aggregate, evaluate; (result, diverged)."""
        start = time.perf_counter()
        chosen, dropped, late, trainees, sim_s = self._participants(rnd)
        results = self.runner.train(self.weights, rnd, trainees)
        train_s = time.perf_counter() - start
        updates = [ClientUpdate(self._sent(k, results[k][0]), self.sizes[k], str(k))
                   for k in trainees]
        new, note = self._aggregate(updates, complete=len(trainees) == len(chosen))
        diverged = new is not None and not bool(np.isfinite(new).all())
        if new is not None:
            self.weights = new
        train_loss = None
        if trainees:
            train_loss = float(np.average([results[k][1] for k in trainees],
                                          weights=[self.sizes[k] for k in trainees]))
        test_loss, test_accuracy = self._evaluate()
        result = RoundResult(
            rnd, chosen, dropped, late, trainees, [k for k in trainees if k in self.byzantine],
            aggregated=new is not None, train_loss=train_loss, test_loss=test_loss,
            test_accuracy=test_accuracy, simulated_seconds=sim_s, seconds=0.0,
            train_seconds=train_s,
            note="diverged: the global model has NaN or Inf weights" if diverged else note)
        if self.config.federated_eval:
            self._evaluate_clients(result)
        result.seconds = time.perf_counter() - start
        return result, diverged

    def _participants(self, rnd: int) -> tuple[list[int], list[int], list[int], list[int],
                                                float]:
        """(sampled, dropped out, too slow, training) clients and the simulated round time."""
        c = self.config
        chosen, dropped = select_clients(c.clients, c.per_round, c.seed, rnd, c.dropout)
        live = [k for k in chosen if k not in dropped]
        took = {k: c.local_epochs * self.sizes[k] / float(self.speeds[k]) for k in live}
        late = [k for k in live if c.deadline is not None and took[k] > c.deadline]
        trainees = [k for k in live if k not in late]
        # the server waits for the slowest client it accepts, or until the deadline if one is late
        sim_s = c.deadline if late and c.deadline else max((took[k] for k in trainees), default=0)
        return chosen, dropped, late, trainees, float(sim_s)

    def _sent(self, client: int, honest: np.ndarray) -> np.ndarray:
        if client in self.byzantine:
            return self.attack.forge(self.weights, honest)
        return honest

    def _aggregate(self, updates: list[ClientUpdate],
                   complete: bool) -> tuple[np.ndarray | None, str]:
        if not updates:
            return None, "no client update arrived; the global model is unchanged"
        try:
            return self.strategy.aggregate(self.weights, updates), ""
        except AggregationError as exc:
            if complete:  # every sampled client answered: the setting itself cannot work
                raise
            return None, f"not aggregated: {exc.message}"

    def _load_global(self) -> None:
        # a raw copy, not set_weights: a diverged (NaN) model is still evaluated, as deployed
        self.model.write_weights(self.weights)

    def _evaluate(self) -> tuple[float, float | None]:
        self._load_global()
        metrics = self.model.evaluate(self.data.x_test, self.data.y_test)
        return float(metrics["loss"]), metrics.get("accuracy")

    def _evaluate_clients(self, result: RoundResult) -> None:
        """Every client's local test split under the global model, weighted by its size."""
        self._load_global()
        losses, accs, counts = [], [], []
        for idx in self.local_test:
            if len(idx):
                m = self.model.evaluate(self.data.x_train[idx], self.data.y_train[idx])
                losses.append(m["loss"])
                accs.append(m.get("accuracy"))
                counts.append(len(idx))
        if not counts:
            return
        result.federated_loss = float(np.average(losses, weights=counts))
        if accs[0] is not None:
            result.federated_accuracy = float(np.average(accs, weights=counts))
            result.federated_accuracy_min = float(min(accs))


def _check_times(config: SimConfig, sizes: list[int], speeds: np.ndarray) -> None:
    """Every client's simulated time is a finite number of seconds: a large sigma draws speeds
    that overflow to Inf or underflow to 0 (a ZeroDivisionError in round 1, or Infinity in the
    run's JSON)."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        times = config.local_epochs * np.asarray(sizes, np.float64) / speeds
    bad = ~(np.isfinite(speeds) & (speeds > 0) & np.isfinite(times))
    _need(not bad.any(), f"client speeds with median {config.speed_median:g} and sigma "
          f"{config.speed_sigma:g} are beyond a double's range (client {int(np.argmax(bad))}: "
          f"{float(speeds[np.argmax(bad)]):g} samples/s): simulated times cannot be computed; "
          "use a smaller sigma")


def client_proximal_mu(strategy: Strategy) -> float | None:
    """FedProx's μ for the clients' kernel; None for every other strategy."""
    return float(getattr(strategy, "mu", 0.0)) if strategy.name == "fedprox" else None


def compile_mu(config: SimConfig) -> float:
    """The proximal_mu to compile the clients' module with (pipeline.Options): the strategy's."""
    return client_proximal_mu(make_strategy(config.strategy, **config.strategy_options)) or 0.0


def _proximal_warnings(strategy: Strategy, model: Any) -> list[str]:
    mu = client_proximal_mu(strategy)
    if mu and getattr(model, "anchor", None) is None:
        return [f"fedprox: the module was compiled without the proximal term, so mu={mu:g} is "
                "ignored and clients train as in fedavg (compile with proximal_mu > 0)"]
    return []


def simulate(wasm: bytes, manifest: Mapping[str, Any], data: Dataset, config: SimConfig,
             on_round: Callable[[RoundResult], None] | None = None,
             native_ir: str | None = None) -> SimResult:
    """Run a whole simulation; see the module docstring (and Simulation for native_ir)."""
    return Simulation(wasm, manifest, data, config, native_ir).run(on_round)
