"""Losses (mean over the batch) and their gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llvmlite import ir

from .._lazy import np
from ..ir import BATCH, Node, TensorType, Value, f32, i32
from ..lower import softmax
from ..lower.context import LowerCtx
from ..lower.kernels import (
    F32,
    I32,
    accumulate,
    carry_loop,
    emit_map,
    f32c,
    i32c,
    imin,
    load,
    splat,
    store,
)
from ..lower.rows import like
from . import ShapeError, register
from .surface import NUMBER, REQUIRED, TENSOR, SurfaceCtx, SurfaceError, bind


def _mathfn() -> Any:
    from ..lower import mathfn
    return mathfn


# --- softmax cross-entropy -----------------------------------------------------------------

def _xent_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    logits, y = ins
    if logits.dtype != "f32" or len(logits.shape) != 2 or not logits.batched:
        raise ShapeError(f"softmax_cross_entropy expects logits f32[N, classes] but got {logits}")
    if y.dtype != "i32" or y.shape != (BATCH,):
        raise ShapeError(f"softmax_cross_entropy expects class labels (a `class[K]` target) "
                         f"but got {y}")
    return f32()


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _xent_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    logits, y = xs
    lp = _log_softmax(logits)
    eps = attrs.get("label_smoothing", 0.0)
    per_row = (1 - eps) * lp[np.arange(len(y)), y] + eps * lp.mean(axis=1)
    return np.asarray(-per_row.mean(), dtype=logits.dtype)


def _xent_surface(ctx: SurfaceCtx, args: list[Any], kwargs: dict[str, Any]) -> Value:
    logits, y, eps = bind("softmax_cross_entropy", args, kwargs,
                          [("logits", TENSOR, REQUIRED), ("target", TENSOR, REQUIRED),
                           ("label_smoothing", NUMBER, 0.0)])
    if not 0.0 <= eps <= 1.0:
        raise SurfaceError(f"softmax_cross_entropy expects label_smoothing in [0, 1] but got "
                           f"{eps}", "label_smoothing")
    classes = ctx.classes_of(y)
    if classes is None:
        raise SurfaceError(f"softmax_cross_entropy expects a `class[K]` target but got {y.type}",
                           1)
    if len(logits.type.shape) == 2 and logits.type.shape[1] != classes:
        raise SurfaceError(f"softmax_cross_entropy expects logits f32[N, {classes}] for a "
                           f"class[{classes}] target but got {logits.type}", 0)
    # the attribute only when smoothing, so plain models keep their IR text
    return ctx.emit("softmax_cross_entropy", [logits, y],
                    {"label_smoothing": eps} if eps else None)


Rows = Callable[[ir.Value, list[ir.Value]], list[ir.Value]]


def _xent_rows(ctx: LowerCtx, c: int, carried: list[ir.Value], group: Rows, row: Rows
               ) -> list[ir.Value]:
    """carried = group(i, carried) for rows i, i+4, … (classes ≤ GROUP_MAX: the last group
    repeats row n − 1 as needed), else carried = row(i, carried) for every row; the finals."""
    if c <= softmax.GROUP_MAX:
        return carry_loop(ctx.b, 0, ctx.n, softmax.GROUP, carried, group, "xg")
    return carry_loop(ctx.b, 0, ctx.n, 1, carried, row, "xr")


def _group_rows(ctx: LowerCtx, i: ir.Value) -> list[ir.Value]:
    """Row indices i … i+3, the ones past the batch clamped to its last row."""
    b, last = ctx.b, ctx.b.sub(ctx.n, i32c(1))
    return [imin(b, b.add(i, i32c(r)), last) for r in range(softmax.GROUP)]


def _row_ptrs(b: ir.IRBuilder, base: ir.Value, rows: list[ir.Value], c: int) -> list[ir.Value]:
    return [b.gep(base, [b.mul(r, i32c(c))], source_etype=F32) for r in rows]


def _group_labels(b: ir.IRBuilder, yp: ir.Value, rows: list[ir.Value]) -> ir.Value:
    v: ir.Value = ir.Constant(ir.VectorType(I32, softmax.GROUP), None)
    for lane, r in enumerate(rows):
        v = b.insert_element(v, load(b, yp, r, I32), i32c(lane))
    return v


def _xent_lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b
    logits, y = node.inputs
    c = int(logits.type.shape[1])
    lp, yp = ctx.ptr(logits), ctx.ptr(y)
    eps = float(node.attr("label_smoothing", 0.0))

    def loss_of(lse_max: ir.Value, zy: ir.Value, zsum: Callable[[], ir.Value]) -> ir.Value:
        # −Σ_j q_j·log p_j with q = (1−ε)·onehot(y) + ε/C:  lse − (1−ε)·z_y − (ε/C)·Σ_j z_j
        loss = b.fsub(lse_max, b.fmul(like(b, f32c(1.0 - eps), zy), zy) if eps else zy)
        if eps:
            loss = b.fsub(loss, b.fmul(like(b, f32c(eps / c), zy), zsum()))
        return loss

    def group(i: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        rows = _group_rows(ctx, i)
        st = softmax.group_stats(b, _row_ptrs(b, lp, rows, c), c)
        zy = softmax.pick(b, st.cols, _group_labels(b, yp, rows))
        loss = loss_of(b.fadd(_mathfn().log(b, st.sum), st.max), zy,
                       lambda: softmax.lane_sum(b, st.cols))
        total = acc[0]
        for r, x in enumerate(softmax.lanes(b, loss)):  # in row order, rows of the batch only
            inside = b.icmp_signed("<", b.add(i, i32c(r)), ctx.n)
            total = b.select(inside, b.fadd(total, x), total) if r else b.fadd(total, x)
        return [total]

    def row(i: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        r = b.gep(lp, [b.mul(i, i32c(c))], source_etype=F32)
        st = softmax.row_stats(b, r, c)
        zy = load(b, r, load(b, yp, i, I32))
        return [b.fadd(acc[0], loss_of(b.fadd(_mathfn().log(b, st.sum), st.max), zy,
                                       lambda: softmax.row_sum(b, r, c)))]

    total = _xent_rows(ctx, c, [f32c(0.0)], group, row)[0]
    store(b, b.fdiv(total, ctx.n_float()), ctx.ptr(node.out), 0)


register("softmax_cross_entropy",
         sample=((f32(BATCH, 10), i32(BATCH)), {"label_smoothing": 0.1}),
         shape=_xent_shape, ref=_xent_ref, lower=_xent_lower,
         grad=lambda g, node, dy, needs: (
             g.emit("softmax_cross_entropy_grad", [dy, *node.inputs], dict(node.attrs)), None),
         surface=_xent_surface, loss=True,
         doc="softmax_cross_entropy(logits, y, label_smoothing=0): mean over the batch of "
             "−Σ_j q_j·log softmax(logits)_j, q = (1−ε)·onehot(y) + ε/classes (PyTorch "
             "F.cross_entropy)")


def _xent_grad_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    if ins[0] != f32():
        raise ShapeError(f"softmax_cross_entropy_grad expects a scalar f32 seed, got {ins[0]}")
    _xent_shape(ins[1:], attrs)
    return ins[1]


def _xent_grad_ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    g, logits, y = xs
    eps = attrs.get("label_smoothing", 0.0)
    # 0 where e^(z − max) is flushed (fedc.lower.softmax.FLUSH_BELOW), as the kernels do
    flushed = logits - logits.max(axis=1, keepdims=True) < softmax.FLUSH_BELOW
    with np.errstate(under="ignore"):
        p = np.where(flushed, 0.0, np.exp(_log_softmax(logits))).astype(logits.dtype)
    p -= eps / logits.shape[1]
    p[np.arange(len(y)), y] -= 1 - eps
    return p * (g / len(y))


def _xent_grad_lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b
    g, logits, y = node.inputs
    c = int(logits.type.shape[1])
    lp, yp, out = ctx.ptr(logits), ctx.ptr(y), ctx.ptr(node.out)
    scale = b.fdiv(load(b, ctx.ptr(g), 0), ctx.n_float())
    eps = float(node.attr("label_smoothing", 0.0))
    smooth = b.fmul(scale, f32c(eps / c)) if eps else None  # g/N · ε/C off every class
    hit = b.fmul(scale, f32c(1.0 - eps)) if eps else scale  # and g/N · (1−ε) off y

    def group(i: ir.Value, _: list[ir.Value]) -> list[ir.Value]:
        rows = _group_rows(ctx, i)
        st = softmax.group_stats(b, _row_ptrs(b, lp, rows, c), c)
        k, hv = b.fdiv(splat(b, scale), st.sum), splat(b, hit)
        sv = splat(b, smooth) if smooth is not None else None
        labels = _group_labels(b, yp, rows)
        cols = []
        for j, e in enumerate(st.exps):
            p = b.fmul(e, k)
            p = b.fsub(p, sv) if sv is not None else p
            is_y = b.icmp_signed("==", labels, ir.Constant(labels.type, [j] * softmax.GROUP))
            cols.append(b.select(is_y, b.fsub(p, hv), p))
        # a repeated last row's lanes hold that row's values: it is stored again, unchanged
        softmax.store_cols(b, cols, _row_ptrs(b, out, rows, c), c)
        return []

    def row(i: ir.Value, _: list[ir.Value]) -> list[ir.Value]:
        base = b.mul(i, i32c(c))
        orow = b.gep(out, [base], source_etype=F32)
        st = softmax.row_stats(b, b.gep(lp, [base], source_etype=F32), c, orow)
        softmax.scale_row(b, st, orow, c, b.fdiv(scale, st.sum), smooth)
        yi = load(b, yp, i, I32)
        store(b, b.fsub(load(b, orow, yi), hit), orow, yi)
        return []

    _xent_rows(ctx, c, [], group, row)


register("softmax_cross_entropy_grad",
         sample=((f32(), f32(BATCH, 10), i32(BATCH)), {"label_smoothing": 0.1}),
         shape=_xent_grad_shape, ref=_xent_grad_ref,
         lower=_xent_grad_lower, doc="g/N · (softmax(logits) − q), q the smoothed one-hot of y")

# --- mean squared error --------------------------------------------------------------------


def _mse_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    pred, target = ins
    if pred.dtype != "f32" or not pred.batched:
        raise ShapeError(f"mse expects a batched f32 prediction but got {pred}")
    if target != pred:
        raise ShapeError(f"mse expects a target of the prediction's type {pred} but got {target}")
    return f32()


def _mse_surface(ctx: SurfaceCtx, args: list[Any], kwargs: dict[str, Any]) -> Value:
    pred, target = bind("mse", args, kwargs,
                        [("prediction", TENSOR, REQUIRED), ("target", TENSOR, REQUIRED)])
    if ctx.classes_of(target) is not None:
        raise SurfaceError("mse expects a real-valued target (e.g. `target y: f32[1]`), "
                           "not class labels", 1)
    return ctx.emit("mse", [pred, target])


def _mse_lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b
    pred, target = node.inputs
    count = ctx.count(pred.type)
    pp, tp = ctx.ptr(pred), ctx.ptr(target)

    def step(i: ir.Value, acc: ir.Value) -> ir.Value:
        d = b.fsub(load(b, pp, i), load(b, tp, i))
        return b.fadd(acc, b.fmul(d, d))

    total = accumulate(b, count, step, f32c(0.0), 1, "ms")
    store(b, b.fdiv(total, b.sitofp(count, F32)), ctx.ptr(node.out), 0)


register("mse", sample=((f32(BATCH, 3), f32(BATCH, 3)), {}),
         shape=_mse_shape, ref=lambda xs, _: np.asarray(((xs[0] - xs[1]) ** 2).mean()),
         lower=_mse_lower,
         grad=lambda g, node, dy, needs: (g.emit("mse_grad", [dy, *node.inputs]), None),
         surface=_mse_surface, loss=True, doc="mse(prediction, target): mean of squared errors")


def _mse_grad_shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    if ins[0] != f32():
        raise ShapeError(f"mse_grad expects a scalar f32 seed, got {ins[0]}")
    _mse_shape(ins[1:], attrs)
    return ins[1]


def _mse_grad_lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b
    g, pred, target = node.inputs
    count = ctx.count(pred.type)
    k = b.fdiv(b.fmul(f32c(2.0), load(b, ctx.ptr(g), 0)), b.sitofp(count, F32))
    k4 = splat(b, k)

    def fn(bb: ir.IRBuilder, v: Any) -> ir.Value:
        scale = k4 if isinstance(v[0].type, ir.VectorType) else k
        return bb.fmul(bb.fsub(v[0], v[1]), scale)

    emit_map(b, count, fn, [ctx.ptr(pred), ctx.ptr(target)], ctx.ptr(node.out))


register("mse_grad", sample=((f32(), f32(BATCH, 3), f32(BATCH, 3)), {}), shape=_mse_grad_shape,
         ref=lambda xs, _: 2 * xs[0] * (xs[1] - xs[2]) / xs[1].size, lower=_mse_grad_lower,
         doc="2g/numel · (prediction − target)")
