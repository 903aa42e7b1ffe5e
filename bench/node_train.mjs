// Benchmark worker (bench/bench_train.py): fedc's JS runtime training one model in Node (V8).
//
// node bench/node_train.mjs MODEL_DIR DATA_FILE ROWS BATCH
// MODEL_DIR holds manifest.json and its model.wasm; DATA_FILE is ROWS rows of float32 inputs
// followed by ROWS int32 labels. Prints 1 (the thread count), then answers each "SEED SECONDS"
// line on stdin with samples/s over whole epochs (Model.trainEpoch, a fresh fedc-shuffle/1
// seed per epoch), as the Python workers do.
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const { Model } = await import(path.join(here, '..', 'runtime', 'js', 'fedc-runtime.js'));

const [dir, dataFile, rowsArg, batchArg] = process.argv.slice(2);
const rows = Number(rowsArg);
const batch = Number(batchArg);
const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
const model = await Model.create(new Uint8Array(fs.readFileSync(path.join(dir, manifest.wasm.file))),
  manifest);
model.initWeights(0);
const raw = fs.readFileSync(dataFile);
const bytes = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength).slice();
const xBytes = bytes.byteLength - 4 * rows;
const x = new Float32Array(bytes.buffer, 0, xBytes / 4);
const y = new Int32Array(bytes.buffer, xBytes, rows);

let epochs = 0;
const epoch = (seed) => { model.trainEpoch(x, y, batch, seed); epochs += 1; };
// warm-up: V8 starts in its baseline compiler (Liftoff) and tiers hot functions up to
// TurboFan in the background; a second of epochs gets the steady state the others measure
const warm = process.hrtime.bigint();
do epoch(0); while (Number(process.hrtime.bigint() - warm) < 1e9);
console.log(1);
for await (const line of readline.createInterface({ input: process.stdin })) {
  const [seed, seconds] = line.trim().split(/\s+/).map(Number);
  let runs = 0;
  const t0 = process.hrtime.bigint();
  for (;;) {
    epoch((seed * 1000003 + epochs) >>> 0);
    runs += 1;
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    if (dt >= seconds) {
      console.log(runs * rows / dt);
      break;
    }
  }
}
