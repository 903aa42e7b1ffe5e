"""The lark front end: .fed source text → AST dataclasses with spans (`parse`)."""

from .ast import (
    Assign,
    BinOp,
    Call,
    Expr,
    FederatedDef,
    InputDecl,
    Keyword,
    ModelDef,
    Name,
    Num,
    OptimizerDef,
    Program,
    Setting,
    Str,
    TargetDecl,
    TensorTypeExpr,
)
from .parser import DTYPES, parse

__all__ = [
    "DTYPES",
    "Assign",
    "BinOp",
    "Call",
    "Expr",
    "FederatedDef",
    "InputDecl",
    "Keyword",
    "ModelDef",
    "Name",
    "Num",
    "OptimizerDef",
    "Program",
    "Setting",
    "Str",
    "TargetDecl",
    "TensorTypeExpr",
    "parse",
]
