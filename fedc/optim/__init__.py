"""Optimizers: the registry of fused update rules (one module each), schedules and settings."""

from __future__ import annotations

from . import adagrad, adam, rmsprop, sgd  # noqa: F401  (each module registers its optimizers)
from .base import OPTIMIZERS, HParam, OptimizerDef, register
from .schedules import SCHEDULES
from .spec import OptimizerSpec, ScheduleSpec, reference_update

__all__ = ["OPTIMIZERS", "SCHEDULES", "HParam", "OptimizerDef", "OptimizerSpec", "ScheduleSpec",
           "reference_update", "register"]
