"""Benchmark: convolution and pooling kernels in Wasm (µs per call at a batch size), per IR node
of a model's training graph, and the lowering strategies side by side.

Run: python bench/bench_conv.py examples/digits_cnn.fed [--batch 32]
     python bench/bench_conv.py --strategies     (im2col+GEMM, direct, Winograd F(2×2) and
                                                  F(4×4), interleaved; a strategy that does
                                                  not apply to a layer times 'each')
Times are this thread's CPU time, best of --reps: on a shared machine wall time also counts
other processes' turns on the cores.
Each kernel becomes an export `rep(iters, n)` that calls it `iters` times inside the module,
so the host's call cost is not measured. Memory holds small random values.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from llvmlite import ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedc.emit import emit  # noqa: E402
from fedc.ir import Graph, GraphBuilder, Node, f32  # noqa: E402
from fedc.link import ARENA_BASE, link  # noqa: E402
from fedc.lower.kernels import I32, loop  # noqa: E402
from fedc.lower.module import lower_exports  # noqa: E402
from fedc.plan import MemoryPlan, plan  # noqa: E402


class Kernels:
    """Each node of `graph` as an export `rep_<i>(iters, n)` of one module on its real plan."""

    def __init__(self, graph: Graph, mplan: MemoryPlan, nodes: list[Node]) -> None:
        import wasmtime

        exports: dict[str, Any] = {f"k{i}": ([node], None, None) for i, node in enumerate(nodes)}
        mod = lower_exports(graph, mplan, exports, frozenset({"simd128"}))
        for name in exports:
            fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I32, I32]), f"rep_{name}")
            b = ir.IRBuilder(fn.append_basic_block())
            with loop(b, 0, fn.args[0]):
                b.call(mod.globals[name], [fn.args[1]])
            b.ret_void()
        wasm = link(emit(str(mod), "simd128").object_code, mplan.end,
                    [f"rep_{n}" for n in exports])
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        inst = wasmtime.Instance(self.store, wasmtime.Module(engine, wasm), [])
        self.ex = inst.exports(self.store)
        mem = self.ex["memory"]
        raw = np.ctypeslib.as_array(mem.data_ptr(self.store), shape=(mem.data_len(self.store),))
        words = raw[ARENA_BASE:mplan.end].view(np.float32)
        words[:] = np.random.default_rng(0).uniform(-1, 1, words.shape)
        for buf in mplan.buffers:
            if buf.dtype != "f32":
                raw[buf.offset:buf.offset + buf.bytes] = 0

    def time_us(self, i: int, n: int, seconds: float = 0.05) -> float:
        """CPU time of this thread per call: other processes sharing the machine inflate wall
        time by their share of the cores, not this."""
        fn = self.ex[f"rep_k{i}"]
        iters = 1
        while iters < 1 << 24:
            t0 = time.thread_time()
            fn(self.store, iters, n)
            dt = time.thread_time() - t0
            if dt > seconds:
                break
            iters *= 2
        return dt / iters * 1e6


def profile_model(path: str, batch: int, reps: int) -> None:
    from fedc.pipeline import compile_source

    art = compile_source(Path(path).read_text(), path)
    nodes = list(art.train_graph.nodes)
    k = Kernels(art.train_graph, art.plan, nodes)
    times: dict[int, list[float]] = {i: [] for i in range(len(nodes))}
    for _ in range(reps):
        for i in times:
            times[i].append(k.time_us(i, batch))
    med = {i: float(np.median(v)) for i, v in times.items()}
    total = sum(med.values())
    for i, node in enumerate(nodes):
        shape = "×".join(str(d) for d in node.out.type.concrete(batch))
        print(f"{node.op:22} {shape:16} {med[i]:9.2f} µs  {100 * med[i] / total:5.1f}%")
    print(f"{'all kernels':39} {total:9.2f} µs  → {batch / total * 1e6:,.0f} samples/s")


def single(op: str, types: Iterable[Any], attrs: dict[str, Any],
           max_batch: int) -> tuple[Graph, MemoryPlan]:
    gb = GraphBuilder()
    ins = [gb.add_input(t, f"in{i}") for i, t in enumerate(types)]
    out = gb.emit(op, ins, attrs, None, "out")  # type: ignore[arg-type]
    graph = gb.build([("out", out)])
    return graph, plan(graph, max_batch=max_batch, state_slots=0, n_hparams=0)


# (name, C, O, spatial, kernel, padding): edge-sized layers of the examples
LAYERS = [
    ("digits conv1 1→16 8×8 k3", 1, 16, (8, 8), (3, 3), (1, 1)),
    ("digits conv2 16→32 4×4 k3", 16, 32, (4, 4), (3, 3), (1, 1)),
    ("wave conv1 1→8 L128 k7", 1, 8, (128,), (7,), (3,)),
    ("wave conv2 8→16 L64 k5", 8, 16, (64,), (5,), (2,)),
    ("wave conv3 16→16 L32 k5", 16, 16, (32,), (5,), (2,)),
    ("16ch conv 16→32 L64 k3", 16, 32, (64,), (3,), (1,)),
    ("conv 16→16 8×8 k3", 16, 16, (8, 8), (3, 3), (1, 1)),
    ("conv 8→16 6×6 k3", 8, 16, (6, 6), (3, 3), (1, 1)),
    ("conv 16→32 14×14 k3", 16, 32, (14, 14), (3, 3), (1, 1)),
    ("conv 8→16 28×28 k3", 8, 16, (28, 28), (3, 3), (1, 1)),
]


def layer_graphs(c: int, o: int, spatial: tuple[int, ...], kernel: tuple[int, ...],
                 padding: tuple[int, ...], batch: int) -> list[tuple[str, Graph, MemoryPlan]]:
    r = len(spatial)
    attrs = {"stride": (1,) * r, "padding": padding, "groups": 1}
    x, w, b = f32("N", c, *spatial), f32(o, c, *kernel), f32(o)
    dy = f32("N", o, *spatial)
    return [("fwd", *single(f"conv{r}d", (x, w, b), attrs, batch)),
            ("dx", *single(f"conv{r}d_grad_input", (dy, w), {**attrs, "in_size": spatial},
                           batch)),
            ("dw", *single(f"conv{r}d_grad_weight", (x, dy), {**attrs, "kernel": kernel},
                           batch))]


def strategies(batch: int, reps: int) -> None:
    """Each layer's three kernels under each lowering strategy, timed interleaved."""
    from fedc.lower import conv

    print(f"{'layer':28} {'kernel':4} " + " ".join(f"{s:>12}" for s in conv.STRATEGIES)
          + f"   (µs per call, best of reps, batch {batch})")
    for name, c, o, spatial, kernel, padding in LAYERS:
        built: dict[str, list[tuple[str, Kernels]]] = {}
        for s in conv.STRATEGIES:
            conv.FORCE = s
            built[s] = [(kind, Kernels(g, p, list(g.nodes)))
                        for kind, g, p in layer_graphs(c, o, spatial, kernel, padding, batch)]
        conv.FORCE = None
        for j in range(3):
            res: dict[str, list[float]] = {s: [] for s in conv.STRATEGIES}
            for _ in range(reps):
                for s in conv.STRATEGIES:
                    res[s].append(built[s][j][1].time_us(0, batch, 0.02))
            kind = built[conv.STRATEGIES[0]][j][0]
            print(f"{name:28} {kind:4} "
                  + " ".join(f"{min(res[s]):12.1f}" for s in conv.STRATEGIES), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--strategies", action="store_true")
    args = ap.parse_args()
    if args.strategies:
        strategies(args.batch, args.reps)
    if args.file:
        profile_model(args.file, args.batch, args.reps)


if __name__ == "__main__":
    main()
