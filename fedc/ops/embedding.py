"""Text layers: embedding (token ids → vectors) and mean_pool over the sequence, with gradients."""

from __future__ import annotations

import math
from typing import Any

from llvmlite import ir

from .._lazy import np
from ..ir import BATCH, Graph, Node, TensorType, Value, f32, i32
from ..lower.context import LowerCtx
from ..lower.kernels import (
    I32,
    accumulate,
    bcast_w,
    emit_cols,
    f32c,
    i32c,
    load,
    load_w,
    loop,
    store_w,
    zero_w,
)
from ..lower.norm import zero
from . import ShapeError, register
from .surface import POS_INT, REQUIRED, TENSOR, SurfaceCtx, SurfaceError, bind

Attrs = dict[str, Any]

# --- embedding: out[..., :] = weight[id] --------------------------------------------------
# An id outside 0..vocab-1 reads no memory: its vector is zeros and its gradient is dropped.
# (The Python runtime rejects such ids before they reach the module; the manifest lists the
# vocabulary of every input that feeds an embedding as `"vocab"`.)


def _ids(op: str, t: TensorType) -> None:
    if t.dtype != "i32" or not t.batched:
        raise ShapeError(f"{op} expects token ids i32[N, …] (an `input t: i32[L]`) but got {t}")


def _embedding_shape(ins: tuple[TensorType, ...], attrs: Attrs) -> TensorType:
    ids, w = ins
    _ids("embedding", ids)
    if w.dtype != "f32" or len(w.shape) != 2 or w.batched:
        raise ShapeError(f"embedding expects a weight f32[vocab, dim] but got {w}")
    return f32(*ids.shape, int(w.shape[1]))


def _embedding_ref(xs: list[np.ndarray], attrs: Attrs) -> np.ndarray:
    ids, w = xs
    valid = (ids >= 0) & (ids < len(w))
    return w[np.where(valid, ids, 0)] * valid[..., None]


def _embedding_lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b
    ids, w = node.inputs
    vocab, dim = (int(d) for d in w.type.shape)
    idp, wp, out = ctx.ptr(ids), ctx.ptr(w), ctx.ptr(node.out)
    with loop(b, 0, ctx.count(ids.type), 1, "et") as t:
        tok = load(b, idp, t, I32)
        valid = b.icmp_unsigned("<", tok, i32c(vocab))  # also false for negative ids
        src = b.mul(b.select(valid, tok, i32c(0)), i32c(dim))  # a safe row to read
        dst = b.mul(t, i32c(dim))

        def col(j: ir.Value, vec: bool) -> None:
            v = load_w(b, wp, b.add(src, j), vec)
            store_w(b, b.select(valid, v, zero_w(vec)), out, b.add(dst, j), vec)

        emit_cols(b, dim, col, "ed")


def _embedding_surface(ctx: SurfaceCtx, args: list[Any], kwargs: Attrs) -> Value:
    ids, vocab, dim = bind("embedding", args, kwargs, [
        ("tokens", TENSOR, REQUIRED), ("vocab", POS_INT, REQUIRED), ("dim", POS_INT, REQUIRED)])
    if ids.type.dtype != "i32" or ctx.classes_of(ids) is not None:
        raise SurfaceError(f"embedding expects token ids (an `input t: i32[L]`) but got "
                           f"{ids.type}", 0)
    name = ctx.layer_name("embedding")
    w = ctx.param(name, "weight", (vocab, dim), {"kind": "normal", "std": 1.0})  # nn.Embedding
    return ctx.emit("embedding", [ids, w])


register("embedding", sample=((i32(BATCH, 6), f32(5, 4)), {}), shape=_embedding_shape,
         ref=_embedding_ref, lower=_embedding_lower,
         grad=lambda g, node, dy, needs: (None, g.emit(
             "embedding_grad", [dy, node.inputs[0]], {"vocab": int(node.inputs[1].type.shape[0])})
             if needs[1] else None),
         surface=_embedding_surface,
         doc="embedding(tokens, vocab, dim): weight[tokens], weight f32[vocab, dim] ~ N(0, 1) "
             "(PyTorch nn.Embedding); ids outside 0..vocab-1 give zeros")


def _embedding_grad_shape(ins: tuple[TensorType, ...], attrs: Attrs) -> TensorType:
    dy, ids = ins
    _ids("embedding_grad", ids)
    if dy.dtype != "f32" or dy.shape[:-1] != ids.shape:
        raise ShapeError(f"embedding_grad expects a gradient f32[{','.join(map(str, ids.shape))},"
                         f" dim] but got {dy}")
    return f32(int(attrs["vocab"]), int(dy.shape[-1]))


def _embedding_grad_ref(xs: list[np.ndarray], attrs: Attrs) -> np.ndarray:
    dy, ids = xs
    vocab = int(attrs["vocab"])
    out = np.zeros((vocab, dy.shape[-1]), dy.dtype)
    valid = (ids >= 0) & (ids < vocab)
    np.add.at(out, ids[valid], dy[valid])
    return out


def _embedding_grad_lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b
    dy, ids = node.inputs
    vocab, dim = (int(d) for d in node.out.type.shape)
    dyp, idp, out = ctx.ptr(dy), ctx.ptr(ids), ctx.ptr(node.out)
    zero(b, out, vocab * dim)
    with loop(b, 0, ctx.count(ids.type), 1, "gt") as t:
        tok = load(b, idp, t, I32)
        with b.if_then(b.icmp_unsigned("<", tok, i32c(vocab))):
            dst, src = b.mul(tok, i32c(dim)), b.mul(t, i32c(dim))

            def col(j: ir.Value, vec: bool) -> None:
                at = b.add(dst, j)
                total = b.fadd(load_w(b, out, at, vec), load_w(b, dyp, b.add(src, j), vec))
                store_w(b, total, out, at, vec)

            emit_cols(b, dim, col, "gd")


register("embedding_grad", sample=((f32(BATCH, 6, 4), i32(BATCH, 6)), {"vocab": 5}),
         shape=_embedding_grad_shape, ref=_embedding_grad_ref, lower=_embedding_grad_lower,
         doc="Σ of dy rows into the rows of their token ids (ids outside the vocabulary skipped)")


def token_vocab(graph: Graph) -> dict[str, int]:
    """Graph inputs used as embedding ids → the smallest vocabulary they index (for the
    manifest's `vocab`, which hosts check ids against)."""
    inputs = {v.id: v.name for v in graph.inputs}
    out: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "embedding" and node.inputs[0].id in inputs:
            name = inputs[node.inputs[0].id]
            vocab = int(node.inputs[1].type.shape[0])
            out[name] = min(out.get(name, vocab), vocab)
    return out


# --- mean_pool: mean over dim 1 (the sequence), f32[N, L, …] → f32[N, …] -------------------

def _pool_shape(ins: tuple[TensorType, ...], attrs: Attrs) -> TensorType:
    (x,) = ins
    if x.dtype != "f32" or not x.batched or len(x.shape) < 3:
        raise ShapeError(f"mean_pool expects a sequence f32[N, length, features] but got {x}")
    return f32(BATCH, *x.shape[2:])


def _pool_lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b
    (x,) = node.inputs
    length, inner = int(x.type.shape[1]), math.prod(x.type.row_shape[1:])
    xp, out = ctx.ptr(x), ctx.ptr(node.out)
    inv = f32c(1.0 / length)
    with loop(b, 0, ctx.n, 1, "pn") as n:
        src, dst = b.mul(n, i32c(length * inner)), b.mul(n, i32c(inner))

        def col(j: ir.Value, vec: bool) -> None:
            def step(pos: ir.Value, acc: ir.Value) -> ir.Value:
                at = b.add(src, b.add(b.mul(pos, i32c(inner)), j))
                return b.fadd(acc, load_w(b, xp, at, vec))
            total = accumulate(b, i32c(length), step, zero_w(vec), 1, "pl")
            store_w(b, b.fmul(total, bcast_w(b, inv, vec)), out, b.add(dst, j), vec)

        emit_cols(b, inner, col, "pj")


def _pool_surface(ctx: SurfaceCtx, args: list[Any], kwargs: Attrs) -> Value:
    (x,) = bind("mean_pool", args, kwargs, [("x", TENSOR, REQUIRED)])
    return ctx.emit("mean_pool", [x])


register("mean_pool", sample=((f32(BATCH, 5, 6),), {}), shape=_pool_shape,
         ref=lambda xs, _: xs[0].mean(axis=1), lower=_pool_lower,
         grad=lambda g, node, dy, needs: (
             g.emit("mean_pool_grad", [dy], {"length": int(node.inputs[0].type.shape[1])}),),
         surface=_pool_surface,
         doc="mean_pool(x): mean over dim 1 (the sequence), f32[N, L, D] → f32[N, D]")


def _pool_grad_shape(ins: tuple[TensorType, ...], attrs: Attrs) -> TensorType:
    (dy,) = ins
    if dy.dtype != "f32" or not dy.batched:
        raise ShapeError(f"mean_pool_grad expects a batched f32 gradient but got {dy}")
    return f32(BATCH, int(attrs["length"]), *dy.shape[1:])


def _pool_grad_lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b
    (dy,) = node.inputs
    length, inner = int(node.attr("length")), dy.type.row_size
    dyp, out = ctx.ptr(dy), ctx.ptr(node.out)
    inv = f32c(1.0 / length)
    with loop(b, 0, ctx.n, 1, "qn") as n, loop(b, 0, length, 1, "ql") as pos:
        src = b.mul(n, i32c(inner))
        dst = b.mul(b.add(b.mul(n, i32c(length)), pos), i32c(inner))

        def col(j: ir.Value, vec: bool) -> None:
            v = load_w(b, dyp, b.add(src, j), vec)
            store_w(b, b.fmul(v, bcast_w(b, inv, vec)), out, b.add(dst, j), vec)

        emit_cols(b, inner, col, "qj")


register("mean_pool_grad", sample=((f32(BATCH, 6),), {"length": 5}), shape=_pool_grad_shape,
         ref=lambda xs, a: np.repeat(xs[0][:, None] / a["length"], a["length"], axis=1),
         lower=_pool_grad_lower, doc="dy / L broadcast over the sequence")
