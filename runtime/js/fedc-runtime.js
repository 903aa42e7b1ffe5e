// fedc's JavaScript host runtime: model.wasm + manifest.json → train, evaluate and predict with
// typed arrays, in browsers and in Node ≥ 20. A port of runtime/python/fedc_runtime.py: the same
// memory views at manifest offsets, the same batch order (fedc-shuffle/1) and the same loss
// sums, so both runtimes produce bit-identical weights from the same weights, data and seed.
// Dependency-free ES module; docs/abi.md is the contract with the module.

export class RuntimeDataError extends Error {
  constructor(message) {
    super(message);
    this.name = 'RuntimeDataError';
  }
}

// --- fedc-shuffle/1 (see Shuffle in fedc_runtime.py; docs/protocol.md states it) ---------------

function fmix32(h) {
  h = (h ^ (h >>> 16)) >>> 0;
  h = Math.imul(h, 0x85ebca6b) >>> 0;
  h = (h ^ (h >>> 13)) >>> 0;
  h = Math.imul(h, 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

const rotl = (x, k) => ((x << k) | (x >>> (32 - k))) >>> 0;

/** A seeded xoshiro128** stream and Fisher–Yates permutations, on unsigned 32-bit integers. */
export class Shuffle {
  constructor(seed = 0) {
    if (!Number.isSafeInteger(seed) || seed < 0) {
      throw new RuntimeDataError(`a shuffle seed is an integer in 0..2**53-1, got ${seed}`);
    }
    const lo = seed % 4294967296;
    const hi = Math.floor(seed / 4294967296);
    const k = fmix32((hi ^ 0x243f6a88) >>> 0);
    const s = new Uint32Array(4);
    let x = lo;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      s[i] = fmix32((x ^ k) >>> 0);
    }
    if ((s[0] | s[1] | s[2] | s[3]) === 0) s[0] = 1; // xoshiro's one forbidden state
    this.s = s;
  }

  nextU32() {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }

  /** Uniform in 0..bound-1 (1 ≤ bound ≤ 2**32), unbiased by rejection. The threshold
   * (2**32 − bound) % bound is below bound, so it is computed only for the rare r < bound:
   * one modulo per draw instead of two (a 2048-row permutation: 68 → 40 µs in Node 20). */
  below(bound) {
    for (;;) {
      const r = this.nextU32();
      if (r >= bound || r >= (4294967296 - bound) % bound) return r % bound;
    }
  }

  /** Fisher–Yates from the top: for i = n-1 … 1 swap order[i] with order[below(i+1)]. */
  permutation(n) {
    const order = new Int32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    for (let i = n - 1; i > 0; i--) {
      const j = this.below(i + 1);
      const tmp = order[i];
      order[i] = order[j];
      order[j] = tmp;
    }
    return order;
  }

  /** A float in [0, 1) with 24 random bits (used only by initWeights). */
  uniform() {
    return (this.nextU32() >>> 8) / 16777216;
  }
}

/** A plain Uint8Array over the same bytes: Node's Buffer is a Uint8Array whose slice() does not
 * copy, and whose .buffer is a shared pool, so never compute on a Buffer directly. */
export function asBytes(bytes) {
  if (ArrayBuffer.isView(bytes)) return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return new Uint8Array(bytes);
}

// --- .npy / .npz reading (numpy.savez and savez_compressed files) ------------------------------

const NPY_TYPES = {
  '<f4': [Float32Array, 4], '<f8': [Float64Array, 8], '<i4': [Int32Array, 4],
  '<i8': [BigInt64Array, 8], '<i2': [Int16Array, 2], '|i1': [Int8Array, 1], '<u2': [Uint16Array, 2],
  '<u4': [Uint32Array, 4], '<u8': [BigUint64Array, 8], '|u1': [Uint8Array, 1], '|b1': [Uint8Array, 1],
};

/** One .npy file → {dtype, shape, data}; data is a typed array of the file's own dtype. */
export function parseNpy(bytes, name = 'array') {
  const u8 = asBytes(bytes);
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (u8.length < 10 || magic.some((b, i) => u8[i] !== b)) {
    throw new RuntimeDataError(`${name}: not a .npy array`);
  }
  const dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  const major = u8[6];
  const headerLen = major === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  const start = (major === 1 ? 10 : 12) + headerLen;
  const header = new TextDecoder('latin1').decode(u8.subarray(major === 1 ? 10 : 12, start));
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shapeText) throw new RuntimeDataError(`${name}: unreadable header`);
  if (fortran[1] === 'True') throw new RuntimeDataError(`${name}: Fortran-ordered arrays are not supported`);
  const spec = NPY_TYPES[descr[1]];
  if (!spec) throw new RuntimeDataError(`${name}: unsupported dtype ${descr[1]}`);
  const shape = shapeText[1].split(',').map((t) => t.trim()).filter((t) => t).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const [Type, size] = spec;
  if (start + count * size > u8.length) throw new RuntimeDataError(`${name}: truncated data`);
  // copy so the typed array is aligned whatever the header length was
  const data = new Type(u8.slice(start, start + count * size).buffer);
  return { dtype: descr[1], shape, data };
}

async function inflateRaw(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate-raw'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function zip64Sizes(dv, extraStart, extraEnd, sizes) {
  // sizes: [uncompressed, compressed, localOffset]; 0xFFFFFFFF ones live in the zip64 field
  for (let p = extraStart; p + 4 <= extraEnd;) {
    const id = dv.getUint16(p, true);
    const len = dv.getUint16(p + 2, true);
    if (id === 0x0001) {
      let q = p + 4;
      for (let i = 0; i < 3; i++) {
        if (sizes[i] === 0xffffffff) {
          sizes[i] = Number(dv.getBigUint64(q, true));
          q += 8;
        }
      }
    }
    p += 4 + len;
  }
  return sizes;
}

/** A .npz archive → {name: {dtype, shape, data}} for every array in it. */
export async function readNpz(bytes) {
  const u8 = asBytes(bytes);
  const dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  let eocd = -1;
  for (let p = u8.length - 22; p >= Math.max(0, u8.length - 65557); p--) {
    if (dv.getUint32(p, true) === 0x06054b50) { eocd = p; break; }
  }
  if (eocd < 0) throw new RuntimeDataError('not a .npz file (expected arrays saved with numpy.savez)');
  const entries = dv.getUint16(eocd + 10, true);
  let p = dv.getUint32(eocd + 16, true);
  const out = {};
  for (let e = 0; e < entries; e++) {
    if (p + 46 > u8.length || dv.getUint32(p, true) !== 0x02014b50) {
      throw new RuntimeDataError('.npz: damaged zip directory');
    }
    const method = dv.getUint16(p + 10, true);
    const nameLen = dv.getUint16(p + 28, true);
    const extraLen = dv.getUint16(p + 30, true);
    const commentLen = dv.getUint16(p + 32, true);
    const name = new TextDecoder().decode(u8.subarray(p + 46, p + 46 + nameLen));
    const [, compressed, local] = zip64Sizes(dv, p + 46 + nameLen, p + 46 + nameLen + extraLen,
      [dv.getUint32(p + 24, true), dv.getUint32(p + 20, true), dv.getUint32(p + 42, true)]);
    const dataStart = local + 30 + dv.getUint16(local + 26, true) + dv.getUint16(local + 28, true);
    const raw = u8.subarray(dataStart, dataStart + compressed);
    if (method !== 0 && method !== 8) throw new RuntimeDataError(`.npz: ${name} uses zip method ${method}`);
    const body = method === 8 ? await inflateRaw(raw) : raw;
    out[name.replace(/\.npy$/, '')] = parseNpy(body, name);
    p += 46 + nameLen + extraLen + commentLen;
  }
  return out;
}

/** An npz array as the runtime's row-major typed array: 'f32' → Float32Array, 'i32' → Int32Array. */
export function asDtype(array, dtype, name = 'array') {
  const src = array.data;
  if (dtype === 'f32') {
    if (src instanceof Float32Array) return src;
    if (src instanceof BigInt64Array || src instanceof BigUint64Array) {
      return Float32Array.from(src, (v) => Number(v));
    }
    return Float32Array.from(src); // float64 → float32 rounds to nearest even, as numpy's astype
  }
  const out = new Int32Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const v = Number(src[i]);
    if (!Number.isInteger(v) || v < -2147483648 || v > 2147483647) {
      throw new RuntimeDataError(`${name} must hold integers, found ${v}`);
    }
    out[i] = v;
  }
  return out;
}

// --- the model --------------------------------------------------------------------------------

async function sha256Hex(bytes) {
  const subtle = globalThis.crypto && globalThis.crypto.subtle;
  if (!subtle) return null; // plain-http pages on other hosts have no WebCrypto: skip the check
  const digest = new Uint8Array(await subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

const rowSize = (shape) => shape.reduce((a, b) => a * b, 1);

const F32_MAX = 3.4028234663852886e38;

/** A value as an error message shows it: strings quoted, so '3' is not mistaken for 3. */
const shown = (v) => (typeof v === 'string' ? `'${v}'` : String(v));

/** What a value is, for "expects X, got …": "an Array of 1", "a Float32Array of 5", "null". */
function described(v) {
  if (v === null || v === undefined) return String(v);
  if (Array.isArray(v) || ArrayBuffer.isView(v)) {
    const name = v.constructor.name;
    return `${/^[AEIOU]/.test(name) ? 'an' : 'a'} ${name} of ${v.length}`;
  }
  return `${typeof v === 'object' ? 'an' : 'a'} ${typeof v}`;
}

/** GET url; a RuntimeDataError naming it when it cannot be fetched or is not a 2xx answer. */
async function fetchOk(url) {
  let res;
  try {
    res = await fetch(url);
  } catch (err) { // Node's "fetch failed" keeps the reason (ECONNREFUSED…) in its cause
    throw new RuntimeDataError(`cannot fetch ${url}: ${(err.cause && (err.cause.code || err.cause.message)) || err.message}`);
  }
  if (!res.ok) throw new RuntimeDataError(`cannot fetch ${url}: HTTP ${res.status}`);
  return res;
}

// Each input array's rows as subarray views, made on its first shuffled copy and kept while the
// array lives: trainEpoch then copies a batch with one set() per row and no allocation (1.6 →
// 0.6 µs a digits batch in Node 20 from the second epoch on; clients train several epochs and
// rounds on the same arrays).
const rowViews = new WeakMap();

/** src[begin … end) without a copy for a typed array (a plain array is sliced). */
const part = (src, begin, end) => (ArrayBuffer.isView(src) ? src.subarray(begin, end) : src.slice(begin, end));

function rowsOf(src, size) {
  let cached = rowViews.get(src);
  if (cached === undefined || cached.size !== size) {
    const rows = new Array(src.length / size);
    for (let i = 0; i < rows.length; i++) rows[i] = part(src, i * size, (i + 1) * size);
    cached = { size, rows };
    rowViews.set(src, cached);
  }
  return cached.rows;
}

/** dst's rows 0 … n−1 ← src's rows order[start … start+n−1] (src's rows start … start+n−1 when
 * order is null: one set), rows of `size` values. A row of one value (a class label) is one
 * assignment. */
function copyRows(src, dst, size, order, start, n) {
  if (order === null) {
    dst.set(part(src, start * size, (start + n) * size));
    return;
  }
  if (size === 1) {
    for (let r = 0; r < n; r++) dst[r] = src[order[start + r]];
    return;
  }
  const rows = rowsOf(src, size);
  for (let r = 0; r < n; r++) dst.set(rows[order[start + r]], r * size);
}

/** Whether every value is a number that float32 holds as a finite value (as Python's check
 * after its float32 cast: 1e39 in a Float64Array or an Array would become Inf in the buffer).
 * For a Float32Array, four running sums of x·0 (0 for a finite x, NaN for ±Inf and NaN): 2.4×
 * faster than Number.isFinite per element, which trainEpoch pays on every call (a digits epoch:
 * 153 → 64 µs). */
function allFinite(a) {
  if (a instanceof Float32Array) {
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    const m = a.length - (a.length % 4);
    for (let i = 0; i < m; i += 4) {
      s0 += a[i] * 0;
      s1 += a[i + 1] * 0;
      s2 += a[i + 2] * 0;
      s3 += a[i + 3] * 0;
    }
    for (let i = m; i < a.length; i++) s0 += a[i] * 0;
    return s0 + s1 + s2 + s3 === 0;
  }
  for (let i = 0; i < a.length; i++) {
    if (typeof a[i] !== 'number' || !Number.isFinite(Math.fround(a[i]))) return false;
  }
  return true;
}

/** A BigInt64Array's values are BigInts, which no check or copy here takes (a TypeError, or
 * "class label 0 is outside 0..9"): say what to pass instead. */
function checkNotBigInt(a, what, dtype) {
  if (a instanceof BigInt64Array || a instanceof BigUint64Array) {
    const to = dtype === 'f32' ? 'Float32Array' : 'Int32Array';
    throw new RuntimeDataError(`${what} must hold Numbers, got ${described(a)} (convert it: ${to}.from(a, Number))`);
  }
}

/** x as {name: array}: a typed or plain array is the one input (an Int32Array of token ids
 * as much as a Float32Array of features), an object names every input. */
function namedInputs(manifest, x) {
  const decls = manifest.inputs;
  if (ArrayBuffer.isView(x) || Array.isArray(x)) {
    if (decls.length !== 1) throw new RuntimeDataError(`the model has ${decls.length} inputs: pass an object by name`);
    return { [decls[0].name]: x };
  }
  if (x === null || typeof x !== 'object') throw new RuntimeDataError(`inputs must be an array or an object of arrays by name, got ${x}`);
  return x;
}

/** The rows of every input, checked against the manifest (shape, NaN, token ids). */
function checkInputs(manifest, xs, rows) {
  for (const d of manifest.inputs) {
    const a = xs[d.name];
    if (!a) throw new RuntimeDataError(`missing input ${d.name}`);
    checkNotBigInt(a, `input ${d.name}`, d.dtype);
    if (a.length !== rows * rowSize(d.shape)) {
      throw new RuntimeDataError(`input ${d.name}: ${a.length} values is not ${rows} rows of ${rowSize(d.shape)}`);
    }
    if (d.dtype === 'f32') {
      if (!allFinite(a)) throw new RuntimeDataError(`input ${d.name} contains NaN or Inf`);
    } else if (d.vocab !== undefined) { // token ids feeding an embedding
      for (let i = 0; i < a.length; i++) {
        if (!(Number.isInteger(a[i]) && a[i] >= 0 && a[i] < d.vocab)) {
          throw new RuntimeDataError(`input ${d.name} holds token id ${a[i]}, outside the embedding's vocabulary 0..${d.vocab - 1}`);
        }
      }
    } else { // the Int32Array copy would truncate 2.5 and wrap 2**32 + 3
      for (let i = 0; i < a.length; i++) {
        if (!(Number.isInteger(a[i]) && a[i] >= -2147483648 && a[i] <= 2147483647)) {
          throw new RuntimeDataError(`input ${d.name} must hold int32 integers, found ${shown(a[i])}`);
        }
      }
    }
  }
}

/** x: one input's typed array of rows·features (or {name: typed array} for several inputs);
 * y: targets. {xs, rows} once every value fits the manifest's model (as Model's calls check). */
export function checkData(manifest, x, y) {
  const xs = namedInputs(manifest, x);
  const t = manifest.targets[0];
  if (!(ArrayBuffer.isView(y) || Array.isArray(y))) throw new RuntimeDataError(`target ${t.name} must be an array, got ${y}`);
  checkNotBigInt(y, `target ${t.name}`, t.dtype);
  const rows = y.length / rowSize(t.shape);
  if (!Number.isInteger(rows)) throw new RuntimeDataError(`target ${t.name}: length ${y.length} is not a whole number of rows`);
  checkInputs(manifest, xs, rows);
  if (t.dtype === 'f32') { // regression and binary targets: NaN made every weight NaN
    if (!allFinite(y)) throw new RuntimeDataError(`target ${t.name} contains NaN or Inf`);
    if (manifest.task === 'binary') { // labels in {-1, 1} (or 1, 2) trained silently
      for (let i = 0; i < y.length; i++) { // Numbers only: allFinite checked them
        if (!(y[i] >= 0 && y[i] <= 1)) {
          throw new RuntimeDataError(`target ${t.name} holds ${y[i]}, outside 0..1 (a binary model's targets are 0, 1 or a probability between)`);
        }
      }
    }
  } else if (t.classes !== undefined) {
    for (let i = 0; i < y.length; i++) {
      // a fraction or a string would be truncated or coerced by the Int32Array copy
      if (!(Number.isInteger(y[i]) && y[i] >= 0 && y[i] < t.classes)) {
        throw new RuntimeDataError(`class label ${y[i]} is outside 0..${t.classes - 1}`);
      }
    }
  }
  return { xs, rows };
}


/** Where each float of getWeights' vector lives in the params region (an Int32Array), or
 * null if every parameter is row-major there. A [k, n] weight with layout {panels: P} holds
 * its (r, c) at ((c / P | 0) * k + r) * P + c % P (fedc/layout.py). */
function memoryOrder(params, region) {
  if (!params.some((p) => p.layout)) return null;
  const order = new Int32Array(region.count);
  let i = 0;
  for (const p of params) {
    const at = (p.offset - region.offset) / 4;
    const width = p.layout ? p.layout.panels : 0;
    if (p.layout && !(Object.keys(p.layout).length === 1 && Number.isInteger(width)
        && width > 0 && p.shape.length === 2 && p.shape[1] % width === 0)) {
      throw new RuntimeDataError(`parameter ${p.name}: unknown layout ${JSON.stringify(p.layout)} for shape [${p.shape}] (this runtime reads {"panels": P} for a [k, n] weight with n a multiple of P)`);
    }
    for (let j = 0; j < p.size; j++, i++) {
      if (!width) { order[i] = at + j; continue; }
      const [k, n] = p.shape;
      const r = Math.floor(j / n);
      const c = j % n;
      order[i] = at + ((Math.floor(c / width) * k + r) * width + (c % width));
    }
  }
  const seen = new Uint8Array(region.count);
  for (let j = 0; j < i; j++) {
    if (order[j] < 0 || order[j] >= region.count || seen[order[j]]) { i = -1; break; }
    seen[order[j]] = 1;
  }
  if (i !== region.count) throw new RuntimeDataError('manifest.json\'s parameters do not tile its params_region');
  return order;
}

export class Model {
  /** Compile and instantiate model.wasm (bytes) described by manifest (a parsed object). */
  static async create(wasmBytes, manifest) {
    if (!manifest || manifest.format !== 'fedc-manifest/1') {
      throw new RuntimeDataError(`not a fedc manifest (format ${manifest && manifest.format})`);
    }
    const bytes = asBytes(wasmBytes);
    const digest = await sha256Hex(bytes);
    if (digest !== null && digest !== manifest.wasm.sha256) {
      throw new RuntimeDataError('model.wasm does not match manifest.json (sha256 differs)');
    }
    const { instance } = await WebAssembly.instantiate(bytes, {});
    try {
      return new Model(instance, manifest);
    } catch (err) { // an edited manifest: a field missing, or a buffer outside the memory
      if (!(err instanceof TypeError || err instanceof RangeError)) throw err;
      throw new RuntimeDataError(`manifest.json is not the one fedc wrote for this module (${err.message}); rebuild both with fedc compile`);
    }
  }

  /** Fetch manifest.json and its model.wasm from a base URL (browsers; Node for http URLs). */
  static async fetch(baseUrl) {
    const base = new URL(baseUrl, globalThis.location ? globalThis.location.href : undefined);
    const manifestUrl = new URL('manifest.json', base);
    const text = await (await fetchOk(manifestUrl)).text();
    let manifest;
    try {
      manifest = JSON.parse(text);
    } catch (err) {
      throw new RuntimeDataError(`${manifestUrl} is not valid JSON`);
    }
    if (!manifest || manifest.format !== 'fedc-manifest/1') {
      throw new RuntimeDataError(`${manifestUrl} is not a fedc manifest (format ${manifest && manifest.format})`);
    }
    const wasm = await (await fetchOk(new URL(manifest.wasm.file, base))).arrayBuffer();
    return Model.create(new Uint8Array(wasm), manifest);
  }

  constructor(instance, manifest) {
    this.instance = instance;
    this.manifest = manifest;
    this.exports = instance.exports;
    this.maxBatch = manifest.max_batch;
    // the memory is fixed-size (never grows), so views made once stay valid
    const buf = this.exports.memory.buffer;
    const f32 = (off, n) => new Float32Array(buf, off, n);
    const typed = (d, n) => (d.dtype === 'f32' ? new Float32Array(buf, d.offset, n)
      : new Int32Array(buf, d.offset, n));
    this.inputs = Object.fromEntries(manifest.inputs.map(
      (d) => [d.name, typed(d, this.maxBatch * rowSize(d.shape))]));
    const t = manifest.targets[0];
    this.target = typed(t, this.maxBatch * rowSize(t.shape));
    const out = manifest.outputs[0];
    this.output = f32(out.offset, this.maxBatch * rowSize(out.shape));
    this.outputRow = rowSize(out.shape);
    // the parameters as memory holds them: a weight with a "layout" is in panels, and
    // getWeights/setWeights give and take manifest (row-major) order through _order
    this.params = f32(manifest.params_region.offset, manifest.params_region.count);
    this._order = memoryOrder(manifest.params, manifest.params_region);
    const opt = manifest.optimizer;
    this.hparams = f32(opt.hparams_offset, opt.hparams_order.length);
    // optimizer state, the i32 step counter (schedules, bias corrections) included
    this.state = f32(opt.state_region.offset, opt.state_region.count);
    opt.hparams_order.forEach((k, i) => { this.hparams[i] = opt.hparams[k]; });
    const anchor = manifest.anchor_region;
    // FedProx's anchor weights w₀, same layout as params (null without FedProx)
    this.anchor = anchor ? f32(anchor.offset, anchor.count) : null;
    // dropout's key [seed, step], written before every train step (null without dropout)
    this.dropoutKey = manifest.rng ? new Uint32Array(buf, manifest.rng.offset, 2) : null;
    this.dropoutSeed = 0;
    this.dropoutStep = 0;
    // train_steps(n, count) leaves step j's loss at losses[j] (older modules lack both)
    this.losses = manifest.losses && this.exports.train_steps
      ? f32(manifest.losses.offset, manifest.losses.count) : null;
  }

  get numParams() { return this.params.length; }

  /** Draw every parameter from its manifest initialiser with a fedc-shuffle/1 stream. Not
   * numpy's stream: Python's init_weights gives other values; a federated client never calls
   * this (its weights come from the server). */
  initWeights(seed = 0) {
    if (!Number.isSafeInteger(seed) || seed < 0) {
      throw new RuntimeDataError(`initWeights: seed must be an integer in 0..2**53-1, got ${shown(seed)}`);
    }
    const rng = new Shuffle(seed);
    const flat = new Float32Array(this.numParams);
    let at = 0;
    for (const p of this.manifest.params) {
      const view = flat.subarray(at, at + p.size);
      at += p.size;
      const init = p.init;
      for (let i = 0; i < p.size; i++) {
        if (init.kind === 'uniform') view[i] = init.low + (init.high - init.low) * rng.uniform();
        else if (init.kind === 'normal') {
          const u1 = 1 - rng.uniform();
          const u2 = rng.uniform();
          view[i] = init.std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
        } else if (init.kind === 'zeros' || init.kind === 'ones') view[i] = init.kind === 'ones' ? 1 : 0;
        else throw new RuntimeDataError(`unknown initialiser ${init.kind}`);
      }
    }
    this._writeWeights(this.params, flat);
    this.resetOptimizer();
    this.dropoutSeed = seed >>> 0;
    this.dropoutStep = 0;
    if (this.anchor) this.anchor.set(this.params);
  }

  /** A copy of all parameters in manifest order (row-major), as Python's get_weights. */
  getWeights() {
    const order = this._order;
    if (!order) return this.params.slice();
    const out = new Float32Array(order.length);
    for (let i = 0; i < order.length; i++) out[i] = this.params[order[i]];
    return out;
  }

  /** region (params or anchor, memory layout) = flat (getWeights' order). */
  _writeWeights(region, flat) {
    const order = this._order;
    if (!order) { region.set(flat); return; }
    for (let i = 0; i < order.length; i++) region[order[i]] = flat[i];
  }

  /** Write all parameters; with a FedProx anchor it moves too unless anchor === false (a client
   * receiving the global model starts the round anchored at it), as in Python. */
  setWeights(weights, { anchor = null } = {}) {
    this._checkWeights(weights, 'setWeights');
    this._writeWeights(this.params, weights);
    if (this.anchor && anchor !== false) this.anchor.set(this.params); // the same layout
    else if (anchor) throw new RuntimeDataError('this model has no FedProx anchor');
  }

  setAnchor(weights) {
    this._checkWeights(weights, 'setAnchor');
    if (!this.anchor) throw new RuntimeDataError('this model has no FedProx anchor');
    this._writeWeights(this.anchor, weights);
  }

  _checkWeights(weights, what) {
    if (!(weights instanceof Float32Array) || weights.length !== this.numParams) {
      throw new RuntimeDataError(`${what} expects a Float32Array of ${this.numParams} values, got ${described(weights)}`);
    }
    for (let i = 0; i < weights.length; i++) {
      if (!Number.isFinite(weights[i])) throw new RuntimeDataError(`${what}: weights contain NaN or Inf`);
    }
  }

  /** Dropout masks hash (dropoutSeed, dropoutStep): a fresh key for every step. */
  _nextDropoutKey() {
    if (!this.dropoutKey) return;
    this.dropoutKey[0] = this.dropoutSeed;
    this.dropoutKey[1] = this.dropoutStep;
    this.dropoutStep += 1;
  }

  resetOptimizer() { this.state.fill(0); }

  setHparam(name, value) {
    const order = this.manifest.optimizer.hparams_order;
    const i = order.indexOf(name);
    if (i < 0) throw new RuntimeDataError(`${name} is not a run-time hyper-parameter (expected one of ${order.join(', ')})`);
    // NaN or ±Inf (or beyond float32, which becomes Inf; a string, which becomes NaN or a number)
    // would make every later step NaN
    if (typeof value !== 'number' || !(Math.abs(value) <= F32_MAX)) {
      throw new RuntimeDataError(`setHparam: ${name} must be a finite number, got ${shown(value)}`);
    }
    this.hparams[i] = value;
  }

  _named(x) { return namedInputs(this.manifest, x); }

  _checkInputs(xs, rows) { checkInputs(this.manifest, xs, rows); }

  _data(x, y) { return checkData(this.manifest, x, y); }

  _write(xs, y, order, start, n) {
    for (const d of this.manifest.inputs) copyRows(xs[d.name], this.inputs[d.name], rowSize(d.shape), order, start, n);
    if (y !== null) copyRows(y, this.target, rowSize(this.manifest.targets[0].shape), order, start, n);
  }

  /** One optimizer step on one batch (≤ maxBatch rows); returns its loss. */
  trainStep(x, y) {
    const { xs, rows } = this._data(x, y);
    if (rows < 1 || rows > this.maxBatch) throw new RuntimeDataError(`a batch has 1..${this.maxBatch} rows, got ${rows}`);
    this._write(xs, y, null, 0, rows);
    this._nextDropoutKey();
    return this.exports.train_step(rows);
  }

  /** One pass in batches ordered by fedc-shuffle/1 (an integer seed, or a Shuffle to continue a
   * stream over epochs); returns the mean of the batch losses, summed in the same order as
   * Python's train_epoch. */
  trainEpoch(x, y, batchSize = 32, seed = 0) {
    const { xs, rows } = this._data(x, y);
    if (!(Number.isInteger(batchSize) && batchSize >= 1 && batchSize <= this.maxBatch)) {
      throw new RuntimeDataError(`batch_size must be in 1..${this.maxBatch}, got ${batchSize}`);
    }
    // no batch to train: a mean loss of 0 would pass for a real one (as Python)
    if (rows === 0) throw new RuntimeDataError('trainEpoch needs at least one row, got 0');
    const order = (seed instanceof Shuffle ? seed : new Shuffle(seed)).permutation(rows);
    if (!(seed instanceof Shuffle)) this.dropoutSeed = seed >>> 0; // as Python: new masks per seed
    let total = 0;
    let batches = 0;
    // whole batches `per` at a time, as Python's train_epoch: one train_steps call trains the
    // consecutive blocks written together, and their losses are summed in order
    const full = rows - (rows % batchSize);
    const per = this.losses ? Math.max(1, Math.min(Math.floor(this.maxBatch / batchSize),
      full / batchSize)) : 1;
    for (let start = 0; start < full; start += per * batchSize) {
      const k = Math.min(per, (full - start) / batchSize);
      this._write(xs, y, order, start, k * batchSize);
      this._nextDropoutKey();
      if (this.dropoutKey) this.dropoutStep += k - 1; // train_steps steps the key for the others
      if (k === 1) {
        total += this.exports.train_step(batchSize);
      } else {
        this.exports.train_steps(batchSize, k);
        for (let j = 0; j < k; j++) total += this.losses[j];
      }
      batches += k;
    }
    if (full < rows) { // the last, partial batch
      this._write(xs, y, order, full, rows - full);
      this._nextDropoutKey();
      total += this.exports.train_step(rows - full);
      batches += 1;
    }
    return total / batches; // ≥ 1: no rows is refused above
  }

  /** Mean loss (and accuracy for classification and binary tasks) over all rows, in maxBatch
   * chunks; accuracy counts as Python's _hits does. */
  evaluate(x, y) {
    const { xs, rows } = this._data(x, y);
    const task = this.manifest.task;
    const classify = task === 'classification' || task === 'binary';
    let lossSum = 0;
    let correct = 0;
    for (let start = 0; start < rows; start += this.maxBatch) {
      const n = Math.min(this.maxBatch, rows - start);
      this._write(xs, y, null, start, n);
      lossSum += this.exports.eval_step(n) * n;
      if (classify) correct += this._hits(task, y, start, n);
    }
    const out = { loss: lossSum / Math.max(rows, 1) };
    if (classify) out.accuracy = correct / Math.max(rows, 1);
    return out;
  }

  _hits(task, y, start, n) {
    const k = this.outputRow;
    let hits = 0;
    if (task === 'classification') {
      for (let r = 0; r < n; r++) if (this._argmax(r) === y[start + r]) hits += 1;
      return hits;
    }
    // binary: logit > 0 predicts 1, against target > 0.5; several outputs count their fraction
    for (let r = 0; r < n; r++) {
      let right = 0;
      for (let j = 0; j < k; j++) {
        if ((this.output[r * k + j] > 0) === (y[(start + r) * k + j] > 0.5)) right += 1;
      }
      hits += right / k;
    }
    return hits;
  }

  _argmax(row) { // the first maximum, as numpy's argmax
    const k = this.outputRow;
    let best = 0;
    for (let j = 1; j < k; j++) if (this.output[row * k + j] > this.output[row * k + best]) best = j;
    return best;
  }

  /** The prediction tensor for every row, as one Float32Array (rows × output row). `rows`, if
   * given, must be the inputs' row count (it used to be required). */
  predict(x, rows) {
    const xs = this._named(x);
    const d = this.manifest.inputs[0];
    const count = xs[d.name] ? xs[d.name].length / rowSize(d.shape) : 0;
    if (rows === undefined) rows = count;
    if (!Number.isInteger(rows) || rows !== count) {
      throw new RuntimeDataError(`predict: ${rows} rows requested but input ${d.name} holds ${count}`);
    }
    this._checkInputs(xs, rows);
    const out = new Float32Array(rows * this.outputRow);
    for (let start = 0; start < rows; start += this.maxBatch) {
      const n = Math.min(this.maxBatch, rows - start);
      this._write(xs, null, null, start, n);
      this.exports.predict(n);
      out.set(this.output.subarray(0, n * this.outputRow), start * this.outputRow);
    }
    return out;
  }
}
