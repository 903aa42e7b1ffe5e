"""Build variants (simd128, relaxed-simd, scalar): the manifest lists them, the Python runtime
loads the best one the engine supports, and every variant trains like the default."""

from __future__ import annotations

import numpy as np
import pytest
import wasmtime

from fedc.pipeline import Options, compile_source
from fedc.runtime import Model, RuntimeDataError

from .op_harness import WasmKernel, random_inputs

SRC = """model M:
    input x: f32[13]
    target y: class[10]
    h = relu(dense(x, 20))
    logits = dense(h, 10)
    loss = softmax_cross_entropy(logits, y)
optimizer sgd(lr=0.1, momentum=0.9)
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    art = compile_source(SRC, "m.fed", Options(variants=("scalar", "relaxed-simd")))
    out = tmp_path_factory.mktemp("variants")
    art.write(out)
    return art, out


def _engine(simd: bool, relaxed: bool) -> wasmtime.Engine:
    cfg = wasmtime.Config()
    cfg.wasm_relaxed_simd = relaxed
    cfg.wasm_simd = simd
    return wasmtime.Engine(cfg)


def test_manifest_lists_every_variant_with_its_file_and_hash(bundle):
    art, out = bundle
    assert art.manifest["wasm"]["variant"] == "simd128"
    assert set(art.manifest["variants"]) == {"scalar", "relaxed-simd"}
    for name, entry in art.manifest["variants"].items():
        assert entry["file"] == f"model.{name}.wasm"
        assert (out / entry["file"]).stat().st_size == entry["bytes"]
    assert "llvm.wasm.relaxed.madd" not in art.optimized_ir
    relaxed = compile_source(SRC, "m.fed", Options(variant="relaxed-simd"))
    assert "llvm.wasm.relaxed.madd" in relaxed.optimized_ir
    assert compile_source(SRC, "m.fed", Options(variants=("simd128",))).manifest["variants"] == {}


@pytest.mark.parametrize("simd,relaxed,expected", [
    (True, True, "relaxed-simd"), (True, False, "simd128"), (False, False, "scalar")])
def test_runtime_loads_the_best_variant_the_engine_supports(bundle, simd, relaxed, expected):
    _, out = bundle
    model = Model.load(out, engine=_engine(simd, relaxed))
    assert model.manifest["wasm"]["variant"] == expected


def test_every_variant_trains_like_the_default(bundle):
    _, out = bundle
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 13)).astype(np.float32), rng.integers(0, 10, size=64)
    weights = {}
    for variant in ("simd128", "relaxed-simd", "scalar"):
        model = Model.load(out, variant=variant)
        assert model.manifest["wasm"]["variant"] == variant
        model.init_weights(1)
        model.train_epoch(x, y, 16, seed=2)
        weights[variant] = model.get_weights()
    for variant in ("relaxed-simd", "scalar"):
        np.testing.assert_allclose(weights[variant], weights["simd128"], rtol=1e-4, atol=1e-5)


def test_a_forced_or_unsupported_variant_is_a_clear_error(bundle):
    _, out = bundle
    with pytest.raises(RuntimeDataError, match="no 'native' build"):
        Model.load(out, variant="native")
    with pytest.raises(RuntimeDataError, match="no build of this model runs on this engine"):
        Model.load(out, variant="simd128", engine=_engine(False, False))


@pytest.mark.parametrize("op", ["dense", "matmul_nt", "matmul_tn"])
def test_relaxed_simd_gemm_kernels_match_reference(op):
    from fedc.ops import REGISTRY

    kernel = WasmKernel(op, max_batch=8, variant="relaxed-simd")
    rng = np.random.default_rng(3)
    for batch in (1, 5, 8):
        arrays = random_inputs(op, batch, rng, np.float32)
        want = REGISTRY[op].ref([a.astype(np.float64) for a in arrays], {})
        np.testing.assert_allclose(kernel(arrays, batch), want, rtol=2e-5, atol=2e-5)


STRIDED_CNN = """model Strided:
    input x: f32[2, 9, 9]
    target y: class[4]
    h = relu(conv2d(x, 6, 3, stride=2))
    logits = dense(flatten(h), 4)
    loss = softmax_cross_entropy(logits, y)
optimizer sgd(lr=0.05, momentum=0.9)
"""


@pytest.mark.parametrize("source", ["examples/digits_cnn.fed", "examples/waveforms_cnn1d.fed",
                                    "strided"])
def test_relaxed_simd_convolutions_train_like_simd128(source):
    """relaxed_madd in every convolution strategy (the direct kernel, Winograd's and im2col's
    products): one epoch of the relaxed-simd build lands where simd128's does."""
    from pathlib import Path
    text = STRIDED_CNN if source == "strided" else (
        Path(__file__).resolve().parent.parent / source).read_text()
    weights = []
    for variant in ("simd128", "relaxed-simd"):
        art = compile_source(text, "m.fed", Options(variant=variant))
        assert ("llvm.wasm.relaxed.madd" in art.optimized_ir) == (variant == "relaxed-simd")
        model = Model(art.wasm, art.manifest)
        model.init_weights(1)
        rng = np.random.default_rng(0)
        shape = tuple(art.manifest["inputs"][0]["shape"])
        classes = art.manifest["targets"][0]["classes"]
        x = rng.normal(size=(48, *shape)).astype(np.float32)
        model.train_epoch(x, rng.integers(0, classes, size=48), 16, seed=2)
        weights.append(model.get_weights())
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-4, atol=1e-5)
