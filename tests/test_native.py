"""The native build (fedc/native.py, MCJIT on the host) against the Wasm module of the same IR."""

from __future__ import annotations

import numpy as np
import pytest

from fedc.native import NativeModel, native_ir
from fedc.pipeline import compile_source
from fedc.runtime import Model

SRC = """model M:
    input x: f32[{features}]
    target y: class[{classes}]
    h = relu(dense(x, 24))
    h = tanh(layer_norm(dense(h, 13)))
    logits = dense(h, {classes})
    loss = softmax_cross_entropy(logits, y, label_smoothing=0.1)
optimizer sgd(lr=0.1, momentum=0.9, weight_decay=0.001)
"""


@pytest.fixture(scope="module")
def pair():
    art = compile_source(SRC.format(features=19, classes=7), "m.fed")
    return art, Model(art.wasm, art.manifest), NativeModel.from_artifacts(art)


def test_native_and_wasm_training_agree_after_several_steps(pair):
    _, wasm, native = pair
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 19)).astype(np.float32)
    y = rng.integers(0, 7, size=90)
    for m in (wasm, native):
        m.init_weights(5)
    for start in range(0, 90, 13):  # batches of 13 and a last one of 12
        lw = wasm.train_step(x[start:start + 13], y[start:start + 13])
        ln = native.train_step(x[start:start + 13], y[start:start + 13])
        assert ln == pytest.approx(lw, rel=1e-5)
    np.testing.assert_allclose(native.get_weights(), wasm.get_weights(), rtol=1e-5, atol=1e-6)
    assert native.train_epoch(x, y, 16, seed=3) == pytest.approx(wasm.train_epoch(x, y, 16, seed=3),
                                                                 rel=1e-5)
    ew, en = wasm.evaluate(x, y), native.evaluate(x, y)
    assert en["loss"] == pytest.approx(ew["loss"], rel=1e-5)
    assert en["accuracy"] == ew["accuracy"]
    np.testing.assert_allclose(native.predict(x), wasm.predict(x), rtol=1e-5, atol=1e-6)


def test_native_clones_own_their_memory(pair):
    _, _, native = pair
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 19)).astype(np.float32), rng.integers(0, 7, size=8)
    native.init_weights(2)
    twin = native.clone()
    twin.set_weights(native.get_weights())
    before = native.get_weights()
    twin.train_step(x, y)
    np.testing.assert_array_equal(native.get_weights(), before)  # untouched by the clone
    native.reset_optimizer()
    native.train_step(x, y)  # the same step from the same state: the same weights
    np.testing.assert_array_equal(native.get_weights(), twin.get_weights())


def test_native_ir_addresses_linear_memory_through_the_base_global(pair):
    art, _, _ = pair
    text = native_ir(art)
    assert '@"fedc_base" = global ptr null' in text
    assert "inttoptr" not in text
    assert "inttoptr" in art.llvm_ir and "fedc_base" not in art.llvm_ir  # Wasm: unchanged


def test_a_second_jit_works_after_the_first_engine_is_freed():
    """MCJIT frees its target machine with the engine: none may be shared between builds."""
    import gc

    art = compile_source(SRC.format(features=3, classes=2), "small.fed")
    losses = []
    for _ in range(2):
        model = NativeModel.from_artifacts(art)
        model.init_weights(0)
        losses.append(model.train_step(np.ones((2, 3), np.float32), np.array([0, 1])))
        del model
        gc.collect()
    assert losses[0] == losses[1]


def test_cli_trains_the_same_with_target_native(capsys):
    import json

    from fedc.cli import main

    runs = {}
    for target in ("wasm", "native"):
        assert main(["train", "examples/digits_mlp.fed", "--data", "digits", "--epochs", "2",
                     "--target", target, "--json"]) == 0
        runs[target] = json.loads(capsys.readouterr().out)
    assert runs["native"]["target"] == "native"
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert runs["native"][key] == pytest.approx(runs["wasm"][key], rel=1e-5), key
    assert main(["compile", "examples/digits_mlp.fed", "--target", "native", "-o", "x"]) == 2
