"""Every optimizer's fused Wasm update against its numpy reference, one step at a time."""

from __future__ import annotations

import numpy as np
import pytest

from fedc.optim import OPTIMIZERS, reference_update
from fedc.pipeline import compile_source
from fedc.runtime import Model, RuntimeDataError

# 6·7 + 7 + 7·3 + 3 = 73 parameters: not a multiple of 4, so the scalar tail and the padded
# slot stride are exercised
MODEL = """model M:
    input x: f32[6]
    target y: f32[3]
    h = tanh(dense(x, {hidden}))
    loss = mse(dense(h, 3), y)
optimizer {optimizer}
{federated}"""

DEFAULTS = [f"{name}(lr=0.05)" for name in sorted(OPTIMIZERS)]
VARIANTS = [
    "sgd(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=true)",
    "adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1, amsgrad=true)",
    "adamw(lr=0.02, weight_decay=0.3)",
    "rmsprop(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.5, centered=true)",
    "rmsprop(lr=0.01, centered=true)",
    "adagrad(lr=0.1, lr_decay=0.05, weight_decay=0.01, initial_accumulator_value=0.1, eps=1e-6)",
    "sgd(lr=0.1, schedule=step(step_size=2, gamma=0.5), warmup=2)",
    "adam(lr=0.01, schedule=cosine(t_max=3, eta_min=0.001))",
    "adagrad(lr=0.1, clip_norm=0.05)",
    "rmsprop(lr=0.01, momentum=0.9, clip_norm=100.0, warmup=3)",
]


def _source(optimizer: str, federated: str = "", hidden: int = 7) -> str:
    return MODEL.format(optimizer=optimizer, federated=federated, hidden=hidden)


FEDPROX = "federated:\n    strategy = fedprox\n    proximal_mu = 0.5\n"


def _state(model: Model) -> list[np.ndarray]:
    region = model.manifest["optimizer"]["state_region"]
    stride, n = region["slot_stride"], model.num_params
    return [model._state[s * stride: s * stride + n].astype(np.float64)
            for s in range(len(region["slots"]))]


def _check_steps(src: str, steps: int = 6, anchor_shift: float = 0.0) -> None:
    art = compile_source(src, "opt.fed")
    spec = art.model.optimizer
    model = Model(art.wasm, art.manifest)
    model.init_weights(3)
    if model.anchor is not None:
        model.set_anchor(model.get_weights() + anchor_shift)
    rng = np.random.default_rng(0)
    for k in range(steps):
        p = model.get_weights().astype(np.float64)
        state = _state(model)
        anchor = None if model.anchor is None else model.anchor.astype(np.float64)
        assert model.steps == k
        model.train_step(rng.normal(size=(5, 6)).astype(np.float32),
                         rng.normal(size=(5, 3)).astype(np.float32))
        reference_update(spec, p, model.grads.astype(np.float64), state, k, anchor)
        scale = max(float(np.abs(p).max()), 1e-3)
        np.testing.assert_allclose(model.params, p, rtol=0, atol=2e-6 * scale,
                                   err_msg=f"parameters after step {k}")
        for got, want in zip(_state(model), state, strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6 * np.abs(want).max(),
                                       err_msg=f"optimizer state after step {k}")


@pytest.mark.parametrize("hidden", [1, 2, 5])
@pytest.mark.parametrize("optimizer", ["sgd(lr=0.1, momentum=0.9)", "adam(lr=0.01)"])
def test_fused_update_covers_every_parameter_count_remainder(optimizer: str, hidden: int
                                                              ) -> None:
    """10·hidden + 3 = 13, 23, 53 parameters: the update's unrolled loop (8 per iteration),
    a leftover vector and 1 or 3 scalars."""
    _check_steps(_source(optimizer, hidden=hidden), steps=2)


@pytest.mark.parametrize("optimizer", DEFAULTS + VARIANTS)
def test_fused_update_matches_numpy_reference(optimizer: str) -> None:
    _check_steps(_source(optimizer=optimizer, federated=""))


@pytest.mark.parametrize("optimizer", ["sgd(lr=0.1, momentum=0.9)", "adam(lr=0.01, clip_norm=0.1)"])
def test_fedprox_term_matches_numpy_reference(optimizer: str) -> None:
    _check_steps(_source(optimizer=optimizer, federated=FEDPROX), anchor_shift=0.3)


def test_reset_optimizer_zeroes_state_and_step_counter() -> None:
    art = compile_source(_source(optimizer="adam(lr=0.01, amsgrad=true)", federated=""),
                         "opt.fed")
    model = Model(art.wasm, art.manifest)
    model.init_weights(0)
    x, y = np.ones((4, 6), np.float32), np.ones((4, 3), np.float32)
    first = model.get_weights()
    model.train_step(x, y)
    after_one = model.get_weights()
    model.train_step(x, y)
    assert model.steps == 2 and all(np.abs(s).max() > 0 for s in _state(model))
    model.reset_optimizer()
    assert model.steps == 0 and all(np.abs(s).max() == 0 for s in _state(model))
    model.set_weights(first)
    model.train_step(x, y)  # bias correction restarts at t = 1: the very first step again
    np.testing.assert_array_equal(model.get_weights(), after_one)


def test_fedprox_strategy_defaults_mu_and_gives_the_module_an_anchor() -> None:
    src = _source(optimizer="sgd(lr=0.1)", federated="federated:\n    strategy = fedprox\n")
    art = compile_source(src, "opt.fed")
    assert art.model.optimizer.proximal_mu == 0.01
    assert art.manifest["optimizer"]["hparams_order"][-1] == "proximal_mu"
    model = Model(art.wasm, art.manifest)
    model.init_weights(0)
    np.testing.assert_array_equal(model.anchor, model.params)  # anchored at the start
    w = model.get_weights() + 1
    model.set_weights(w)  # a new round's global model: the anchor follows
    np.testing.assert_array_equal(model.anchor, w)
    model.set_weights(w + 1, anchor=False)
    np.testing.assert_array_equal(model.anchor, w)


def test_a_model_without_fedprox_has_no_anchor_to_set() -> None:
    fed = "federated:\n    strategy = fedprox\n    proximal_mu = 0\n"
    art = compile_source(_source(optimizer="sgd(lr=0.1)", federated=fed), "opt.fed")
    assert art.manifest["anchor_region"] is None
    assert "proximal_mu" not in art.manifest["optimizer"]["hparams_order"]
    model = Model(art.wasm, art.manifest)
    with pytest.raises(RuntimeDataError, match="no FedProx anchor"):
        model.set_anchor(model.get_weights())
    with pytest.raises(RuntimeDataError, match="no FedProx anchor"):
        model.set_weights(model.get_weights(), anchor=True)
    model.set_weights(model.get_weights())  # the default just skips the anchor


def test_subnormal_optimizer_state_is_flushed_to_zero_every_16_steps() -> None:
    """A state value below the smallest normal float becomes +0 after the update of every
    step k ≡ 0 (mod lower.update.FLUSH_EVERY), and is left alone on the others: subnormal
    arithmetic is slow on x86 and Wasm has no flush-to-zero mode."""
    from fedc.lower.update import FLUSH_EVERY

    art = compile_source(_source("sgd(lr=0.1, momentum=0.9)"), "opt.fed")
    model = Model(art.wasm, art.manifest)
    model.init_weights(0)
    n, tiny = model.num_params, np.finfo(np.float32).tiny
    first = model.weights_by_name()
    w1 = next(iter(first.values()))  # dense_0's weight: x = 0 gives it exactly zero gradients
    assert w1.shape == (6, 7)
    x = np.zeros((5, 6), np.float32)
    y = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)

    def subnormals() -> int:
        a = np.abs(model._state[:n])
        return int(((a > 0) & (a < tiny)).sum())

    for steps, flushed in ((0, True), (1, False), (FLUSH_EVERY - 1, False), (FLUSH_EVERY, True),
                           (5 * FLUSH_EVERY, True)):
        model.steps = steps
        model._state[:n] = tiny / 4  # subnormal momentum everywhere
        model.train_step(x, y)
        if flushed:
            assert subnormals() == 0, steps
            assert (model._state[:w1.size] == 0).all()  # 0.9 · tiny/4 + 0, flushed
        else:
            assert subnormals() >= w1.size, steps  # decayed, still subnormal
        assert model.steps == steps + 1
