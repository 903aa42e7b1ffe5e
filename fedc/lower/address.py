"""Lowering: i32 linear-memory addresses → pointers, at 0 (Wasm) or at a host-set base (native).

Every buffer of the memory plan has a fixed address in the module's linear memory, and the
lowerings turn it into a pointer with `builder.inttoptr(i32 address)`. In Wasm that is the real
address. A native build (fedc/native.py) places the same linear memory in a host buffer, so
there the builder below rewrites each such conversion to `@fedc_base + address`; nothing else
in the lowered module changes, and the Wasm output is untouched.
"""

from __future__ import annotations

from llvmlite import ir

BASE_GLOBAL = "fedc_base"
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()


def base_global(module: ir.Module) -> ir.GlobalVariable:
    """`@fedc_base = global ptr null`: the host writes its buffer's address here before a call."""
    existing = module.globals.get(BASE_GLOBAL)
    if isinstance(existing, ir.GlobalVariable):
        return existing
    g = ir.GlobalVariable(module, PTR, BASE_GLOBAL)
    g.initializer = ir.Constant(PTR, None)
    g.align = 8
    return g


class LinearMemoryBuilder(ir.IRBuilder):
    """An IRBuilder whose `inttoptr` of an i32 linear-memory address yields base + address.

    The base load carries !invariant.load: it cannot change while a call runs (the host only
    writes it between calls), so LLVM may hoist it out of loops and share it despite stores.
    """

    def inttoptr(self, value: ir.Value, typ: ir.Type, name: str = "") -> ir.Value:
        if value.type != I32 or not isinstance(typ, ir.PointerType):
            return super().inttoptr(value, typ, name)
        base = self.load(base_global(self.module), typ=PTR, align=8)
        base.set_metadata("invariant.load", self.module.add_metadata([]))
        offset = ir.Constant(I64, value.constant) if isinstance(value, ir.Constant) \
            else self.zext(value, I64)  # addresses are unsigned
        return self.gep(base, [offset], source_etype=I8, name=name)


def builder_class(features: frozenset[str]) -> type[ir.IRBuilder]:
    """The IRBuilder every lowering of this build uses (LinearMemoryBuilder for native)."""
    return LinearMemoryBuilder if "native" in features else ir.IRBuilder
