"""Lowering helpers: Winograd F(m×m, 3×3) transform matrices and constant-coefficient linear
combinations of <4 x float> values (llvmlite.ir), for fedc/lower/winograd.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from llvmlite import ir

from .kernels import LANES, V4

Cell: TypeAlias = ir.Value | None  # None: an exact zero (padding), folded away

Matrix = tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Transforms:
    """F(m×m, 3×3): Bᵀ (a×a, a = m + 2), G (a×3) and Aᵀ (m×a) (Lavin & Gray's points 0, ±1
    for m = 2; 0, ±1, ±2 for m = 4, whose larger coefficients cost ~30× the rounding error of
    a direct sum: ~1e-5 relative in float32)."""

    m: int
    bt: Matrix
    g: Matrix
    at: Matrix

    @property
    def a(self) -> int:
        return self.m + 2


F2 = Transforms(2, ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
                ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
                ((1, 1, 1, 0), (0, 1, -1, -1)))
F4 = Transforms(4, ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
                    (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
                ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
                 (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
                ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0),
                 (0, 1, -1, 8, -8, 1)))


def transpose(m: Matrix) -> Matrix:
    return tuple(zip(*m, strict=True))


def _combine(b: ir.IRBuilder, terms: list[tuple[float, ir.Value]]) -> Cell:
    """Σ coef·v with one multiply per coefficient magnitude: each magnitude's terms are summed
    with their signs ((v₁ − v₂)·m); a magnitude with only negative terms is summed and
    subtracted at the end, so no term is negated on its own."""
    plus: list[ir.Value] = []  # |coef|·(Σ pos − Σ neg) per magnitude with a positive term
    minus: list[ir.Value] = []  # |coef|·Σ neg per magnitude with only negative terms

    def scaled(acc: ir.Value, mag: float) -> ir.Value:
        return acc if mag == 1 else b.fmul(acc, ir.Constant(V4, [mag] * LANES))

    for mag in sorted({abs(c) for c, _ in terms}, reverse=True):
        pos = [v for c, v in terms if c == mag]
        neg = [v for c, v in terms if c == -mag]
        if pos:
            acc = pos[0]
            for v in pos[1:]:
                acc = b.fadd(acc, v)
            for v in neg:
                acc = b.fsub(acc, v)
            plus.append(scaled(acc, mag))
        else:
            acc = neg[0]
            for v in neg[1:]:
                acc = b.fadd(acc, v)
            minus.append(scaled(acc, mag))
    if not plus and not minus:
        return None
    out = plus[0] if plus else b.fsub(zero(), minus.pop(0))
    for v in plus[1:]:
        out = b.fadd(out, v)
    for v in minus:
        out = b.fsub(out, v)
    return out


def _apply(b: ir.IRBuilder, m: Matrix, items: Sequence[Cell]) -> list[Cell]:
    return [_combine(b, [(c, v) for c, v in zip(row, items, strict=True)
                         if c != 0 and v is not None]) for row in m]


def two_sided(b: ir.IRBuilder, left: Matrix, x: Sequence[Sequence[Cell]], right: Matrix
              ) -> list[list[Cell]]:
    """left · x · rightᵀ on a grid of vectors (None = 0)."""
    cols = len(x[0])
    t = [_apply(b, left, [x[p][q] for p in range(len(x))]) for q in range(cols)]  # t[q][r]
    return [_apply(b, right, [t[q][r] for q in range(cols)]) for r in range(len(left))]


def zero() -> ir.Constant:
    return ir.Constant(V4, [0.0] * LANES)
