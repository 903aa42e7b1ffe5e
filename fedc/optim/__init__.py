"""Optimizers: the registry of fused update rules (one module each), schedules and settings."""

from __future__ import annotations

import importlib
import pkgutil

from .base import OPTIMIZERS, HParam, OptimizerDef, register
from .schedules import SCHEDULES
from .spec import OptimizerSpec, ScheduleSpec, reference_update


def _register_all() -> None:
    """Import every module of this package: each optimizer module registers itself, so adding
    an optimizer is adding one file."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")


_register_all()

__all__ = ["OPTIMIZERS", "SCHEDULES", "HParam", "OptimizerDef", "OptimizerSpec", "ScheduleSpec",
           "reference_update", "register"]
