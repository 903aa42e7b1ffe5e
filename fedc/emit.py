"""Emission: LLVM IR text → optimised module → wasm32 (+simd128) object, via llvmlite.binding."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import llvmlite.binding as llvm

from .diagnostics import InternalError

WASM_TRIPLE = "wasm32-unknown-unknown"

# Target features per build variant: the default is deterministic SIMD128.
FEATURES = {
    "simd128": "+simd128,+bulk-memory,+nontrapping-fptoint,+sign-ext,+mutable-globals",
    "scalar": "-simd128,+bulk-memory,+nontrapping-fptoint,+sign-ext,+mutable-globals",
    # f32x4.relaxed_madd in the GEMM micro-kernel: fused or not, as the engine's CPU does it
    "relaxed-simd": "+simd128,+relaxed-simd,+bulk-memory,+nontrapping-fptoint,+sign-ext,"
                    "+mutable-globals",
}


# LLVM's O3 unrolls loops costing up to 300 "instructions"; fedc's kernels are unrolled and
# vectorised by hand where it pays. At 100, measured on the examples: the same step times,
# ~30% less optimisation and code generation time, ~35% smaller modules.
UNROLL_THRESHOLD = 100


@functools.cache
def _init() -> None:
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    llvm.set_option("fedc", f"-unroll-threshold={UNROLL_THRESHOLD}")  # process-wide


@functools.cache
def target_machine(variant: str = "simd128") -> llvm.TargetMachine:
    _init()
    if variant not in FEATURES:
        raise InternalError(f"unknown target variant {variant!r}")
    target = llvm.Target.from_triple(WASM_TRIPLE)
    return target.create_target_machine(
        cpu="generic", features=FEATURES[variant], opt=3, reloc="static", codemodel="default"
    )


@dataclass(frozen=True)
class Emitted:
    object_code: bytes
    optimized_ir: str


def emit(llvm_ir: str, variant: str = "simd128") -> Emitted:
    """Parse, verify, run the O3 pipeline and emit a wasm32 object file."""
    tm = target_machine(variant)
    mod = optimize(llvm_ir, tm)
    return Emitted(tm.emit_object(mod), str(mod))


def optimize(llvm_ir: str, tm: llvm.TargetMachine) -> llvm.ModuleRef:
    """Parse and verify the lowered module, then run the O3 pipeline for tm's target (the Wasm
    variants here, the host CPU for fedc/native.py)."""
    _init()
    try:
        mod = llvm.parse_assembly(llvm_ir)
        mod.verify()
    except RuntimeError as exc:  # the lowering produced invalid IR: fedc's bug
        raise InternalError(f"LLVM rejected the generated IR: {exc}") from exc
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    mod.verify()
    return mod
