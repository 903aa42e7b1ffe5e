"""The numpy interpreter of the IR: the reference semantics every kernel is tested against."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .ir import Graph, Value
from .ops import REGISTRY


def run(graph: Graph, inputs: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
        dtype: type = np.float64) -> dict[str, np.ndarray]:
    """Evaluate every node; returns the graph's outputs by name.

    Floating inputs and parameters are cast to `dtype` (float64 for gradient checks, float32
    to mirror the module); integer inputs (class labels) stay integers.
    """
    env: dict[int, np.ndarray] = {}
    for v in graph.inputs:
        env[v.id] = _cast(inputs[v.name], v, dtype)
    for p in graph.params:
        env[p.value.id] = _cast(params[p.value.name], p.value, dtype)
    for node in graph.nodes:
        args = [env[v.id] for v in node.inputs]
        out = np.asarray(REGISTRY[node.op].ref(args, dict(node.attrs)))
        env[node.out.id] = out.astype(dtype) if node.out.type.dtype == "f32" else out
    return {name: env[v.id] for name, v in graph.outputs}


def _cast(a: np.ndarray, v: Value, dtype: type) -> np.ndarray:
    return np.asarray(a, dtype=dtype if v.type.dtype == "f32" else np.int32)
