"""bce_with_logits, l1, huber and label-smoothed softmax cross-entropy against PyTorch: loss,
every gradient and every parameter over several SGD steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from .torch_harness import ParamMap, compare_with_torch, same, torch

COVERS = {"bce_with_logits", "l1", "huber"}

F = torch.nn.functional

SRC = """model M:
    input x: f32[10]
    target y: {target}
    h = tanh(dense(x, 12))
    p = dense(h, {out})
    loss = {loss}
optimizer sgd(lr=0.1, momentum=0.9)
"""


def _compare(target: str, out: int, loss_src: str, torch_loss: Callable[[Any, Any], Any],
             batches: list[Any]) -> None:
    def build(fedc: dict[str, np.ndarray]) -> tuple[Any, ParamMap]:
        ps = {k: torch.nn.Parameter(torch.as_tensor(v.copy())) for k, v in fedc.items()}

        def loss_fn(x: Any, y: Any) -> Any:
            h = torch.tanh(x @ ps["dense_0.weight"] + ps["dense_0.bias"])
            return torch_loss(h @ ps["dense_1.weight"] + ps["dense_1.bias"], y)

        return loss_fn, {k: (p, same) for k, p in ps.items()}

    compare_with_torch(SRC.format(target=target, out=out, loss=loss_src), build,
                       lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), batches)


def _batches(seed: int, y: Callable[[np.random.Generator, int], np.ndarray]) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, 1, (n, 10)).astype(np.float32), y(rng, n)) for n in (8, 8, 3, 8)]


@pytest.mark.parametrize("soft", [False, True])
def test_bce_with_logits_matches_torch(soft):
    def y(rng: np.random.Generator, n: int) -> np.ndarray:
        return (rng.random((n, 3)) if soft else rng.integers(0, 2, (n, 3))).astype(np.float32)

    _compare("f32[3]", 3, "bce_with_logits(p, y)", F.binary_cross_entropy_with_logits,
             _batches(0, y))


def test_bce_with_logits_is_stable_for_large_logits():
    """Inputs ×40 push the logits far past where log(1 + e^z) would overflow."""
    batches = [(40 * x, y) for x, y in
               _batches(1, lambda rng, n: rng.integers(0, 2, (n, 1)).astype(np.float32))]
    _compare("f32[1]", 1, "bce_with_logits(p, y)", F.binary_cross_entropy_with_logits, batches)


def test_l1_matches_torch():
    _compare("f32[4]", 4, "l1(p, y)", F.l1_loss,
             _batches(2, lambda rng, n: rng.normal(0, 1, (n, 4)).astype(np.float32)))


@pytest.mark.parametrize("delta", [None, 0.3, 2.5])
def test_huber_matches_torch(delta):
    src = "huber(p, y)" if delta is None else f"huber(p, y, delta={delta})"
    _compare("f32[4]", 4, src, lambda p, y: F.huber_loss(p, y, delta=delta or 1.0),
             _batches(3, lambda rng, n: rng.normal(0, 1.5, (n, 4)).astype(np.float32)))


@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_label_smoothing_matches_torch_cross_entropy(eps):
    _compare("class[5]", 5, f"softmax_cross_entropy(p, y, label_smoothing={eps})",
             lambda p, y: F.cross_entropy(p, y, label_smoothing=eps),
             _batches(4, lambda rng, n: rng.integers(0, 5, n).astype(np.int64)))
