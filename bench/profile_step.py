"""Profile: a .fed model's train_step → time per IR node (and the update) inside wasmtime or
Node's V8, µs.

Run: python bench/profile_step.py examples/digits_mlp.fed [--batch 32] [--reps 5]
         [--variant relaxed-simd] [--engine node]
Every node's kernel (and the optimizer update) becomes an export that a wrapper calls `iters`
times inside the module, so the host's call cost is not measured. Memory holds random data; the
times are those of the real kernels on the real plan.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
from llvmlite import ir

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _repeat(mod: ir.Module, target: ir.Function, name: str) -> None:
    """`name(iters, n)`: call target(n) iters times."""
    from fedc.lower.kernels import I32, loop

    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I32, I32]), name)
    b = ir.IRBuilder(fn.append_basic_block())
    with loop(b, 0, fn.args[0]):
        b.call(target, [fn.args[1]])
    b.ret_void()


def build(path: str, variant: str, features: frozenset[str] | None = None,
          fuse: bool = True) -> tuple[bytes, list[str], object, object]:
    """The profiling module, the export names (one per node, then `update`, then `step`), the
    memory plan and the optimizer spec."""
    from fedc.emit import emit
    from fedc.link import link
    from fedc.lower.module import lower_exports
    from fedc.lower.update import emit_update
    from fedc.pipeline import Options, compile_source

    art = compile_source(open(path).read(), path, Options(variant=variant, fuse=fuse))
    train, plan, spec = art.train_graph, art.plan, art.model.optimizer
    exports: dict[str, tuple[list, object, Callable[[ir.IRBuilder], None] | None]] = {
        f"n{i}_{node.op}": ([node], None, None) for i, node in enumerate(train.nodes)}
    exports["update"] = ([], None, lambda b: emit_update(b, plan, spec))
    exports["step"] = (list(train.nodes), None, lambda b: emit_update(b, plan, spec))
    mod = lower_exports(train, plan, exports, features or frozenset({variant}))  # type: ignore
    names = list(exports)
    for name in names:
        _repeat(mod, mod.globals[name], f"rep_{name}")
    obj = emit(str(mod), variant).object_code
    return link(obj, plan.end, [f"rep_{n}" for n in names]), names, plan, spec


def initial_arena(plan: object, spec: object) -> np.ndarray:
    """The arena's starting bytes: f32 buffers uniform in ±0.01, the others zero, and the
    hyper-parameters the model's own but lr = 0.

    With lr = 0 the update does all its arithmetic but leaves the weights as they are, so
    thousands of whole steps in a row stay on the same numbers. With the random ±0.01 that
    the hyper-parameters got before, the weights drifted: a 64-10-10 MLP's step measured 12.4
    or 13.3 µs between two builds whose every kernel was faster in the second.
    """
    from fedc.link import ARENA_BASE

    end: int = plan.end  # type: ignore[attr-defined]
    arena = np.random.default_rng(0).uniform(-0.01, 0.01, (end - ARENA_BASE) // 4)
    floats = arena.astype(np.float32)
    hparams = dict(spec.runtime_hparams(), lr=0.0)  # type: ignore[attr-defined]
    at = (plan.hparams_offset - ARENA_BASE) // 4  # type: ignore[attr-defined]
    floats[at:at + len(hparams)] = list(hparams.values())
    raw = floats.view(np.uint8)
    for b in plan.buffers:  # type: ignore[attr-defined]
        if b.dtype != "f32":  # labels, token ids, counters: 0 is valid for every op
            raw[b.offset - ARENA_BASE:b.offset - ARENA_BASE + b.bytes] = 0
    return raw


class Profile:
    def __init__(self, path: str, variant: str = "simd128", fuse: bool = True) -> None:
        import wasmtime

        from fedc.link import ARENA_BASE

        wasm, self.names, self.plan, spec = build(path, variant, fuse=fuse)
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        inst = wasmtime.Instance(self.store, wasmtime.Module(engine, wasm), [])
        self.ex = inst.exports(self.store)
        mem = self.ex["memory"]
        buf = np.ctypeslib.as_array(mem.data_ptr(self.store), shape=(mem.data_len(self.store),))
        # Every measurement starts from this state: the update and the whole step change the
        # weights on each call, and after thousands of calls on fixed gradients the loss kernel
        # measured 1.2–6.6 µs between repetitions (likely exponentials underflowing to
        # subnormals, which Intel cores handle in microcode; not confirmed).
        self.start = initial_arena(self.plan, spec)
        self.arena = buf[ARENA_BASE:ARENA_BASE + len(self.start)]
        self.arena[:] = self.start

    def time(self, name: str, n: int, seconds: float) -> float:
        fn = self.ex[f"rep_{name}"]
        iters = 1
        while True:
            self.arena[:] = self.start
            t0 = time.perf_counter()
            fn(self.store, iters, n)
            dt = time.perf_counter() - t0
            if dt > seconds or iters >= 1 << 24:  # an invariant kernel may be hoisted away
                return dt / iters * 1e6
            iters *= 2


# Node's side of --engine node: the same doubling protocol as Profile.time, on V8.
NODE_PROFILE = r"""
import fs from 'node:fs';
const [wasmFile, arenaFile, base, n, reps, seconds, ...names] = process.argv.slice(2);
const { instance } = await WebAssembly.instantiate(fs.readFileSync(wasmFile), {});
const ex = instance.exports;
const start = new Uint8Array(fs.readFileSync(arenaFile));
const arena = new Uint8Array(ex.memory.buffer, Number(base), start.length);
const times = Object.fromEntries(names.map((k) => [k, []]));
for (let r = 0; r < Number(reps); r++) {
  for (const name of names) {
    const fn = ex[`rep_${name}`];
    for (let iters = 1; ; iters *= 2) {
      arena.set(start);
      const t0 = process.hrtime.bigint();
      fn(iters, Number(n));
      const dt = Number(process.hrtime.bigint() - t0) / 1e9;
      if (dt > Number(seconds) || iters >= 1 << 24) { times[name].push(dt / iters * 1e6); break; }
    }
  }
}
console.log(JSON.stringify(times));
"""


def node_times(path: str, variant: str, fuse: bool, n: int, reps: int, seconds: float
               ) -> dict[str, list[float]]:
    """Profile's measurements under Node (V8): each export's µs per call, `reps` of each."""
    from fedc.link import ARENA_BASE

    wasm, names, plan, spec = build(path, variant, fuse=fuse)
    with tempfile.TemporaryDirectory(prefix="fedc-profile-") as tmp:
        files = {"model.wasm": wasm, "arena.bin": initial_arena(plan, spec).tobytes(),
                 "profile.mjs": NODE_PROFILE.encode()}
        for name, data in files.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        out = subprocess.run(
            ["node", "--experimental-wasm-relaxed-simd", os.path.join(tmp, "profile.mjs"),
             os.path.join(tmp, "model.wasm"), os.path.join(tmp, "arena.bin"), str(ARENA_BASE),
             str(n), str(reps), str(seconds), *names],
            capture_output=True, text=True, check=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.05)
    ap.add_argument("--variant", default="simd128")
    ap.add_argument("--no-fuse", action="store_true", help="profile the unfused graph")
    ap.add_argument("--engine", choices=("wasmtime", "node"), default="wasmtime",
                    help="node: the same exports timed in Node's V8 (needs `node` on PATH)")
    args = ap.parse_args()
    if args.engine == "node":
        times = node_times(args.file, args.variant, not args.no_fuse, args.batch, args.reps,
                           args.seconds)
    else:
        prof = Profile(args.file, args.variant, fuse=not args.no_fuse)
        times = {n: [] for n in prof.names}
        for _ in range(args.reps):
            for name in prof.names:
                times[name].append(prof.time(name, args.batch, args.seconds))
    total = sum(np.median(v) for k, v in times.items() if k != "step")
    for name, v in times.items():
        med = float(np.median(v))
        print(f"{name:40} {med:9.2f} µs  {100 * med / total:5.1f}%  ({min(v):.2f}–{max(v):.2f})")
    print(f"{'sum of parts':40} {total:9.2f} µs")


if __name__ == "__main__":
    main()
