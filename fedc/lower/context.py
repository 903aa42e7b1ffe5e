"""What an op's lowering sees: the builder, the runtime batch size and its buffers' addresses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llvmlite import ir

from ..ir import TensorType, Value
from .kernels import F32, PTR, i32c


@dataclass
class LowerCtx:
    b: ir.IRBuilder
    n: ir.Value  # i32: rows in this batch, 1 ≤ n ≤ max_batch
    addr_of: Callable[[Value], int]
    scratch: int  # address of the shared kernel scratch area
    features: frozenset[str] = frozenset()
    # false in eval_step/predict: only ops registered with modal=True (dropout) may read it
    training: bool = True
    panels: frozenset[int] = frozenset()  # ids of the values stored in panels (fedc/layout.py)

    @property
    def madd(self) -> bool:
        """Whether this build's products use f32x4.relaxed_madd (the relaxed-simd variant)."""
        return "relaxed-simd" in self.features

    def in_panels(self, v: Value) -> bool:
        return v.id in self.panels

    def ptr(self, v: Value) -> ir.Value:
        return self.b.inttoptr(i32c(self.addr_of(v)), PTR)

    def addr_ptr(self, addr: int) -> ir.Value:
        return self.b.inttoptr(i32c(addr), PTR)

    def rows(self, t: TensorType) -> ir.Value:
        return self.n if t.batched else i32c(1)

    def count(self, t: TensorType) -> ir.Value:
        """Elements of a tensor of type t in this batch (runtime when batched)."""
        if t.batched:
            return self.b.mul(self.n, i32c(t.row_size))
        return i32c(t.row_size)

    def n_float(self) -> ir.Value:
        return self.b.sitofp(self.n, F32)
