"""Every user-facing op and every optimizer has a PyTorch oracle test."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from fedc.ops import REGISTRY
from fedc.optim import OPTIMIZERS

pytest.importorskip("torch")


def test_every_op_and_optimizer_has_an_oracle_test():
    import tests.oracle as pkg

    covered: set[str] = set()
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("test_torch_"):
            covered |= importlib.import_module(f"tests.oracle.{info.name}").COVERS
    wanted = {k for k, op in REGISTRY.items() if op.surface is not None} | set(OPTIMIZERS)
    missing = sorted(wanted - covered)
    assert not missing, f"no PyTorch oracle test covers: {', '.join(missing)}"
