"""Convolution, pooling, flatten and reshape against PyTorch: loss, every gradient and every
parameter over several SGD steps, for stride, padding, group and odd-size variants."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from .torch_harness import ParamMap, compare_with_torch, random_batches, same, torch

COVERS = {"conv1d", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
          "global_avg_pool", "flatten", "reshape"}

F = torch.nn.functional
Layer = Callable[[Any, dict[str, Any]], Any]


def _params(fedc: dict[str, np.ndarray]) -> tuple[dict[str, Any], ParamMap]:
    """One torch leaf per fedc parameter, same layout (PyTorch's conv layouts are fedc's)."""
    ps = {k: torch.nn.Parameter(torch.as_tensor(v.copy())) for k, v in fedc.items()}
    return ps, {k: (p, same) for k, p in ps.items()}


def _sgd(ps: list[Any]) -> Any:
    return torch.optim.SGD(ps, lr=0.05, momentum=0.9)


def _check(src: str, forward: Layer, x_shape: tuple[int, ...], classes: int, seed: int) -> None:
    batches = random_batches(np.random.default_rng(seed), [6, 6, 1, 5], x_shape, classes=classes)

    def build(fedc: dict[str, np.ndarray]) -> tuple[Any, ParamMap]:
        ps, mapping = _params(fedc)
        return (lambda x, y: F.cross_entropy(forward(x, ps), y)), mapping

    compare_with_torch(src, build, _sgd, batches)


def _model(inp: str, body: str, classes: int) -> str:
    lines = "\n".join(f"    {line}" for line in body.strip().splitlines())
    return (f"model M:\n    input x: f32[{inp}]\n    target y: class[{classes}]\n{lines}\n"
            f"    loss = softmax_cross_entropy(logits, y)\noptimizer sgd(lr=0.05, momentum=0.9)\n")


def _conv2d(h: Any, ps: dict[str, Any], i: int, bias: bool = True, **kw: Any) -> Any:
    return F.conv2d(h, ps[f"conv2d_{i}.weight"], ps[f"conv2d_{i}.bias"] if bias else None, **kw)


def _conv1d(h: Any, ps: dict[str, Any], i: int, bias: bool = True, **kw: Any) -> Any:
    return F.conv1d(h, ps[f"conv1d_{i}.weight"], ps[f"conv1d_{i}.bias"] if bias else None, **kw)


def _dense(h: Any, ps: dict[str, Any], i: int = 0) -> Any:
    return h @ ps[f"dense_{i}.weight"] + ps[f"dense_{i}.bias"]


# --- 2-D ---------------------------------------------------------------------------------


def test_conv2d_groups_stride_asymmetric_kernel_and_pools_match_torch():
    src = _model("3, 7, 9", """
h = relu(conv2d(x, 6, 3, stride=2, padding=1, groups=3))
h = max_pool2d(h, 2, stride=1)
h = tanh(conv2d(h, 4, kernel_h=3, kernel_w=2, padding_w=1, bias=false))
h = avg_pool2d(h, 3, stride=2, padding=1)
logits = dense(flatten(h), 5)
""", 5)

    def forward(x: Any, ps: dict[str, Any]) -> Any:
        h = F.relu(_conv2d(x, ps, 0, stride=2, padding=1, groups=3))
        h = F.max_pool2d(h, 2, stride=1)
        h = torch.tanh(_conv2d(h, ps, 1, bias=False, padding=(0, 1)))
        h = F.avg_pool2d(h, 3, stride=2, padding=1)
        return _dense(h.flatten(1), ps)

    _check(src, forward, (3, 7, 9), 5, seed=0)


def test_reshaped_input_padded_max_pool_and_global_average_match_torch():
    src = _model("35", """
h = reshape(x, 1, 5, -1)
h = sigmoid(conv2d(h, 5, 5, padding=2))
h = max_pool2d(h, kernel_h=3, kernel_w=2, stride=2, padding_h=1)
h = relu(conv2d(h, 8, 1, stride_w=2))
logits = dense(global_avg_pool(h), 4)
""", 4)

    def forward(x: Any, ps: dict[str, Any]) -> Any:
        h = torch.sigmoid(_conv2d(x.reshape(-1, 1, 5, 7), ps, 0, padding=2))
        h = F.max_pool2d(h, (3, 2), stride=2, padding=(1, 0))
        h = F.relu(_conv2d(h, ps, 1, stride=(1, 2)))
        return _dense(h.mean(dim=(2, 3)), ps)

    _check(src, forward, (35,), 4, seed=1)


def test_depthwise_conv2d_with_wide_stride_matches_torch():
    src = _model("4, 11, 6", """
h = tanh(conv2d(x, 8, 3, stride=3, padding=2, groups=4))
h = relu(conv2d(h, 6, 2))
logits = dense(flatten(h), 3)
""", 3)

    def forward(x: Any, ps: dict[str, Any]) -> Any:
        h = torch.tanh(_conv2d(x, ps, 0, stride=3, padding=2, groups=4))
        h = F.relu(_conv2d(h, ps, 1))
        return _dense(h.flatten(1), ps)

    _check(src, forward, (4, 11, 6), 3, seed=2)


def test_winograd_3x3_convolutions_match_torch():
    """3×3 stride-1 convolutions lowered to Winograd F(4×4, 3×3) (8×8 outputs) and F(2×2, 3×3)
    (6×6 outputs, no padding): losses, gradients and parameters as PyTorch's direct ones."""
    from fedc.lower import conv
    from fedc.ops.window import Window

    for c, o, pad, how in ((4, 8, (1, 1), "winograd4"), (8, 4, (0, 0), "winograd")):
        shape = conv.ConvShape(Window.of((8, 8), (3, 3), (1, 1), pad), c, o, 1)
        assert all(conv.strategy(shape, which) == how for which in range(3))
    src = _model("4, 8, 8", """
h = relu(conv2d(x, 8, 3, padding=1))
h = tanh(conv2d(h, 4, 3))
h = max_pool2d(h, 2)
logits = dense(flatten(h), 3)
""", 3)

    def forward(x: Any, ps: dict[str, Any]) -> Any:
        h = F.relu(_conv2d(x, ps, 0, padding=1))
        h = torch.tanh(_conv2d(h, ps, 1))
        h = F.max_pool2d(h, 2)
        return _dense(h.flatten(1), ps)

    _check(src, forward, (4, 8, 8), 3, seed=7)


# --- 1-D ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stride,padding,groups", [(1, 0, 1), (2, 2, 2), (3, 1, 4)])
def test_conv1d_and_1d_pools_match_torch(stride, padding, groups):
    src = _model("4, 23", f"""
h = relu(conv1d(x, 8, 5, stride={stride}, padding={padding}, groups={groups}))
h = max_pool1d(h, 3, stride=2, padding=1)
h = tanh(conv1d(h, 6, 2, bias=false))
h = avg_pool1d(h, 2)
logits = dense(flatten(h), 3)
""", 3)

    def forward(x: Any, ps: dict[str, Any]) -> Any:
        h = F.relu(_conv1d(x, ps, 0, stride=stride, padding=padding, groups=groups))
        h = F.max_pool1d(h, 3, stride=2, padding=1)
        h = torch.tanh(_conv1d(h, ps, 1, bias=False))
        h = F.avg_pool1d(h, 2)
        return _dense(h.flatten(1), ps)

    _check(src, forward, (4, 23), 3, seed=3 + stride)


def test_conv1d_global_average_and_padded_avg_pool_match_torch():
    src = _model("2, 17", """
h = relu(conv1d(x, 7, 4, padding=3))
h = avg_pool1d(h, 5, stride=3, padding=2)
h = conv1d(h, 5, 3, padding=1)
logits = dense(global_avg_pool(h), 4)
""", 4)

    def forward(x: Any, ps: dict[str, Any]) -> Any:
        h = F.relu(_conv1d(x, ps, 0, padding=3))
        h = F.avg_pool1d(h, 5, stride=3, padding=2)
        h = _conv1d(h, ps, 1, padding=1)
        return _dense(h.mean(dim=2), ps)

    _check(src, forward, (2, 17), 4, seed=7)


@pytest.mark.parametrize("rank,kernel,stride,padding", [
    (2, (2, 2), (2, 2), (0, 0)), (2, (3, 3), (2, 2), (1, 1)), (2, (3, 2), (1, 1), (1, 0)),
    (1, (3,), (2,), (1,)), (1, (2,), (1,), (0,))])
def test_max_pool_gradient_reference_routes_nan_and_inf_windows_as_torch(rank, kernel, stride,
                                                                          padding):
    """The reference the Wasm pool kernels are held to exactly picks PyTorch's tap: the first
    maximum, the last NaN, and in an all -inf window (padded or not) its first in-bounds tap."""
    from fedc.ops import REGISTRY

    rng = np.random.default_rng(sum(kernel) * 7 + sum(padding))
    shape = (3, 4, *(7,) * rank)
    x = rng.choice(np.array([-1, 0, 1, -np.inf, np.nan], np.float32), size=shape,
                   p=[0.2, 0.2, 0.2, 0.3, 0.1])
    attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    xt = torch.tensor(x, requires_grad=True)
    pool = F.max_pool2d if rank == 2 else F.max_pool1d
    y = pool(xt, kernel, stride=stride, padding=padding)
    dy = rng.integers(1, 64, size=y.shape).astype(np.float32)  # overlapping sums stay exact
    y.backward(torch.tensor(dy))
    want_y = y.detach().numpy()
    got_y = REGISTRY[f"max_pool{rank}d"].ref([x], attrs)
    np.testing.assert_array_equal(got_y, want_y)
    got = REGISTRY[f"max_pool{rank}d_grad"].ref([dy, x], attrs)
    np.testing.assert_array_equal(got, xt.grad.numpy())
