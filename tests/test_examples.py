"""Every example compiles to a valid module and is documented with its measured accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from fedc.pipeline import compile_source

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.fed"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_compiles_to_a_module_that_imports_nothing(path):
    art = compile_source(path.read_text(), f"examples/{path.name}")
    module = wasmtime.Module(wasmtime.Engine(), art.wasm)
    assert list(module.imports) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_documented(path):
    docs = (ROOT / "docs" / "examples.md").read_text()
    assert f"examples/{path.name}" in docs, f"docs/examples.md does not describe {path.name}"
