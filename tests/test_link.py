"""fedc.link: which wasm-ld runs, and what a missing one reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedc import link
from fedc.diagnostics import ToolchainError


def test_the_ziglang_wheels_zig_runs_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDC_WASM_LD", raising=False)
    cmd = link.wasm_ld_command()
    assert cmd[1:] == ["wasm-ld"] and Path(cmd[0]).name.startswith("zig")
    assert cmd[0] != sys.executable  # not through a second Python start (python -m ziglang)
    out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("LLD 22.")  # the LLVM of llvmlite's objects


def test_fedc_wasm_ld_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDC_WASM_LD", "/opt/llvm/bin/wasm-ld")
    assert link.wasm_ld_command() == ["/opt/llvm/bin/wasm-ld"]


def test_without_the_binary_it_falls_back_to_python_m_ziglang(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Spec:
        submodule_search_locations = [str(tmp_path)]  # a ziglang folder without its zig

    monkeypatch.delenv("FEDC_WASM_LD", raising=False)
    monkeypatch.setattr(link.importlib.util, "find_spec", lambda name: Spec())
    assert link.wasm_ld_command() == [sys.executable, "-m", "ziglang", "wasm-ld"]


def test_a_missing_linker_is_a_toolchain_error(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("FEDC_WASM_LD", str(tmp_path / "no-such-wasm-ld"))
    with pytest.raises(ToolchainError, match="cannot run wasm-ld"):
        link.link(b"\0asm\1\0\0\0", link.ARENA_BASE, [])
