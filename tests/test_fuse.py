"""Fusion (fedc/fuse.py): which patterns fuse, that the fused graph verifies, and that it
computes exactly what the unfused one does (in the interpreter and in the Wasm module)."""

from __future__ import annotations

import numpy as np
import pytest

from fedc.autodiff import grad
from fedc.fuse import fuse
from fedc.interp import run
from fedc.ir import verify
from fedc.pipeline import Options, check_source, compile_source
from fedc.runtime import Model

MLP = """model M:
    input x: f32[11]
    target y: class[5]
    h = relu(dense(x, 9))
    h = relu(dense(h, 6, bias=false))
    logits = dense(h, 5)
    loss = softmax_cross_entropy(logits, y)
optimizer sgd(lr=0.1, momentum=0.9)
"""

RESIDUAL = """model R:
    input x: f32[6]
    target y: class[3]
    z = dense(x, 6)
    h = relu(z) + z
    logits = dense(h, 3)
    loss = softmax_cross_entropy(logits, y)
optimizer sgd(lr=0.1)
"""


def _ops(src: str) -> tuple[list[str], list[str]]:
    train = grad(check_source(src, "m.fed").graph)
    fused = fuse(train)
    verify(fused)
    return [n.op for n in train.nodes], [n.op for n in fused.nodes]


def test_dense_relu_and_its_gradient_mask_fuse_into_gemm_epilogues():
    plain, fused = _ops(MLP)
    assert fused.count("dense_relu") == 2 and "relu" not in fused
    # each relu_grad's incoming gradient is the next layer's input gradient (a matmul_nt)
    assert fused.count("matmul_nt_relu_grad") == 2 and "relu_grad" not in fused
    assert len(fused) == len(plain) - 4


def test_a_pre_activation_read_elsewhere_is_not_fused():
    _, fused = _ops(RESIDUAL)
    assert "dense_relu" not in fused and "relu" in fused


def test_fused_graph_computes_the_same_values_in_the_interpreter():
    train = grad(check_source(MLP, "m.fed").graph)
    fused = fuse(train)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(7, 11)), "y": rng.integers(0, 5, size=7)}
    params = {p.value.name: rng.normal(size=p.value.type.row_shape) for p in train.params}
    want, got = run(train, feeds, params), run(fused, feeds, params)
    for name, _ in train.outputs:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("variant", ["simd128", "scalar"])
def test_fused_module_trains_bit_for_bit_like_the_unfused_one(variant):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 11)).astype(np.float32), rng.integers(0, 5, size=40)
    weights = []
    for do_fuse in (True, False):
        art = compile_source(MLP, "m.fed", Options(variant=variant, fuse=do_fuse))
        model = Model(art.wasm, art.manifest)
        model.init_weights(3)
        losses = [model.train_step(x[i:i + 9], y[i:i + 9]) for i in range(0, 40, 9)]
        weights.append((losses, model.get_weights()))
    assert weights[0][0] == weights[1][0]
    np.testing.assert_array_equal(weights[0][1], weights[1][1])
