"""bench/flops.py counts a training step's products: against the layer sizes by hand."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import flops  # noqa: E402


def _count(example: str, batch: int) -> int:
    path = f"examples/{example}"
    return flops.step_flops((ROOT / path).read_text(), path, batch)


def test_mlp_step_counts_forward_and_both_gradients_except_the_inputs():
    b = 32  # 64-128-10: forward, the weight gradients, and dX of the second layer only
    macs = b * 64 * 128 + b * 128 * 10 + (b * 10 * 128) + (128 * 10 * b) + (64 * 128 * b)
    assert _count("digits_mlp.fed", b) == 2 * macs


def test_cnn_step_counts_each_convolution_three_times_but_the_first_input_gradient():
    b = 32  # conv 1→16 3×3 on 8×8, pool, conv 16→32 3×3 on 4×4, pool, dense 128→10
    conv1, conv2 = b * 16 * 64 * 9, b * 32 * 16 * 16 * 9
    dense = b * 128 * 10
    macs = 2 * conv1 + 3 * conv2 + 3 * dense  # conv1: forward and dW (x needs no gradient)
    assert _count("digits_cnn.fed", b) == 2 * macs


def test_winograd_convolutions_count_their_fewer_multiplies():
    b = 32  # conv 16→32 on 4×4 runs as F(4×4, 3×3): 36 instead of 144 multiplies per tile
    conv1, conv2 = b * 16 * 64 * 9, b * 32 * 16 * 16 * 9
    macs = 2 * conv1 + 3 * conv2 * 36 // 144 + 3 * b * 128 * 10
    path = "examples/digits_cnn.fed"
    assert flops.step_flops((ROOT / path).read_text(), path, b, direct=False) == 2 * macs
