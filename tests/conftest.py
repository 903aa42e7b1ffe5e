"""Shared fixtures: the example sources and compiled artifacts (compiled once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def digits_mlp_source() -> str:
    return (EXAMPLES / "digits_mlp.fed").read_text()


@pytest.fixture(scope="session")
def digits_mlp(digits_mlp_source):
    from fedc.pipeline import compile_source
    return compile_source(digits_mlp_source, "examples/digits_mlp.fed")


def pytest_sessionfinish(session, exitstatus):
    # free wasmtime objects while the interpreter is intact (avoids noisy __del__ at shutdown)
    import gc

    gc.collect()
