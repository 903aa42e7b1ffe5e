"""fedc's Python runtime (runtime/python/fedc_runtime.py), importable as `fedc.runtime`."""

from __future__ import annotations

import importlib.util
import sys

from .resources import resource_dir


def _load() -> object:
    if "fedc_runtime" in sys.modules:
        return sys.modules["fedc_runtime"]
    path = resource_dir("runtime") / "python" / "fedc_runtime.py"
    spec = importlib.util.spec_from_file_location("fedc_runtime", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fedc_runtime"] = module
    spec.loader.exec_module(module)
    return module


_rt = _load()
Model = _rt.Model  # type: ignore[attr-defined]
RuntimeDataError = _rt.RuntimeDataError  # type: ignore[attr-defined]
load = _rt.load  # type: ignore[attr-defined]
Shuffle = _rt.Shuffle  # type: ignore[attr-defined]

__all__ = ["Model", "RuntimeDataError", "Shuffle", "load"]
