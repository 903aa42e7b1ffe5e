"""Every op in the registry: gradient rule vs central differences (float64, through the
reference interpreter), and the float32 Wasm kernel vs the reference."""

from __future__ import annotations

import numpy as np
import pytest

from fedc.interp import run
from fedc.ir import GraphBuilder, verify
from fedc.ops import REGISTRY
from fedc.ops.surface import GradBuilder

from .op_harness import SPAN, WasmKernel, random_inputs, single_node_graph

DIFFERENTIABLE = sorted(k for k, v in REGISTRY.items() if v.grad is not None)
ALL_OPS = sorted(REGISTRY)


def test_every_op_declares_a_sample_that_satisfies_its_shape_rule():
    for name, op in REGISTRY.items():
        types, attrs = op.sample
        op.shape(types, attrs)  # raises if the sample is inconsistent
        assert op.doc, f"{name} has no doc line"


def test_every_user_facing_op_is_differentiable():
    for name, op in REGISTRY.items():
        if op.surface is not None:
            assert op.grad is not None, f"{name} can be called from .fed but has no gradient"


def _vjp_graph(op: str):
    """in0.. → op → out; plus an input dy and the op's gradient rule applied to it."""
    gb, ins, out = single_node_graph(op)
    dy = gb.add_input(out.type, "dy")
    node = gb.nodes[-1]
    needs = tuple(v.type.dtype == "f32" for v in ins)
    grads = REGISTRY[op].grad(GradBuilder(gb, SPAN), node, dy, needs)  # type: ignore[misc]
    outs = [("out", out)] + [(f"d{i}", g) for i, g in enumerate(grads) if g is not None]
    graph = gb.build(outs)
    verify(graph)
    return graph, ins, dy


@pytest.mark.parametrize("op", DIFFERENTIABLE)
def test_gradient_matches_central_differences(op):
    graph, ins, dy = _vjp_graph(op)
    rng = np.random.default_rng(0)
    batch = 5
    arrays = random_inputs(op, batch, rng)
    feeds = {v.name: a for v, a in zip(ins, arrays, strict=True)}
    out_shape = dy.type.concrete(batch)
    feeds["dy"] = rng.normal(0, 1, size=out_shape)
    res = run(graph, feeds, {})
    eps = 1e-6
    for i, v in enumerate(ins):
        if v.type.dtype != "f32" or f"d{i}" not in res:
            continue
        u = rng.normal(0, 1, size=arrays[i].shape)
        plus = dict(feeds, **{v.name: arrays[i] + eps * u})
        minus = dict(feeds, **{v.name: arrays[i] - eps * u})
        numeric = (np.sum(run(graph, plus, {})["out"] * feeds["dy"])
                   - np.sum(run(graph, minus, {})["out"] * feeds["dy"])) / (2 * eps)
        analytic = np.sum(res[f"d{i}"] * u)
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7), f"{op} input {i}"


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_wasm_kernel_matches_reference(op, batch):
    kernel = WasmKernel(op, max_batch=8)
    rng = np.random.default_rng(batch)
    arrays = random_inputs(op, batch, rng, np.float32)
    got = kernel(arrays, batch)
    want = REGISTRY[op].ref([a.astype(np.float64) if a.dtype == np.float32 else a
                             for a in arrays], dict(REGISTRY[op].sample[1]))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=op)


@pytest.mark.parametrize("op", ["dense", "softmax_cross_entropy_grad", "tanh", "sigmoid"])
def test_scalar_variant_kernel_matches_reference(op):
    kernel = WasmKernel(op, max_batch=4, variant="scalar")
    arrays = random_inputs(op, 3, np.random.default_rng(7), np.float32)
    want = REGISTRY[op].ref([a.astype(np.float64) if a.dtype == np.float32 else a
                             for a in arrays], dict(REGISTRY[op].sample[1]))
    np.testing.assert_allclose(kernel(arrays, 3), want, rtol=2e-5, atol=2e-6)


def test_graph_builder_rejects_inconsistent_shapes():
    from fedc.diagnostics import InternalError
    from fedc.ir import f32

    gb = GraphBuilder()
    a = gb.add_input(f32("N", 3), "a")
    b = gb.add_input(f32("N", 4), "b")
    with pytest.raises(InternalError, match="same shape"):
        gb.emit("add", [a, b], None, SPAN)
