"""Winograd F(m×m, 3×3): the transform constants against a direct correlation (float64), and
which convolutions the strategy takes. The kernels themselves run in tests/test_conv.py."""

from __future__ import annotations

import numpy as np
import pytest

from fedc.lower import conv, winograd
from fedc.lower.wino_transforms import F2, F4
from fedc.ops.window import Window


@pytest.mark.parametrize("f", [F2, F4], ids=["F2x2", "F4x4"])
def test_transforms_compute_a_3x3_correlation_exactly(f):
    rng = np.random.default_rng(f.m)
    bt, g, at = (np.array(x, np.float64) for x in (f.bt, f.g, f.at))
    assert bt.shape == (f.a, f.a) and g.shape == (f.a, 3) and at.shape == (f.m, f.a)
    for _ in range(5):
        d, k = rng.normal(size=(f.a, f.a)), rng.normal(size=(3, 3))
        want = np.array([[np.sum(d[y:y + 3, x:x + 3] * k) for x in range(f.m)]
                         for y in range(f.m)])
        got = at @ ((g @ k @ g.T) * (bt @ d @ bt.T)) @ at.T
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _shape(c: int, o: int, size: tuple[int, ...], kernel: tuple[int, ...], stride=None,
           padding=None, groups: int = 1) -> conv.ConvShape:
    r = len(size)
    win = Window.of(size, kernel, stride or (1,) * r, padding or (1,) * r)
    return conv.ConvShape(win, c, o, groups)


@pytest.mark.parametrize("shape,how", [
    (_shape(16, 32, (4, 4), (3, 3)), "winograd4"),          # outputs in fours
    (_shape(8, 16, (6, 6), (3, 3)), "winograd"),            # 6×6: F(2×2) wastes nothing
    (_shape(4, 4, (8, 8), (3, 3), padding=(0, 0)), "winograd"),
    (_shape(16, 32, (14, 14), (3, 3)), "winograd4"),        # F(2×2) would loop over 49 tiles
    (_shape(8, 16, (28, 28), (3, 3)), "winograd4"),         # both looped: 49 and 196 tiles
])
def test_the_strategy_prefers_f4_where_outputs_come_in_fours(shape, how):
    assert all(conv.strategy(shape, which) == how for which in range(3))


@pytest.mark.parametrize("shape", [
    _shape(1, 16, (8, 8), (3, 3)),                          # one input channel
    _shape(3, 8, (8, 8), (3, 3)),                           # channels not in fours
    _shape(8, 8, (8, 8), (5, 5), padding=(2, 2)),           # not 3×3
    _shape(8, 8, (8, 8), (3, 3), stride=(2, 2)),            # strided
    _shape(8, 8, (8, 8), (3, 3), groups=2),                 # grouped
    _shape(8, 8, (70, 70), (3, 3)),                         # more tiles than looped (324)
    _shape(8, 8, (16,), (3,)),                              # 1-D
])
def test_winograd_is_not_taken_where_it_does_not_apply(shape):
    assert winograd.of(shape) is None and winograd.of(shape, 4) is None
    assert conv.strategy(shape, 0) not in conv.WINOGRAD


@pytest.mark.parametrize("shape,how", [
    (_shape(1, 16, (8, 8), (3, 3)), "direct"),               # digits conv1: 64 positions
    (_shape(1, 8, (128,), (7,), padding=(3,)), "direct"),    # 1-D, rows in whole segments
    (_shape(16, 16, (32,), (5,), padding=(2,)), "direct"),   # 32 positions
    (_shape(3, 8, (6, 6), (3, 3)), "each"),                  # rows of 6: a quarter padding
    (_shape(3, 8, (4, 4), (3, 3)), "each"),                  # 16 positions
    (_shape(3, 8, (8, 8), (3, 3), stride=(1, 2)), "each"),   # horizontal stride 2
])
def test_the_weight_gradient_is_direct_on_whole_segments_of_enough_positions(shape, how):
    assert conv.strategy(shape, 2) == how


def test_transformed_blocks_start_in_distinct_l1_sets() -> None:
    for floats in range(1, 3000):
        stride = winograd._spread(floats)
        lines = stride // 16
        assert stride >= floats and stride % 16 == 0 and lines % 2 == 1, floats
        assert stride - floats < 32, floats  # at most one line of padding beyond rounding
    wg = winograd.of(_shape(16, 32, (4, 4), (3, 3)), m=4)
    assert wg is not None and wg.u_stride == 528  # 512 floats = 32 lines → 33


def test_transforms_run_over_images_where_each_image_is_one_tile():
    digits = _shape(16, 32, (4, 4), (3, 3))
    assert winograd.of(digits, 4, which=0).image_lanes  # 4×4 outputs: one F(4×4) tile
    assert winograd.of(digits, 4, which=1).image_lanes
    assert not winograd.of(digits, 4, which=2).image_lanes  # tn reads V as rows of channels
    assert not winograd.of(digits, 2, which=0).image_lanes  # F(2×2): four tiles an image
    assert not winograd.of(_shape(8, 16, (6, 6), (3, 3)), 4, which=0).image_lanes  # 4 tiles
