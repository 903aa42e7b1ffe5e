"""What op blocks build with: SurfaceCtx (a .fed call → IR nodes) and GradBuilder (autodiff)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..diagnostics import Span, did_you_mean
from ..ir import GraphBuilder, Node, TensorType, Value

if TYPE_CHECKING:
    from llvmlite import ir

    from ..lower.context import LowerCtx


class SurfaceError(Exception):
    """A user error in a call's arguments; `where` is an argument index or keyword name."""

    def __init__(self, message: str, where: int | str | None = None,
                 keyword: bool = False) -> None:
        super().__init__(message)
        self.where = where
        self.keyword = keyword  # about the keyword itself: point at all of `name=value`


TENSOR, POS_INT, NUMBER, BOOL = "tensor", "positive integer", "number", "bool"
NONNEG_INT = "non-negative integer"  # e.g. a convolution's padding
F32_MAX = 3.4028234663852886e38
F32_HALF_MIN = 2.0**-150  # half the smallest subnormal float32: it and anything smaller round to 0
# a wasm32 module's 4 GiB hold at most 2^30 four-byte values: a parameter or one example's
# tensor beyond that never fits, whatever the batch (and its size stays a float's)
MAX_VALUES = 2**30


def bind(op: str, args: list[Any], kwargs: dict[str, Any],
         spec: list[tuple[str, str, Any]]) -> list[Any]:
    """Match positional and keyword arguments against (name, kind, default) triples.

    A default of `REQUIRED` makes the argument mandatory.
    """
    if len(args) > len(spec):
        raise SurfaceError(f"{op} takes at most {len(spec)} arguments but got {len(args)}",
                           len(spec))
    names = [s[0] for s in spec]
    for k in kwargs:
        if k not in names:
            raise SurfaceError(f"{op} has no argument {k!r}{did_you_mean(k, names)} (expected "
                               f"{', '.join(names)})", k, keyword=True)
    out = []
    for i, (name, kind, default) in enumerate(spec):
        where: int | str
        if i < len(args):
            if name in kwargs:
                raise SurfaceError(f"{op} got argument {name!r} twice", name, keyword=True)
            value, where = args[i], i
        elif name in kwargs:
            value, where = kwargs[name], name
        elif default is REQUIRED:
            raise SurfaceError(f"{op} is missing its argument {name!r}")
        else:
            out.append(default)
            continue
        out.append(_coerce(op, name, kind, value, where))
    return out


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def shown(value: Any) -> str:
    """A constant as the .fed source spells it: `the boolean true`, not Python's `True`."""
    return f"the boolean {str(value).lower()}" if isinstance(value, bool) else repr(value)


def _coerce(op: str, name: str, kind: str, value: Any, where: int | str) -> Any:
    is_tensor = isinstance(value, Value)
    if kind == TENSOR:
        if not is_tensor:
            raise SurfaceError(f"{op} expects a tensor for {name!r} but got {shown(value)}",
                               where)
        return value
    if is_tensor:
        raise SurfaceError(f"{op} expects a {kind} for {name!r} but got a tensor", where)
    if kind == POS_INT:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SurfaceError(f"{op} expects a positive integer for {name!r} but got "
                               f"{shown(value)}", where)
        return value
    if kind == NONNEG_INT:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SurfaceError(f"{op} expects a non-negative integer for {name!r} but got "
                               f"{shown(value)}", where)
        return value
    if kind == NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SurfaceError(f"{op} expects a number for {name!r} but got {shown(value)}",
                               where)
        if abs(value) > F32_MAX or 0 < abs(value) <= F32_HALF_MIN:  # kernels use it as float32
            raise SurfaceError(f"{op} expects a number for {name!r} that float32 holds (neither "
                               f"beyond ±{F32_MAX:.4g} nor rounding to 0) but got {shown(value)}",
                               where)
        return float(value)
    if kind == BOOL:  # `in (True, False)` would take 1 and 0.0 (True == 1 in Python)
        if not isinstance(value, bool):
            unquote = " (without quotes)" if value in ("true", "false") else ""
            raise SurfaceError(f"{op} expects true or false{unquote} for {name!r} but got "
                               f"{shown(value)}", where)
        return value
    raise AssertionError(kind)


def fits(what: str, shape: tuple[int, ...]) -> None:
    """A SurfaceError unless a tensor of `shape` (per example) fits a wasm32 module."""
    if math.prod(shape) > MAX_VALUES:
        raise SurfaceError(f"{what}, more than a wasm32 module's 4 GiB of memory holds "
                           "(2^30 four-byte values)")


@dataclass
class SurfaceCtx:
    """The checker's builder as an op's surface rule sees it."""

    graph: GraphBuilder
    span: Span
    classes: dict[int, int] = field(default_factory=dict)  # value id → class count (targets)
    counters: dict[str, int] = field(default_factory=dict)

    def emit(self, op: str, inputs: list[Value], attrs: dict[str, Any] | None = None) -> Value:
        from . import REGISTRY, ShapeError

        types = tuple(v.type for v in inputs)
        try:
            out = REGISTRY[op].shape(types, dict(attrs or {}))
        except ShapeError as exc:
            raise SurfaceError(str(exc)) from exc
        fits(f"{op} makes {out}", out.row_shape)
        return self.graph.emit(op, inputs, attrs, self.span)

    def param(self, layer: str, pname: str, shape: tuple[int, ...], init: dict[str, Any]) -> Value:
        fits(f"{layer}.{pname} is f32[{','.join(map(str, shape))}]", shape)
        return self.graph.add_param(shape, f"{layer}.{pname}", init, self.span)

    def layer_name(self, kind: str) -> str:
        i = self.counters.get(kind, 0)
        self.counters[kind] = i + 1
        return f"{kind}_{i}"

    def classes_of(self, v: Value) -> int | None:
        return self.classes.get(v.id)


@dataclass
class GradBuilder:
    """Autodiff's builder as a gradient rule sees it: new nodes inherit the forward span."""

    graph: GraphBuilder
    span: Span

    def emit(self, op: str, inputs: list[Value], attrs: dict[str, Any] | None = None) -> Value:
        return self.graph.emit(op, inputs, attrs, self.span)


def expect_rank(op: str, t: TensorType, what: str, rank: int) -> None:
    from . import ShapeError

    if len(t.shape) != rank:
        raise ShapeError(f"{op} expects {what} of rank {rank} but got {t}")


def unary_surface(op: str) -> Callable[[SurfaceCtx, list[Any], dict[str, Any]], Value]:
    """The surface rule of an op called as `op(x)` with one tensor and no options."""
    def surface(ctx: SurfaceCtx, args: list[Any], kwargs: dict[str, Any]) -> Value:
        (x,) = bind(op, args, kwargs, [("x", TENSOR, REQUIRED)])
        return ctx.emit(op, [x])
    return surface


AttrVecFn = Callable[["ir.IRBuilder", Sequence["ir.Value"], dict[str, Any]], "ir.Value"]


def map_lowering(fn: AttrVecFn) -> Callable[[LowerCtx, Node], None]:
    """Lower an elementwise op: fn(builder, operands, attrs) gets <4 x float> or float operands."""
    from ..lower.kernels import emit_map

    def lower(ctx: LowerCtx, node: Node) -> None:
        attrs = dict(node.attrs)
        emit_map(ctx.b, ctx.count(node.out.type), lambda b, v: fn(b, v, attrs),
                 [ctx.ptr(v) for v in node.inputs], ctx.ptr(node.out))
    return lower
