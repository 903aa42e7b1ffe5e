"""fedc-shuffle/1: the seeded permutation both runtimes use → fixed values and properties."""

from __future__ import annotations

import numpy as np
import pytest

from fedc.runtime import RuntimeDataError, Shuffle

# Pinned outputs: the JS runtime is checked against the same numbers (tests/test_js_runtime.py),
# and changing them changes every client's batch order.
FIRST_U32_SEED0 = [3187719157, 707048947, 1554920386, 1551114672]
PERM_10_SEED42 = [5, 8, 6, 9, 4, 3, 2, 7, 0, 1]
PERM_8_SEED_2_40_PLUS_7 = [6, 3, 2, 5, 1, 0, 7, 4]


def test_shuffle_stream_matches_pinned_values():
    s = Shuffle(0)
    assert [s.next_u32() for _ in range(4)] == FIRST_U32_SEED0
    assert Shuffle(42).permutation(10).tolist() == PERM_10_SEED42
    assert Shuffle(2**40 + 7).permutation(8).tolist() == PERM_8_SEED_2_40_PLUS_7


@pytest.mark.parametrize("n", [0, 1, 2, 7, 257])
def test_permutation_is_a_permutation(n):
    assert sorted(Shuffle(n).permutation(n).tolist()) == list(range(n))


def test_below_is_roughly_uniform():
    s = Shuffle(7)
    counts = np.bincount([s.below(6) for _ in range(60_000)], minlength=6)
    assert counts.min() > 9_500 and counts.max() < 10_500


def test_high_seed_bits_change_the_stream():
    assert Shuffle(5).permutation(50).tolist() != Shuffle(5 + 2**32).permutation(50).tolist()


@pytest.mark.parametrize("bad", [-1, 2**53, 1.5, True, "3"])
def test_bad_seed_is_a_runtime_data_error(bad):
    with pytest.raises(RuntimeDataError, match="shuffle seed"):
        Shuffle(bad)


def test_train_epoch_with_int_seed_is_reproducible_and_continues_a_stream(digits_mlp):
    from fedc.runtime import Model
    rng = np.random.default_rng(0)
    x = rng.random((70, 64)).astype(np.float32)
    y = rng.integers(0, 10, 70)
    runs = []
    for seed in (3, 3, Shuffle(3)):
        m = Model(digits_mlp.wasm, digits_mlp.manifest)
        m.init_weights(0)
        m.train_epoch(x, y, 16, seed)
        runs.append(m.get_weights())
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
    m = Model(digits_mlp.wasm, digits_mlp.manifest)
    m.init_weights(0)
    m.train_epoch(x, y, 16, 4)
    assert not np.array_equal(runs[0], m.get_weights())


TWO_INPUTS = """model Two:
    input a: f32[{width}]
    input b: f32[2, 3]
    target y: class[4]
    h = concat(dense(a, 5), dense(flatten(b), 3))
    loss = softmax_cross_entropy(dense(h, 4), y)
optimizer sgd(lr=0.1, momentum=0.9)
"""


@pytest.mark.parametrize("width", [7, 700])  # a batch of a's rows under / over _TAKE_BYTES
def test_train_epoch_trains_on_the_rows_of_its_order(width):
    """train_epoch's batch gathers (opaque row records, or np.take for large batches) give
    the same weights, bit for bit, as train_step on the rows fedc-shuffle/1 orders."""
    from fedc.pipeline import compile_source
    from fedc.runtime import Model

    art = compile_source(TWO_INPUTS.format(width=width), "two.fed")
    rng = np.random.default_rng(width)
    a = rng.normal(size=(45, width)).astype(np.float32)
    b = rng.normal(size=(45, 2, 3)).astype(np.float32)
    y = rng.integers(0, 4, 45).astype(np.int32)
    epoch, steps = (Model(art.wasm, art.manifest) for _ in range(2))
    for m in (epoch, steps):
        m.init_weights(1)
    epoch.train_epoch({"a": a, "b": b}, y, 16, seed=9)
    order = Shuffle(9).permutation(45)
    for start in range(0, 45, 16):
        idx = order[start:start + 16]
        steps.train_step({"a": a[idx], "b": b[idx]}, y[idx])
    assert np.array_equal(epoch.get_weights(), steps.get_weights())


def test_train_epoch_on_no_rows_trains_nothing(digits_mlp):
    """No rows: no batch, and an error rather than a mean loss of 0 that would pass for a
    real one (fedc's partitions give every client a row; its clients refuse empty data), the
    weights unchanged."""
    from fedc.runtime import Model
    m = Model(digits_mlp.wasm, digits_mlp.manifest)
    m.init_weights(0)
    before = m.get_weights()
    with pytest.raises(RuntimeDataError, match="train_epoch needs at least one row, got 0"):
        m.train_epoch(np.zeros((0, 64), np.float32), np.zeros(0, np.int32), 16, 3)
    assert np.array_equal(m.get_weights(), before)
