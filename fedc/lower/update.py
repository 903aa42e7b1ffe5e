"""Lowering of train_step's update: schedule, clip, FedProx, fused optimizer pass, step count."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llvmlite import ir

from ..optim.schedules import lower_scheduled_lr
from ..optim.spec import CLIP_EPS, OptimizerSpec
from ..plan import MemoryPlan
from .kernels import (
    I32,
    LANES,
    PTR,
    V4,
    accumulate,
    const_like,
    emit_zip_static,
    f32c,
    i32c,
    load,
    load_w,
    reduce_add4,
    splat,
    store,
)
from .scalarmath import fmin, sqrt

# the gradient the optimizer sees, element-wise: g (+ μ(p − anchor)) (· clip coefficient)
GradFn = Callable[[ir.IRBuilder, dict[str, ir.Value], Sequence[ir.Value]], ir.Value]


def emit_update(b: ir.IRBuilder, plan: MemoryPlan, spec: OptimizerSpec) -> None:
    """Everything after the backward pass, once per train_step.

    The step counter k (i32, zeroed with the state) gives the scheduled lr and the optimizer's
    step number t = k + 1; clipping adds one pass over the gradients; then one fused pass
    updates parameters and state; every FLUSH_EVERY steps the state's subnormals become 0
    (flush_state); finally k ← t.
    """
    def ptr(offset: int) -> ir.Value:
        return b.inttoptr(i32c(offset), PTR)

    hp_ptr = ptr(plan.hparams_offset)
    scalars = {k: load(b, hp_ptr, i) for i, k in enumerate(spec.runtime_hparams())}
    k = load(b, ptr(plan.step_offset), 0, I32)
    t = b.add(k, i32c(1))
    scalars["lr"] = lower_scheduled_lr(b, spec.schedule.kind, spec.schedule.args, spec.warmup,
                                       scalars["lr"], k, scalars)
    opt = spec.definition
    if opt.prepare is not None:
        scalars.update(opt.prepare(b, scalars, t))
    offsets = [plan.params_offset, plan.grads_offset]
    if spec.proximal:
        assert plan.anchor_offset is not None
        offsets.append(plan.anchor_offset)
    regions = [ptr(o) for o in offsets]
    count = i32c(plan.param_count)
    if spec.clip_norm is not None:
        scalars["clip_coef"] = _clip_coefficient(b, scalars, regions, count, _grad_fn(spec, False))
    grad = _grad_fn(spec, spec.clip_norm is not None)
    states = [plan.state_offset + s * plan.slot_stride * 4 for s in range(plan.state_slots)]
    static = spec.static_hparams()
    fixed = len(regions)

    def body(bb: ir.IRBuilder, vals: Sequence[ir.Value]) -> list[ir.Value]:
        vec = isinstance(vals[0].type, ir.VectorType)
        h = {name: splat(bb, v) if vec else v for name, v in scalars.items()}
        p, new_state = opt.update(bb, h, static, vals[0], grad(bb, h, vals), vals[fixed:])
        return [p, *new_state]

    emit_zip_static(b, plan.param_count, body, [*offsets, *states], [offsets[0], *states])
    if plan.state_slots:
        flush_state(b, plan, k)
    store(b, t, ptr(plan.step_offset), 0)


# Steps between passes that flush the optimizer state's subnormals (flush_state). A decaying
# state value spends ~150 steps in the subnormal range (at momentum 0.9), so at most a tenth of
# them; one pass over digits' 9,610-float state costs ~1 µs, 0.06 µs a step on average.
FLUSH_EVERY = 16


def flush_state(b: ir.IRBuilder, plan: MemoryPlan, k: ir.Value) -> None:
    """Every FLUSH_EVERY-th step (k ≡ 0): state values below the smallest normal float → +0.

    A momentum buffer whose gradient stays exactly 0 (a dead relu unit's weights) decays by
    the momentum factor each step and, after ~700 steps, passes through the subnormal range,
    where every multiply and add on it takes a microcode assist on x86 (Wasm has no
    flush-to-zero mode). Digits MLP, `fedc train`, epochs 21–40 (interleaved, same process):
    ~300 subnormal momentum values, 421,723 → 589,547 samples/s with the flush, the weights
    after 40 epochs bit-identical (lr times a value that small is below half an ulp of any
    weight larger than ~2^-100). Flushing in the fused update itself measured +0.9 µs a digits
    step (three more instructions per vector of an instruction-bound loop).
    """
    due = b.icmp_unsigned("==", b.and_(k, i32c(FLUSH_EVERY - 1)), i32c(0))
    with b.if_then(due):
        emit_zip_static(b, plan.state_slots * plan.slot_stride,
                        lambda bb, vals: [flush_subnormal(bb, vals[0])],
                        [plan.state_offset], [plan.state_offset])


def flush_subnormal(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """x, or +0 where |x| is below the smallest normal float (2^-126)."""
    vec = isinstance(x.type, ir.VectorType)
    ity: ir.Type = ir.VectorType(I32, LANES) if vec else I32

    def const(v: int) -> ir.Constant:
        return ir.Constant(ity, [v] * LANES) if vec else ir.Constant(I32, v)

    magnitude = b.and_(b.bitcast(x, ity), const(0x7FFFFFFF))
    tiny = b.icmp_signed("<", magnitude, const(0x00800000))  # the sign bit is cleared
    return b.select(tiny, const_like(x, 0.0), x)


def _grad_fn(spec: OptimizerSpec, clipped: bool) -> GradFn:
    """g, plus FedProx's μ(p − anchor) (the gradient of μ/2‖p − anchor‖²), times the clip."""
    def grad(bb: ir.IRBuilder, h: dict[str, ir.Value], vals: Sequence[ir.Value]) -> ir.Value:
        g = vals[1]
        if spec.proximal:
            g = bb.fadd(g, bb.fmul(h["proximal_mu"], bb.fsub(vals[0], vals[2])))
        return bb.fmul(g, h["clip_coef"]) if clipped else g

    return grad


def _clip_coefficient(b: ir.IRBuilder, scalars: dict[str, ir.Value], regions: list[ir.Value],
                      count: ir.Value, grad: GradFn) -> ir.Value:
    """torch.nn.utils.clip_grad_norm_: min(1, max_norm / (‖g‖₂ + 1e-6)) over every gradient."""
    def square_sum(vec: bool) -> Callable[[ir.Value, ir.Value], ir.Value]:
        h = {name: splat(b, v) if vec else v for name, v in scalars.items()}

        def step(i: ir.Value, acc: ir.Value) -> ir.Value:
            g = grad(b, h, [load_w(b, r, i, vec) for r in regions])
            return b.fadd(acc, b.fmul(g, g))

        return step

    vec_end = b.and_(count, i32c(~(LANES - 1)))
    acc = accumulate(b, vec_end, square_sum(True), ir.Constant(V4, [0.0] * LANES), LANES, "n")
    total = accumulate(b, count, square_sum(False), reduce_add4(b, acc), 1, "nt", start=vec_end)
    coef = b.fdiv(scalars["clip_norm"], b.fadd(sqrt(b, total), f32c(CLIP_EPS)))
    return fmin(b, coef, f32c(1.0))
