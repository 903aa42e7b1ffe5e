"""Test helpers: instantiate any registered op on random data, in numpy and as a Wasm kernel."""

from __future__ import annotations

from typing import Any

import numpy as np
import wasmtime

from fedc.diagnostics import Span
from fedc.emit import emit
from fedc.ir import GraphBuilder, Node, TensorType
from fedc.link import link
from fedc.lower.module import lower_exports
from fedc.ops import REGISTRY
from fedc.plan import plan

SPAN = Span("test.fed", 1, 1)


def random_inputs(op: str, batch: int, rng: np.random.Generator,
                  dtype: type = np.float64) -> list[np.ndarray]:
    """Arrays for the op's sample types; i32 inputs are class labels valid for the op."""
    types, _ = REGISTRY[op].sample
    classes = next((int(t.shape[-1]) for t in types if t.dtype == "f32" and len(t.shape) == 2
                    and t.batched), 2)
    out = []
    for t in types:
        shape = t.concrete(batch)
        if t.dtype == "i32":
            out.append(rng.integers(0, classes, size=shape).astype(np.int32))
        else:
            out.append(rng.normal(0, 1, size=shape).astype(dtype))
    return out


def single_node_graph(op: str, types: tuple[TensorType, ...] | None = None,
                      attrs: dict[str, Any] | None = None):
    sample_types, sample_attrs = REGISTRY[op].sample
    attrs = sample_attrs if attrs is None else attrs
    gb = GraphBuilder()
    ins = [gb.add_input(t, f"in{i}") for i, t in enumerate(types or sample_types)]
    out = gb.emit(op, ins, attrs, SPAN, "out")
    return gb, ins, out


class WasmKernel:
    """One op compiled alone into a module with a `run(n)` export (the op's sample types and
    attrs unless given)."""

    def __init__(self, op: str, max_batch: int = 8, variant: str = "simd128",
                 types: tuple[TensorType, ...] | None = None,
                 attrs: dict[str, Any] | None = None) -> None:
        gb, self.ins, self.out = single_node_graph(op, types, attrs)
        graph = gb.build([("out", self.out)])
        self.plan = plan(graph, max_batch=max_batch, state_slots=0, n_hparams=0)
        node: Node = graph.nodes[0]
        mod = lower_exports(graph, self.plan, {"run": ([node], None, None)},
                            frozenset({variant}))
        obj = emit(str(mod), variant).object_code
        self.wasm = link(obj, self.plan.end, ["run"])
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        inst = wasmtime.Instance(self.store, wasmtime.Module(engine, self.wasm), [])
        self.run_fn: Any = inst.exports(self.store)["run"]
        mem: Any = inst.exports(self.store)["memory"]
        size = mem.data_len(self.store)
        self.mem = np.ctypeslib.as_array(mem.data_ptr(self.store), shape=(size,))

    def _view(self, value: Any, batch: int) -> np.ndarray:
        t = value.type
        dt = np.float32 if t.dtype == "f32" else np.int32
        off = self.plan.addr(value)
        return self.mem[off: off + t.numel(batch) * 4].view(dt).reshape(t.concrete(batch))

    def __call__(self, arrays: list[np.ndarray], batch: int) -> np.ndarray:
        for v, a in zip(self.ins, arrays, strict=True):
            self._view(v, batch)[...] = a
        self.run_fn(self.store, batch)
        return self._view(self.out, batch).copy()
