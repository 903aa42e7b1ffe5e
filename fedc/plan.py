"""The static memory plan: every buffer's byte offset, activations reused by liveness."""

from __future__ import annotations

from dataclasses import dataclass, field

from .ir import Graph, TensorType, Value
from .layout import panel_values
from .link import ARENA_BASE

ALIGN = 16


def _align(x: int, a: int = ALIGN) -> int:
    return (x + a - 1) // a * a


@dataclass(frozen=True)
class Buffer:
    name: str
    # input | target | param | grad | state | hparams | output | anchor | activation | scratch
    kind: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    bytes: int

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "dtype": self.dtype,
                "shape": list(self.shape), "offset": self.offset, "bytes": self.bytes}


@dataclass
class MemoryPlan:
    max_batch: int
    buffers: list[Buffer] = field(default_factory=list)
    value_offsets: dict[int, int] = field(default_factory=dict)
    params_offset: int = 0
    param_count: int = 0
    grads_offset: int = 0
    state_offset: int = 0
    state_slots: int = 0
    slot_stride: int = 0  # floats from one optimizer state slot to the next
    step_offset: int = 0  # the optimizer's i32 step counter, right after the slots
    anchor_offset: int | None = None  # FedProx anchor weights (params layout), if any
    hparams_offset: int = 0
    scratch_offset: int = 0
    losses_offset: int = 0  # train_steps' per-step losses, max_batch f32 (after the scratch)
    end: int = ARENA_BASE
    activation_bytes: int = 0  # the liveness-shared area's peak
    activation_bytes_unshared: int = 0  # what it would take without reuse
    # ids of the parameters and gradients stored in panels (fedc/layout.py)
    panels: frozenset[int] = frozenset()

    def addr(self, v: Value) -> int:
        return self.value_offsets[v.id]

    @property
    def state_count(self) -> int:
        """Floats from state_offset through the step counter: zeroing them resets the optimizer."""
        return (self.step_offset + 4 - self.state_offset) // 4

    def find(self, kind: str) -> list[Buffer]:
        return [b for b in self.buffers if b.kind == kind]


def _nbytes(t: TensorType, max_batch: int) -> int:
    return t.numel(max_batch) * 4


def scratch_need(graph: Graph, max_batch: int, panels: frozenset[int] = frozenset()) -> int:
    """Bytes of kernel scratch the graph's ops ask for: kernels run one at a time, so the
    largest single request is enough."""
    from .ops import REGISTRY

    sizes = [op.scratch(n, max_batch, panels) for n in graph.nodes
             if (op := REGISTRY[n.op]).scratch]
    return max(sizes, default=0)


def plan(graph: Graph, *, max_batch: int, state_slots: int, n_hparams: int,
         scratch_bytes: int = 0, anchor: bool = False) -> MemoryPlan:
    """Lay out the training graph's buffers from ARENA_BASE upward.

    The scratch area holds max(scratch_bytes, what the graph's ops ask for).
    """
    panels = panel_values(graph)
    scratch_bytes = _align(max(scratch_bytes, scratch_need(graph, max_batch, panels)))
    p = MemoryPlan(max_batch, panels=panels)
    cursor = ARENA_BASE

    def put(name: str, kind: str, t: TensorType, v: Value | None, offset: int | None = None) -> int:
        nonlocal cursor
        size = _nbytes(t, max_batch)
        at = cursor if offset is None else offset
        p.buffers.append(Buffer(name, kind, t.dtype, t.concrete(max_batch), at, size))
        if v is not None:
            p.value_offsets[v.id] = at
        if offset is None:
            cursor = _align(at + size)
        return at

    for v in graph.inputs:
        put(v.name, "input", v.type, v)
    # parameters, gradients and optimizer state: contiguous regions in the same order, so a
    # host sees the weights as one flat vector and the optimizer is one fused pass
    p.param_count = sum(prm.value.type.numel(1) for prm in graph.params)
    region = _align(p.param_count * 4)
    p.params_offset, p.grads_offset = cursor, cursor + region
    p.state_offset, p.state_slots = cursor + 2 * region, state_slots
    grads = {k.removeprefix("grad:"): v for k, v in graph.outputs if k.startswith("grad:")}
    off = 0
    for prm in graph.params:
        v = prm.value
        put(v.name, "param", v.type, v, p.params_offset + off)
        put(f"grad:{v.name}", "grad", v.type, grads.get(v.name), p.grads_offset + off)
        off += v.type.numel(1) * 4
    cursor = _place_optimizer(p, region, anchor)
    p.hparams_offset = cursor
    p.buffers.append(Buffer("hparams", "hparams", "f32", (n_hparams,), cursor, n_hparams * 4))
    cursor = _align(cursor + n_hparams * 4)
    for name in ("loss", "prediction"):
        if graph.has_output(name):
            v = graph.output(name)
            if v.id not in p.value_offsets:
                put(name, "output", v.type, v)
    cursor = _assign_activations(graph, p, cursor)
    p.scratch_offset = cursor
    if scratch_bytes:
        p.buffers.append(Buffer("scratch", "scratch", "f32", (scratch_bytes // 4,), cursor,
                                scratch_bytes))
    p.losses_offset = _align(cursor + scratch_bytes)
    p.buffers.append(Buffer("losses", "losses", "f32", (max_batch,), p.losses_offset,
                            max_batch * 4))
    p.end = _align(p.losses_offset + max_batch * 4)
    return p


def _place_optimizer(p: MemoryPlan, region: int, anchor: bool) -> int:
    """State slots (region apart), the i32 step counter, then the FedProx anchor if asked.

    The counter sits inside the state so that zeroing the state also restarts schedules and
    bias corrections.
    """
    p.slot_stride = region // 4
    if p.state_slots:
        p.buffers.append(Buffer("optimizer_state", "state", "f32",
                                (p.state_slots, p.slot_stride), p.state_offset,
                                p.state_slots * region))
    p.step_offset = p.state_offset + p.state_slots * region
    p.buffers.append(Buffer("optimizer_step", "state", "i32", (), p.step_offset, 4))
    cursor = _align(p.step_offset + 4)
    if anchor:
        p.anchor_offset = cursor
        p.buffers.append(Buffer("anchor", "anchor", "f32", (p.param_count,), cursor,
                                p.param_count * 4))
        cursor += region
    return cursor


def _assign_activations(graph: Graph, p: MemoryPlan, base: int) -> int:
    """First-fit allocation of every remaining node output by its live interval."""
    last_use: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            last_use[v.id] = i
    placed: list[tuple[int, int, int]] = []  # (offset, size, end_of_life)
    peak = 0
    for i, node in enumerate(graph.nodes):
        v = node.out
        if v.id in p.value_offsets:
            continue
        size = _align(_nbytes(v.type, p.max_batch))
        p.activation_bytes_unshared += size
        live = sorted((o, s) for o, s, end in placed if end >= i)
        at = 0
        for o, s in live:
            if at + size <= o:
                break
            at = max(at, _align(o + s))
        placed.append((at, size, last_use.get(v.id, i)))
        peak = max(peak, at + size)
        p.value_offsets[v.id] = base + at
        p.buffers.append(Buffer(v.name or f"%{v.id}", "activation", v.type.dtype,
                                v.type.concrete(p.max_batch), base + at, size))
    p.activation_bytes = peak
    return _align(base + peak)
