"""The op registry: one block per op (shape rule, gradient rule, numpy reference, lowering)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from ..ir import Node, TensorType, Value
    from ..lower.context import LowerCtx
    from .surface import GradBuilder, SurfaceCtx


class ShapeError(Exception):
    """A shape rule's complaint; the checker turns it into a diagnostic at the call."""


ShapeRule = Callable[[tuple["TensorType", ...], dict[str, Any]], "TensorType"]
Reference = Callable[[list["np.ndarray"], dict[str, Any]], "np.ndarray"]
GradRule = Callable[["GradBuilder", "Node", "Value", tuple[bool, ...]], tuple["Value | None", ...]]
Lowering = Callable[["LowerCtx", "Node"], None]
Surface = Callable[["SurfaceCtx", list[Any], dict[str, Any]], "Value"]
Scratch = Callable[["Node", int, frozenset[int]], int]


@dataclass(frozen=True)
class OpDef:
    """Everything fedc knows about one op.

    shape:   input types + attrs → output type (raises ShapeError)
    ref:     numpy reference semantics; arrays carry the batch dim; works in f32 or f64
    grad:    (builder, node, d_out, needs) → one gradient Value (or None) per input;
             None as a whole means the op is not differentiable (an error if reached)
    lower:   emits the op's code at ctx.b for the node's planned buffers
    surface: how a call in a .fed file builds it (None: internal op, not callable by users)
    sample:  input types (and attrs) the registry-wide tests instantiate the op with; "N" is
             the batch dim. Every op has one, so every op is tested the moment it exists.
    loss:    the op is a loss: scalar output, first input is the model's prediction
    scratch: (node, max_batch, panels) → bytes of kernel scratch its lowering uses at
             ctx.scratch (16-byte aligned, shared by all nodes: the plan reserves the largest
             request); panels: the ids of the values stored in panels (fedc/layout.py)
    task:    for a loss, the manifest's `task` when it is neither "classification" (class
             targets) nor "regression", e.g. "binary" for bce_with_logits (0/1 targets, logits)
    modal:   the lowering reads ctx.training (dropout: a copy outside training), so the op is
             lowered twice: for train_step, and for eval_step/predict
    """

    name: str
    shape: ShapeRule
    ref: Reference
    lower: Lowering
    grad: GradRule | None = None
    surface: Surface | None = None
    sample: tuple[tuple[TensorType, ...], dict[str, Any]] = ((), {})
    doc: str = ""
    loss: bool = False
    scratch: Scratch | None = None
    task: str | None = None
    modal: bool = False


REGISTRY: dict[str, OpDef] = {}


def register(name: str, *, shape: ShapeRule, ref: Reference, lower: Lowering,
             sample: tuple[tuple[TensorType, ...], dict[str, Any]],
             grad: GradRule | None = None, surface: Surface | None = None,
             doc: str = "", loss: bool = False, scratch: Scratch | None = None,
             task: str | None = None, modal: bool = False) -> OpDef:
    if name in REGISTRY:
        raise ValueError(f"op {name!r} registered twice")
    op = OpDef(name, shape, ref, lower, grad, surface, sample, doc, loss, scratch, task,
               modal)
    REGISTRY[name] = op
    return op


def surface_ops() -> dict[str, OpDef]:
    """The ops a .fed file may call by name."""
    return {k: v for k, v in REGISTRY.items() if v.surface is not None}


def _register_all() -> None:
    """Import every module of this package: each registers its ops when imported."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name != "surface":
            importlib.import_module(f"{__name__}.{info.name}")


_register_all()
