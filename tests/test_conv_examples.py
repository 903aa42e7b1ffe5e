"""The convolutional examples: they compile, train in fedc's runtime, and (slow) reach the
accuracy docs/examples.md documents, through the `fedc train` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedc.data import load_dataset
from fedc.pipeline import compile_file
from fedc.runtime import Model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CASES = {"digits_cnn.fed": ("digits", 10, 0.97), "waveforms_cnn1d.fed": ("waveforms", 20, 0.95)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_compiles_and_an_epoch_lowers_the_loss(name):
    data_name, _, _ = CASES[name]
    art = compile_file(EXAMPLES / name)
    model = Model(art.wasm, art.manifest)
    model.init_weights(0)
    data = load_dataset(data_name, seed=0)
    before = model.evaluate(data.x_test, data.y_test)
    model.train_epoch(data.x_train, data.y_train, 32, 0)
    after = model.evaluate(data.x_test, data.y_test)
    assert np.isfinite(after["loss"]) and after["loss"] < 0.9 * before["loss"]
    assert after["accuracy"] > before["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_example_reaches_its_documented_accuracy_with_fedc_train(name):
    data_name, epochs, accuracy = CASES[name]
    out = subprocess.run([sys.executable, "-m", "fedc", "train", str(EXAMPLES / name),
                          "--data", data_name, "--epochs", str(epochs), "--json"],
                         capture_output=True, text=True, check=True, timeout=600)
    result = json.loads(out.stdout)
    assert result["ok"] and result["epochs"] == epochs
    assert result["test_accuracy"] >= accuracy, result
