"""Lowering: training graph + memory plan → one llvmlite.ir.Module with the step exports."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from llvmlite import ir

from ..diagnostics import InternalError
from ..ir import Graph, Node, Value
from ..ops import REGISTRY
from ..optim import OptimizerSpec
from ..plan import MemoryPlan
from .address import builder_class
from .context import LowerCtx
from .kernels import F32, I32, PTR, i32c, load
from .update import emit_update

TRIPLE = "wasm32-unknown-unknown"
EXPORTS = ("train_step", "eval_step", "predict")
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

    return lower_exports(train, plan, {
        "train_step": (list(train.nodes), loss, update),
        "eval_step": (needed(train, [loss, prediction]), loss, None),
        "predict": (needed(train, [prediction]), None, None),
    }, features)


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
    ctx = LowerCtx(b, fn.args[0], plan.addr, plan.scratch_offset, features, training)
    try:
        REGISTRY[node.op].lower(ctx, node)
    except (KeyError, ValueError, TypeError, AssertionError) as exc:
        raise InternalError(f"lowering {node.op} failed: {exc!r}", node.span) from exc
    b.ret_void()
    return fn
