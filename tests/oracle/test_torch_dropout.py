"""dropout against PyTorch. torch's RNG is not fedc's, so: p = 0 must match exactly; for p > 0
torch replays fedc's mask (fedc.ops.dropout.keep_mask, bit-identical to the Wasm kernel) and
must then agree on loss, gradients and parameters; and the masks have the right statistics."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedc.ops.dropout import keep_mask
from fedc.pipeline import compile_source
from fedc.runtime import Model

from .torch_harness import ParamMap, compare_with_torch, random_batches, same, torch

COVERS = {"dropout"}

F = torch.nn.functional

SRC = """model M:
    input x: f32[10]
    target y: class[4]
    h = dropout(relu(dense(x, 16)), {p0})
    h = dropout(tanh(dense(h, 12)), p={p1})
    logits = dense(h, 4)
    loss = softmax_cross_entropy(logits, y)
optimizer sgd(lr=0.1, momentum=0.9)
"""


def _build(p0: float, p1: float, replay: bool) -> Any:
    """The torch model; replay=True applies fedc's masks for key [seed 0, step], step counting
    train steps the way the Python runtime does after init_weights(0)."""
    step = [-1]

    def drop(h: Any, p: float, stream: int) -> Any:
        if not replay:
            return F.dropout(h, p, training=True)
        keep = keep_mask(np.array([0, step[0]]), stream, h.numel(), p).reshape(h.shape)
        return h * torch.as_tensor(keep) * (1.0 / (1.0 - p))

    def build(fedc: dict[str, np.ndarray]) -> tuple[Any, ParamMap]:
        ps = {k: torch.nn.Parameter(torch.as_tensor(v.copy())) for k, v in fedc.items()}

        def loss_fn(x: Any, y: Any) -> Any:
            step[0] += 1
            h = drop(F.relu(x @ ps["dense_0.weight"] + ps["dense_0.bias"]), p0, 0)
            h = drop(torch.tanh(h @ ps["dense_1.weight"] + ps["dense_1.bias"]), p1, 1)
            return F.cross_entropy(h @ ps["dense_2.weight"] + ps["dense_2.bias"], y)

        return loss_fn, {k: (p, same) for k, p in ps.items()}

    return build


def _sgd(ps: list[Any]) -> Any:
    return torch.optim.SGD(ps, lr=0.1, momentum=0.9)


def test_dropout_with_p_zero_matches_torch_exactly():
    batches = random_batches(np.random.default_rng(0), [8, 8, 3], (10,), classes=4)
    compare_with_torch(SRC.format(p0=0.0, p1=0.0), _build(0.0, 0.0, replay=False), _sgd, batches)


@pytest.mark.parametrize("p0,p1", [(0.3, 0.5), (0.1, 0.8)])
def test_dropout_matches_torch_replaying_the_same_masks(p0, p1):
    """Forward and backward use one mask per step and layer, scaled by 1/(1 − p)."""
    batches = random_batches(np.random.default_rng(1), [8, 8, 3, 8, 8], (10,), classes=4)
    compare_with_torch(SRC.format(p0=p0, p1=p1), _build(p0, p1, replay=True), _sgd, batches)


# --- statistics, read straight from the module --------------------------------------------

STATS = """model S:
    input x: f32[32]
    target y: f32[64]
    p = dropout(dense(x, 64), {p})
    loss = mse(p, y)
optimizer sgd(lr=0.01)
"""


@pytest.mark.parametrize("p", [0.1, 0.5, 0.75])
def test_dropout_keep_rate_scale_and_eval_identity(p):
    art = compile_source(STATS.format(p=p), "stats.fed")
    model = Model(art.wasm, art.manifest)
    model.init_weights(0)
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (256, 32)).astype(np.float32)
    y = np.zeros((256, 64), np.float32)
    clean = model.predict(x)  # predict and eval_step: dropout is the identity
    assert model.evaluate(x, y)["loss"] == pytest.approx(float((clean ** 2).mean()), rel=1e-5)
    model.train_step(x, y)  # the train-mode prediction, before the update changes the weights
    dropped = model.output[:256].copy()
    kept = dropped != 0
    rate, sigma = kept.mean(), np.sqrt(p * (1 - p) / kept.size)
    assert abs(rate - (1 - p)) < 5 * sigma, f"keep rate {rate:.4f}, expected {1 - p}"
    np.testing.assert_array_equal(dropped[kept], clean[kept] * np.float32(1 / (1 - p)))
    np.testing.assert_array_equal(kept, keep_mask(np.array([0, 0]), 0, kept.size, p)
                                  .reshape(kept.shape))


def test_masks_differ_across_steps_layers_and_seeds():
    p, count = 0.5, 1 << 16
    base = keep_mask(np.array([7, 3]), 0, count, p)
    for other in (keep_mask(np.array([7, 4]), 0, count, p),   # next step
                  keep_mask(np.array([7, 3]), 1, count, p),   # next layer
                  keep_mask(np.array([8, 3]), 0, count, p)):  # another seed
        agree = (base == other).mean()
        assert abs(agree - 0.5) < 5 * np.sqrt(0.25 / count), agree
    assert base[:count // 2].mean() == pytest.approx(0.5, abs=0.02)  # no drift along the index
    assert base[count // 2:].mean() == pytest.approx(0.5, abs=0.02)
