"""Native build: the lowered training module → host machine code (llvmlite MCJIT) → NativeModel.

The same graph, memory plan and kernels as the Wasm module, compiled for the host CPU: the
linear memory is a numpy buffer whose address the host writes to `@fedc_base` before each call
(fedc/lower/address.py). It measures what the Wasm sandbox costs and is a fast path for
simulations on servers; the Wasm module stays the artifact clients run.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llvmlite.binding as llvm
import numpy as np

from .diagnostics import UsageError
from .emit import optimize
from .lower.address import BASE_GLOBAL
from .lower.module import EXPORTS, lower_module
from .pipeline import Artifacts, Options, compile_source
from .runtime import Model, RuntimeDataError

ALIGN = 64  # the buffer's base: the kernels' 16-byte scratch alignment, and cache lines
_CTYPES: dict[str, Any] = {"i32": ctypes.c_int32, "f32": ctypes.c_float}


def host_target_machine() -> llvm.TargetMachine:
    """The host CPU with all its features (e.g. AVX-512), for MCJIT.

    A fresh one per call: an MCJIT engine takes ownership of its target machine and frees it
    with itself, so a shared one would dangle once the first engine is gone.
    """
    _init_native()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                        features=llvm.get_host_cpu_features().flatten(),
                                        opt=3, jit=True)


@functools.cache
def _init_native() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def native_ir(art: Artifacts) -> str:
    """The training module of `art` lowered for a native build (base-relative addresses)."""
    mod = lower_module(art.train_graph, art.plan, art.model.optimizer, frozenset({"native"}))
    return str(mod)


@dataclass
class NativeCode:
    """A JIT-compiled training module: its exports' addresses and the @fedc_base slot."""

    engine: llvm.ExecutionEngine
    exports: dict[str, Any]  # name → ctypes function (i32 n) → f32 | None
    base_slot: ctypes.c_void_p  # @fedc_base, written before every call
    memory_bytes: int
    optimized_ir: str


def jit(art: Artifacts) -> NativeCode:
    """Compile art's training module for the host CPU."""
    return jit_ir(native_ir(art), art.manifest)


def jit_ir(text: str, manifest: dict[str, Any]) -> NativeCode:
    """Compile a training module lowered for a native build (native_ir) for the host CPU;
    `manifest` gives its exports' signatures and memory size. A simulation's worker processes
    start from the text, not the source."""
    tm = host_target_machine()
    mod = optimize(text, tm)
    optimized = str(mod)
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    exports = {}
    for name in EXPORTS:
        sig = manifest["exports"][name]
        restype = _CTYPES[sig["results"][0]] if sig["results"] else None
        proto = ctypes.CFUNCTYPE(restype, *(_CTYPES[t] for t in sig["params"]))
        exports[name] = proto(engine.get_function_address(name))
    slot = ctypes.c_void_p.from_address(engine.get_global_value_address(BASE_GLOBAL))
    return NativeCode(engine, exports, slot, int(manifest["memory"]["bytes"]), optimized)


class _NativeCall:
    """One export: point @fedc_base at this model's memory, then call the machine code."""

    def __init__(self, code: NativeCode, name: str, base: int) -> None:
        self.fn, self.slot, self.base = code.exports[name], code.base_slot, base

    def __call__(self, *args: int) -> float | None:
        self.slot.value = self.base  # models sharing one NativeCode take turns (not threads)
        return self.fn(*args)  # type: ignore[no-any-return]


class NativeModel(Model):
    """fedc.runtime.Model's API (train_step, train_epoch, evaluate, predict, get/set_weights,
    init_weights, clone, …) on a native build of the same module.

    Instances sharing a NativeCode (clone()) each own their memory; they must not be called
    from several threads at once, since the code finds its memory through one global.
    """

    def __init__(self, code: NativeCode, manifest: dict[str, Any]) -> None:
        if manifest.get("format") != "fedc-manifest/1":
            raise RuntimeDataError(f"not a fedc manifest (format {manifest.get('format')!r})")
        self.manifest, self.code = manifest, code
        self.max_batch = int(manifest["max_batch"])
        raw = np.zeros(code.memory_bytes + ALIGN, np.uint8)
        skip = -raw.ctypes.data % ALIGN
        self._buffer = raw[skip:skip + code.memory_bytes]
        base = self._buffer.ctypes.data
        self._calls = {name: _NativeCall(code, name, base) for name in code.exports}
        self._map_views()

    def _linear_memory(self) -> np.ndarray:
        return self._buffer

    @classmethod
    def from_artifacts(cls, art: Artifacts) -> NativeModel:
        return cls(jit(art), art.manifest)

    @classmethod
    def compile(cls, source: str | Path, filename: str | None = None,
                options: Options | None = None) -> NativeModel:
        """From a .fed path, or from source text when `filename` is given."""
        if filename is None:
            path = Path(source)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError.at(f"cannot read {path}: {exc}") from exc
            return cls.from_artifacts(compile_source(text, str(path), options))
        return cls.from_artifacts(compile_source(str(source), filename, options))

    @classmethod
    def load(cls, directory: str | Path, **kw: Any) -> Model:
        raise RuntimeDataError("a native model is compiled from its .fed source: use "
                               "NativeModel.compile(path)")

    def clone(self) -> NativeModel:
        """A fresh model (zeroed memory) sharing the compiled code."""
        return NativeModel(self.code, self.manifest)
