"""Dense layers, activations, softmax cross-entropy, MSE and SGD against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from .torch_harness import compare_with_torch, load_into, random_batches, same, torch, transpose

COVERS = {"dense", "relu", "sigmoid", "tanh", "softmax_cross_entropy", "mse", "add", "sgd"}

nn = torch.nn
F = torch.nn.functional

CLASSIFIER = """model M:
    input x: f32[12]
    target y: class[5]
    h = {act}(dense(x, 16))
    r = {act}(dense(h, 16)) + h
    logits = dense(r, 5)
    loss = softmax_cross_entropy(logits, y)
optimizer sgd(lr=0.1, momentum={momentum}, weight_decay={wd}{nesterov})
"""


def _mlp(fedc: dict[str, np.ndarray], act: str, out: int, loss: str):
    l0, l1, l2 = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, out)
    params = {}
    for i, layer in enumerate((l0, l1, l2)):
        params[f"dense_{i}.weight"] = (layer.weight, transpose)
        params[f"dense_{i}.bias"] = (layer.bias, same)
    load_into(None, fedc, params)
    fn = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[act]

    def loss_fn(x, y):
        h = fn(l0(x))
        r = fn(l1(h)) + h
        z = l2(r)
        return F.cross_entropy(z, y) if loss == "xent" else F.mse_loss(z, y)

    return loss_fn, params


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("momentum,wd,nesterov", [(0.0, 0.0, False), (0.9, 1e-3, False),
                                                  (0.8, 0.0, True)])
def test_classifier_with_residual_matches_torch_sgd(act, momentum, wd, nesterov):
    src = CLASSIFIER.format(act=act, momentum=momentum, wd=wd,
                            nesterov=", nesterov=true" if nesterov else "")
    batches = random_batches(np.random.default_rng(0), [8, 8, 3, 8], (12,), classes=5)
    compare_with_torch(
        src, lambda w: _mlp(w, act, 5, "xent"),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=momentum, weight_decay=wd,
                                   nesterov=nesterov),
        batches)


def test_regression_mse_matches_torch():
    src = """model R:
    input x: f32[12]
    target y: f32[3]
    h = tanh(dense(x, 16))
    r = tanh(dense(h, 16)) + h
    p = dense(r, 3)
    loss = mse(p, y)
optimizer sgd(lr=0.05, momentum=0.5)
"""
    batches = random_batches(np.random.default_rng(1), [8, 5, 8], (12,), y_shape=(3,))
    compare_with_torch(src, lambda w: _mlp(w, "tanh", 3, "mse"),
                       lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5), batches)


WIDE = """model W:
    input x: f32[300]
    target y: class[10]
    h = relu(dense(x, 64))
    g = tanh(dense(h, 256))
    logits = dense(g, 10)
    loss = softmax_cross_entropy(logits, y)
optimizer sgd(lr=0.05, momentum=0.9, weight_decay=1e-3)
"""


def test_weights_stored_in_panels_match_torch():
    """Both hidden weights are stored in panels (fedc/layout.py): forward, input gradient
    (through the 64 × 256 one), weight gradients and the update, seen through the runtime's
    row-major accessors."""
    from fedc.pipeline import compile_source

    layouts = {p["name"]: p.get("layout") for p in
               compile_source(WIDE, "w.fed").manifest["params"]}
    assert layouts == {"dense_0.weight": {"panels": 8}, "dense_0.bias": None,
                       "dense_1.weight": {"panels": 8}, "dense_1.bias": None,
                       "dense_2.weight": None, "dense_2.bias": None}
    l0, l1, l2 = nn.Linear(300, 64), nn.Linear(64, 256), nn.Linear(256, 10)

    def build(fedc: dict[str, np.ndarray]):
        params = {}
        for i, layer in enumerate((l0, l1, l2)):
            params[f"dense_{i}.weight"] = (layer.weight, transpose)
            params[f"dense_{i}.bias"] = (layer.bias, same)
        load_into(None, fedc, params)
        return (lambda x, y: F.cross_entropy(l2(torch.tanh(l1(F.relu(l0(x))))), y)), params

    batches = random_batches(np.random.default_rng(2), [16, 5, 16], (300,), classes=10)
    compare_with_torch(WIDE, build,
                       lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
                       batches)
