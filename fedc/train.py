"""Centralised training: a compiled model + a dataset → per-epoch metrics (every step in Wasm)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data import Dataset
from .diagnostics import DataError, Diagnostic


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float | None
    seconds: float
    samples_per_second: float

    def to_json(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in self.__dict__.items()}


def _finite(v: Any) -> Any:
    """JSON has no NaN/Inf: a diverged model's loss is written as null (as fedc simulate)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


@dataclass
class TrainResult:
    history: list[EpochResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        last = self.history[-1]
        total_s = sum(e.seconds for e in self.history)
        samples = sum(e.samples_per_second * e.seconds for e in self.history)
        return {
            "epochs": len(self.history),
            "train_loss": _finite(last.train_loss),
            "test_loss": _finite(last.test_loss),
            "test_accuracy": last.test_accuracy,
            "train_seconds": total_s,
            "samples_per_second": samples / total_s if total_s > 0 else 0.0,
            "history": [e.to_json() for e in self.history],
        }


def train(model: Any, data: Dataset, *, epochs: int, batch_size: int, seed: int = 0,
          on_epoch: Callable[[EpochResult], None] | None = None) -> TrainResult:
    """Initialise from `seed`, then train `epochs` shuffled passes, evaluating after each."""
    model.init_weights(seed)
    rng = np.random.default_rng([seed, 1])
    result = TrainResult()
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        loss = model.train_epoch(data.x_train, data.y_train, batch_size, rng)
        seconds = time.perf_counter() - start
        metrics = model.evaluate(data.x_test, data.y_test)
        er = EpochResult(epoch, loss, metrics["loss"], metrics.get("accuracy"), seconds,
                         len(data.y_train) / seconds if seconds > 0 else 0.0)
        result.history.append(er)
        if on_epoch is not None:
            on_epoch(er)
    return result


def check_fits(manifest: dict[str, Any], data: Dataset) -> None:
    """The dataset's features and labels fit the model's input and target, or a DataError."""
    decl = manifest["inputs"][0]
    want = int(np.prod(decl["shape"], dtype=np.int64))
    if len(manifest["inputs"]) != 1:
        raise DataError([Diagnostic(f"the model has {len(manifest['inputs'])} inputs; built-in "
                                    "datasets and .npz files provide one (x)")])
    if want != data.num_features:
        raise DataError([Diagnostic(
            f"dataset {data.name!r} has {data.num_features} features per example but input "
            f"{decl['name']!r} is {decl['dtype']}{decl['shape']} ({want} values)")])
    target = manifest["targets"][0]
    classes = target.get("classes")
    if classes is not None and data.num_classes is not None and data.num_classes > classes:
        raise DataError([Diagnostic(
            f"dataset {data.name!r} has {data.num_classes} classes but target "
            f"{target['name']!r} is class[{classes}]")])
    if classes is None and data.task != "regression" and manifest["task"] != "binary":
        raise DataError([Diagnostic(
            f"dataset {data.name!r} holds class labels but target {target['name']!r} is "
            f"real-valued ({target['dtype']}{target['shape']})")])
