"""Linking: a wasm32 object → model.wasm with LLD's wasm-ld (from the ziglang wheel)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .diagnostics import Diagnostic, ToolchainError

PAGE = 65536
# The shadow stack sits below the arena (--stack-first); fedc's kernels keep nearly
# everything in Wasm locals, so a small one is enough.
STACK_SIZE = 64 * 1024
ARENA_BASE = STACK_SIZE


def wasm_ld_command() -> list[str]:
    """FEDC_WASM_LD if set; else the ziglang wheel's zig binary, run directly (`python -m
    ziglang` does the same through a second Python start, ~25 ms a link); else that."""
    override = os.environ.get("FEDC_WASM_LD")
    if override:
        return [override]
    spec = importlib.util.find_spec("ziglang")  # the package's location, without importing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        zig = Path(folder) / ("zig.exe" if os.name == "nt" else "zig")
        if zig.is_file() and os.access(zig, os.X_OK):
            return [str(zig), "wasm-ld"]
    return [sys.executable, "-m", "ziglang", "wasm-ld"]


def link(obj: bytes | Sequence[bytes], arena_end: int, exports: list[str]) -> bytes:
    """Link one object (or the codegen units' objects, in order) into a module that imports
    nothing and exports its memory.

    The arena (every buffer of the static memory plan) spans [ARENA_BASE, arena_end); the
    linker is told to put its own data after it, so the two can never overlap.
    """
    data_base = _round_up(arena_end, 16)
    memory = memory_size(arena_end)
    args = [
        "--no-entry",
        "--stack-first",
        "-z", f"stack-size={STACK_SIZE}",
        f"--global-base={data_base}",
        f"--initial-memory={memory}",
        f"--max-memory={memory}",
        "--strip-all",
        "--gc-sections",
        *(f"--export={name}" for name in exports),
    ]
    with tempfile.TemporaryDirectory(prefix="fedc-link-") as tmp:
        out_path = Path(tmp) / "model.wasm"
        objects = [obj] if isinstance(obj, bytes) else list(obj)
        paths = [Path(tmp) / f"unit{i}.o" for i in range(len(objects))]
        for path, code in zip(paths, objects, strict=True):
            path.write_bytes(code)
        cmd = [*wasm_ld_command(), *args, *map(str, paths), "-o", str(out_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise ToolchainError([Diagnostic(f"cannot run wasm-ld ({cmd[0]}): {exc}")]) from exc
        if proc.returncode != 0:
            raise ToolchainError([Diagnostic(
                "wasm-ld failed: " + (proc.stderr.strip() or proc.stdout.strip())
                + "\nhint: install the ziglang wheel (pip install ziglang) or set FEDC_WASM_LD"
            )])
        return out_path.read_bytes()


def memory_size(arena_end: int) -> int:
    """The module's fixed memory size: the arena, then a page for LLVM's constant data."""
    return _round_up(_round_up(arena_end, 16) + PAGE, PAGE)


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m
