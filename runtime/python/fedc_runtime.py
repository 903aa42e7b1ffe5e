"""fedc's Python host runtime: loads model.wasm + manifest.json and trains it through wasmtime.

Standalone (numpy + wasmtime only) so it can ship inside client bundles. Every training step
runs inside the Wasm module: the host writes a batch into the module's memory (numpy views,
no intermediate copies) and makes one call per batch on wasmtime's fastest call path.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import json
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np
import wasmtime

__all__ = ["Model", "RuntimeDataError", "Shuffle", "load"]

Arrays = Union[np.ndarray, Mapping[str, np.ndarray]]  # noqa: UP007 - runtime alias, py3.9 hosts


class RuntimeDataError(ValueError):
    """Data handed to the runtime does not fit the model (wrong shape, dtype, label…)."""


class _Call:
    """One export, called through wasmtime_func_call_unchecked (0.75 µs instead of 11–180 µs).

    The export's signature is checked against the manifest once, at load time, which is what
    makes the unchecked path safe. The C function is called through a prototype of plain
    pointers with the addresses computed once: wasmtime's own ctypes prototype converts its
    typed pointer arguments on every call (1.7 µs a call here). Falls back to the generic
    call if the private ctypes bindings of this wasmtime version are not what we expect.
    """

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func, n_results: int,
                 n_params: int = 1) -> None:
        self.store, self.func, self.n_results = store, func, n_results
        try:
            from wasmtime import _bindings, _ffi
            from wasmtime._trap import Trap

            P = ctypes.c_void_p
            proto = ctypes.CFUNCTYPE(P, P, P, P, ctypes.c_size_t, P)
            self._fn = proto(ctypes.cast(_bindings._wasmtime_func_call_unchecked, P).value)
            self._ffi, self._trap_cls = _ffi, Trap
            slots = max(1, n_params, n_results)  # arguments in, then results out
            self._buf = (_ffi.wasmtime_val_raw_t * slots)()
            self._vals = [self._buf[i] for i in range(n_params)]
            self._val = self._buf[0]
            self._trap = ctypes.POINTER(_ffi.wasm_trap_t)()
            self._trap_slot = P.from_address(ctypes.addressof(self._trap))
            self._args = (ctypes.cast(store._context(), P).value,
                          ctypes.addressof(func._func), ctypes.addressof(self._buf), slots,
                          ctypes.addressof(self._trap))
            self.fast = True
        except (ImportError, AttributeError, TypeError):  # pragma: no cover - other versions
            self.fast = False

    def __call__(self, *args: int) -> float | None:
        if not self.fast:
            return self.func(self.store, *args)  # type: ignore[no-any-return]
        for val, a in zip(self._vals, args, strict=True):
            val.i32 = a
        err = self._fn(*self._args)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(
                ctypes.cast(err, ctypes.POINTER(self._ffi.wasmtime_error_t)))
        if self._trap:
            trap = self._trap_cls._from_ptr(ctypes.cast(self._trap_slot.value,
                                                        ctypes.POINTER(self._ffi.wasm_trap_t)))
            self._trap_slot.value = None  # the Trap owns it now; the slot is ours again
            raise trap
        return float(self._val.f32) if self.n_results else None


_TAKE_BYTES = 32 * 1024  # see Model.train_epoch
_F32_MAX = float(np.finfo(np.float32).max)

# Builds of one module (manifest "wasm" and "variants"), most capable first: Model.load takes
# the first the engine validates. relaxed-simd's results may differ in the last bit between
# CPUs; simd128 and scalar are deterministic.
VARIANT_PREFERENCE = ("relaxed-simd", "simd128", "scalar")


def _read_manifest(d: Path) -> Mapping[str, Any]:
    """A model folder's manifest.json, parsed; RuntimeDataError naming the folder if it is not
    one."""
    if not d.is_dir():
        raise RuntimeDataError(f"no such model folder: {d}")
    path = d / "manifest.json"
    if not path.is_file():
        raise RuntimeDataError(f"{d} is not a model folder: it has no manifest.json")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RuntimeDataError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "fedc-manifest/1":
        shown = manifest.get("format") if isinstance(manifest, dict) else None
        raise RuntimeDataError(f"{path} is not a fedc manifest (format {shown!r})")
    return manifest


def _builds(manifest: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Every build the manifest lists, by variant name."""
    primary = manifest["wasm"]
    builds = {primary.get("variant", "simd128"): primary}
    builds.update(manifest.get("variants") or {})
    return builds


class Model:
    """A compiled fedc model instantiated in wasmtime."""

    def __init__(self, wasm: bytes | None, manifest: Mapping[str, Any], *,
                 engine: wasmtime.Engine | None = None,
                 module: wasmtime.Module | None = None) -> None:
        if manifest.get("format") != "fedc-manifest/1":
            raise RuntimeDataError(f"not a fedc manifest (format {manifest.get('format')!r})")
        self.manifest = manifest
        self.engine = engine or wasmtime.Engine()
        if module is None:
            if wasm is None or hashlib.sha256(wasm).hexdigest() != manifest["wasm"]["sha256"]:
                raise RuntimeDataError("model.wasm does not match manifest.json (sha256 differs)")
            module = wasmtime.Module(self.engine, wasm)
        self.module = module
        self.store = wasmtime.Store(self.engine)
        self.instance = wasmtime.Instance(self.store, self.module, [])
        exports = self.instance.exports(self.store)
        mem = exports["memory"]
        if not isinstance(mem, wasmtime.Memory):
            raise RuntimeDataError("model.wasm does not export its memory")
        self._memory = mem
        try:
            self.max_batch = int(manifest["max_batch"])
            self._calls = {name: self._bind(exports, name, sig)
                           for name, sig in manifest["exports"].items()}
            self._map_views()
        except (KeyError, TypeError, IndexError, AttributeError) as exc:  # an edited manifest
            raise RuntimeDataError(f"manifest.json is not the one fedc wrote for this module "
                                   f"({type(exc).__name__}: {exc}); rebuild both with fedc "
                                   "compile") from None

    @classmethod
    def load(cls, directory: str | Path, *, variant: str | None = None, **kw: Any) -> Model:
        """Load model.wasm, or the best build of it the engine supports when the manifest
        lists several ("variants": relaxed-simd, then simd128, then scalar); `variant`
        forces one. `self.manifest["wasm"]` describes the build that was loaded."""
        d = Path(directory)
        manifest = _read_manifest(d)
        engine = kw.pop("engine", None) or wasmtime.Engine()
        builds = _builds(manifest)
        if variant is not None and variant not in builds:
            raise RuntimeDataError(f"this model has no {variant!r} build (it has "
                                   f"{', '.join(builds)})")
        order = [variant] if variant else [v for v in VARIANT_PREFERENCE if v in builds] + \
            [v for v in builds if v not in VARIANT_PREFERENCE]
        rejected, missing = [], []
        for name in order:
            path = d / builds[name]["file"]
            if not path.is_file():  # e.g. a bundle that copied only one
                missing.append(path.name)
                rejected.append(f"{name}: {path.name} is missing")
                continue
            wasm = path.read_bytes()
            try:
                wasmtime.Module.validate(engine, wasm)
            except wasmtime.WasmtimeError as exc:  # e.g. SIMD or relaxed SIMD switched off
                rejected.append(f"{name}: {str(exc).splitlines()[0]}")
                continue
            chosen = {**manifest, "wasm": {**builds[name], "variant": name}}
            return cls(wasm, chosen, engine=engine, **kw)
        if len(missing) == len(order):
            raise RuntimeDataError(f"{d} has no {' or '.join(missing)} (named in manifest.json)")
        raise RuntimeDataError("no build of this model runs on this engine (" +
                               "; ".join(rejected) + ")")

    def clone(self) -> Model:
        """A fresh instance sharing the compiled module (cheap: no recompilation)."""
        return Model(None, self.manifest, engine=self.engine, module=self.module)

    # --- memory views ---------------------------------------------------------------------
    def _bind(self, exports: Any, name: str, sig: Mapping[str, Any]) -> _Call:
        func = exports[name]
        if not isinstance(func, wasmtime.Func):
            raise RuntimeDataError(f"model.wasm does not export function {name!r}")
        ty = func.type(self.store)
        params, results = [str(t) for t in ty.params], [str(t) for t in ty.results]
        if params != list(sig["params"]) or results != list(sig["results"]):
            raise RuntimeDataError(f"export {name!r} has signature {params} -> {results}, "
                                   f"manifest says {sig['params']} -> {sig['results']}")
        return _Call(self.store, func, len(results), len(params))

    def _view(self, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        np_dtype = np.float32 if dtype == "f32" else np.int32
        count = int(np.prod(shape, dtype=np.int64))
        end = offset + count * 4
        if isinstance(offset, bool) or not isinstance(offset, int) or offset % 4 or \
                not 0 <= offset <= end <= self._raw.size:
            raise RuntimeDataError(f"manifest.json places a buffer at bytes {offset!r}..{end}, "
                                   f"not inside the module's {self._raw.size}-byte memory")
        return self._raw[offset:end].view(np_dtype).reshape(shape)

    def _linear_memory(self) -> np.ndarray:
        """The module's whole linear memory as a uint8 array (a view, no copy)."""
        size = self._memory.data_len(self.store)
        ptr = self._memory.data_ptr(self.store)
        return np.ctypeslib.as_array(ptr, shape=(size,))

    def _map_views(self) -> None:
        self._raw = self._linear_memory()
        m, b = self.manifest, self.max_batch
        self.inputs = {d["name"]: self._view(d["offset"], d["dtype"], (b, *d["shape"]))
                       for d in m["inputs"]}
        self.targets = {d["name"]: self._view(d["offset"], d["dtype"], (b, *d["shape"]))
                        for d in m["targets"]}
        out = m["outputs"][0]
        self.output = self._view(out["offset"], out["dtype"], (b, *out["shape"]))
        losses = m.get("losses")  # train_steps' per-step losses (not in older manifests)
        self._losses = None if losses is None else self._view(losses["offset"], "f32",
                                                              (losses["count"],))
        region = m["params_region"]
        # the parameters as memory holds them: a weight with a "layout" in panels (see
        # _memory_order); get_weights/set_weights give and take manifest (row-major) order
        self.params = self._view(region["offset"], "f32", (region["count"],))
        grads = m["grads_region"]
        # the gradients of the last train_step, same layout as params
        self.grads = self._view(grads["offset"], "f32", (grads["count"],))
        # each parameter's memory: row-major in its shape, or in panels [n / P][k][P]
        self.param_views = {p["name"]: self._view(p["offset"], "f32", _stored_shape(p))
                            for p in m["params"]}
        self._order = _memory_order(m["params"], region["offset"], region["count"])
        opt = m["optimizer"]
        self.hparams = self._view(opt["hparams_offset"], "f32", (len(opt["hparams_order"]),))
        state = opt["state_region"]
        self._state = self._view(state["offset"], "f32", (state["count"],))
        counter = opt.get("step_counter")
        self._steps = None if counter is None else self._view(counter["offset"], "i32", (1,))
        anchor = m.get("anchor_region")
        # FedProx's anchor weights, same layout as params (None without FedProx)
        self.anchor = None if anchor is None else self._view(anchor["offset"], "f32",
                                                             (anchor["count"],))
        self.hparams[:] = [opt["hparams"][k] for k in opt["hparams_order"]]
        rng = m.get("rng")
        # dropout's key [seed, step], written before every train_step (None without dropout)
        self._dropout_key = None if rng is None else self._view(rng["offset"], "i32", (2,))
        self.dropout_seed, self.dropout_step = 0, 0

    # --- parameters -----------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return int(self.params.size)

    def init_weights(self, seed: int = 0) -> None:
        """Draw every parameter from its manifest initialiser (see docs/abi.md); seed ≥ 0."""
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise RuntimeDataError(f"init_weights: seed must be an integer ≥ 0, got {seed!r}")
        seed = int(seed)
        rng = np.random.default_rng(seed)
        flat = [_draw(rng, p["init"], tuple(p["shape"])).ravel() for p in self.manifest["params"]]
        self.write_weights(np.concatenate(flat) if flat else np.empty(0, np.float32))
        self.reset_optimizer()
        self.dropout_seed, self.dropout_step = seed & 0xFFFFFFFF, 0
        if self.anchor is not None:  # FedProx pulls towards the starting point until set_anchor
            self.anchor[:] = self.params

    def get_weights(self) -> np.ndarray:
        """A copy of all parameters as one flat float32 vector (manifest order, row-major)."""
        return self._logical(self.params)

    def _logical(self, region: np.ndarray) -> np.ndarray:
        """A copy of a params-layout region (params, grads, anchor) in get_weights' order."""
        return region.copy() if self._order is None else region[self._order]

    def write_weights(self, flat: np.ndarray) -> None:
        """Write a flat vector in get_weights' order as it is: no value checks (a diverged
        model's NaN included) and the FedProx anchor untouched; to evaluate a model as
        received."""
        if np.shape(flat) != (self.num_params,):
            raise RuntimeDataError(f"write_weights expects {self.num_params} values, got shape "
                                   f"{np.shape(flat)}")
        _put(self.params, self._order, flat)

    def set_weights(self, weights: np.ndarray | list[np.ndarray], *,
                    anchor: bool | None = None) -> None:
        """Write all parameters (flat, manifest order). With a FedProx anchor (the manifest's
        anchor_region), the anchor is set to the same weights too unless anchor=False: a client
        receiving the global model starts the round anchored at it."""
        flat = self._flat_weights(weights, "set_weights")
        self.write_weights(flat)
        if self.anchor is not None and anchor is not False:
            self.anchor[:] = self.params  # the same layout
        elif anchor:
            raise RuntimeDataError("this model has no FedProx anchor (compile it with "
                                   "proximal_mu > 0 or strategy = fedprox)")

    def set_anchor(self, weights: np.ndarray | list[np.ndarray]) -> None:
        """Set FedProx's anchor w₀: train_step adds μ(w − w₀) to the gradient."""
        flat = self._flat_weights(weights, "set_anchor")
        if self.anchor is None:
            raise RuntimeDataError("this model has no FedProx anchor (compile it with "
                                   "proximal_mu > 0 or strategy = fedprox)")
        _put(self.anchor, self._order, flat)

    def _flat_weights(self, weights: np.ndarray | list[np.ndarray], what: str) -> np.ndarray:
        expects = f"{what} expects {self.num_params} float32 values but got"
        try:  # a list is the parameters in parts (e.g. one array a tensor), concatenated
            parts = [np.asarray(w) for w in weights] if isinstance(weights, list) else \
                [np.asarray(weights)]
        except ValueError:  # ragged nesting
            raise RuntimeDataError(f"{expects} a {type(weights).__name__} numpy cannot read as "
                                   "an array") from None
        for part in parts:  # "a" or None would fail in astype, and complex lose its imaginary part
            if part.dtype.kind not in "iuf":
                raise RuntimeDataError(f"{expects} values of dtype {part.dtype}")
        if not isinstance(weights, list):
            flat = parts[0]
        else:
            flat = np.concatenate([p.ravel() for p in parts]) if parts else np.empty(0, np.float32)
        if flat.shape != (self.num_params,):
            raise RuntimeDataError(f"{expects} shape {flat.shape}")
        if flat.dtype != np.float32:
            with np.errstate(over="ignore"):  # beyond float32's range is reported as Inf below
                flat = flat.astype(np.float32)
        if not np.all(np.isfinite(flat)):
            raise RuntimeDataError(f"{what}: weights contain NaN or Inf")
        return flat

    def weights_by_name(self) -> dict[str, np.ndarray]:
        """Each parameter, a row-major copy in its manifest shape."""
        return self._by_name(self.params)

    def gradients_by_name(self) -> dict[str, np.ndarray]:
        """The last train_step's gradient of each parameter, as weights_by_name gives them."""
        return self._by_name(self.grads)

    def _by_name(self, region: np.ndarray) -> dict[str, np.ndarray]:
        flat, out, at = self._logical(region), {}, 0
        for p in self.manifest["params"]:
            out[p["name"]] = flat[at:at + p["size"]].reshape(p["shape"])
            at += p["size"]
        return out

    def reset_optimizer(self) -> None:
        """Zero the optimizer state, step counter included (restarts schedules and warm-up)."""
        self._state[:] = 0

    @property
    def steps(self) -> int:
        """Optimizer steps since the last reset: drives schedules and bias corrections."""
        return int(self._steps[0]) if self._steps is not None else 0

    @steps.setter
    def steps(self, value: int) -> None:
        if self._steps is None:
            raise RuntimeDataError("this module has no step counter")
        # 1.5 was truncated to 1, and 2**40 or "3" raised OverflowError or TypeError
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or \
                not 0 <= value < 2**31:
            raise RuntimeDataError(f"steps must be an integer in 0..{2**31 - 1} (the module's "
                                   f"i32 step counter), got {value!r}")
        self._steps[0] = value

    def set_hparam(self, name: str, value: float) -> None:
        order = self.manifest["optimizer"]["hparams_order"]
        if name not in order:
            raise RuntimeDataError(f"{name!r} is not a run-time hyper-parameter "
                                   f"(expected one of {', '.join(order)})")
        # NaN or Inf (or beyond float32, which becomes Inf) would make every later step NaN
        if not _finite_f32(value):
            raise RuntimeDataError(f"set_hparam: {name} must be a finite number, got {value!r}")
        self.hparams[order.index(name)] = value

    # --- data -----------------------------------------------------------------------------
    def _inputs(self, x: Arrays) -> dict[str, np.ndarray]:
        decls = self.manifest["inputs"]
        if isinstance(x, Mapping):
            missing = [d["name"] for d in decls if d["name"] not in x]
            if missing:
                raise RuntimeDataError(f"missing input(s) {', '.join(missing)}")
            arrays = {d["name"]: x[d["name"]] for d in decls}
        elif len(decls) == 1:
            arrays = {decls[0]["name"]: x}
        else:
            raise RuntimeDataError(f"the model has {len(decls)} inputs: pass a dict by name")
        return {d["name"]: _check_ids(_conform(arrays[d["name"]], d, "input"), d)
                for d in decls}

    def _target(self, y: np.ndarray, rows: int) -> np.ndarray:
        d = self.manifest["targets"][0]
        arr = _conform(y, d, "target")
        if len(arr) != rows:
            raise RuntimeDataError(f"{rows} input rows but {len(arr)} target rows")
        classes = d.get("classes")
        if classes is not None and len(arr) and (arr.min() < 0 or arr.max() >= classes):
            bad = arr[(arr < 0) | (arr >= classes)][0]
            raise RuntimeDataError(f"class label {bad} is outside 0..{classes - 1}")
        if self.manifest.get("task") == "binary" and len(arr) and (arr.min() < 0 or arr.max() > 1):
            # labels in {-1, 1} (or 1, 2) trained silently: bce_with_logits wants 0..1
            bad = arr[(arr < 0) | (arr > 1)][0]
            raise RuntimeDataError(f"target {d['name']!r} holds {bad:g}, outside 0..1 (a binary "
                                   "model's targets are 0, 1 or a probability between)")
        return arr

    def _write(self, xs: dict[str, np.ndarray], y: np.ndarray | None, rows: slice,
               n: int) -> None:
        """Consecutive rows into the batch buffers (train_epoch gathers shuffled ones itself)."""
        for name, arr in xs.items():
            self.inputs[name][:n] = arr[rows]
        if y is not None:
            self.targets[self.manifest["targets"][0]["name"]][:n] = y[rows]

    # --- training and evaluation ----------------------------------------------------------
    def train_step(self, x: Arrays, y: np.ndarray) -> float:
        """One optimizer step on one batch (≤ max_batch rows); returns its loss."""
        xs = self._inputs(x)
        n = _rows(xs)
        if not 1 <= n <= self.max_batch:
            raise RuntimeDataError(f"a batch has 1..{self.max_batch} rows, got {n}")
        yy = self._target(y, n)
        self._write(xs, yy, slice(0, n), n)
        self._next_dropout_key()
        return float(self._calls["train_step"](n))  # type: ignore[arg-type]

    def _next_dropout_key(self) -> None:
        """Dropout masks hash (dropout_seed, dropout_step): a fresh key for every step."""
        if self._dropout_key is not None:
            self._dropout_key.view(np.uint32)[:] = (self.dropout_seed & 0xFFFFFFFF,
                                                    self.dropout_step & 0xFFFFFFFF)
            self.dropout_step += 1

    def train_epoch(self, x: Arrays, y: np.ndarray, batch_size: int = 32,
                    seed: int | Shuffle | np.random.Generator | None = 0) -> float:
        """One pass over (x, y) in shuffled batches; returns the mean of the batch losses.

        An integer seed (or a Shuffle, to continue one stream over several epochs) orders the
        rows with fedc-shuffle/1, which the JS runtime implements bit for bit; a numpy
        Generator orders them with ``rng.permutation``.
        """
        xs = self._inputs(x)
        rows = _rows(xs)
        yy = self._target(y, rows)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or \
                not 1 <= batch_size <= self.max_batch:  # 8.0 or "8" failed later, a TypeError
            raise RuntimeDataError(f"batch_size must be an integer in 1..{self.max_batch}, got "
                                   f"{batch_size!r}")
        if rows == 0:  # no batch to train: a mean loss of 0 would pass for a real one
            raise RuntimeDataError("train_epoch needs at least one row, got 0")
        order = _order(seed, rows)
        # a new epoch seed gives new dropout masks (clients of one round differ)
        if self._dropout_key is not None and isinstance(seed, int | np.integer
                                                        | np.random.Generator):
            self.dropout_seed = (int(seed) if isinstance(seed, (int, np.integer))
                                 else int(seed.integers(1 << 32))) & 0xFFFFFFFF
        step = self._calls["train_step"]
        total = 0.0
        batches = 0
        # Each row as one opaque record, gathered by fancy indexing: 2.2 -> 1.0 µs a digits
        # batch against np.take of float rows. Fancy indexing builds a temporary, so gathers of
        # over _TAKE_BYTES go straight into linear memory with np.take (MNIST's 200 KB: a
        # temporary that size cost 4 µs a batch).
        gathers = [(_records(self.inputs[name]), _records(arr)) for name, arr in xs.items()]
        gathers.append((_records(self.targets[self.manifest["targets"][0]["name"]]),
                        _records(yy)))
        # Whole batches go `per` at a time (as many as the batch buffers hold): gathered into
        # consecutive blocks of the buffers and trained by one train_steps call, which leaves
        # each step's loss in the losses buffer (summed here in order, as one call a batch
        # would). The views are made once, and the dropout key is only touched where the
        # model has one. Python around each digits batch: 1.5 -> 1.1 µs with one call a batch,
        # ~0.4 µs with eight batches a call.
        full = rows - rows % batch_size
        steps = self._calls.get("train_steps")
        per = max(1, min(self.max_batch // batch_size, full // batch_size)) if steps else 1
        chunk = per * batch_size
        small = [(d[:chunk], s) for d, s in gathers if s.itemsize * chunk <= _TAKE_BYTES]
        large = [(d[:chunk], s) for d, s in gathers if s.itemsize * chunk > _TAKE_BYTES]
        dropout = self._dropout_key is not None
        for start in range(0, full, chunk):
            idx = order[start:min(start + chunk, full)]
            k = len(idx) // batch_size
            if len(idx) == chunk:
                for dst, src in small:
                    dst[...] = src[idx]
                for dst, src in large:
                    np.take(src, idx, out=dst, mode="clip")
            else:  # the last chunk, shorter
                for dst, src in gathers:
                    dst[:len(idx)] = src[idx]
            if dropout:
                self._next_dropout_key()
                self.dropout_step += k - 1  # train_steps steps the key for the others
            if k == 1 or steps is None:
                total += step(batch_size)  # type: ignore[operator]
            else:
                steps(batch_size, k)
                assert self._losses is not None
                for loss in self._losses[:k].tolist():
                    total += loss
            batches += k
        if full < rows:  # the last, partial batch
            idx = order[full:]
            n = len(idx)
            for dst, src in gathers:
                dst[:n] = src[idx]
            self._next_dropout_key()
            total += step(n)  # type: ignore[operator]
            batches += 1
        return total / batches  # ≥ 1: no rows is refused above

    def evaluate(self, x: Arrays, y: np.ndarray) -> dict[str, float]:
        """Mean loss (and accuracy for classification and binary tasks) over all rows, in
        max_batch chunks. See `_hits` for what accuracy counts."""
        xs = self._inputs(x)
        rows = _rows(xs)
        yy = self._target(y, rows)
        loss_sum, correct = 0.0, 0.0
        task = self.manifest["task"]
        classify = task in ("classification", "binary")
        for start in range(0, rows, self.max_batch):
            n = min(self.max_batch, rows - start)
            self._write(xs, yy, slice(start, start + n), n)
            loss_sum += self._calls["eval_step"](n) * n  # type: ignore[operator]
            if classify:
                correct += _hits(task, self.output[:n], yy[start:start + n])
        out = {"loss": loss_sum / max(rows, 1)}
        if classify:
            out["accuracy"] = correct / max(rows, 1)
        return out

    def predict(self, x: Arrays) -> np.ndarray:
        """The model's prediction tensor (logits for classification) for every row."""
        xs = self._inputs(x)
        rows = _rows(xs)
        out = np.empty((rows, *self.output.shape[1:]), np.float32)
        for start in range(0, rows, self.max_batch):
            n = min(self.max_batch, rows - start)
            self._write(xs, None, slice(start, start + n), n)
            self._calls["predict"](n)
            out[start:start + n] = self.output[:n]
        return out


def _finite_f32(value: Any) -> bool:
    """A real number (not a bool) that float32 holds as a finite value."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return False
    try:
        return abs(float(value)) <= _F32_MAX
    except OverflowError:  # an int beyond a double's range
        return False


def _hits(task: str, out: np.ndarray, y: np.ndarray) -> float:
    """Correct rows in a chunk. classification: argmax of the logits equals the label.
    binary (bce_with_logits): a logit > 0 predicts 1, matched against target > 0.5; a row with
    several outputs (multi-label) counts the fraction of its outputs that are right."""
    if task == "classification":
        return float((out.argmax(axis=1) == y).sum())
    right = (out > 0) == (y.reshape(out.shape) > 0.5)
    return float(right.reshape(len(out), -1).mean(axis=1).sum())


def _records(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array as a 1-D array of its rows, each one opaque record (np.void)."""
    rows = a.reshape(len(a), math.prod(a.shape[1:]))  # also for 0 rows
    return rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).reshape(len(a))


def _rows(xs: dict[str, np.ndarray]) -> int:
    counts = {len(a) for a in xs.values()}
    if len(counts) != 1:
        raise RuntimeDataError(f"inputs have different numbers of rows: {sorted(counts)}")
    return counts.pop()


def _conform(a: Any, decl: Mapping[str, Any], what: str) -> np.ndarray:
    """Check (and losslessly reshape) an array against a declared per-example shape."""
    arr = np.asarray(a)
    shape = tuple(decl["shape"])
    name = decl["name"]
    if arr.ndim == 0:
        raise RuntimeDataError(f"{what} {name!r} must have a batch dimension, got a scalar")
    if arr.shape[1:] != shape:
        if int(np.prod(arr.shape[1:], dtype=np.int64)) == int(np.prod(shape, dtype=np.int64)):
            arr = arr.reshape((len(arr), *shape))
        else:
            raise RuntimeDataError(f"{what} {name!r} expects rows of shape {list(shape)} but got "
                                   f"{list(arr.shape[1:])}")
    if decl["dtype"] == "f32":
        if arr.dtype.kind not in "iuf":  # complex would silently lose its imaginary part
            raise RuntimeDataError(f"{what} {name!r} must be numeric, got {arr.dtype}")
        with np.errstate(over="ignore"):  # beyond float32's range is reported as Inf below
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise RuntimeDataError(f"{what} {name!r} contains NaN or Inf")
        return arr
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        # np.mod of NaN or Inf printed a RuntimeWarning before the error below
        raise RuntimeDataError(f"{what} {name!r} must hold integers, got NaN or Inf")
    if not np.issubdtype(arr.dtype, np.integer) and not (
            np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0)):
        raise RuntimeDataError(f"{what} {name!r} must hold integers, got {arr.dtype}")
    # the cast to int32 wraps (2**32 + 3 becomes 3), which would pass the range checks
    if arr.size and (arr.min() < -2**31 or arr.max() >= 2**31):
        bad = arr[(arr < -2**31) | (arr >= 2**31)].reshape(-1)[0]
        raise RuntimeDataError(f"{what} {name!r} holds {bad}, outside the int32 range")
    return np.ascontiguousarray(arr, dtype=np.int32)


_M32 = 0xFFFFFFFF


def _fmix32(h: int) -> int:
    """MurmurHash3's 32-bit finaliser: spreads every input bit over the output."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


class Shuffle:
    """fedc-shuffle/1: a seeded xoshiro128** stream and Fisher–Yates permutations.

    Defined on 32-bit unsigned integers only, so runtime/js/fedc-runtime.js reproduces it bit
    for bit (docs/protocol.md states the algorithm). Seeds are integers in 0..2**53-1.
    """

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or \
                not 0 <= int(seed) < 2**53:
            raise RuntimeDataError(f"a shuffle seed is an integer in 0..2**53-1, got {seed!r}")
        lo, hi = int(seed) & _M32, int(seed) >> 32
        k = _fmix32(hi ^ 0x243F6A88)
        s, x = [], lo
        for _ in range(4):
            x = (x + 0x9E3779B9) & _M32
            s.append(_fmix32(x ^ k))
        if not any(s):  # xoshiro's one forbidden state
            s[0] = 1
        self.s = s

    def next_u32(self) -> int:
        s0, s1, s2, s3 = self.s
        r = (s1 * 5) & _M32
        r = (((r << 7) | (r >> 25)) & _M32) * 9 & _M32
        t = (s1 << 9) & _M32
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = ((s3 << 11) | (s3 >> 21)) & _M32
        self.s = [s0, s1, s2, s3]
        return r

    def below(self, bound: int) -> int:
        """Uniform in 0..bound-1 (1 ≤ bound ≤ 2**32), unbiased by rejection."""
        threshold = (2**32 - bound) % bound
        while True:
            r = self.next_u32()
            if r >= threshold:
                return r % bound

    def permutation(self, n: int) -> np.ndarray:
        """Fisher–Yates from the top: for i = n-1 … 1 swap order[i] with order[below(i+1)].

        Runs in a small Wasm function (_PERMUTE_WAT: next_u32's and below's exact arithmetic
        on i32), ~4 ns per row: the pure-Python loop cost ~1 µs per row, more than a training
        step of a small model spends on each row of its batch."""
        if not 0 <= n < 2**31:
            raise RuntimeDataError(f"a permutation has 0..2**31-1 rows, got {n}")
        order, self.s = _permuter().permute(self.s, n)
        return order


# fedc-shuffle/1's permutation on i32 (the arithmetic is mod 2**32, as in next_u32 and below).
# Memory: the four state words at 0..16, order[0..n) as i32 from 16 on.
_PERMUTE_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "permute") (param $n i32)
    (local $i i32) (local $bound i32) (local $thr i32) (local $r i32) (local $t i32)
    (local $s0 i32) (local $s1 i32) (local $s2 i32) (local $s3 i32) (local $pi i32) (local $pj i32)
    (local $v i32)
    (block $done (loop $fill
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (i32.store offset=16 (i32.shl (local.get $i) (i32.const 2)) (local.get $i))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $fill)))
    (local.set $s0 (i32.load (i32.const 0)))  (local.set $s1 (i32.load (i32.const 4)))
    (local.set $s2 (i32.load (i32.const 8)))  (local.set $s3 (i32.load (i32.const 12)))
    (local.set $i (i32.sub (local.get $n) (i32.const 1)))
    (block $end (loop $swap
      (br_if $end (i32.le_s (local.get $i) (i32.const 0)))
      (local.set $bound (i32.add (local.get $i) (i32.const 1)))
      ;; (2**32 - bound) mod bound
      (local.set $thr (i32.rem_u (i32.sub (i32.const 0) (local.get $bound)) (local.get $bound)))
      (loop $draw  ;; xoshiro128**: r = rotl(s1·5, 7)·9, then the state step
        (local.set $r (i32.mul (i32.rotl (i32.mul (local.get $s1) (i32.const 5)) (i32.const 7))
                               (i32.const 9)))
        (local.set $t (i32.shl (local.get $s1) (i32.const 9)))
        (local.set $s2 (i32.xor (local.get $s2) (local.get $s0)))
        (local.set $s3 (i32.xor (local.get $s3) (local.get $s1)))
        (local.set $s1 (i32.xor (local.get $s1) (local.get $s2)))
        (local.set $s0 (i32.xor (local.get $s0) (local.get $s3)))
        (local.set $s2 (i32.xor (local.get $s2) (local.get $t)))
        (local.set $s3 (i32.rotl (local.get $s3) (i32.const 11)))
        (br_if $draw (i32.lt_u (local.get $r) (local.get $thr))))  ;; rejected: draw again
      (local.set $pi (i32.shl (local.get $i) (i32.const 2)))
      (local.set $pj (i32.shl (i32.rem_u (local.get $r) (local.get $bound)) (i32.const 2)))
      (local.set $v (i32.load offset=16 (local.get $pi)))
      (i32.store offset=16 (local.get $pi) (i32.load offset=16 (local.get $pj)))
      (i32.store offset=16 (local.get $pj) (local.get $v))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br $swap)))
    (i32.store (i32.const 0) (local.get $s0))  (i32.store (i32.const 4) (local.get $s1))
    (i32.store (i32.const 8) (local.get $s2))  (i32.store (i32.const 12) (local.get $s3))))
"""


class _Permuter:
    """One instance of _PERMUTE_WAT, made on first use and shared (under a lock)."""

    def __init__(self) -> None:
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        inst = wasmtime.Instance(self.store, wasmtime.Module(engine, _PERMUTE_WAT), [])
        exports = inst.exports(self.store)
        self.memory = exports["memory"]
        self.call = _Call(self.store, exports["permute"], 0)  # (i32) -> ()
        self.lock = threading.Lock()

    def permute(self, state: list[int], n: int) -> tuple[np.ndarray, list[int]]:
        with self.lock:
            need = 16 + 4 * n
            pages = self.memory.size(self.store)
            if need > pages * 65536:
                self.memory.grow(self.store, -(-need // 65536) - pages)
            buf = self.memory.get_buffer_ptr(self.store)
            words = np.frombuffer(buf, np.uint32, 4)
            words[:] = state
            self.call(n)
            buf = self.memory.get_buffer_ptr(self.store)
            order = np.frombuffer(buf, np.int32, n, 16).astype(np.int64)
            return order, [int(w) for w in np.frombuffer(buf, np.uint32, 4)]


_PERMUTER: list[_Permuter] = []  # emptied at exit, before wasmtime's FFI is torn down
_PERMUTER_LOCK = threading.Lock()


def _permuter() -> _Permuter:
    with _PERMUTER_LOCK:
        if not _PERMUTER:
            _PERMUTER.append(_Permuter())
            atexit.register(_PERMUTER.clear)
        return _PERMUTER[0]


def _order(seed: int | Shuffle | np.random.Generator | None, rows: int) -> np.ndarray:
    if isinstance(seed, np.random.Generator):
        return seed.permutation(rows)
    if seed is None:  # no seed: a fresh, unreproducible order
        return np.random.default_rng().permutation(rows)
    stream = seed if isinstance(seed, Shuffle) else Shuffle(seed)
    return stream.permutation(rows)


def _check_ids(arr: np.ndarray, decl: Mapping[str, Any]) -> np.ndarray:
    """Token ids of an input with a manifest `vocab` (it feeds an embedding) lie in 0..vocab-1.
    The module itself reads zeros for an id outside that range; here it is a data error."""
    vocab = decl.get("vocab")
    if vocab is not None and arr.size and (arr.min() < 0 or arr.max() >= vocab):
        bad = arr[(arr < 0) | (arr >= vocab)].reshape(-1)[0]
        raise RuntimeDataError(f"input {decl['name']!r} holds token id {bad}, outside the "
                               f"embedding's vocabulary 0..{vocab - 1}")
    return arr


def _panels(p: Mapping[str, Any]) -> int | None:
    """The panel width of a parameter stored in panels (manifest "layout"), else None."""
    layout = p.get("layout")
    if layout is None:
        return None
    width, shape = layout.get("panels") if isinstance(layout, dict) else None, p["shape"]
    whole = isinstance(width, int) and not isinstance(width, bool) and width >= 1
    if set(layout) != {"panels"} or not whole or len(shape) != 2 or shape[1] % width:
        raise RuntimeDataError(f"parameter {p['name']}: unknown layout {layout!r} for shape "
                               f"{shape} (this runtime reads {{\"panels\": P}} for a [k, n] "
                               "weight with n a multiple of P)")
    return width


def _stored_shape(p: Mapping[str, Any]) -> tuple[int, ...]:
    width = _panels(p)
    if width is None:
        return tuple(p["shape"])
    k, n = p["shape"]
    return (n // width, k, width)


def _memory_order(params: list[Mapping[str, Any]], base: int, count: int) -> np.ndarray | None:
    """Where each float of get_weights' vector lives in the params region, or None if every
    parameter is row-major there (then the two are the same). A [k, n] weight in panels of P
    holds its (r, c) at ((c // P)·k + r)·P + c % P (fedc/layout.py)."""
    if all(_panels(p) is None for p in params):
        return None
    parts = []
    for p in params:
        at, idx = (p["offset"] - base) // 4, np.arange(p["size"], dtype=np.int64)
        width = _panels(p)
        if width is not None:
            k, n = p["shape"]
            r, c = np.divmod(idx, n)
            idx = ((c // width) * k + r) * width + c % width
        parts.append(at + idx)
    order = np.concatenate(parts)
    seen = np.zeros(count, bool)
    if order.size == count and (count == 0 or (order.min() >= 0 and order.max() < count)):
        seen[order] = True
    if order.size != count or not seen.all():  # each float of the region exactly once
        raise RuntimeDataError("manifest.json's parameters do not tile its params_region")
    return order


def _put(dst: np.ndarray, order: np.ndarray | None, flat: np.ndarray) -> None:
    """dst (a region in memory layout) = flat (get_weights' order)."""
    if order is None:
        dst[:] = flat
    else:
        dst[order] = flat


def _draw(rng: np.random.Generator, init: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    kind = init["kind"]
    if kind == "uniform":
        return rng.uniform(init["low"], init["high"], size=shape).astype(np.float32)
    if kind == "normal":
        return (rng.normal(0.0, init["std"], size=shape)).astype(np.float32)
    if kind in ("zeros", "ones"):
        return np.full(shape, 1.0 if kind == "ones" else 0.0, np.float32)
    raise RuntimeDataError(f"unknown initialiser {kind!r}")


def load(directory: str | Path) -> Model:
    return Model.load(directory)
