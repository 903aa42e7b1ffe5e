"""softmax_cross_entropy(+grad) Wasm kernels vs the reference for class counts that exercise
every chunk remainder (c mod 4 = 0…3), the straight-line rows and the looped long rows, and
batches that exercise the four-rows-at-a-time path and the rows left after it."""

from __future__ import annotations

import numpy as np
import pytest

from fedc.ir import BATCH, f32, i32
from fedc.link import ARENA_BASE
from fedc.lower import softmax
from fedc.lower.softmax import GROUP_MAX, UNROLL_MAX
from fedc.ops import REGISTRY

from .op_harness import WasmKernel

CLASSES = [1, 2, 3, 4, 5, 7, 10, GROUP_MAX, GROUP_MAX + 1, UNROLL_MAX, UNROLL_MAX + 1,
           UNROLL_MAX + 6]
BATCHES = (1, 4, 5, 8, 11)  # no group, one group, a group and a row, groups and three rows


def _inputs(op: str, c: int, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    logits = rng.normal(0, 3, size=(batch, c)).astype(np.float32)
    y = rng.integers(0, c, size=batch).astype(np.int32)
    return [logits, y] if op == "softmax_cross_entropy" else [np.float32(1.7), logits, y]


@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("op", ["softmax_cross_entropy", "softmax_cross_entropy_grad"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cross_entropy_kernel_matches_reference_for_every_remainder(op, c, eps):
    logits_t = (f32(BATCH, c), i32(BATCH))
    types = logits_t if op == "softmax_cross_entropy" else (f32(), *logits_t)
    attrs = {"label_smoothing": eps} if eps else {}
    kernel = WasmKernel(op, max_batch=max(BATCHES), types=types, attrs=attrs)
    rng = np.random.default_rng(c)
    for batch in BATCHES:
        arrays = _inputs(op, c, batch, rng)
        want = REGISTRY[op].ref([a.astype(np.float64) if a.dtype == np.float32 else a
                                 for a in map(np.asarray, arrays)], attrs)
        np.testing.assert_allclose(kernel(arrays, batch), want, rtol=2e-5, atol=2e-6)


def test_cross_entropy_of_extreme_logits_is_finite():
    kernel = WasmKernel("softmax_cross_entropy", max_batch=2,
                        types=(f32(BATCH, 10), i32(BATCH)), attrs={})
    logits = np.zeros((2, 10), np.float32)
    logits[0, 3], logits[1, 9] = 80.0, -80.0
    got = kernel([logits, np.array([3, 0], np.int32)], 2)
    want = REGISTRY["softmax_cross_entropy"].ref([logits.astype(np.float64),
                                                  np.array([3, 0])], {})
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("c", [1, 2, 3, 4, 6, 10, 13, GROUP_MAX])
@pytest.mark.parametrize("op", ["softmax_cross_entropy", "softmax_cross_entropy_grad"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_grouped_rows_are_bit_identical_to_one_row_at_a_time(monkeypatch, op, c, eps):
    """The grouped path repeats each row's arithmetic in the row path's order, so its results,
    and hence training, do not change with the batch's size or a row's place in it."""
    types = (f32(BATCH, c), i32(BATCH))
    types = types if op == "softmax_cross_entropy" else (f32(), *types)
    attrs = {"label_smoothing": eps} if eps else {}
    grouped = WasmKernel(op, max_batch=11, types=types, attrs=attrs)
    monkeypatch.setattr(softmax, "GROUP_MAX", 0)  # every row through row_stats
    by_row = WasmKernel(op, max_batch=11, types=types, attrs=attrs)
    rng = np.random.default_rng(100 + c)
    for batch in (4, 11):
        arrays = _inputs(op, c, batch, rng)
        logits = arrays[-2]
        logits[0, 0] = 80.0  # one exp near overflow, a row of ties, a row of ±0
        logits[1] = 2.5
        logits[2] = np.where(np.arange(c) % 2, 0.0, -0.0)
        got, want = grouped(arrays, batch), by_row(arrays, batch)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("c", [3, 10])
def test_gradient_writes_only_its_batch_rows(c):
    """The last group of four repeats the batch's last row: nothing past row n − 1 is read
    as a row of the batch, and no byte outside the gradient's first n rows is written (a
    batch of 11 in a buffer of 11 rows, whose last group would reach row 11) but the stack."""
    types = (f32(), f32(BATCH, c), i32(BATCH))
    kernel = WasmKernel("softmax_cross_entropy_grad", max_batch=11, types=types, attrs={})
    rng = np.random.default_rng(c)
    for batch in (5, 11):
        arrays = _inputs("softmax_cross_entropy_grad", c, batch, rng)
        out = kernel._view(kernel.out, 11)
        out[...] = np.nan
        for v, a in zip(kernel.ins, arrays, strict=True):
            kernel._view(v, batch)[...] = a
        before = kernel.mem.copy()
        kernel.run_fn(kernel.store, batch)
        changed = np.nonzero(kernel.mem != before)[0]
        changed = changed[changed >= ARENA_BASE]  # below it: the stack (the exps' buffer)
        start = kernel.plan.addr(kernel.out)
        assert changed.min() >= start and changed.max() < start + batch * c * 4
        assert np.isnan(out[batch:]).all()
        want = REGISTRY["softmax_cross_entropy_grad"].ref(
            [np.float64(arrays[0]), arrays[1].astype(np.float64), arrays[2]], {})
        np.testing.assert_allclose(out[:batch], want, rtol=2e-5, atol=2e-6)


TINY = np.finfo(np.float32).tiny


@pytest.mark.parametrize("c", [3, 10, GROUP_MAX + 1, UNROLL_MAX + 6])  # grouped, row, loop
def test_confident_rows_give_no_denormal_gradients(c):
    """A model that has learned its classes puts the others' logits ~100 below the right one;
    e^(z − max) there is a denormal, which Intel cores compute in microcode (a digits step
    49.8 → 237 µs). The kernels take e^(z − max) < e^FLUSH_BELOW as 0, as the reference does."""
    kernel = WasmKernel("softmax_cross_entropy_grad", max_batch=5,
                        types=(f32(), f32(BATCH, c), i32(BATCH)), attrs={})
    rng = np.random.default_rng(c)
    y = rng.integers(0, c, size=5).astype(np.int32)
    logits = rng.uniform(-110.0, -30.0, size=(5, c)).astype(np.float32)
    logits[np.arange(5), y] = 0.0
    got = kernel([np.float32(1.0), logits, y], 5)
    assert not np.any((got != 0) & (np.abs(got) < TINY)), "a denormal gradient"
    flushed = logits < softmax.FLUSH_BELOW
    kept = ~flushed
    kept[np.arange(5), y] = False  # p_y − 1 rounds to 0 here
    assert np.all(got[flushed] == 0) and np.all(got[kept] != 0)
    want = REGISTRY["softmax_cross_entropy_grad"].ref([1.0, logits.astype(np.float64), y], {})
    others = np.ones_like(kept)
    others[np.arange(5), y] = False
    np.testing.assert_allclose(got[others], want[others], rtol=2e-5, atol=1e-30)
    np.testing.assert_allclose(got[~others], want[~others], atol=1e-7)  # p_y − 1 in float32


@pytest.mark.parametrize("op", ["softmax", "log_softmax_grad"])
def test_softmax_op_flushes_terms_below_the_threshold(op):
    types = (f32(BATCH, 10),) if op == "softmax" else (f32(BATCH, 10), f32(BATCH, 10))
    kernel = WasmKernel(op, max_batch=2, types=types, attrs={})
    x = np.array([[0.0, -43.0, -45.0, -90.0, -100.0, -3.0, -120.0, -50.0, -1.0, -200.0]] * 2,
                 np.float32)
    arrays = [x] if op == "softmax" else [np.ones_like(x), x]
    got = kernel(arrays, 2)
    assert not np.any((got != 0) & (np.abs(got) < TINY))
    want = REGISTRY[op].ref([a.astype(np.float64) for a in arrays], {})
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-30)


def test_bce_of_confident_logits_gives_no_denormals():
    """bce_with_logits' e^−|z| is flushed the same way: |z| > 87 made it a denormal."""
    types = (f32(), f32(BATCH, 8), f32(BATCH, 8))
    kernel = WasmKernel("bce_with_logits_grad", max_batch=2, types=types, attrs={})
    z = np.array([[-120.0, -90.0, -45.0, -43.0, 43.0, 45.0, 90.0, 120.0]] * 2, np.float32)
    y = (z > 0).astype(np.float32)
    got = kernel([np.float32(1.0), z, y], 2)
    assert not np.any((got != 0) & (np.abs(got) < TINY)), "a denormal gradient"
    assert np.all(got[z < softmax.FLUSH_BELOW] == 0) and np.all(got[z == -43] != 0)
    want = REGISTRY["bce_with_logits_grad"].ref([1.0, z.astype(np.float64), y], {})
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-30)
    loss = WasmKernel("bce_with_logits", max_batch=2, types=types[1:], attrs={})
    np.testing.assert_allclose(loss([z, y], 2), REGISTRY["bce_with_logits"].ref(
        [z.astype(np.float64), y], {}), rtol=1e-6, atol=1e-12)
