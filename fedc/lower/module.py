"""Lowering: training graph + memory plan → one llvmlite.ir.Module with the step exports."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from llvmlite import ir

from ..diagnostics import InternalError
from ..ir import Graph, Node, Value
from ..ops import REGISTRY
from ..ops.dropout import DROPOUT_KEY
from ..optim import OptimizerSpec
from ..plan import MemoryPlan
from .address import builder_class
from .context import LowerCtx
from .kernels import F32, I32, PTR, V4, i32c, load, loop, store
from .update import emit_update

TRIPLE = "wasm32-unknown-unknown"
EXPORTS = ("train_step", "eval_step", "predict", "train_steps")
EVAL_EXPORTS = frozenset({"eval_step", "predict"})  # lowered with ctx.training false


def needed(graph: Graph, roots: Iterable[Value]) -> list[Node]:
    """The nodes `roots` depend on, in program order."""
    live = {v.id for v in roots}
    keep = []
    for node in reversed(graph.nodes):
        if node.out.id in live:
            keep.append(node)
            live.update(v.id for v in node.inputs)
    return keep[::-1]


Update = Callable[[ir.IRBuilder], None]


def lower_exports(graph: Graph, plan: MemoryPlan,
                  exports: dict[str, tuple[list[Node], Value | None, Update | None]],
                  features: frozenset[str] = frozenset()) -> ir.Module:
    """A module with one internal function per node and `exports` calling them in order.

    Each export takes the batch size n (i32), runs its nodes, then its optional update, and
    returns the scalar at the planned address of its return value (or nothing).
    """
    mod = ir.Module(name="fedc")
    mod.triple = TRIPLE
    builder = builder_class(features)  # native builds: addresses relative to a host base
    kernels: dict[tuple[int, bool], ir.Function] = {}
    for node in graph.nodes:  # a modal op (OpDef.modal, e.g. dropout) also gets an eval kernel
        for training in (True, False) if REGISTRY[node.op].modal else (True,):
            kernels[node.out.id, training] = _node_function(mod, node, plan, features, training)
    for name, (nodes, ret, update) in exports.items():
        fn = ir.Function(mod, ir.FunctionType(F32 if ret is not None else ir.VoidType(), [I32]),
                         name)
        b = builder(fn.append_basic_block("entry"))
        training = name not in EVAL_EXPORTS
        for node in nodes:
            modal = REGISTRY[node.op].modal
            b.call(kernels[node.out.id, training or not modal], [fn.args[0]])
        if update is not None:
            update(b)
        if ret is None:
            b.ret_void()
        else:
            b.ret(load(b, b.inttoptr(i32c(plan.addr(ret)), PTR), 0))
    return mod


def lower_module(train: Graph, plan: MemoryPlan, optimizer: OptimizerSpec,
                 features: frozenset[str] = frozenset()) -> ir.Module:
    """The training module: train_step (forward, backward, update), eval_step and predict."""
    loss, prediction = train.output("loss"), train.output("prediction")

    def update(b: ir.IRBuilder) -> None:
        emit_update(b, plan, optimizer)

    mod = lower_exports(train, plan, {
        "train_step": (list(train.nodes), loss, update),
        "eval_step": (needed(train, [loss, prediction]), loss, None),
        "predict": (needed(train, [prediction]), None, None),
    }, features)
    _train_steps(mod, train, plan, features)
    return mod


def _train_steps(mod: ir.Module, train: Graph, plan: MemoryPlan,
                 features: frozenset[str]) -> None:
    """`train_steps(n, count)`: `count` train_steps on the consecutive n-row blocks of the batch
    buffers (n·count ≤ max_batch), step j's loss at losses[j].

    Before step j ≥ 1 it copies block j over block 0 of every batch buffer and adds 1 to the
    dropout key's step word, so the steps, weights and losses are those of `count` calls of
    train_step after the host wrote each block in turn (and the key before each). One host
    call then carries several batches: a digits epoch in Python went ~49.0 -> ~46.5 µs a batch.
    """
    step = mod.globals["train_step"]
    step.attributes.add("noinline")  # one copy of the step in the module, not two
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I32, I32]), "train_steps")
    b = builder_class(features)(fn.append_basic_block("entry"))
    n, count = fn.args
    batch = [(plan.addr(v), v.type.row_size) for v in train.inputs if v.type.batched]
    key = next((plan.addr(v) for v in train.inputs if v.name == DROPOUT_KEY), None)
    losses = b.inttoptr(i32c(plan.losses_offset), PTR)
    with loop(b, 0, count, name="j") as j:
        with b.if_then(b.icmp_signed(">", j, i32c(0))):
            for addr, row in batch:
                words = b.mul(n, i32c(row))
                base = b.inttoptr(i32c(addr), PTR)
                _copy_words(b, b.gep(base, [b.mul(j, words)], source_etype=I32), base, words)
            if key is not None:
                at = b.inttoptr(i32c(key), PTR)
                store(b, b.add(load(b, at, 1, I32), i32c(1)), at, 1)
        store(b, b.call(step, [n]), losses, j)
    b.ret_void()


def _copy_words(b: ir.IRBuilder, src: ir.Value, dst: ir.Value, words: ir.Value) -> None:
    """dst[0:words] = src[0:words] (4-byte words; the two do not overlap), four at a time."""
    whole = b.and_(words, i32c(-4))
    with loop(b, 0, whole, 4, "cw") as i:
        v = b.load(b.gep(src, [i], source_etype=I32), typ=V4, align=4)
        b.store(v, b.gep(dst, [i], source_etype=I32), align=4)
    with loop(b, whole, words, 1, "cr") as i:
        store(b, load(b, src, i, I32), dst, i)


def _node_function(mod: ir.Module, node: Node, plan: MemoryPlan,
                   features: frozenset[str], training: bool = True) -> ir.Function:
    suffix = "" if training else "_eval"
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I32]),
                     f"k{node.out.id}_{node.op}{suffix}")
    fn.linkage = "internal"
    # one call per node costs nothing next to a kernel, while inlining every kernel into
    # train_step made one huge function that LLVM optimised ~30% slower (no faster code)
    fn.attributes.add("noinline")
    b = builder_class(features)(fn.append_basic_block("entry"))
    ctx = LowerCtx(b, fn.args[0], plan.addr, plan.scratch_offset, features, training,
                   plan.panels)
    try:
        REGISTRY[node.op].lower(ctx, node)
    except (KeyError, ValueError, TypeError, AssertionError) as exc:
        raise InternalError(f"lowering {node.op} failed: {exc!r}", node.span) from exc
    b.ret_void()
    return fn
