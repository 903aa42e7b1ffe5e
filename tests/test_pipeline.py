"""The whole compiler path: IR golden text, module shape (imports, exports, SIMD), manifest."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import wasmtime

from fedc.diagnostics import CheckError, ParseError, UsageError
from fedc.ir import verify
from fedc.pipeline import Options, compile_source, decode_source

GOLDEN = Path(__file__).parent / "golden"


def test_train_graph_verifies_and_matches_golden_ir(digits_mlp):
    verify(digits_mlp.train_graph)
    golden = GOLDEN / "digits_mlp.ir"
    assert digits_mlp.ir_text.strip() == golden.read_text().strip(), (
        "IR text changed; if intended, regenerate with "
        "`fedc compile examples/digits_mlp.fed --emit ir > tests/golden/digits_mlp.ir`")


def test_module_imports_nothing_and_exports_the_abi(digits_mlp):
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, digits_mlp.wasm)
    assert list(module.imports) == []
    names = {e.name for e in module.exports}
    assert {"memory", "train_step", "eval_step", "predict"} <= names


def _engine_without_simd() -> wasmtime.Engine:
    cfg = wasmtime.Config()
    cfg.wasm_simd = False
    cfg.wasm_relaxed_simd = False
    return wasmtime.Engine(cfg)


def test_default_module_contains_v128_instructions(digits_mlp):
    # an engine with SIMD disabled must reject the module: proof that it uses v128 code
    with pytest.raises(wasmtime.WasmtimeError, match="(?i)simd"):
        wasmtime.Module(_engine_without_simd(), digits_mlp.wasm)
    assert "<4 x float>" in digits_mlp.optimized_ir


def test_scalar_variant_runs_on_an_engine_without_simd(digits_mlp_source):
    art = compile_source(digits_mlp_source, "digits_mlp.fed", Options(variant="scalar"))
    wasmtime.Module(_engine_without_simd(), art.wasm)  # validates


def test_manifest_describes_the_module(digits_mlp):
    m = digits_mlp.manifest
    assert m["wasm"]["sha256"] == hashlib.sha256(digits_mlp.wasm).hexdigest()
    assert m["params_region"]["count"] == 64 * 128 + 128 + 128 * 10 + 10
    assert [p["name"] for p in m["params"]] == [
        "dense_0.weight", "dense_0.bias", "dense_1.weight", "dense_1.bias"]
    assert m["inputs"] == [{"name": "x", "dtype": "f32", "shape": [64],
                            "offset": m["inputs"][0]["offset"]}]
    assert m["targets"][0]["classes"] == 10
    assert m["federated"]["rounds"] == 30
    assert m["optimizer"]["hparams_order"] == ["lr", "momentum", "weight_decay"]
    json.dumps(m)  # serialisable


def test_buffers_never_overlap_while_live(digits_mlp):
    """Persistent buffers are disjoint from everything; activations share only by liveness."""
    bufs = digits_mlp.manifest["buffers"]
    fixed = [b for b in bufs if b["kind"] != "activation"]
    spans = sorted((b["offset"], b["offset"] + b["bytes"], b["name"]) for b in fixed)
    for (_, a_end, a_name), (b_start, _, b_name) in zip(spans, spans[1:], strict=False):
        assert a_end <= b_start, f"{a_name} overlaps {b_name}"
    mem = digits_mlp.manifest["memory"]
    # fused, the MLP's activations are all live at once (each is read by the backward pass)
    assert mem["activation_bytes"] <= mem["activation_bytes_without_reuse"]
    assert max(b["offset"] + b["bytes"] for b in bufs) <= mem["arena_base"] + mem["arena_bytes"]


def test_liveness_reuse_shares_dead_activations():
    """tanh's backward reads its output, so the pre-activations die early and are shared."""
    src = """model T:
    input x: f32[16]
    target y: class[4]
    h = tanh(dense(x, 32))
    h = tanh(dense(h, 32))
    logits = dense(h, 4)
    loss = softmax_cross_entropy(logits, y)
optimizer sgd(lr=0.1)
"""
    mem = compile_source(src, "t.fed").manifest["memory"]
    assert mem["activation_bytes"] < mem["activation_bytes_without_reuse"]


def test_liveness_plan_gives_correct_results_when_buffers_are_shared(digits_mlp):
    """Train one step with the compiled module and with the reference interpreter."""
    from fedc.interp import run
    from fedc.runtime import Model

    model = Model(digits_mlp.wasm, digits_mlp.manifest)
    model.init_weights(3)
    rng = np.random.default_rng(0)
    x = rng.random((32, 64)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    params = model.weights_by_name()
    ref = run(digits_mlp.train_graph, {"x": x, "y": y}, params, np.float64)
    loss = model.train_step(x, y)
    assert loss == pytest.approx(float(ref["loss"]), rel=1e-5)


def test_compile_is_deterministic(digits_mlp_source, digits_mlp):
    again = compile_source(digits_mlp_source, "examples/digits_mlp.fed")
    assert again.wasm == digits_mlp.wasm
    assert again.manifest == digits_mlp.manifest


@pytest.mark.parametrize("layer, batch, line, col", [
    ("relu(dense(x, 2000000000))", 32, 4, 14),  # one activation of 1.9 TiB
    ("relu(dense(x, 2))", 100_000_000, 2, 5),  # the input buffer at that batch size
])
def test_model_beyond_wasm32_memory_is_a_check_error_at_its_largest_tensor(layer, batch, line,
                                                                          col):
    src = (f"model M:\n    input x: f32[4]\n    target y: class[3]\n    h = {layer}\n"
           "    loss = softmax_cross_entropy(dense(h, 3), y)\noptimizer sgd(lr=0.1)\n"
           f"federated:\n    batch_size = {batch}\n")
    with pytest.raises(CheckError) as info:
        compile_source(src, "big.fed")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col) == (line, col), info.value.render()
    assert "more than a wasm32 module's 4 GiB" in d.message and "wasm-ld" not in d.message
    assert "^^^" in info.value.render()


def test_a_model_too_large_for_a_float_count_of_gib_is_a_check_error_too():
    # batches of 10^300: n / 2**30 overflowed a float (an OverflowError traceback)
    src = ("model M:\n    input x: f32[4]\n    target y: class[3]\n"
           "    loss = softmax_cross_entropy(dense(x, 3), y)\noptimizer sgd(lr=0.1)\n"
           f"federated:\n    batch_size = {10**300}\n")
    with pytest.raises(CheckError) as info:
        compile_source(src, "big.fed")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col) == (2, 5), info.value.render()
    assert re.search(r"needs more than 2\^\d+ GiB of memory .* takes more than 2\^970 GiB$",
                     d.message), d.message


@pytest.mark.node
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_module_is_valid_and_trains_in_node(digits_mlp, tmp_path):
    """A second engine (V8 in Node) validates, instantiates and runs a training step."""
    (tmp_path / "model.wasm").write_bytes(digits_mlp.wasm)
    m = digits_mlp.manifest
    script = f"""
import fs from 'fs';
const bytes = fs.readFileSync({json.dumps(str(tmp_path / 'model.wasm'))});
if (!WebAssembly.validate(bytes)) {{ console.log('invalid'); process.exit(1); }}
const {{ instance }} = await WebAssembly.instantiate(bytes, {{}});
const mem = new Float32Array(instance.exports.memory.buffer);
const x = {m['inputs'][0]['offset']} / 4, y = {m['targets'][0]['offset']} / 4;
const p = {m['params_region']['offset']} / 4, hp = {m['optimizer']['hparams_offset']} / 4;
for (let i = 0; i < {m['params_region']['count']}; i++) mem[p + i] = Math.sin(i) * 0.05;
mem[hp] = 0.1;
const labels = new Int32Array(instance.exports.memory.buffer);
for (let i = 0; i < 4 * 64; i++) mem[x + i] = (i % 17) / 17;
for (let i = 0; i < 4; i++) labels[y + i] = i;
const l1 = instance.exports.train_step(4), l2 = instance.exports.train_step(4);
console.log(JSON.stringify([l1, l2]));
"""
    (tmp_path / "run.mjs").write_text(script)
    out = subprocess.run(["node", str(tmp_path / "run.mjs")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    l1, l2 = json.loads(out.stdout)
    assert np.isfinite(l1) and l2 < l1


@pytest.mark.parametrize("max_batch", [0, -5, 1.5, 32.0, True, "32"])
def test_max_batch_that_is_no_integer_from_one_up_is_refused(max_batch, digits_mlp_source):
    # 0 and -5 were replaced by the default; 1.5 was an internal error (LLVM rejected the
    # float) and True went into the manifest as its max_batch
    with pytest.raises(UsageError) as info:
        compile_source(digits_mlp_source, "digits_mlp.fed", Options(max_batch=max_batch))
    assert info.value.message == (f"max_batch (--max-batch) must be an integer ≥ 1 but got "
                                  f"{max_batch!r}")


@pytest.mark.parametrize("mu", [float("inf"), 1e39, 1e-45])
def test_option_proximal_mu_is_refused_where_the_federated_block_refuses_it(mu,
                                                                            digits_mlp_source):
    # the block's `proximal_mu = 1e39` is a check error; the option compiled μ = inf
    with pytest.raises(UsageError) as info:
        compile_source(digits_mlp_source, "d.fed", Options(proximal_mu=mu))
    assert info.value.message == ("proximal_mu must be a number ≥ 0 and a normal float32 but "
                                  f"got {mu}")


def test_a_byte_that_is_not_utf8_gets_one_caret():
    # the caret ran from the bad byte to the end of the line, under text that is fine
    with pytest.raises(ParseError) as info:
        decode_source(b"model M:\n    input x: f32[4]  # caf\xe9 au lait\n", "l.fed")
    assert info.value.render().splitlines() == [
        "l.fed:2:27: error: the file is not UTF-8 text (byte 0xe9)",
        "       input x: f32[4]  # caf\ufffd au lait",
        "                             ^",
    ]


@pytest.mark.parametrize("sep", ["\n", "\r\n", "\r"])
def test_a_byte_that_is_not_utf8_is_placed_however_lines_end(sep):
    # with \r line ends every bad byte was on line 1, at a column counting the lines before
    data = sep.join(["model M:", "    input x: f32[4]", "    # caf\xe9", ""]).encode("latin-1")
    with pytest.raises(ParseError) as info:
        decode_source(data, "l.fed")
    (d,) = info.value.diagnostics
    assert d.span is not None and (d.span.line, d.span.col) == (3, 10)
    assert info.value.render().splitlines()[1:] == ["       # caf\ufffd", "            ^"]
