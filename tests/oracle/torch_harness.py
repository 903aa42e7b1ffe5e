"""PyTorch as an independent oracle: same model, weights and batches; compare loss, gradients
and parameters step by step. Each oracle test module declares COVERS (op and optimizer names)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fedc.pipeline import compile_source  # noqa: E402
from fedc.runtime import Model  # noqa: E402

Batch = tuple[Any, np.ndarray]  # (x array or {name: array}, y)
# fedc parameter name → (torch parameter, map from torch layout to fedc layout)
ParamMap = dict[str, tuple[Any, Callable[[Any], Any]]]


@dataclass(frozen=True)
class Tolerance:
    loss: float = 1e-5
    grad: float = 1e-4  # relative to the gradient's max magnitude
    param: float = 1e-5  # relative to the parameter's max magnitude


def same(t: Any) -> Any:
    return t


def transpose(t: Any) -> Any:
    return t.T


def compare_with_torch(src: str, build: Callable[[dict[str, np.ndarray]], tuple[Any, ParamMap]],
                       make_optimizer: Callable[[list[Any]], Any], batches: Sequence[Batch], *,
                       seed: int = 0, tol: Tolerance = Tolerance(),
                       hparam_updates: Callable[[int, Model, Any], None] | None = None) -> None:
    """Train both for len(batches) steps and assert agreement after every step.

    build(fedc_weights) returns (loss_fn(x, y) -> scalar tensor, ParamMap); the torch
    parameters must be initialised from fedc_weights (in torch layout).
    hparam_updates(step, fedc_model, torch_optimizer), if given, runs before each step.
    """
    torch.manual_seed(0)
    torch.set_num_threads(1)
    art = compile_source(src, "oracle.fed")
    model = Model(art.wasm, art.manifest)
    model.init_weights(seed)
    loss_fn, params = build(model.weights_by_name())
    assert set(params) == set(model.param_views), "the oracle must map every fedc parameter"
    opt = make_optimizer([p for p, _ in params.values()])
    for step, (x, y) in enumerate(batches):
        if hparam_updates is not None:
            hparam_updates(step, model, opt)
        got_loss = model.train_step(x, y)
        opt.zero_grad()
        want = loss_fn(_tensor(x), torch.as_tensor(y))
        want.backward()
        assert got_loss == pytest.approx(want.item(), rel=tol.loss, abs=tol.loss), \
            f"step {step}: loss"
        grads = model.gradients_by_name()
        for name, (p, to_fedc) in params.items():
            _close(grads[name], to_fedc(p.grad), tol.grad, f"step {step}: gradient of {name}")
        opt.step()
        weights = model.weights_by_name()
        for name, (p, to_fedc) in params.items():
            _close(weights[name], to_fedc(p.detach()), tol.param,
                   f"step {step}: {name} after the update")


def _tensor(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: torch.as_tensor(v) for k, v in x.items()}
    return torch.as_tensor(x)


def _close(got: np.ndarray, want_t: Any, rel: float, what: str) -> None:
    want = want_t.detach().numpy()
    scale = max(float(np.abs(want).max()), 1e-6)
    err = float(np.abs(got - want).max())
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:.1g}·{scale:.3g}"


def load_into(module: Any, fedc: dict[str, np.ndarray], pairs: dict[str, tuple[Any, Any]]) -> None:
    """Copy fedc weights into torch parameters: pairs = {fedc_name: (param, to_torch)}."""
    with torch.no_grad():
        for name, (p, to_torch) in pairs.items():
            p.copy_(to_torch(torch.as_tensor(fedc[name])))


def random_batches(rng: np.random.Generator, sizes: Sequence[int], x_shape: tuple[int, ...],
                   classes: int | None = None, y_shape: tuple[int, ...] = ()) -> list[Batch]:
    out: list[Batch] = []
    for n in sizes:
        x = rng.normal(0, 1, size=(n, *x_shape)).astype(np.float32)
        if classes is not None:
            y = rng.integers(0, classes, size=n).astype(np.int64)
        else:
            y = rng.normal(0, 1, size=(n, *y_shape)).astype(np.float32)
        out.append((x, y))
    return out
