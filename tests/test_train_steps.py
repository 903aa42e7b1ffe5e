"""train_steps(n, count): several optimizer steps in one host call, the same bits as count
train_step calls (weights, losses, dropout masks), and train_epoch's use of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedc.pipeline import compile_source
from fedc.runtime import Model

ROOT = Path(__file__).resolve().parents[1]
# digits: one f32 input; the CNN: an image input; topic: i32 token ids and dropout
EXAMPLES = ("digits_mlp", "digits_cnn", "topic_classifier")


@pytest.fixture(scope="module", params=EXAMPLES)
def art(request):
    path = ROOT / "examples" / f"{request.param}.fed"
    return compile_source(path.read_text(), str(path))


def _data(manifest: dict, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, t = manifest["inputs"][0], manifest["targets"][0]
    if d["dtype"] == "i32":
        x = rng.integers(0, d["vocab"], size=(rows, *d["shape"])).astype(np.int32)
    else:
        x = rng.normal(size=(rows, *d["shape"])).astype(np.float32)
    return x, rng.integers(0, t["classes"], rows).astype(np.int32)


def _pair(art) -> tuple[Model, Model]:
    models = Model(art.wasm, art.manifest), Model(art.wasm, art.manifest)
    for m in models:
        m.init_weights(0)
        m.dropout_seed = 12345
    return models


@pytest.mark.parametrize("n,count", [(32, 8), (7, 5), (1, 3), (100, 2), (3, 1)])
def test_train_steps_is_count_train_steps(art, n, count):
    """Blocks j·n … of the batch buffers, step j's loss at losses[j], the dropout key's step
    word one higher each step: bit for bit what count calls of train_step do."""
    a, b = _pair(art)
    x, y = _data(art.manifest, n * count, seed=n)
    rows = slice(0, n * count)
    a.inputs[art.manifest["inputs"][0]["name"]][rows] = x
    a.targets["y"][rows] = y
    a._next_dropout_key()
    a._calls["train_steps"](n, count)
    losses = a._losses[:count].copy()
    want = [b.train_step(x[j * n:(j + 1) * n], y[j * n:(j + 1) * n]) for j in range(count)]
    assert losses.tolist() == want
    assert np.array_equal(a.get_weights(), b.get_weights())
    assert not np.array_equal(a.get_weights(), Model(art.wasm, art.manifest).get_weights())
    if a._dropout_key is not None:  # the key the last step used
        assert a._dropout_key.view(np.uint32)[1] == b.dropout_step - 1


@pytest.mark.parametrize("batch", [32, 7, 100, 256])
def test_train_epoch_through_train_steps_matches_one_call_a_batch(art, batch):
    """train_epoch gathers max_batch // batch batches at a time into one train_steps call; its
    mean loss and weights equal those of one train_step call a batch (the last partial batch
    and a short last chunk included: 1000 rows)."""
    a, b = _pair(art)
    del b._calls["train_steps"]
    x, y = _data(art.manifest, 1000, seed=1)
    for epoch in range(2):
        assert a.train_epoch(x, y, batch, seed=epoch) == b.train_epoch(x, y, batch, seed=epoch)
        assert np.array_equal(a.get_weights(), b.get_weights())
        assert a.dropout_step == b.dropout_step
