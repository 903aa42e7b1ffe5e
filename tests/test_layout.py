"""Tests: fedc/layout.py's choice of the weights stored in panels, and what that changes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedc.autodiff import grad
from fedc.fuse import fuse
from fedc.layout import panel_values
from fedc.lower import gemm
from fedc.pipeline import check_source, compile_source
from fedc.plan import plan

MNIST = open("examples/mnist_mlp.fed").read()


def _train(src: str):
    return fuse(grad(check_source(src, "m.fed").graph))


def _names(graph, ids) -> set[str]:
    params = {p.value.id: p.value.name for p in graph.params}
    grads = {v.id: k for k, v in graph.outputs if k.startswith("grad:")}
    return {params.get(i) or grads[i] for i in ids}


def test_mnist_stores_both_hidden_weights_and_their_gradients_in_panels():
    train = _train(MNIST)
    assert _names(train, panel_values(train)) == {
        "dense_0.weight", "dense_1.weight", "grad:dense_0.weight", "grad:dense_1.weight"}
    # 128 → 10: not all panels full; biases are vectors; digits' 64 × 128 weight is read in place
    digits = _train(open("examples/digits_mlp.fed").read())
    assert panel_values(digits) == frozenset()
    assert not gemm.weight_panels(128, 64)


def test_a_weight_with_any_other_reader_stays_row_major():
    """A reader outside the panel-aware GEMMs (an extra relu of the weight), or the weight as
    some GEMM's first operand, would read the panels as rows: that weight stays row-major while
    the other keeps its panels."""
    train = _train(MNIST)
    w0, w1 = [p.value for p in train.params if p.value.name.endswith("weight")][:2]
    first = train.nodes[0]

    def with_reader(op: str, inputs: tuple) -> object:
        extra = dataclasses.replace(first, op=op, inputs=inputs,
                                    out=dataclasses.replace(first.out, id=10_000))
        return dataclasses.replace(train, nodes=(*train.nodes, extra))

    odd = with_reader("relu", (w0,))
    assert _names(odd, panel_values(odd)) == {"dense_1.weight", "grad:dense_1.weight"}
    odd = with_reader("dense", (w1, w0))  # w1 as the input, w0 as the weight: only w1 drops
    assert _names(odd, panel_values(odd)) == {"dense_0.weight", "grad:dense_0.weight"}


def test_a_gradient_that_is_not_the_weight_gradient_gemms_keeps_the_weight_row_major():
    train = _train(MNIST)
    g0 = train.output("grad:dense_0.weight")
    odd = dataclasses.replace(train, outputs=(*train.outputs, ("copy", g0)))  # read elsewhere
    assert "dense_0.weight" not in _names(odd, panel_values(odd))


def test_forward_packs_no_b_when_its_weight_is_in_panels_so_scratch_shrinks():
    train = _train(MNIST)
    with_panels = plan(train, max_batch=256, state_slots=1, n_hparams=4)
    (buf,) = with_panels.find("scratch")
    row_major = gemm.scratch_bytes("nn", 256, 256, 784)  # B packed every call: 800 KB
    assert buf.bytes < row_major / 3
    assert buf.bytes == max(gemm.scratch_bytes("tn", 256, 256, 784),
                            gemm.scratch_bytes("nn", 256, 256, 784, b_packed=True),
                            gemm.scratch_bytes("nt", 256, 256, 128))


@pytest.mark.parametrize("variant", ["simd128", "relaxed-simd", "scalar"])
def test_manifest_marks_the_panel_weights_for_every_variant(variant):
    from fedc.pipeline import Options

    art = compile_source(MNIST, "mnist_mlp.fed", Options(variant=variant))
    layouts = {p["name"]: p.get("layout") for p in art.manifest["params"]}
    assert layouts["dense_0.weight"] == layouts["dense_1.weight"] == {"panels": gemm.NR}
    assert all(v is None for k, v in layouts.items() if k not in ("dense_0.weight",
                                                                   "dense_1.weight"))


SMALL = """model S:
    input x: f32[300]
    target y: class[10]
    h = relu(dense(x, 64))
    logits = dense(h, 10)
    loss = softmax_cross_entropy(logits, y)
optimizer sgd(lr=0.1, momentum=0.9)
federated:
    strategy = fedprox
    proximal_mu = 0.1
"""


def test_runtime_speaks_row_major_while_memory_holds_panels():
    from fedc.runtime import Model

    art = compile_source(SMALL, "s.fed")
    (w0,) = [p for p in art.manifest["params"] if p.get("layout")]
    assert w0["name"] == "dense_0.weight" and w0["layout"] == {"panels": gemm.NR}
    model = Model(art.wasm, art.manifest)
    rng = np.random.default_rng(0)
    flat = rng.normal(size=model.num_params).astype(np.float32)
    model.set_weights(flat)
    assert np.array_equal(model.get_weights(), flat)
    assert np.array_equal(model._logical(model.anchor), flat)  # FedProx's anchor: same layout
    w = model.weights_by_name()["dense_0.weight"]
    assert w.shape == (300, 64) and np.array_equal(w, flat[:300 * 64].reshape(300, 64))
    panels = model.param_views["dense_0.weight"]  # memory as it is: [n / 8][k][8]
    assert panels.shape == (8, 300, 8)
    assert np.array_equal(panels, w.reshape(300, 8, 8).transpose(1, 0, 2))
    assert not np.array_equal(model.params[:300 * 64], flat[:300 * 64])  # not row-major there
    model.write_weights(np.full(model.num_params, np.nan, np.float32))  # unchecked, as received
    assert np.isnan(model.get_weights()).all()
    assert np.array_equal(model._logical(model.anchor), flat)  # untouched


@pytest.mark.parametrize("edit, message", [
    (lambda ps: ps[0].update(layout={"panels": 3}), "dense_0.weight: unknown layout"),
    (lambda ps: ps[0].update(layout={"rows": 8}), "dense_0.weight: unknown layout"),
    (lambda ps: ps[0].update(layout=[8]), "dense_0.weight: unknown layout"),
    (lambda ps: ps[0].update(layout={"panels": True}), "dense_0.weight: unknown layout"),
    (lambda ps: ps[1].update(offset=ps[0]["offset"]), "do not tile its params_region"),
])
def test_runtime_refuses_a_layout_it_does_not_know(edit, message):
    import copy

    from fedc.runtime import Model, RuntimeDataError

    art = compile_source(SMALL, "s.fed")
    manifest = copy.deepcopy(art.manifest)
    edit(manifest["params"])
    with pytest.raises(RuntimeDataError, match=message):
        Model(art.wasm, manifest)


def test_write_weights_takes_nan_but_not_the_wrong_length():
    from fedc.runtime import Model, RuntimeDataError

    art = compile_source(SMALL, "s.fed")
    model = Model(art.wasm, art.manifest)
    with pytest.raises(RuntimeDataError, match=f"write_weights expects {model.num_params} "
                                               "values, got shape \\(3,\\)"):
        model.write_weights(np.zeros(3, np.float32))
