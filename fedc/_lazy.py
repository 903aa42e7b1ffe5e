"""numpy, imported on first use.

`fedc compile` and `fedc check` never compute with numpy: only the ops' and optimizers'
reference implementations (the interpreter, the tests), the runtimes, the data and the
federation do. Importing it is ~110 ms of a ~1 s fresh-process compile, so the modules on the
compile path take `np` from here; it is numpy itself from its first attribute access on (and
numpy itself at once if it is already imported).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING


def lazy_module(name: str) -> ModuleType:
    """The module `name`, executed when one of its attributes is first read."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:  # not installed: fail as `import name` would
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")

__all__ = ["lazy_module", "np"]
