"""dropout(x, p): a counter-based mask (a hash of key, layer and element index), train_step only.

No RNG state lives in the module. The host writes a two-word key [seed, step] into the
`dropout:key` input before every train_step (the manifest's `rng` entry; the Python runtime does
it, see docs/abi.md). Element i of dropout layer `stream` is kept iff

    u = h(h(i ^ ka) + kb) with ka = h(seed ^ h(step + stream·0x9E3779B9)), kb = h(ka + 0x632BE5AB)
    (u >> 8) ≥ round(p · 2^24)

where h is the `lowbias32` integer hash (x ^= x>>16; x *= 0x7feb352d; x ^= x>>15;
x *= 0x846ca68b; x ^= x>>16, all mod 2^32); kept elements are scaled by 1/(1 − p) as in PyTorch.
The backward pass is the same op on dy: it recomputes the identical mask. In eval_step and
predict the op lowers to a copy (ctx.training is false). numpy (`keep_mask`) and Wasm compute
bit-identical masks, so the reference interpreter is exact, not statistical.
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir

from .._lazy import np
from ..ir import BATCH, Node, TensorType, Value, f32, i32
from ..lower.context import LowerCtx
from ..lower.kernels import (
    I32,
    LANES,
    const_like,
    emit_map,
    f32c,
    i32c,
    load,
    load_w,
    loop,
    splat,
    store_w,
)
from . import ShapeError, register
from .surface import NUMBER, REQUIRED, TENSOR, GradBuilder, SurfaceCtx, SurfaceError, bind

DROPOUT_KEY = "dropout:key"  # the graph input holding [seed, step]; not a name a .fed can use
_GOLDEN = 0x9E3779B9
_KB_SALT = 0x632BE5AB
_M1, _M2 = 0x7FEB352D, 0x846CA68B
_MASK32 = 0xFFFFFFFF


def threshold(p: float) -> int:
    """Keep iff the hash's top 24 bits are ≥ this; p = 0 keeps everything."""
    return int(round(p * (1 << 24)))


def _h(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(_M1)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(_M2)
    return x ^ (x >> np.uint32(16))


def keep_mask(key: np.ndarray, stream: int, count: int, p: float) -> np.ndarray:
    """The bool mask of `count` elements for this key ([seed, step], any int dtype) and layer."""
    with np.errstate(over="ignore"):
        k = np.asarray(key).astype(np.int64).astype(np.uint32).reshape(2)
        seed, step = k[0:1], k[1:2]
        mix = (step + np.uint32((stream * _GOLDEN) & _MASK32))
        ka = _h(seed ^ _h(mix))
        kb = _h(ka + np.uint32(_KB_SALT))
        idx = np.arange(count, dtype=np.uint32)
        u = _h(_h(idx ^ ka) + kb)
    return (u >> np.uint32(8)) >= threshold(p)


def _ref(xs: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    x, key = xs
    p = attrs["p"]
    keep = keep_mask(key, attrs["stream"], x.size, p).reshape(x.shape)
    return np.where(keep, x * (1.0 / (1.0 - p)), 0).astype(x.dtype)


# --- lowering -------------------------------------------------------------------------------

def _hash(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    def c(v: int) -> ir.Value:
        return _int_like(x, v)
    x = b.xor(x, b.lshr(x, c(16)))
    x = b.mul(x, c(_M1))
    x = b.xor(x, b.lshr(x, c(15)))
    x = b.mul(x, c(_M2))
    return b.xor(x, b.lshr(x, c(16)))


def _int_like(x: ir.Value, v: int) -> ir.Constant:
    v = v - (1 << 32) if v >= 1 << 31 else v  # llvmlite wants the signed spelling
    if isinstance(x.type, ir.VectorType):
        return ir.Constant(x.type, [v] * x.type.count)
    return ir.Constant(I32, v)


def _keys(ctx: LowerCtx, key: Value, stream: int) -> tuple[ir.Value, ir.Value]:
    b = ctx.b
    kp = ctx.ptr(key)
    seed, step = load(b, kp, 0, I32), load(b, kp, 1, I32)
    ka = _hash(b, b.xor(seed, _hash(b, b.add(step, _int_like(step, (stream * _GOLDEN) & _MASK32)))))
    return ka, _hash(b, b.add(ka, _int_like(ka, _KB_SALT)))


def _lower(ctx: LowerCtx, node: Node) -> None:
    b = ctx.b
    x, key = node.inputs
    p = float(node.attr("p"))
    count = ctx.count(x.type)
    xp, out = ctx.ptr(x), ctx.ptr(node.out)
    if not ctx.training or p == 0.0:  # eval_step/predict (and p = 0): the identity
        emit_map(b, count, lambda bb, v: v[0], [xp], out)
        return
    ka, kb = _keys(ctx, key, int(node.attr("stream")))
    scale = f32c(float(np.float32(1.0 / (1.0 - p))))
    vec_end = b.and_(count, i32c(~(LANES - 1)))
    lanes = ir.Constant(ir.VectorType(I32, LANES), list(range(LANES)))
    for start, stop, width in ((0, vec_end, LANES), (vec_end, count, 1)):
        vec = width == LANES
        with loop(b, start, stop, width, "dv" if vec else "dt") as i:
            idx = b.add(_splat_i(b, i), lanes) if vec else i
            u = _hash(b, b.add(_hash(b, b.xor(idx, _splat_i(b, ka) if vec else ka)),
                               _splat_i(b, kb) if vec else kb))
            keep = b.icmp_unsigned(">=", b.lshr(u, _int_like(u, 8)),
                                   _int_like(u, threshold(p)))
            v = load_w(b, xp, i, vec)
            kept = b.fmul(v, splat(b, scale) if vec else scale)
            store_w(b, b.select(keep, kept, const_like(v, 0.0)), out, i, vec)


def _splat_i(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    vt = ir.VectorType(I32, LANES)
    v = b.insert_element(ir.Constant(vt, ir.Undefined), x, i32c(0))
    return b.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(vt, [0] * LANES))


# --- shape, gradient, surface ---------------------------------------------------------------

def _shape(ins: tuple[TensorType, ...], attrs: dict[str, Any]) -> TensorType:
    x, key = ins
    if x.dtype != "f32" or not x.batched:
        raise ShapeError(f"dropout expects a batched f32 tensor but got {x}")
    if key != i32(2):
        raise ShapeError(f"dropout expects its key as i32[2] but got {key}")
    if not 0.0 <= float(attrs["p"]) < 1.0:
        raise ShapeError(f"dropout expects 0 ≤ p < 1 but got {attrs['p']}")
    return x


def _grad(g: GradBuilder, node: Node, dy: Value,
          needs: tuple[bool, ...]) -> tuple[Value | None, ...]:
    # linear in x with the same mask: the gradient is dropout of dy under the same key/stream
    return g.emit("dropout", [dy, node.inputs[1]], dict(node.attrs)), None


def _surface(ctx: SurfaceCtx, args: list[Any], kwargs: dict[str, Any]) -> Value:
    x, p = bind("dropout", args, kwargs, [("x", TENSOR, REQUIRED), ("p", NUMBER, 0.5)])
    if not 0.0 <= p < 1.0:
        raise SurfaceError(f"dropout expects a probability 0 ≤ p < 1 but got {p:g}", "p")
    key = next((v for v in ctx.graph.inputs if v.name == DROPOUT_KEY), None)
    if key is None:
        key = ctx.graph.add_input(i32(2), DROPOUT_KEY)
    stream = int(ctx.layer_name("dropout").rsplit("_", 1)[1])
    return ctx.emit("dropout", [x, key], {"p": p, "stream": stream})


register("dropout", sample=((f32(BATCH, 9), i32(2)), {"p": 0.3, "stream": 1}), shape=_shape,
         ref=_ref, lower=_lower, grad=_grad, surface=_surface, modal=True,
         doc="dropout(x, p=0.5): zero each element with probability p, scale the rest by "
             "1/(1−p), in train_step only (identity in eval_step/predict)")
