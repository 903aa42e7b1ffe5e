"""Convolution kernels under every lowering strategy and many geometries vs the numpy reference;
compile-time errors of the conv/pool/shape surface; the scratch the plan reserves."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import wasmtime

from fedc.diagnostics import FedcError
from fedc.emit import emit
from fedc.ir import GraphBuilder, f32
from fedc.link import link
from fedc.lower import conv
from fedc.lower.module import lower_exports
from fedc.ops import REGISTRY
from fedc.pipeline import check_source
from fedc.plan import plan

from .op_harness import SPAN


class Kernels:
    """Ops on explicit types and attrs, compiled together into one Wasm module: one export
    per op (compiling is the slow part of these tests)."""

    def __init__(self, cases: list[tuple[str, tuple[Any, ...], dict[str, Any]]],
                 max_batch: int = 5) -> None:
        gb = GraphBuilder()
        self.io = []
        for i, (op, types, attrs) in enumerate(cases):
            ins = [gb.add_input(t, f"in{i}_{j}") for j, t in enumerate(types)]
            self.io.append((ins, gb.emit(op, ins, attrs, SPAN, f"out{i}")))
        graph = gb.build([(f"out{i}", out) for i, (_, out) in enumerate(self.io)])
        self.plan = plan(graph, max_batch=max_batch, state_slots=0, n_hparams=0)
        exports = {f"run{i}": ([node], None, None) for i, node in enumerate(graph.nodes)}
        mod = lower_exports(graph, self.plan, exports)
        wasm = link(emit(str(mod), "simd128").object_code, self.plan.end, list(exports))
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        inst = wasmtime.Instance(self.store, wasmtime.Module(engine, wasm), [])
        self.ex: Any = inst.exports(self.store)
        mem: Any = self.ex["memory"]
        self.mem = np.ctypeslib.as_array(mem.data_ptr(self.store),
                                         shape=(mem.data_len(self.store),))

    def __call__(self, i: int, arrays: list[np.ndarray], batch: int) -> np.ndarray:
        ins, out = self.io[i]
        for v, a in zip(ins, arrays, strict=True):
            self.view(v, batch)[...] = a
        self.ex[f"run{i}"](self.store, batch)
        return self.view(out, batch).copy()

    def view(self, v: Any, batch: int) -> np.ndarray:
        off = self.plan.addr(v)
        return self.mem[off: off + v.type.numel(batch) * 4].view(np.float32).reshape(
            v.type.concrete(batch))


# (C, O, spatial, kernel, stride, padding, groups): odd widths, channel counts that are not
# multiples of 4, strides, paddings past the kernel's reach, groups, 1-D and 2-D
GEOMETRIES = [
    (1, 16, (8, 8), (3, 3), (1, 1), (1, 1), 1),
    (16, 32, (4, 4), (3, 3), (1, 1), (1, 1), 1),
    (3, 5, (7, 9), (3, 2), (1, 1), (2, 0), 1),
    (4, 6, (6, 5), (3, 2), (2, 1), (1, 1), 2),
    (6, 9, (5, 11), (2, 3), (1, 2), (0, 1), 3),
    (4, 4, (5, 5), (3, 3), (1, 1), (1, 1), 4),
    (2, 7, (3, 3), (1, 1), (1, 1), (3, 2), 1),
    (1, 8, (13,), (7,), (1,), (3,), 1),
    (8, 16, (21,), (5,), (1,), (2,), 2),
    (3, 5, (11,), (5,), (2,), (2,), 1),
    (5, 3, (6,), (6,), (1,), (0,), 1),
    # Winograd F(2×2, 3×3) (3×3, stride 1, channels in fours): odd outputs, no/double padding
    (4, 8, (5, 7), (3, 3), (1, 1), (1, 1), 1),
    (8, 4, (6, 6), (3, 3), (1, 1), (0, 0), 1),
    (4, 4, (3, 5), (3, 3), (1, 1), (2, 2), 1),
    (4, 12, (8, 3), (3, 3), (1, 1), (2, 0), 1),
    (4, 8, (14, 13), (3, 3), (1, 1), (1, 1), 1),  # F(4×4) with 16 partial tiles; F(2×2) looped
    # more than 16 tiles: zero-bordered grids, tiles looped at run time
    (4, 8, (12, 11), (3, 3), (1, 1), (1, 1), 1),  # F(2×2): 36 tiles; F(4×4): 9 unrolled
    (4, 4, (18, 17), (3, 3), (1, 1), (1, 1), 1),  # both looped, odd edges
    (8, 4, (10, 9), (3, 3), (1, 1), (2, 2), 1),   # padding 2: outputs 12×11
]


def _types(c: int, o: int, spatial: tuple[int, ...], kernel: tuple[int, ...], groups: int,
           out: tuple[int, ...]) -> dict[str, tuple[Any, ...]]:
    x, w, dy = f32("N", c, *spatial), f32(o, c // groups, *kernel), f32("N", o, *out)
    return {"fwd": (x, w, f32(o)), "dx": (dy, w), "dw": (x, dy)}


@pytest.mark.parametrize("how", conv.STRATEGIES)
@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: f"{g[0]}-{g[1]}-{g[2]}-k{g[3]}"
                         f"-s{g[4]}-p{g[5]}-g{g[6]}")
def test_every_strategy_matches_the_reference(geom, how, monkeypatch):
    c, o, spatial, kernel, stride, padding, groups = geom
    r = len(spatial)
    base = {"stride": stride, "padding": padding, "groups": groups}
    out = tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(spatial, kernel, stride, padding,
                                                                   strict=True))
    types = _types(c, o, spatial, kernel, groups, out)
    cases = [(f"conv{r}d", types["fwd"], base),
             (f"conv{r}d_grad_input", types["dx"], {**base, "in_size": spatial}),
             (f"conv{r}d_grad_weight", types["dw"], {**base, "kernel": kernel})]
    monkeypatch.setattr(conv, "FORCE", how)
    rng = np.random.default_rng(len(spatial) * 100 + c)
    kernels = Kernels(cases, max_batch=37)
    for i, (op, tys, attrs) in enumerate(cases):
        for batch in (1, 5, 37):  # 37: whole chunks of examples and a remainder (dw)
            arrays = [rng.normal(size=t.concrete(batch)).astype(np.float32) for t in tys]
            want = REGISTRY[op].ref([a.astype(np.float64) for a in arrays], attrs)
            # F(4×4)'s transforms (coefficients up to 8) round ~30× more than a direct sum:
            # its error is bounded against the result's scale, 1e-5 of its largest element
            atol = 1e-4 + (1e-5 * np.abs(want).max() if how == "winograd4" else 0)
            np.testing.assert_allclose(kernels(i, arrays, batch), want, rtol=1e-4, atol=atol,
                                       err_msg=f"{op} {how} batch {batch}")


# (C, spatial, kernel, stride, padding): pair windows (the vectorised path, with and without a
# scalar tail) and general ones
POOLS = [
    (3, (8, 8), (2, 2), (2, 2), (0, 0)),
    (2, (7, 19), (2, 2), (2, 2), (0, 0)),
    (2, (9, 10), (3, 2), (3, 2), (0, 0)),
    (3, (7, 6), (3, 2), (2, 2), (1, 1)),
    (2, (6, 7), (2, 3), (1, 2), (1, 0)),
    (4, (21,), (2,), (2,), (0,)),
    (2, (128,), (2,), (2,), (0,)),
    (3, (11,), (3,), (2,), (1,)),
]


@pytest.mark.parametrize("geom", POOLS, ids=lambda g: f"{g[1]}-k{g[2]}-s{g[3]}-p{g[4]}")
def test_pool_kernels_match_the_reference_including_ties(geom):
    c, spatial, kernel, stride, padding = geom
    r = len(spatial)
    attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    out = tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(spatial, kernel, stride, padding,
                                                                   strict=True))
    x, dy = f32("N", c, *spatial), f32("N", c, *out)
    cases = [(f"max_pool{r}d", (x,), attrs), (f"max_pool{r}d_grad", (dy, x), attrs),
             (f"avg_pool{r}d", (x,), attrs),
             (f"avg_pool{r}d_grad", (dy,), {**attrs, "in_size": spatial})]
    kernels = Kernels(cases)
    rng = np.random.default_rng(r)
    for i, (op, tys, at) in enumerate(cases):
        for batch in (1, 5):
            arrays = [rng.normal(size=t.concrete(batch)).astype(np.float32) for t in tys]
            arrays[-1] = np.maximum(arrays[-1], 0)  # after a relu: ties at zero
            want = REGISTRY[op].ref([a.astype(np.float64) for a in arrays], at)
            np.testing.assert_allclose(kernels(i, arrays, batch), want, rtol=1e-6, atol=1e-6,
                                       err_msg=f"{op} batch {batch}")


# planes: scalar only, one vector, fewer vectors than partial sums, unrolled groups with a
# tail, the looped groups (more than 8 vectors) with leftover vectors and a tail
@pytest.mark.parametrize("spatial", [(3,), (4,), (2, 5), (4, 4), (17,), (6, 7), (8, 8), (9, 9)])
def test_channel_sum_matches_the_reference(spatial):
    kernels = Kernels([("channel_sum", (f32("N", 3, *spatial),), {})], max_batch=9)
    rng = np.random.default_rng(len(spatial))
    for batch in (1, 9):
        x = rng.normal(size=(batch, 3, *spatial)).astype(np.float32)
        np.testing.assert_allclose(kernels(0, [x], batch), x.astype(np.float64).sum(
            axis=(0, *range(2, 2 + len(spatial)))), rtol=1e-5, atol=1e-5)


def test_plan_reserves_the_largest_scratch_any_node_asks_for():
    src = """model M:
    input x: f32[3, 16, 16]
    target y: class[4]
    h = relu(conv2d(x, 8, 5, padding=2))
    logits = dense(flatten(conv2d(h, 4, 3, stride=2)), 4)
    loss = softmax_cross_entropy(logits, y)
optimizer sgd(lr=0.1)
"""
    from fedc.autodiff import grad

    train = grad(check_source(src, "m.fed").graph)
    p = plan(train, max_batch=7, state_slots=0, n_hparams=1)
    wanted = max(REGISTRY[n.op].scratch(n, 7, p.panels) for n in train.nodes
                 if REGISTRY[n.op].scratch)
    (buf,) = p.find("scratch")
    assert buf.bytes >= wanted > 0 and buf.offset % 16 == 0 and buf.offset + buf.bytes <= p.end


# --- compile-time errors -----------------------------------------------------------------

ERRORS = [
    ("input x: f32[64]", "conv2d(x, 8, 3)",
     "conv2d expects an input of type f32[N, channels, height, width] but got f32[N,64]"),
    ("input x: f32[6, 8, 8]", "conv2d(x, 8, 3, groups=4)",
     "conv2d: groups=4 must divide both the input channels (6) and out_channels (8)"),
    ("input x: f32[1, 4, 4]", "conv2d(x, 8, 7)",
     "conv2d: kernel 7×7 is larger than the padded input: height 4 + 2·padding 0 = 4"),
    ("input x: f32[1, 8, 8]", "conv2d(x, 8, 3, stride=0)",
     "conv2d expects a positive integer for 'stride' but got 0"),
    ("input x: f32[1, 8, 8]", "conv2d(x, 8, 3, padding=-1)",
     "conv2d expects a non-negative integer for 'padding' but got -1"),
    ("input x: f32[1, 8, 8]", "conv2d(x, 8)",
     "conv2d is missing its argument 'kernel_size' (or kernel_h and kernel_w)"),
    ("input x: f32[1, 8, 8]", "conv2d(x, 8, kernel_h=3)",
     "conv2d is missing its argument 'kernel_size' (or kernel_h and kernel_w)"),
    ("input x: f32[2, 9]", "conv1d(x, 4, 11, padding=0)",
     "conv1d: kernel 11 is larger than the padded input: length 9 + 2·padding 0 = 9"),
    ("input x: f32[2, 9]", "conv1d(x, 4, 3, kernel_h=3)", "conv1d has no argument 'kernel_h'"),
    ("input x: f32[2, 8, 8]", "max_pool2d(x, 2, padding=2)",
     "max_pool2d: padding 2 must be at most half the kernel size 2"),
    ("input x: f32[2, 3]", "avg_pool1d(x, 4)",
     "avg_pool1d: kernel 4 is larger than the padded input: length 3 + 2·padding 0 = 3"),
    ("input x: f32[2, 8]", "max_pool2d(x, 2)",
     "max_pool2d expects an input of type f32[N, channels, height, width] but got f32[N,2,8]"),
    ("input x: f32[64]", "global_avg_pool(x)",
     "global_avg_pool expects f32[N, channels, ...spatial] but got f32[N,64]"),
    ("input x: f32[64]", "reshape(x, 3, -1)",
     "reshape cannot turn f32[N,64] (64 values per example) into [N, 3, -1]"),
    ("input x: f32[64]", "reshape(x, 2, -1, -1)", "reshape accepts at most one -1 dimension"),
    ("input x: f32[64]", "reshape(x, 0, 64)",
     "reshape expects positive integer dimensions (or one -1) but got 0"),
]


@pytest.mark.parametrize("decl,call,message", ERRORS, ids=[e[1] for e in ERRORS])
def test_unsupported_configurations_are_compile_time_errors(decl, call, message):
    src = f"model M:\n    {decl}\n    target y: class[3]\n    h = {call}\n" \
          "    logits = dense(flatten(h), 3)\n    loss = softmax_cross_entropy(logits, y)\n" \
          "optimizer sgd(lr=0.1)\n"
    with pytest.raises(FedcError) as info:
        check_source(src, "m.fed")
    rendered = info.value.render()
    assert message in rendered, rendered
    assert "m.fed:4:" in rendered and "Traceback" not in rendered
