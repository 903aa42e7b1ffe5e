"""Emission: LLVM IR text → optimised module → wasm32 (+simd128) object, via llvmlite.binding."""

from __future__ import annotations

import functools
import os
import pickle
import signal
import sys
import threading
from collections.abc import Sequence
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


def emit_units(units: Sequence[str], variant: str = "simd128") -> list[Emitted]:
    """`emit` each codegen unit (lower/units.py), units after the first in forked worker
    processes when this machine has the cores for it; the objects are the same either way.
    FEDC_JOBS=1 compiles them one after another in this process."""
    target_machine(variant)  # before forking: the workers inherit the initialised LLVM
    if not _can_fork(len(units)):
        return [emit(text, variant) for text in units]
    workers: list[tuple[int, int]] = []
    try:
        for text in units[1:]:
            workers.append(_fork(text, variant))
    except OSError:  # no process or pipe to spare (a limit, memory): compile them all here
        _stop(workers)
        return [emit(text, variant) for text in units]
    try:
        first = emit(units[0], variant)
    except BaseException:
        _stop(workers)
        raise
    rest = [_collect(*worker) for worker in workers]  # every worker reaped before raising
    done = [first]
    for result in rest:
        if isinstance(result, InternalError):
            raise result
        done.append(result)
    return done


def _can_fork(units: int) -> bool:
    """Fork only where it is cheap and safe: Linux (no fork on Windows; macOS's system
    libraries object to it), a single-threaded process (a thread holding a lock at the fork
    would hold it forever in the child), and a core to spare."""
    if units < 2 or sys.platform != "linux" or threading.active_count() != 1:
        return False
    return len(os.sched_getaffinity(0)) >= 2 and os.environ.get("FEDC_JOBS") != "1"


def _stop(workers: list[tuple[int, int]]) -> None:
    """No orphans: kill the workers, then reap them."""
    for pid, read in workers:
        os.kill(pid, signal.SIGKILL)
        os.close(read)
        os.waitpid(pid, 0)


def _fork(text: str, variant: str) -> tuple[int, int]:
    read, write = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        raise
    if pid == 0:  # the worker: compile, send the result, exit without Python's clean-up
        status = 0
        try:
            os.close(read)
            try:
                answer: tuple[str, object] = ("ok", emit(text, variant))
            except BaseException as exc:  # noqa: BLE001 (the parent raises it)
                detail = exc.detail if isinstance(exc, InternalError) else repr(exc)
                answer, status = ("error", detail), 1
            with os.fdopen(write, "wb") as out:
                pickle.dump(answer, out)
        finally:
            os._exit(status)
    os.close(write)
    return pid, read


def _collect(pid: int, read: int) -> Emitted | InternalError:
    """A worker's object, or the error it met (or why it gave neither)."""
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    try:
        kind, result = pickle.loads(data)
    except Exception:  # the worker died before it could answer (killed, out of memory)
        return InternalError(f"a codegen worker process ended ({_status(status)}) without "
                             f"its object")
    if kind == "ok" and isinstance(result, Emitted):
        return result
    return InternalError(f"in a codegen worker: {result}")


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


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
