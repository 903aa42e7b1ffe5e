"""The AST of a .fed program: frozen dataclasses, every node with the Span of its source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..diagnostics import Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span


@dataclass(frozen=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True)
class Keyword:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]
    span: Span
    func_span: Span


@dataclass(frozen=True)
class BinOp:
    """`a + b` (residual add); later issues may add more operators."""

    op: str
    left: Expr
    right: Expr
    span: Span


Expr = Union[Name, Num, Str, Call, BinOp]  # noqa: UP007 - a runtime alias, kept as written


@dataclass(frozen=True)
class TensorTypeExpr:
    """`f32[64]`, `f32[1, 8, 8]`, `i32[20]`, `class[10]`: a per-example type (no batch dim)."""

    dtype: str  # "f32" | "i32" | "class"
    dims: tuple[int, ...]
    span: Span


@dataclass(frozen=True)
class InputDecl:
    name: str
    type: TensorTypeExpr
    span: Span
    name_span: Span | None = None  # the declared name (span is the whole line)


@dataclass(frozen=True)
class TargetDecl:
    name: str
    type: TensorTypeExpr
    span: Span
    name_span: Span | None = None  # the declared name (span is the whole line)


@dataclass(frozen=True)
class Assign:
    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class ModelDef:
    name: str
    inputs: tuple[InputDecl, ...]
    targets: tuple[TargetDecl, ...]
    body: tuple[Assign, ...]
    span: Span


@dataclass(frozen=True)
class OptimizerDef:
    name: str
    kwargs: tuple[Keyword, ...]
    span: Span


@dataclass(frozen=True)
class Setting:
    """`rounds = 30` inside the federated block; value is a Num, Name (fedavg) or Call."""

    name: str
    value: Expr
    span: Span
    name_span: Span | None = None  # the setting's name (span is the whole line)


@dataclass(frozen=True)
class FederatedDef:
    settings: tuple[Setting, ...]
    span: Span


@dataclass(frozen=True)
class Program:
    model: ModelDef
    optimizer: OptimizerDef | None
    federated: FederatedDef | None
    file: str
    source: str
