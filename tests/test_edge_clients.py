"""The bundle's Node client against its Python twin: the same task on the same data gives the
same update bit for bit; fedc-shuffle/1, .npz reading and frames agree across the two."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedc.serve.protocol import decode, encode

from .serve_util import (
    TRAIN_TASK,
    Server,
    fake_server,
    issue_tokens,
    load_client_module,
    task_frame,
)
from .test_shuffle import FIRST_U32_SEED0, PERM_8_SEED_2_40_PLUS_7, PERM_10_SEED42

pytestmark = [pytest.mark.node,
              pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")]

ROOT = Path(__file__).resolve().parent.parent

# dropout keys, Adam with a cosine schedule and clipping, and FedProx's anchor, all in one task
MIXED = """model Mixed:
    input x: f32[64]
    target y: class[10]
    h = dropout(relu(dense(x, 32)), 0.2)
    logits = dense(h, 10)
    loss = softmax_cross_entropy(logits, y)

optimizer adam(lr=0.01, schedule=cosine(t_max=20, eta_min=0.001), clip_norm=5.0)

federated:
    rounds = 3
    local_epochs = 2
    batch_size = 16
    strategy = fedprox
    proximal_mu = 0.1
"""
CNN = """model SmallCNN:
    input x: f32[1, 8, 8]
    target y: class[10]
    h = max_pool2d(relu(conv2d(x, 8, 3, padding=1)), 2)
    logits = dense(flatten(h), 10)
    loss = softmax_cross_entropy(logits, y)

optimizer sgd(lr=0.05, momentum=0.9, weight_decay=0.0001)
"""
# both hidden weights stored in panels (fedc/layout.py), FedProx's anchor in the same layout
PANELS = """model Panels:
    input x: f32[64]
    target y: class[10]
    h = relu(dense(x, 256))
    g = relu(dense(h, 256))
    logits = dense(g, 10)
    loss = softmax_cross_entropy(logits, y)

optimizer sgd(lr=0.05, momentum=0.9)

federated:
    rounds = 2
    batch_size = 32
    strategy = fedprox
    proximal_mu = 0.1
"""
SOURCES = {"digits_mlp": (ROOT / "examples" / "digits_mlp.fed").read_text(), "cnn": CNN,
           "mixed": MIXED, "panels": PANELS}


def node(script: str, tmp: Path) -> str:
    path = tmp / f"run-{abs(hash(script))}.mjs"
    path.write_text(script)
    out = subprocess.run(["node", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def make_bundle(source: str, out: Path) -> Path:
    from fedc.harness.bundle import demo_partitions, write_bundle
    from fedc.pipeline import compile_source
    art = compile_source(source, "model.fed")
    write_bundle(art.wasm, art.manifest, out, demo_partitions("digits", 4, 0, art.manifest))
    return out


@pytest.fixture(scope="module", params=sorted(SOURCES))
def bundle(request, tmp_path_factory) -> Path:
    return make_bundle(SOURCES[request.param], tmp_path_factory.mktemp(request.param))


def test_js_shuffle_matches_pinned_python_values(tmp_path):
    rt = (ROOT / "runtime" / "js" / "fedc-runtime.js").as_uri()
    out = node(f"""import {{ Shuffle }} from '{rt}';
const s = new Shuffle(0);
const big = new Shuffle(1234567).permutation(1000);
console.log(JSON.stringify([[s.nextU32(), s.nextU32(), s.nextU32(), s.nextU32()],
  Array.from(new Shuffle(42).permutation(10)), Array.from(new Shuffle(2 ** 40 + 7).permutation(8)),
  Array.from(big)]));""", tmp_path)
    first, p10, p8, big = json.loads(out)
    assert first == FIRST_U32_SEED0 and p10 == PERM_10_SEED42 and p8 == PERM_8_SEED_2_40_PLUS_7
    from fedc.runtime import Shuffle
    assert big == Shuffle(1234567).permutation(1000).tolist()


BOUNDS = [1, 2, 7, 2**31 + 1, 3 * 2**30, 2**32 - 1, 2**32]  # large ones reject often


def test_js_below_matches_python_where_rejection_is_frequent(tmp_path):
    """Shuffle.below's rejection (r < (2**32 − bound) % bound, drawn again) in both runtimes:
    3·2**30 rejects a quarter of the draws, so a mistake in it changes the stream."""
    rt = (ROOT / "runtime" / "js" / "fedc-runtime.js").as_uri()
    out = node(f"""import {{ Shuffle }} from '{rt}';
const s = new Shuffle(99);
const draws = (b) => Array.from({{ length: 300 }}, () => s.below(b));
console.log(JSON.stringify({BOUNDS}.map(draws)));""", tmp_path)
    from fedc.runtime import Shuffle
    s = Shuffle(99)
    assert json.loads(out) == [[s.below(b) for _ in range(300)] for b in BOUNDS]


def _node_local_train(bundle, data, task, tmp_path, result):
    """The JS client's localTrain under Node from tmp_path/w0.bin on the npz `data`: writes
    its weights to tmp_path/w_js.bin and prints the JS expression `result` as JSON."""
    js = (bundle / "fedc-client.js").as_uri()
    return node(f"""import fs from 'node:fs';
import {{ Model, loadData, localTrain }} from '{js}';
const dir = {json.dumps(str(bundle))};
const manifest = JSON.parse(fs.readFileSync(dir + '/manifest.json'));
const model = await Model.create(fs.readFileSync(dir + '/model.wasm'), manifest);
const {{ x, y }} = await loadData(fs.readFileSync({json.dumps(str(data))}), manifest);
const w0bytes = new Uint8Array(fs.readFileSync({json.dumps(str(tmp_path / 'w0.bin'))}));
const w0 = new Float32Array(w0bytes.buffer);
const r = localTrain(model, w0, x, y, {json.dumps(task)});
fs.writeFileSync({json.dumps(str(tmp_path / 'w_js.bin'))}, new Uint8Array(r.weights.buffer));
console.log(JSON.stringify({result}));""", tmp_path)


def test_node_and_python_clients_make_bit_identical_updates(bundle, tmp_path):
    """Same global weights, data and task → the same bytes. Wasm floats are deterministic
    (no relaxed SIMD), both hosts write the same rows in the same order and sum losses in
    float64 in the same order, so the bound is zero."""
    client = load_client_module(bundle)
    model = client.Model.load(bundle)
    model.init_weights(5)
    start = model.get_weights() + np.float32(0.01)  # not the init: the anchor must follow
    start.astype("<f4").tofile(tmp_path / "w0.bin")
    data = bundle / "data" / "client-1.npz"  # 359 rows: the last batch is partial
    task = {"seed": 2**32 - 3, "local_epochs": 2, "batch_size": 24}
    x, y = client.load_data(data, model.manifest)
    weights, loss, evaluation = client.local_train(model, start, x, y, task)
    out = _node_local_train(bundle, data, task, tmp_path, "[r.trainLoss, r.evaluation]")
    js_loss, js_eval = json.loads(out)
    js_weights = np.fromfile(tmp_path / "w_js.bin", "<f4")
    assert not np.array_equal(weights, start)
    assert js_weights.tobytes() == weights.tobytes()
    assert js_loss == loss and js_eval == evaluation


def test_js_train_step_and_predict_match_python(bundle, tmp_path):
    """trainStep (a batch's rows copied in one piece) and predict (maxBatch chunks from row
    offsets > 0) in Node against the Python runtime, bit for bit."""
    client = load_client_module(bundle)
    model = client.Model.load(bundle)
    model.init_weights(2)  # the JS runtime's initWeights draws differently: set these
    model.get_weights().astype("<f4").tofile(tmp_path / "w0.bin")
    x, y = client.load_data(bundle / "data" / "client-2.npz", model.manifest)
    for lo, hi in ((0, 7), (7, 7 + model.max_batch)):
        model.train_step(x[lo:hi], y[lo:hi])
    pred = model.predict(x)
    js = (bundle / "fedc-client.js").as_uri()
    data = bundle / "data" / "client-2.npz"
    out = node(f"""import fs from 'node:fs';
import {{ Model, loadData }} from '{js}';
const dir = {json.dumps(str(bundle))};
const manifest = JSON.parse(fs.readFileSync(dir + '/manifest.json'));
const model = await Model.create(fs.readFileSync(dir + '/model.wasm'), manifest);
const w0 = new Uint8Array(fs.readFileSync({json.dumps(str(tmp_path / 'w0.bin'))}));
model.initWeights(2); // the same dropout seed as Python's init_weights(2)
model.setWeights(new Float32Array(w0.buffer));
const {{ x, y }} = await loadData(fs.readFileSync({json.dumps(str(data))}), manifest);
const row = x.length / y.length;
for (const [lo, hi] of [[0, 7], [7, 7 + model.maxBatch]]) {{
  model.trainStep(x.subarray(lo * row, hi * row), y.subarray(lo, hi));
}}
const pred = model.predict(x, y.length);
fs.writeFileSync({json.dumps(str(tmp_path / 'w.bin'))}, new Uint8Array(model.getWeights().buffer));
fs.writeFileSync({json.dumps(str(tmp_path / 'p.bin'))},
  new Uint8Array(pred.buffer, pred.byteOffset, pred.byteLength));""", tmp_path)
    assert out == ""
    assert np.fromfile(tmp_path / "w.bin", "<f4").tobytes() == model.get_weights().tobytes()
    assert np.fromfile(tmp_path / "p.bin", "<f4").tobytes() == np.asarray(pred, "<f4").tobytes()


def test_js_train_epoch_through_train_steps_matches_python_and_one_call_a_batch(bundle,
                                                                               tmp_path):
    """trainEpoch writes max_batch // batch batches at a time and calls train_steps once; its
    loss and weights equal those of one train_step call a batch (losses = null) and Python's
    train_epoch, bit for bit (dropout keys, Adam's schedule and FedProx's anchor included)."""
    client = load_client_module(bundle)
    model = client.Model.load(bundle)
    model.init_weights(2)
    model.get_weights().astype("<f4").tofile(tmp_path / "w0.bin")
    x, y = client.load_data(bundle / "data" / "client-2.npz", model.manifest)
    losses = [model.train_epoch(x, y, batch, seed=epoch) for epoch, batch in enumerate((16, 7))]
    js = (bundle / "fedc-client.js").as_uri()
    data = bundle / "data" / "client-2.npz"
    out = node(f"""import fs from 'node:fs';
import {{ Model, loadData }} from '{js}';
const dir = {json.dumps(str(bundle))};
const manifest = JSON.parse(fs.readFileSync(dir + '/manifest.json'));
const w0 = new Uint8Array(fs.readFileSync({json.dumps(str(tmp_path / 'w0.bin'))}));
const {{ x, y }} = await loadData(fs.readFileSync({json.dumps(str(data))}), manifest);
const out = [];
for (const chunked of [true, false]) {{
  const model = await Model.create(fs.readFileSync(dir + '/model.wasm'), manifest);
  if (!chunked) model.losses = null;
  model.initWeights(2);
  model.setWeights(new Float32Array(w0.buffer));
  const losses = [16, 7].map((batch, epoch) => model.trainEpoch(x, y, batch, epoch));
  out.push({{ losses, w: Buffer.from(model.getWeights().buffer).toString('hex') }});
}}
console.log(JSON.stringify(out));""", tmp_path)
    chunked, per_batch = json.loads(out)
    assert chunked == per_batch
    assert chunked["losses"] == losses
    assert bytes.fromhex(chunked["w"]) == model.get_weights().astype("<f4").tobytes()


def test_js_reads_npz_files_as_python_does(tmp_path, digits_mlp):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8, 8))  # float64, 3-D: rounded to float32 and flattened
    y = rng.integers(0, 10, 50).astype(np.int64)
    np.savez_compressed(tmp_path / "c.npz", x=x, y=y, extra=np.arange(3))
    np.savez(tmp_path / "u.npz", x=x.astype(np.float32).reshape(50, 64), y=y.astype(np.int32))
    client = load_client_module(ROOT / "runtime" / "python")
    proto = (ROOT / "runtime" / "js" / "fedc-protocol.js").as_uri()
    m = json.dumps(digits_mlp.manifest)
    for name in ("c.npz", "u.npz"):
        out = node(f"""import fs from 'node:fs';
import {{ loadData }} from '{proto}';
const d = await loadData(fs.readFileSync({json.dumps(str(tmp_path / name))}), {m});
fs.writeFileSync({json.dumps(str(tmp_path / 'x.bin'))}, new Uint8Array(d.x.buffer));
console.log(JSON.stringify([d.rows, Array.from(d.y)]));""", tmp_path)
        rows, ys = json.loads(out)
        px, py = client.load_data(tmp_path / name, digits_mlp.manifest)
        assert rows == 50 and ys == py.tolist()
        assert np.fromfile(tmp_path / "x.bin", "<f4").tobytes() == px.tobytes()


def test_js_frames_decode_on_the_server_and_back(tmp_path):
    proto = (ROOT / "runtime" / "js" / "fedc-protocol.js").as_uri()
    w = np.array([0.0, -1.5, 3.25e-8, np.float32(1) / 3], np.float32)
    (tmp_path / "task.bin").write_bytes(encode("task", {"round": 2, "note": "é"}, w))
    out = node(f"""import fs from 'node:fs';
import {{ decodeFrame, encodeFrame }} from '{proto}';
const t = decodeFrame(fs.readFileSync({json.dumps(str(tmp_path / 'task.bin'))}));
fs.writeFileSync({json.dumps(str(tmp_path / 'up.bin'))},
  encodeFrame('update', {{ round: t.meta.round, echo: t.meta.note }}, t.values));
console.log(t.kind);""", tmp_path)
    assert out.strip() == "task"
    frame = decode((tmp_path / "up.bin").read_bytes())
    assert frame.kind == "update" and frame.meta == {"round": 2, "echo": "é"}
    assert frame.values.tobytes() == w.tobytes()


def test_node_client_errors_are_one_line(tmp_path, digits_mlp):
    from fedc.harness.bundle import write_bundle
    bundle = tmp_path / "b"
    write_bundle(digits_mlp.wasm, digits_mlp.manifest, bundle)
    run = ["node", str(bundle / "fedc-client.js")]
    out = subprocess.run([*run, "--server", "http://127.0.0.1:9", "--token", "t", "--data",
                          "nope.npz"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.strip() == "error: cannot read nope.npz: ENOENT"
    out = subprocess.run([*run, "--token", "t"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "--server is required" in out.stderr
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 64), np.float32), y=np.array([0, 1, 2]))
    state = tmp_path / "s.db"
    token = issue_tokens(bundle, state, 1)[0]
    with Server(bundle, state) as server:
        out = subprocess.run([*run, "--server", server.url, "--token", token[:-2] + "xx",
                              "--data", str(tmp_path / "d.npz")], capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 1 and out.stderr.strip() == "error: invalid token"


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory) -> Path:
    return make_bundle(SOURCES["digits_mlp"], tmp_path_factory.mktemp("mlp"))


@pytest.mark.parametrize("task, update, message", [
    (task_frame(b"{not json"), None, "a damaged frame (its metadata is not JSON)"),
    (task_frame([1, 2]), None, "a damaged frame (its metadata is not a JSON object)"),
    (task_frame({}), None, "a task with status undefined (expected 'train', 'wait' or 'done')"),
    (task_frame({"status": "train"}), None, "training task has seed undefined, not an integer"),
    (task_frame({**TRAIN_TASK, "local_epochs": 0}), None, "has local_epochs 0, not an integer"),
    (task_frame(TRAIN_TASK, count=5), None, "has 5 weights, but this bundle's model has 9610"),
    (task_frame({"status": "wait", "retry_after": "soon"}, 0), None,
     "wait with retry_after \"soon\", not a number of seconds ≥ 0"),
    (task_frame(TRAIN_TASK), (200, b"<html>"), "answered the update with \"<html>\", not a fedc"),
    (task_frame(TRAIN_TASK), (200, b"[1]"), "answered the update with \"[1]\", not a fedc"),
], ids=["not-json", "list", "no-status", "no-seed", "epochs-0", "count", "wait-soon",
         "reply-html", "reply-list"])
def test_node_client_refuses_a_server_that_sends_what_the_protocol_does_not(
        mlp_bundle, tmp_path, task, update, message):
    # SyntaxError stack traces (metadata or replies that are not JSON), or worse: a task without
    # a seed trained with seed 0 and one without local_epochs sent the weights back untrained,
    # over and over; a wait of "soon" polled without pause
    manifest = json.loads((mlp_bundle / "manifest.json").read_text())
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((16, 64)), y=np.arange(16) % 10)
    with fake_server(task, update or (200, b"{}"), manifest["wasm"]["sha256"]) as url:
        out = subprocess.run(["node", str(mlp_bundle / "fedc-client.js"), "--server", url,
                              "--token", "t", "--data", str(data), "--retry-for", "0"],
                             capture_output=True, text=True, timeout=60)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr  # no stack trace
    assert lines[0].startswith("error: ") and message in lines[0], out.stderr


@pytest.mark.parametrize("value", ["abc", "-1", ""])
def test_node_client_retry_for_must_be_a_number_of_seconds(mlp_bundle, value):
    # Number('abc') is NaN, which compared false with the time spent: retried for ever
    out = subprocess.run(["node", str(mlp_bundle / "fedc-client.js"), "--server",
                          "http://127.0.0.1:9", "--token", "t", "--data", "d.npz",
                          "--retry-for", value], capture_output=True, text=True, timeout=20)
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: --retry-for expects a number of seconds ≥ 0, got " \
        f"'{value}'"


def test_js_rejects_nan_and_inf_anywhere_in_an_input(tmp_path):
    """Model._data's finite check (four running sums of x·0 for a Float32Array): NaN, +Inf
    and -Inf in the first, a middle and each of the last three values (the loop's tail: 7
    features, 1–3 rows) are errors; the largest finite float, -0 and a subnormal are not; a
    plain Array is checked value by value."""
    from fedc.pipeline import compile_source
    art = compile_source("""model Seven:
    input x: f32[7]
    target y: class[3]
    logits = dense(x, 3)
    loss = softmax_cross_entropy(logits, y)

optimizer sgd(lr=0.1)
""", "seven.fed")
    (tmp_path / "model.wasm").write_bytes(art.wasm)
    rt = (ROOT / "runtime" / "js" / "fedc-runtime.js").as_uri()
    out = node(f"""import fs from 'node:fs';
import {{ Model }} from '{rt}';
const m = await Model.create(fs.readFileSync({json.dumps(str(tmp_path / 'model.wasm'))}),
                             {json.dumps(art.manifest)});
const verdicts = [];
for (const rows of [1, 2, 3]) {{  // 7, 14, 21 values: tails of 3, 2, 1
  const y = new Int32Array(rows);
  const n = rows * 7;
  for (const at of [0, Math.floor(n / 2), n - 1, n - 2, n - 3]) {{
    for (const v of [NaN, Infinity, -Infinity, 3.4028234663852886e38, -0, 1e-45]) {{
      const x = new Float32Array(n).fill(0.5);
      x[at] = v;
      try {{ m._data(x, y); verdicts.push(1); }} catch (e) {{ verdicts.push(0); }}
    }}
  }}
  try {{ m._data(new Array(n).fill('1'), y); verdicts.push(1); }} catch (e) {{ verdicts.push(0); }}
}}
console.log(JSON.stringify(verdicts));""", tmp_path)
    per_at = [0, 0, 0, 1, 1, 1]
    assert json.loads(out) == (per_at * 5 + [0]) * 3


def test_node_client_trains_a_token_id_model_as_python_does(tmp_path):
    """loadData gives an i32 input's ids as an Int32Array; the runtime takes any typed array as
    a one-input model's x (it used to read an Int32Array as an object of named inputs and fail
    with "missing input t"), and the update matches the Python client's bit for bit."""
    from fedc.harness.bundle import write_bundle
    from fedc.pipeline import compile_source
    art = compile_source((ROOT / "examples" / "topic_classifier.fed").read_text(), "t.fed")
    bundle = tmp_path / "b"
    write_bundle(art.wasm, art.manifest, bundle)
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.integers(0, 64, (50, 16)), y=rng.integers(0, 4, 50))
    client = load_client_module(bundle)
    model = client.Model.load(bundle)
    model.init_weights(1)
    start = model.get_weights()
    start.astype("<f4").tofile(tmp_path / "w0.bin")
    task = {"seed": 7, "local_epochs": 1, "batch_size": 16}
    x, y = client.load_data(data, model.manifest)
    weights, loss, _ = client.local_train(model, start, x, y, task)
    out = _node_local_train(bundle, data, task, tmp_path,
                            "[x.constructor.name, r.trainLoss]")
    kind, js_loss = json.loads(out)
    assert kind == "Int32Array" and js_loss == loss
    assert np.fromfile(tmp_path / "w_js.bin", "<f4").tobytes() == weights.tobytes()


def test_js_rejects_fractional_labels_and_predict_checks_its_rows(tmp_path, digits_mlp):
    (tmp_path / "model.wasm").write_bytes(digits_mlp.wasm)
    rt = (ROOT / "runtime" / "js" / "fedc-runtime.js").as_uri()
    out = node(f"""import fs from 'node:fs';
import {{ Model }} from '{rt}';
const m = await Model.create(fs.readFileSync({json.dumps(str(tmp_path / 'model.wasm'))}),
                             {json.dumps(digits_mlp.manifest)});
const x = new Float32Array(4 * 64).fill(0.5);
const msgs = [];
const attempt = (f) => {{ try {{ f(); msgs.push('ok'); }} catch (e) {{ msgs.push(e.message); }} }};
attempt(() => m.trainStep(x, [0, 1, 2.5, 3]));  // the Int32Array copy would truncate 2.5
attempt(() => m.trainStep(x, ['0', '1', '2', '3']));
attempt(() => m.trainEpoch(x, [0, 1, 2, 3], 2.5));
attempt(() => m.trainEpoch(new Float32Array(0), [], 2));  // a mean loss of 0 from no rows
attempt(() => m.predict(x, 6));  // rows 4 and 5 would be whatever the buffer held
const bad = x.slice(); bad[3] = NaN;
attempt(() => m.predict(bad, 4));
attempt(() => m.predict(Float64Array.from(x)));
console.log(JSON.stringify(msgs));""", tmp_path)
    assert json.loads(out) == [
        "class label 2.5 is outside 0..9", "class label 0 is outside 0..9",
        "batch_size must be in 1..256, got 2.5", "trainEpoch needs at least one row, got 0",
        "predict: 6 rows requested but input x holds 4",
        "input x contains NaN or Inf", "ok"]


def test_js_checks_real_targets_values_beyond_float32_and_bigint_arrays(tmp_path):
    """A binary (or regression) model's f32 targets are checked for NaN and Inf as Python's are
    (NaN or a string trained silently and made every weight NaN); x values that float32 cannot
    hold (1e39 in a Float64Array or an Array) are Inf in the buffer, so they are refused as
    Python refuses them; a BigInt64Array is refused by name (a TypeError, or "class label 0 is
    outside 0..9")."""
    from fedc.pipeline import compile_source
    art = compile_source((ROOT / "examples" / "breast_cancer_logreg.fed").read_text(), "b.fed")
    (tmp_path / "model.wasm").write_bytes(art.wasm)
    rt = (ROOT / "runtime" / "js" / "fedc-runtime.js").as_uri()
    out = node(f"""import fs from 'node:fs';
import {{ Model }} from '{rt}';
const m = await Model.create(fs.readFileSync({json.dumps(str(tmp_path / 'model.wasm'))}),
                             {json.dumps(art.manifest)});
m.initWeights(0);
const x = new Float32Array(4 * 30).fill(0.5);
const y = new Float32Array([0, 1, 0, 1]);
const msgs = [];
const attempt = (f) => {{ try {{ f(); msgs.push('ok'); }} catch (e) {{ msgs.push(e.message); }} }};
attempt(() => m.trainStep(x, new Float32Array([0, 1, NaN, 1])));
attempt(() => m.trainStep(x, ['0', '1', 'a', '1']));
attempt(() => m.evaluate(x, new Float64Array([0, 1, Infinity, 1])));
attempt(() => m.trainStep(new Float64Array(120).fill(1e39), y));
attempt(() => m.trainStep(new Array(120).fill(-1e39), y));
attempt(() => m.trainStep(x, new BigInt64Array(4)));
attempt(() => m.trainStep(new BigInt64Array(120), y));
msgs.push(m.getWeights().every(Number.isFinite) ? 'finite' : 'NaN weights');
attempt(() => m.trainStep(Float64Array.from(x), Array.from(y)));
attempt(() => m.trainStep(x, [1, -1, 1, -1]));  // ±1 labels trained silently before
attempt(() => m.evaluate(x, new Float32Array([0, 1, 2, 0.5])));
attempt(() => m.trainStep(x, [0, 0.25, 1, 0.75]));  // soft labels are probabilities
console.log(JSON.stringify(msgs));""", tmp_path)
    soft = "outside 0..1 (a binary model's targets are 0, 1 or a probability between)"
    assert json.loads(out) == [
        "target y contains NaN or Inf", "target y contains NaN or Inf",
        "target y contains NaN or Inf", "input x contains NaN or Inf",
        "input x contains NaN or Inf",
        "target y must hold Numbers, got a BigInt64Array of 4 (convert it: "
        "Float32Array.from(a, Number))",
        "input x must hold Numbers, got a BigInt64Array of 120 (convert it: "
        "Float32Array.from(a, Number))", "finite", "ok",
        f"target y holds -1, {soft}", f"target y holds 2, {soft}", "ok"]


def test_js_bad_arguments_are_runtime_data_errors_naming_the_argument(tmp_path, digits_mlp):
    """The JS twins of Python's init_weights, set_hparam, Model.load and set_weights checks: a
    negative seed, a non-finite hyper-parameter, a folder without manifest.json or model.wasm
    and weights that are not a Float32Array of the right length are RuntimeDataErrors."""
    import functools
    import http.server
    import threading

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(digits_mlp.manifest))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    (tmp_path / "model.wasm").write_bytes(digits_mlp.wasm)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    rt = (ROOT / "runtime" / "js" / "fedc-runtime.js").as_uri()
    try:
        out = node(f"""import fs from 'node:fs';
import {{ Model }} from '{rt}';
const m = await Model.create(fs.readFileSync({json.dumps(str(tmp_path / 'model.wasm'))}),
                             {json.dumps(digits_mlp.manifest)});
const msgs = [];
const attempt = async (f) => {{
  try {{ await f(); msgs.push('ok'); }} catch (e) {{ msgs.push(`${{e.name}}: ${{e.message}}`); }}
}};
for (const seed of [-1, 1.5, '3', 2 ** 53]) await attempt(() => m.initWeights(seed));
const lr = m.hparams[0];
for (const v of [NaN, Infinity, 1e39, '0.1', null]) await attempt(() => m.setHparam('lr', v));
msgs.push(m.hparams[0] === lr ? 'unchanged' : 'changed');
await attempt(() => m.setHparam('nope', 0.1));
await attempt(() => Model.fetch('{base}/nope/'));
await attempt(() => Model.fetch('{base}/m/'));
await attempt(() => Model.fetch('{base}/bad/'));
await attempt(() => m.setWeights(['a']));
await attempt(() => m.setWeights(new Float32Array(5)));
await attempt(() => m.setWeights(null));
console.log(JSON.stringify(msgs));""", tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    e = "RuntimeDataError: "
    seed, lr = "initWeights: seed must be an integer in 0..2**53-1, got", \
        "setHparam: lr must be a finite number, got"
    weights = "setWeights expects a Float32Array of 9610 values, got"
    assert json.loads(out) == [
        f"{e}{seed} -1", f"{e}{seed} 1.5", f"{e}{seed} '3'", f"{e}{seed} 9007199254740992",
        f"{e}{lr} NaN", f"{e}{lr} Infinity", f"{e}{lr} 1e+39", f"{e}{lr} '0.1'", f"{e}{lr} null",
        "unchanged",
        f"{e}nope is not a run-time hyper-parameter (expected one of lr, momentum, weight_decay)",
        f"{e}cannot fetch {base}/nope/manifest.json: HTTP 404",
        f"{e}cannot fetch {base}/m/model.wasm: HTTP 404",
        f"{e}{base}/bad/manifest.json is not valid JSON",
        f"{e}{weights} an Array of 1", f"{e}{weights} a Float32Array of 5", f"{e}{weights} null"]


def _js_create(wasm: bytes, manifests: list[dict], tmp_path: Path) -> list[str]:
    """JS `Model.create` of the module with each manifest under Node: 'ok', or the error as
    'Name: message'."""
    (tmp_path / "model.wasm").write_bytes(wasm)
    rt = (ROOT / "runtime" / "js" / "fedc-runtime.js").as_uri()
    out = node(f"""import fs from 'node:fs';
import {{ Model }} from '{rt}';
const wasm = fs.readFileSync({json.dumps(str(tmp_path / 'model.wasm'))});
const msgs = [];
for (const m of {json.dumps(manifests)}) {{
  try {{ await Model.create(wasm, m); msgs.push('ok'); }}
  catch (e) {{ msgs.push(`${{e.name}}: ${{e.message}}`); }}
}}
console.log(JSON.stringify(msgs));""", tmp_path)
    msgs = json.loads(out)
    return msgs


def test_js_an_edited_manifest_is_a_runtime_data_error(tmp_path, digits_mlp):
    """As in Python (tests/test_runtime_call.py): a missing field or a buffer outside the memory
    is a RuntimeDataError naming manifest.json, not a TypeError or RangeError."""
    import copy
    manifests = []
    for edit in ("outputs", "params_region", "offset"):
        m = copy.deepcopy(digits_mlp.manifest)
        if edit == "offset":
            m["params_region"]["count"] = 10**9
        else:
            del m[edit]
        manifests.append(m)
    msgs = _js_create(digits_mlp.wasm, manifests, tmp_path)
    wrong = "RuntimeDataError: manifest.json is not the one fedc wrote for this module ("
    assert len(msgs) == 3 and all(m.startswith(wrong) for m in msgs), msgs


def test_js_refuses_a_layout_it_does_not_know(tmp_path):
    """As in Python (tests/test_layout.py): an unknown parameter layout, or parameters that
    do not tile the params region, name what is wrong; a known one constructs."""
    import copy

    from fedc.pipeline import compile_source

    art = compile_source(PANELS, "panels.fed")
    manifests = []
    for edit in ("none", "width", "kind", "overlap"):
        m = copy.deepcopy(art.manifest)
        if edit == "width":
            m["params"][0]["layout"] = {"panels": 3}
        elif edit == "kind":
            m["params"][0]["layout"] = {"rows": 8}
        elif edit == "overlap":
            m["params"][1]["offset"] = m["params"][0]["offset"]
        manifests.append(m)
    msgs = _js_create(art.wasm, manifests, tmp_path)
    assert msgs[0] == "ok", msgs
    for m in msgs[1:3]:
        assert m.startswith("RuntimeDataError: parameter dense_0.weight: unknown layout"), msgs
    assert msgs[3] == ("RuntimeDataError: manifest.json's parameters do not tile its "
                       "params_region"), msgs
