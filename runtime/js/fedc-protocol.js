// fedc's JavaScript edge client: the server protocol (docs/protocol.md) over fetch, local training
// with fedc-runtime.js, and a command line for Node. Runs unchanged in browsers and Node ≥ 20.
// `fedc bundle` inlines this file after fedc-runtime.js into one module, fedc-client.js.
import { Model, RuntimeDataError, Shuffle, asBytes, asDtype, checkData, readNpz } from './fedc-runtime.js';

export class ClientError extends Error {
  constructor(message, status = 0, code = '') {
    super(message);
    this.name = 'ClientError';
    this.status = status;
    this.code = code;
  }
}

// --- frames: a 16-byte header, JSON metadata padded to 4 bytes, float32 little-endian values ---

const KINDS = { task: 1, update: 2, model: 3 };
const KIND_NAMES = { 1: 'task', 2: 'update', 3: 'model' };
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
export const FRAME_TYPE = 'application/x-fedc-frame';

export function encodeFrame(kind, meta, values = new Float32Array(0)) {
  const body = new TextEncoder().encode(JSON.stringify(meta));
  const start = 16 + ((body.length + 3) & ~3);
  const buf = new ArrayBuffer(start + 4 * values.length);
  const u8 = new Uint8Array(buf);
  const dv = new DataView(buf);
  u8.set([0x46, 0x45, 0x44, 0x43], 0); // "FEDC"
  dv.setUint8(4, 1); // version
  dv.setUint8(5, KINDS[kind]);
  dv.setUint8(6, 1); // dtype: float32
  dv.setUint32(8, body.length, true);
  dv.setUint32(12, values.length, true);
  u8.set(body, 16);
  if (LITTLE_ENDIAN) u8.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), start);
  else values.forEach((v, i) => dv.setFloat32(start + 4 * i, v, true));
  return u8;
}

export function decodeFrame(bytes) {
  const u8 = asBytes(bytes);
  const dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  if (u8.length < 16 || String.fromCharCode(...u8.subarray(0, 4)) !== 'FEDC') {
    throw new ClientError('the server sent something that is not a fedc frame');
  }
  const metaLen = dv.getUint32(8, true);
  const count = dv.getUint32(12, true);
  const start = 16 + ((metaLen + 3) & ~3);
  if (dv.getUint8(6) !== 1 || u8.length !== start + 4 * count) {
    throw new ClientError('the server sent a damaged frame');
  }
  let meta;
  try {
    meta = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(u8.subarray(16, 16 + metaLen)));
  } catch (err) {
    throw new ClientError('the server sent a damaged frame (its metadata is not JSON)');
  }
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta)) {
    throw new ClientError('the server sent a damaged frame (its metadata is not a JSON object)');
  }
  const values = new Float32Array(count);
  if (LITTLE_ENDIAN) new Uint8Array(values.buffer).set(u8.subarray(start, start + 4 * count));
  else for (let i = 0; i < count; i++) values[i] = dv.getFloat32(start + 4 * i, true);
  return { kind: KIND_NAMES[dv.getUint8(5)], meta, values };
}

const isCount = (v, low) => Number.isSafeInteger(v) && v >= low;

/** A task frame's metadata as docs/protocol.md states it, or a ClientError naming the field: a
 * task without a seed trained with seed 0, one without local_epochs sent the global weights back
 * untrained, and a wait without a number slept NaN ms, polling without pause (as
 * fedc_client.check_task). */
export function checkTask(meta, values, numParams) {
  if (meta.status === 'wait') {
    const retry = meta.retry_after === undefined ? 1 : meta.retry_after;
    if (typeof retry !== 'number' || !(retry >= 0 && retry < Infinity)) {
      throw new ClientError(`the server's task says wait with retry_after ${JSON.stringify(retry)}, not a number of seconds ≥ 0`);
    }
  } else if (meta.status === 'train') {
    for (const [key, low] of [['seed', 0], ['local_epochs', 1], ['batch_size', 1]]) {
      if (!isCount(meta[key], low)) {
        throw new ClientError(`the server's training task has ${key} ${JSON.stringify(meta[key])}, not an integer ≥ ${low}`);
      }
    }
    const missing = ['round', 'model_version'].filter((k) => !(k in meta));
    if (missing.length) throw new ClientError(`the server's training task has no ${missing.join(' or ')}`);
    if (values.length !== numParams) {
      throw new ClientError(`the server's training task has ${values.length} weights, but this bundle's model has ${numParams}`);
    }
    if (!values.every(Number.isFinite)) throw new ClientError("the server's training task has NaN or Inf weights");
  } else if (meta.status !== 'done') {
    throw new ClientError(`the server sent a task with status ${JSON.stringify(meta.status)} (expected 'train', 'wait' or 'done')`);
  }
  return meta;
}

// --- data and local training ------------------------------------------------------------------

const shapeText = (shape) => `[${shape.join(', ')}]`;

/** An array's rows against the declared per-example shape (reshaped losslessly, as Python's
 * _conform: x of shape (n, 8, 8) feeds f32[64]). */
function checkRows(array, decl, name) {
  const [, ...row] = array.shape;
  if (row.reduce((a, b) => a * b, 1) !== decl.shape.reduce((a, b) => a * b, 1)) {
    throw new RuntimeDataError(`'${name}' expects rows of shape ${shapeText(decl.shape)} but got ${shapeText(row)}`);
  }
}

/** A .npz file's arrays x and y as the model's typed arrays: {x, y, rows}, checked against the
 * model as fedc_client.load_data does, so a client refuses data that does not fit before it
 * joins (it found out when sampled, holding a place in the round; an empty file was sent and
 * refused by the server as "num_examples … got 0"). */
export async function loadData(bytes, manifest) {
  const arrays = await readNpz(bytes);
  if (!arrays.x || !arrays.y) {
    throw new RuntimeDataError(`a data file needs arrays 'x' and 'y'; it has: ${Object.keys(arrays).join(', ') || 'none'}`);
  }
  if (!arrays.x.shape.length || !arrays.y.shape.length || arrays.y.shape[0] !== arrays.x.shape[0]) {
    throw new RuntimeDataError(`'x' has shape ${shapeText(arrays.x.shape)} but 'y' has ${shapeText(arrays.y.shape)}`);
  }
  const rows = arrays.x.shape[0];
  if (rows === 0) throw new RuntimeDataError("'x' and 'y' have no rows");
  checkRows(arrays.x, manifest.inputs[0], 'x');
  checkRows(arrays.y, manifest.targets[0], 'y');
  const x = asDtype(arrays.x, manifest.inputs[0].dtype, 'x');
  const y = asDtype(arrays.y, manifest.targets[0].dtype, 'y');
  checkData(manifest, x, y); // NaN, labels outside the classes, token ids outside the vocabulary
  return { x, y, rows };
}

/** One task: evaluate the global weights on the local data, then train `local_epochs` epochs
 * with one fedc-shuffle/1 stream seeded by the task (the same steps as fedc_client.local_train). */
export function localTrain(model, weights, x, y, task) {
  model.setWeights(weights); // a FedProx anchor, if any, moves with them
  model.resetOptimizer();
  const evaluation = model.evaluate(x, y);
  const stream = new Shuffle(task.seed);
  model.dropoutSeed = task.seed >>> 0; // this task's dropout masks
  model.dropoutStep = 0;
  let trainLoss = NaN;
  for (let e = 0; e < task.local_epochs; e++) trainLoss = model.trainEpoch(x, y, task.batch_size, stream);
  return { weights: model.getWeights(), trainLoss, evaluation };
}

// --- the protocol client ----------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** bytes as a JSON object, or null (not UTF-8, not JSON, or not an object). */
function jsonObject(bytes) {
  try {
    const v = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? v : null;
  } catch (err) {
    return null;
  }
}

/** The server's URL without a trailing slash; a typo in it is an error, not a retry (as
 * fedc_client._base_url): fetch fails alike for 'localhost:8080' and for a server that is down,
 * so the page retried it for two minutes and then said it could not reach it. */
function baseUrl(server) {
  let url = null;
  try { url = new URL(server); } catch (err) { /* not a URL at all */ }
  if (!url || !['http:', 'https:'].includes(url.protocol) || !url.hostname) {
    throw new ClientError(`the server URL ${JSON.stringify(server)} is not an http:// or https:// URL`);
  }
  return server.replace(/\/+$/, '');
}

/** A token fits in an HTTP header: fetch refuses a non-Latin-1 character (a pasted '…') or a
 * line break before sending, with the TypeError a dead server gives, so it too was retried. */
function checkToken(token) {
  const bad = /[^\x21-\x7e]/.exec(token);
  if (bad) {
    throw new ClientError(`the token contains ${JSON.stringify(bad[0])}, which no fedc token has `
      + '(a token is fedc1.<id>.<secret>, as fedc serve --issue-tokens printed it)');
  }
  return token;
}

export class FedcClient {
  /** server: base URL; token: fedc1.<id>.<secret>; model: a Model; onEvent(event) for progress. */
  constructor({ server, token, model, onEvent = () => {}, retryFor = 120 }) {
    this.server = baseUrl(server);
    this.token = checkToken(token);
    this.model = model;
    this.onEvent = onEvent;
    this.retryFor = retryFor; // seconds to keep retrying while the server is unreachable
    this.clientId = null;
  }

  /** {ok, status, bytes}: the whole answer is read inside the retry loop, so a reply cut off
   * mid-body (fetch's "terminated") is retried like a refused connection, not thrown. */
  async _fetch(path, init = {}) {
    const started = Date.now();
    for (let wait = 250, retried = false; ; wait = Math.min(wait * 2, 4000)) {
      try {
        const headers = { Authorization: `Bearer ${this.token}`, ...(init.headers || {}) };
        const res = await fetch(`${this.server}${path}`, { ...init, headers });
        const answer = { ok: res.ok, status: res.status, bytes: new Uint8Array(await res.arrayBuffer()) };
        if (retried) this.onEvent({ event: 'reconnected' });
        return answer;
      } catch (err) { // unreachable (e.g. the server restarting): retry, then give up clearly
        retried = true;
        if (Date.now() - started > this.retryFor * 1000) {
          throw new ClientError(`cannot reach ${this.server}: ${err.cause ? err.cause.message || err.cause.code : err.message}`);
        }
        this.onEvent({ event: 'retry', reason: String(err.cause ? err.cause.code || err.cause : err) });
        await sleep(wait);
      }
    }
  }

  _check(res) {
    if (res.ok) return res;
    const body = jsonObject(res.bytes);
    throw new ClientError((body && body.reason) || `HTTP ${res.status}`, res.status, (body && body.error) || '');
  }

  /** A 2xx answer's JSON object, or a ClientError saying what came instead. */
  _object(res, what) {
    const body = jsonObject(this._check(res).bytes);
    if (body === null) {
      const start = new TextDecoder().decode(res.bytes.subarray(0, 40));
      throw new ClientError(`${this.server} answered the ${what} with ${JSON.stringify(start)}, not a fedc reply (a JSON object)`);
    }
    return body;
  }

  async join() {
    const info = this._object(await this._fetch('/api/v1/join', { method: 'POST' }), 'join');
    if (info.manifest_sha256 !== this.model.manifest.wasm.sha256) {
      throw new ClientError(`this bundle's model (${this.model.manifest.model}) is not the server's (${info.model})`);
    }
    this.clientId = info.client_id;
    this.onEvent({ event: 'joined', ...info });
    return info;
  }

  async task() {
    const frame = decodeFrame(this._check(await this._fetch('/api/v1/task')).bytes);
    checkTask(frame.meta, frame.values, this.model.numParams);
    return frame;
  }

  async send(task, result, rows) {
    const meta = { round: task.round, model_version: task.model_version, num_examples: rows,
      train_loss: result.trainLoss, eval: result.evaluation };
    const res = await this._fetch('/api/v1/update', { method: 'POST', body: encodeFrame('update', meta, result.weights),
      headers: { 'Content-Type': FRAME_TYPE } });
    return this._object(res, 'update');
  }

  /** Take part until the server says done; returns {rounds, accepted, skipped}. */
  async run(x, y, rows) {
    await this.join();
    const summary = { rounds: 0, accepted: 0, skipped: 0 };
    for (;;) {
      const { meta, values } = await this.task();
      if (meta.status === 'done') {
        this.onEvent({ event: 'done', ...summary });
        return summary;
      }
      if (meta.status === 'wait') {
        await sleep(1000 * (meta.retry_after === undefined ? 1 : meta.retry_after));
        continue;
      }
      this.onEvent({ event: 'training', round: meta.round, model_version: meta.model_version });
      const started = Date.now();
      const result = localTrain(this.model, values, x, y, meta);
      const trainSeconds = (Date.now() - started) / 1000;
      try {
        const reply = await this.send(meta, result, rows);
        summary.rounds += 1;
        summary.accepted += 1;
        this.onEvent({ event: 'accepted', round: meta.round, train_loss: result.trainLoss,
          local_loss: result.evaluation.loss, local_accuracy: result.evaluation.accuracy,
          train_seconds: trainSeconds, duplicate: reply.duplicate });
      } catch (err) { // a late or superseded update is the server's call: move on to the next round
        if (!(err instanceof ClientError) || (err.status !== 409 && err.status !== 403)) throw err;
        summary.skipped += 1;
        this.onEvent({ event: 'skipped', round: meta.round, reason: err.message });
      }
    }
  }
}

// --- the Node command line: node fedc-client.js --server URL --token T --data FILE.npz ----------

function parseArgs(argv) {
  const opts = { json: false, retryFor: 120 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') opts.json = true;
    else if (['--server', '--token', '--data', '--retry-for'].includes(a) && i + 1 < argv.length) {
      opts[a.slice(2).replace(/-(.)/g, (_, c) => c.toUpperCase())] = argv[++i];
    } else throw new ClientError(`unknown or incomplete argument ${a}`);
  }
  for (const k of ['server', 'token', 'data']) if (!opts[k]) throw new ClientError(`--${k} is required`);
  const retryFor = Number(opts.retryFor);
  // NaN ('abc') compared false with the time spent, so an unreachable server was retried for ever
  if (typeof opts.retryFor === 'string' && (opts.retryFor.trim() === '' || !(retryFor >= 0))) {
    throw new ClientError(`--retry-for expects a number of seconds ≥ 0, got '${opts.retryFor}'`);
  }
  opts.retryFor = retryFor;
  return opts;
}

function report(opts, event) {
  if (opts.json) console.log(JSON.stringify(event));
  else if (event.event === 'accepted') {
    console.log(`round ${event.round}: train loss ${event.train_loss.toFixed(4)}, global model on local data: `
      + `accuracy ${event.local_accuracy === undefined ? '-' : event.local_accuracy.toFixed(4)}`);
  } else if (event.event !== 'training') console.log(`${event.event}${event.reason ? `: ${event.reason}` : ''}`);
}

/** `node fedc-client.js …`: the bundle's files sit beside the module at moduleUrl. */
export async function runFromCommandLine(moduleUrl, argv) {
  const fs = await import('node:fs/promises');
  const { fileURLToPath } = await import('node:url');
  try {
    const opts = parseArgs(argv);
    const here = (name) => fileURLToPath(new URL(name, moduleUrl));
    const manifest = JSON.parse(await fs.readFile(here('manifest.json'), 'utf8'));
    const model = await Model.create(await fs.readFile(here(manifest.wasm.file)), manifest);
    let bytes;
    try { bytes = await fs.readFile(opts.data); } catch (err) { throw new ClientError(`cannot read ${opts.data}: ${err.code || err.message}`); }
    const { x, y, rows } = await loadData(bytes, manifest);
    const client = new FedcClient({ server: opts.server, token: opts.token, model,
      onEvent: (e) => report(opts, e), retryFor: opts.retryFor });
    await client.run(x, y, rows);
  } catch (err) {
    if (!(err instanceof ClientError || err instanceof RuntimeDataError)) throw err;
    console.error(`error: ${err.message}`);
    process.exitCode = 1;
  }
}

/** True when this module is the script Node was asked to run (never in a browser). */
export async function isMainModule(moduleUrl) {
  if (typeof process === 'undefined' || !process.argv || !process.argv[1]) return false;
  const { pathToFileURL } = await import('node:url');
  return pathToFileURL(process.argv[1]).href === moduleUrl;
}
