"""Max pooling kernels (and the relu-fused ones) on every schedule of the vectorised pair
path (fedc/lower/pairpool.py) and on general windows, against the numpy reference, exactly:
ties, all-negative windows, signed zeros, -inf and NaN (PyTorch: the last NaN wins) included."""

from __future__ import annotations

import numpy as np
import pytest

from fedc.ir import f32
from fedc.lower import pairpool
from fedc.ops import REGISTRY
from fedc.ops.window import Window, as2d, from2d, windows

from .test_conv import Kernels

# (C, spatial, kernel): kernel = stride, no padding unless given. Comments name the schedule.
GEOMETRIES = [
    (3, (8, 8), (2, 2)),      # whole planes, 4 chunks each
    (5, (4, 4), (2, 2)),      # whole planes, one chunk of two rows of two
    (1, (2, 2), (2, 2)),      # four planes per chunk; fewer planes than that: scalar fallback
    (2, (3, 5), (2, 2)),      # odd sizes: 1×2 outputs, two planes per chunk, overlapping tail
    (3, (7, 7), (2, 2)),      # 3×3 outputs, four planes per group of 9 chunks
    (2, (5, 7), (2, 2)),      # 2×3 outputs: runs of 3 windows (a 4- and a 2-float load)
    (2, (18, 18), (2, 2)),    # rows across planes, chunks of 4 windows + overlapping tail
    (2, (17, 19), (2, 2)),    # rows within planes (a row left over), odd width
    (1, (70, 5), (2, 2)),     # tall narrow planes: groups of two rows
    (2, (71, 6), (2, 2)),     # groups of four 3-window rows, overlapping tail, odd height
    (2, (9, 10), (3, 2)),     # three kernel rows
    (4, (21,), (2,)),         # 1-D
    (2, (200,), (2,)),        # 1-D, long rows
    (3, (3,), (2,)),          # 1-D, one window per plane
]
GENERAL = [  # not pair windows: the scalar path (kernel, stride, padding)
    (3, (7, 6), ((3, 2), (2, 2), (1, 1))),
    (2, (6, 7), ((2, 3), (1, 2), (1, 0))),
    (3, (11,), ((3,), (2,), (1,))),
]
CASES = [(c, s, (k, k, (0,) * len(s))) for c, s, k in GEOMETRIES] + GENERAL
OPS = ["max_pool{r}d", "max_pool{r}d_grad", "max_pool{r}d_relu", "max_pool{r}d_relu_grad"]


def _cases(c: int, spatial: tuple[int, ...], window: tuple[tuple[int, ...], ...]):
    kernel, stride, padding = window
    attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    out = Window.of(spatial, kernel, stride, padding).out_spatial
    x, dy = f32("N", c, *spatial), f32("N", c, *out)
    r = len(spatial)
    ops = OPS if all(k == s for k, s in zip(kernel, stride, strict=True)) and not any(padding) \
        and kernel[-1] == 2 else OPS[:2]  # the relu-fused ops exist for pair windows
    return [(op.format(r=r), (dy, x) if op.endswith("grad") else (x,), attrs) for op in ops]


@pytest.fixture(scope="module")
def kernels() -> Kernels:
    """Every case in one module (compiling is the slow part)."""
    return Kernels([case for geom in CASES for case in _cases(*geom)])


def _first_max(x: np.ndarray, attrs: dict, relu: bool) -> np.ndarray:
    """Each window's first maximum in scan order (which -0 or +0 numpy's max returns is not
    defined); relu's output for a window of values ≤ 0 is +0."""
    rank = x.ndim - 2
    win = Window.of(x.shape[2:], attrs["kernel"], attrs["stride"], attrs["padding"])
    cols = windows(as2d(x, rank), win, -np.inf)
    flat = cols.reshape(*cols.shape[:4], -1)
    best = np.take_along_axis(flat, np.argmax(flat, axis=-1)[..., None], axis=-1)[..., 0]
    return from2d(np.where(best > 0, best, np.float32(0)) if relu else best, rank)


def _with_nans(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Normal values and ~15 % NaNs: windows with one, several or only NaNs."""
    x = rng.normal(size=shape).astype(np.float32)
    x[rng.random(shape) < 0.15] = np.nan
    return x


def _tied(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Few distinct values, so windows hold ties, all-negative windows and signed zeros."""
    x = rng.choice(np.array([-2, -1, -0.0, 0.0, 1, 2, -np.inf], np.float32), size=shape,
                   p=[0.2, 0.2, 0.1, 0.1, 0.2, 0.15, 0.05])
    return x.astype(np.float32)


@pytest.mark.parametrize("geom", range(len(CASES)), ids=lambda i: f"{CASES[i][1]}-{CASES[i][2]}")
def test_max_pool_kernels_match_the_reference_exactly(kernels, geom):
    rng = np.random.default_rng(geom)
    _, _, (kernel, stride, _) = CASES[geom]
    overlapping = any(s < k for s, k in zip(stride, kernel, strict=True))
    first_index = sum(len(_cases(*CASES[g])) for g in range(geom))
    for k, (op, types, attrs) in enumerate(_cases(*CASES[geom])):
        index = first_index + k
        # NaNs: fedc's relu maps NaN to 0 where the reference's np.maximum keeps it
        kinds = ("normal", "tied") if "relu" in op else ("normal", "tied", "nan")
        for batch in (1, 2, 5):
            for data in kinds:
                arrays = [rng.normal(size=t.concrete(batch)).astype(np.float32) for t in types]
                if data == "tied":
                    arrays[-1] = _tied(rng, arrays[-1].shape)
                if data == "nan":
                    arrays[-1] = _with_nans(rng, arrays[-1].shape)
                want = REGISTRY[op].ref(arrays, attrs)
                kernels.view(kernels.io[index][1], 5)[...] = np.nan  # every element is written
                got = kernels(index, arrays, batch)
                if op.endswith("grad") and overlapping:  # sums: the reference's order differs
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=op)
                else:
                    np.testing.assert_array_equal(got, want, err_msg=f"{op} {batch} {data}")
                if not op.endswith("grad") and data != "nan":  # the zero's sign: the first
                    # maximum's, relu's +0 (a NaN's sign and payload are not specified)
                    first = _first_max(arrays[0], attrs, relu=op.endswith("relu"))
                    assert (np.signbit(got) == np.signbit(first)).all(), f"{op} {batch} {data}"


def test_geometries_cover_every_schedule():
    wins = [Window.of(s, k, k, (0,) * len(s)) for _, s, k in GEOMETRIES]
    assert all(pairpool.applies(w) for w in wins)
    assert not any(pairpool.applies(Window.of(s, *w)) for _, s, w in GENERAL)
    groups = [pairpool.Geometry.of(w) for w in wins]
    small = [g for g in groups if (g.ho * g.wo * 4 // np.gcd(g.ho * g.wo, 4))
             <= 4 * pairpool.MAX_CHUNKS]
    assert len(small) < len(groups)  # some planes take the row schedules
    assert any(g.wo < 4 and g not in small for g in groups)
    assert any(g.h != g.kh * g.ho and g not in small for g in groups)
