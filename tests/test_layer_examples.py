"""The logistic-regression and text-classifier examples train to their documented accuracy
(docs/examples.md); token ids, the binary task and dropout's key through compiler and runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedc.cli import main
from fedc.data import TEXT_LENGTH, TEXT_VOCAB, load_dataset
from fedc.ops import REGISTRY
from fedc.pipeline import compile_source
from fedc.runtime import Model, RuntimeDataError
from fedc.train import train

from .conftest import EXAMPLES
from .op_harness import WasmKernel


@pytest.fixture(scope="module")
def topic():
    return compile_source((EXAMPLES / "topic_classifier.fed").read_text(), "topic_classifier.fed")


def test_breast_cancer_logreg_reaches_95_percent_through_the_cli(capsys):
    code = main(["train", str(EXAMPLES / "breast_cancer_logreg.fed"), "--data", "breast_cancer",
                 "--epochs", "20", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"]
    assert out["test_accuracy"] >= 0.95, out["history"][-1]


def test_topic_classifier_reaches_85_percent(topic):
    data = load_dataset("synthetic_text", seed=0)
    result = train(Model(topic.wasm, topic.manifest), data, epochs=30, batch_size=32, seed=0)
    assert result.history[-1].test_accuracy >= 0.85


def test_manifest_declares_task_vocab_and_dropout_key(topic):
    m = topic.manifest
    assert m["task"] == "classification"
    assert m["inputs"] == [{"name": "t", "dtype": "i32", "shape": [TEXT_LENGTH],
                            "offset": m["inputs"][0]["offset"], "vocab": TEXT_VOCAB}]
    assert m["rng"]["shape"] == [2] and m["rng"]["dtype"] == "u32"
    logreg = compile_source((EXAMPLES / "breast_cancer_logreg.fed").read_text(), "l.fed")
    assert logreg.manifest["task"] == "binary" and logreg.manifest["rng"] is None


def test_synthetic_text_is_generated_identically_as_int32_ids():
    a, b = load_dataset("synthetic_text", seed=3), load_dataset("synthetic_text", seed=3)
    assert a.x_train.dtype == np.int32 and a.x_train.shape[1] == TEXT_LENGTH
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert 0 <= a.x_train.min() and a.x_train.max() < TEXT_VOCAB
    assert sorted(np.unique(a.y_train)) == [0, 1, 2, 3]


def test_runtime_rejects_token_ids_outside_the_vocabulary(topic):
    model = Model(topic.wasm, topic.manifest)
    ids = np.zeros((2, TEXT_LENGTH), np.int32)
    ids[1, 4] = TEXT_VOCAB
    with pytest.raises(RuntimeDataError, match=r"token id 64, outside .* 0\.\.63"):
        model.train_step(ids, np.array([0, 1]))
    ids[1, 4] = -1
    with pytest.raises(RuntimeDataError, match="token id -1"):
        model.predict(ids)


def test_wasm_embedding_reads_zeros_and_drops_gradients_for_out_of_range_ids():
    ids = np.array([[0, 4, 5, -1, 1 << 30, 2]] * 2, np.int32)  # vocab 5 (the op's sample)
    w = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    got = WasmKernel("embedding", max_batch=2)([ids, w], 2)
    np.testing.assert_array_equal(got[:, 2:5], 0)
    np.testing.assert_array_equal(got, REGISTRY["embedding"].ref([ids, w], {}))
    dy = np.ones((2, 6, 4), np.float32)
    grad = WasmKernel("embedding_grad", max_batch=2)([dy, ids], 2)
    np.testing.assert_array_equal(grad.sum(axis=1), [8, 0, 8, 0, 8])  # ids 0, 2, 4 twice each


def test_eval_and_predict_ignore_dropout_but_training_steps_differ(topic):
    data = load_dataset("synthetic_text", seed=0)
    model = Model(topic.wasm, topic.manifest)
    model.init_weights(0)
    x, y = data.x_test[:64], data.y_test[:64]
    np.testing.assert_array_equal(model.predict(x), model.predict(x))
    start = model.get_weights()
    losses = []
    for _ in range(2):  # the same batch and weights, but a new dropout key each step
        model.set_weights(start)
        model.reset_optimizer()
        losses.append(model.train_step(x, y))
    assert losses[0] != losses[1] and model.dropout_step == 2
