"""Training inside the Wasm module against an independent hand-written numpy implementation."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from fedc.pipeline import compile_source
from fedc.runtime import Model, RuntimeDataError

MLP = """model M:
    input x: f32[64]
    target y: class[10]
    h = {act}(dense(x, 32))
    logits = dense(h, 10)
    loss = softmax_cross_entropy(logits, y)
optimizer sgd(lr=0.1, momentum={momentum}, weight_decay={wd}{nesterov})
"""


def numpy_mlp_sgd(params, batches, act, lr, momentum, wd, nesterov):
    """A hand-written numpy forward/backward/SGD for dense–act–dense–softmax-xent (float64)."""
    w1, b1, w2, b2 = (p.astype(np.float64) for p in params)
    vel = [np.zeros_like(p) for p in (w1, b1, w2, b2)]
    losses = []
    for x, y in batches:
        n = len(y)
        z1 = x @ w1 + b1
        h = {"relu": np.maximum(z1, 0), "tanh": np.tanh(z1),
             "sigmoid": 1 / (1 + np.exp(-z1))}[act]
        z2 = h @ w2 + b2
        z2s = z2 - z2.max(axis=1, keepdims=True)
        p = np.exp(z2s) / np.exp(z2s).sum(axis=1, keepdims=True)
        losses.append(-np.log(p[np.arange(n), y]).mean())
        dz2 = p.copy()
        dz2[np.arange(n), y] -= 1
        dz2 /= n
        dw2, db2 = h.T @ dz2, dz2.sum(0)
        dh = dz2 @ w2.T
        dz1 = dh * {"relu": z1 > 0, "tanh": 1 - h**2, "sigmoid": h * (1 - h)}[act]
        dw1, db1 = x.T @ dz1, dz1.sum(0)
        new = []
        for i, (w, g) in enumerate(zip((w1, b1, w2, b2), (dw1, db1, dw2, db2), strict=True)):
            d = g + wd * w
            if momentum:
                vel[i] = momentum * vel[i] + d
                d = d + momentum * vel[i] if nesterov else vel[i]
            new.append(w - lr * d)
        w1, b1, w2, b2 = new
    return [w1, b1, w2, b2], losses


@pytest.mark.parametrize("act,momentum,wd,nesterov", [
    ("relu", 0.9, 0.0, False), ("tanh", 0.0, 0.01, False), ("sigmoid", 0.5, 0.001, True),
])
def test_training_steps_match_handwritten_numpy_sgd(act, momentum, wd, nesterov):
    src = MLP.format(act=act, momentum=momentum, wd=wd,
                     nesterov=", nesterov=true" if nesterov else "")
    art = compile_source(src, "m.fed")
    model = Model(art.wasm, art.manifest)
    model.init_weights(1)
    start = list(model.weights_by_name().values())
    rng = np.random.default_rng(2)
    batches = [(rng.random((n, 64)).astype(np.float32), rng.integers(0, 10, n))
               for n in (16, 16, 7, 16)]
    losses = [model.train_step(x, y) for x, y in batches]
    want_params, want_losses = numpy_mlp_sgd(start, batches, act, 0.1, momentum, wd, nesterov)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    for got, want in zip(model.weights_by_name().values(), want_params, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_digits_mlp_reaches_95_percent(digits_mlp):
    from fedc.data import load_dataset
    from fedc.train import train

    data = load_dataset("digits", seed=0)
    model = Model(digits_mlp.wasm, digits_mlp.manifest)
    result = train(model, data, epochs=20, batch_size=32, seed=0)
    assert result.history[-1].test_accuracy >= 0.95
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_same_seed_same_weights(digits_mlp):
    from fedc.data import load_dataset
    from fedc.train import train

    data = load_dataset("digits", seed=0)
    runs = []
    for _ in range(2):
        model = Model(digits_mlp.wasm, digits_mlp.manifest)
        train(model, data, epochs=2, batch_size=32, seed=5)
        runs.append(model.get_weights())
    assert np.array_equal(runs[0], runs[1])


def test_runtime_rejects_bad_data_with_clear_errors(digits_mlp):
    model = Model(digits_mlp.wasm, digits_mlp.manifest)
    x = np.zeros((4, 64), np.float32)
    with pytest.raises(RuntimeDataError, match="rows of shape \\[64\\]"):
        model.train_step(np.zeros((4, 63)), np.zeros(4, int))
    with pytest.raises(RuntimeDataError, match="class label 10 is outside 0..9"):
        model.train_step(x, np.array([0, 1, 2, 10]))
    with pytest.raises(RuntimeDataError, match="NaN or Inf"):
        model.train_step(np.full((4, 64), np.nan), np.zeros(4, int))
    with pytest.raises(RuntimeDataError, match="1..256 rows"):
        model.train_step(np.zeros((300, 64)), np.zeros(300, int))
    with pytest.raises(RuntimeDataError, match="4 input rows but 3 target rows"):
        model.train_step(x, np.zeros(3, int))
    with pytest.raises(RuntimeDataError, match="expects 9610 float32 values"):
        model.set_weights(np.zeros(5, np.float32))


@pytest.mark.parametrize("labels", [np.full(4, 2**32 + 3, np.int64), np.full(4, 2.0**32 + 3),
                                    np.full(4, 1e20), np.full(4, 2**63, np.uint64)])
def test_runtime_rejects_labels_beyond_int32_instead_of_wrapping_them(digits_mlp, labels):
    # cast to int32, 2**32 + 3 would become class 3 and pass the range check
    model = Model(digits_mlp.wasm, digits_mlp.manifest)
    with pytest.raises(RuntimeDataError, match="target 'y' holds .* outside the int32 range"):
        model.train_step(np.zeros((4, 64), np.float32), labels)


def test_binary_targets_outside_0_1_are_refused_and_soft_labels_train():
    """Labels in {-1, 1} trained a bce_with_logits model silently (toward a loss with no
    minimum); a probability in between is a soft label and stays allowed."""
    root = Path(__file__).resolve().parent.parent
    art = compile_source((root / "examples" / "breast_cancer_logreg.fed").read_text(), "b.fed")
    model = Model(art.wasm, art.manifest)
    model.init_weights(0)
    before = model.get_weights()
    x = np.full((4, 30), 0.5, np.float32)
    for bad, calls in ((-1, ("train_step", "train_epoch", "evaluate")), (2, ("train_step",))):
        y = np.array([1, bad, 1, 0], np.float32)
        for call in calls:
            with pytest.raises(RuntimeDataError, match=f"target 'y' holds {bad}, outside 0..1"):
                getattr(model, call)(x, y)
    assert np.array_equal(model.get_weights(), before)  # nothing was trained on them
    assert np.isfinite(model.train_step(x, np.array([0, 0.25, 1, 0.75], np.float32)))


def test_runtime_rejects_complex_inputs(digits_mlp):
    model = Model(digits_mlp.wasm, digits_mlp.manifest)
    with pytest.raises(RuntimeDataError, match="input 'x' must be numeric, got complex128"):
        model.train_step(np.zeros((4, 64), complex), np.zeros(4, int))


@pytest.mark.parametrize("batch_size", [8.0, "8", True, 0])
def test_train_epoch_batch_size_must_be_an_integer_in_range(digits_mlp, batch_size):
    model = Model(digits_mlp.wasm, digits_mlp.manifest)
    with pytest.raises(RuntimeDataError, match="batch_size must be an integer in 1..256"):
        model.train_epoch(np.zeros((20, 64), np.float32), np.zeros(20, int), batch_size)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True, None])
def test_init_weights_seed_must_be_an_integer_at_least_0(digits_mlp, seed):
    model = Model(digits_mlp.wasm, digits_mlp.manifest)
    with pytest.raises(RuntimeDataError, match=f"init_weights: seed must be an integer ≥ 0, "
                                               f"got {re.escape(repr(seed))}"):
        model.init_weights(seed)
    model.init_weights(np.int64(2**40))  # numpy integers and large seeds are fine


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_class_labels_are_refused_without_a_numpy_warning(digits_mlp, bad):
    model = Model(digits_mlp.wasm, digits_mlp.manifest)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.mod(inf, 1) warned "invalid value" first
        with pytest.raises(RuntimeDataError, match="target 'y' must hold integers, got NaN or "
                                                   "Inf"):
            model.train_step(np.zeros((3, 64), np.float32), np.array([1.0, bad, 2.0]))


@pytest.mark.parametrize("steps", [-1, 1.5, "3", True, None, 2**31, 2**40])
def test_steps_must_be_an_integer_the_i32_counter_holds(digits_mlp, steps):
    # 1.5 was truncated to 1; "3", None and 2**40 raised TypeError or OverflowError
    model = Model(digits_mlp.wasm, digits_mlp.manifest)
    with pytest.raises(RuntimeDataError, match=f"steps must be an integer in 0..2147483647 "
                                               f"\\(the module's i32 step counter\\), got "
                                               f"{re.escape(repr(steps))}"):
        model.steps = steps
    assert model.steps == 0
    model.steps = np.int64(2**31 - 1)
    assert model.steps == 2**31 - 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e39, 10**400,
                                   "0.1", None, True])
def test_set_hparam_value_must_be_a_finite_float32(digits_mlp, value):
    model = Model(digits_mlp.wasm, digits_mlp.manifest)
    before = model.hparams.copy()
    with pytest.raises(RuntimeDataError, match=f"set_hparam: lr must be a finite number, "
                                               f"got {re.escape(repr(value))}"):
        model.set_hparam("lr", value)
    assert np.array_equal(model.hparams, before)
    model.set_hparam("lr", np.float64(0.05))
    assert model.hparams[0] == np.float32(0.05)


def test_load_of_a_folder_that_is_not_a_model_names_the_path(tmp_path, digits_mlp):
    with pytest.raises(RuntimeDataError, match=f"no such model folder: {re.escape(str(tmp_path))}"
                                               "/nope"):
        Model.load(tmp_path / "nope")
    with pytest.raises(RuntimeDataError, match=f"{re.escape(str(tmp_path))} is not a model "
                                               "folder: it has no manifest.json"):
        Model.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RuntimeDataError, match="manifest.json is not valid JSON"):
        Model.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(digits_mlp.manifest))
    for variant in (None, "simd128"):
        with pytest.raises(RuntimeDataError, match=f"{re.escape(str(tmp_path))} has no "
                                                   r"model.wasm \(named in manifest.json\)"):
            Model.load(tmp_path, variant=variant)
    (tmp_path / "model.wasm").write_bytes(digits_mlp.wasm)
    assert Model.load(tmp_path).num_params == 9610


@pytest.mark.parametrize("weights, found", [
    (["a"], "values of dtype <U1"), ("a", "values of dtype <U1"), ([], "shape \\(0,\\)"),
    (None, "values of dtype object"), ([[1.0, 2.0], [3.0]], "shape \\(3,\\)"),
    (((1.0, 2.0), (3.0,)), "a tuple numpy cannot read as an array"),
    (np.zeros(9610, bool), "values of dtype bool"), (np.zeros(9610, complex),
                                                     "values of dtype complex128"),
    (np.zeros((2, 9610), np.float32), "shape \\(2, 9610\\)")])
def test_set_weights_of_the_wrong_type_or_shape_is_a_runtime_data_error(digits_mlp, weights,
                                                                        found):
    model = Model(digits_mlp.wasm, digits_mlp.manifest)
    with pytest.raises(RuntimeDataError, match=f"set_weights expects 9610 float32 values but "
                                               f"got {found}"):
        model.set_weights(weights)
    model.set_weights([np.zeros(9600, np.float64), list(range(10))])  # parts, any real dtype


def test_weights_round_trip_and_predict(digits_mlp):
    a = Model(digits_mlp.wasm, digits_mlp.manifest)
    a.init_weights(0)
    b = a.clone()
    b.set_weights(a.get_weights())
    x = np.random.default_rng(0).random((300, 64)).astype(np.float32)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    assert a.predict(x).shape == (300, 10)
