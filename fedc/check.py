"""The checker: AST → typed forward IR graph, with every name, shape, dtype and setting checked."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .diagnostics import Collector, Diagnostic, Span, did_you_mean
from .ir import (
    BATCH,
    Graph,
    GraphBuilder,
    Node,
    TensorType,
    Value,
    format_graph,
    live,
    verify,
)
from .ops import REGISTRY, ShapeError, surface_ops
from .ops.surface import SurfaceCtx, SurfaceError, fits, shown
from .optim import OptimizerSpec
from .optim.settings import F32_MAX, F32_TINY, check_optimizer
from .syntax import ast

STRATEGIES = ("fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad", "median",
              "trimmed_mean", "krum", "multikrum")

# name → (default, kind, rule); kind "int" is a positive integer
FEDERATED_SETTINGS: dict[str, tuple[Any, str]] = {
    "rounds": (10, "int"),
    "clients_per_round": (10, "int"),
    "local_epochs": (1, "int"),
    "batch_size": (32, "int"),
    "strategy": ("fedavg", "strategy"),
    "proximal_mu": (0.0, "nonneg"),
}
FEDPROX_DEFAULT_MU = 0.01  # proximal_mu when `strategy = fedprox` leaves it unset


@dataclass(frozen=True)
class TensorDecl:
    """A declared input or target, as the manifest describes it."""

    name: str
    dtype: str  # f32 | i32
    shape: tuple[int, ...]  # per example
    classes: int | None
    span: Span


@dataclass(frozen=True)
class CheckedModel:
    name: str
    graph: Graph  # forward: outputs "loss" and "prediction"
    inputs: tuple[TensorDecl, ...]
    targets: tuple[TensorDecl, ...]
    optimizer: OptimizerSpec
    federated: dict[str, Any]
    loss_op: str
    task: str  # classification | regression | a loss's own task (OpDef.task, e.g. binary)
    file: str
    source: str = field(repr=False, default="")
    warnings: tuple[Diagnostic, ...] = ()  # e.g. a statement nothing uses (left out)

    def ir_text(self) -> str:
        return format_graph(self.graph, f"forward {self.name}")


BOOLEANS = ("true", "false")  # the literals: no input, target or assignment may take them
_POISON = Value(-1, TensorType("f32", ()), "<error>")  # a name whose definition failed


class _Checker:
    def __init__(self, program: ast.Program) -> None:
        self.p = program
        self.diag = Collector(program.source, program.file)
        self.g = GraphBuilder()
        self.env: dict[str, Value] = {}
        self.defined_at: dict[int, tuple[str, Span]] = {}
        self.declared: dict[str, Span] = {}  # input and target names, even those that failed
        self.classes: dict[int, int] = {}
        self.counters: dict[str, int] = {}

    # --- declarations ---------------------------------------------------------------------
    def declare(self, decl: ast.InputDecl | ast.TargetDecl, is_target: bool) -> TensorDecl | None:
        t = decl.type
        what = "target" if is_target else "input"
        if decl.name in BOOLEANS:
            self.diag.error(f"{decl.name!r} is the boolean literal, not a name: call the "
                            f"{what} something else",
                            decl.name_span or decl.span)
            return None
        if decl.name in self.declared:
            self.diag.error(f"{decl.name!r} is declared twice", decl.span,
                            (("first declared here", self.declared[decl.name]),))
            return None
        self.declared[decl.name] = decl.span
        if t.dtype == "class":
            if not is_target:
                self.diag.error("class[K] is a target type; declare model inputs as f32 or i32",
                                t.span)
                self.poison(decl.name)
                return None
            if len(t.dims) != 1 or t.dims[0] < 2:
                self.diag.error(
                    f"class[K] needs one class count K ≥ 2 but got class{list(t.dims)}", t.span)
                self.poison(decl.name)
                return None
            v = self.g.add_input(TensorType("i32", (BATCH,)), decl.name)
            self.classes[v.id] = t.dims[0]
            out = TensorDecl(decl.name, "i32", (), t.dims[0], decl.span)
        elif t.dtype in ("f32", "i32"):
            if any(d <= 0 for d in t.dims):
                self.diag.error(f"{what} dimensions must be positive but got {list(t.dims)}",
                                t.span)
                self.poison(decl.name)
                return None
            try:
                fits(f"{what} {decl.name}: {t.dtype}{list(t.dims)} per example", t.dims)
            except SurfaceError as exc:
                self.diag.error(str(exc), t.span)
                self.poison(decl.name)
                return None
            v = self.g.add_input(TensorType(t.dtype, (BATCH, *t.dims)), decl.name)
            out = TensorDecl(decl.name, t.dtype, tuple(t.dims), None, decl.span)
        else:
            self.diag.error(f"unknown dtype {t.dtype!r} (expected f32, i32 or class)", t.span)
            self.poison(decl.name)
            return None
        self.bind_name(decl.name, v, decl.span)
        return out

    def poison(self, name: str) -> None:
        """A declaration that failed: later uses of the name stay silent (already reported)."""
        self.env[name] = _POISON

    def bind_name(self, name: str, v: Value, span: Span) -> None:
        self.env[name] = v
        self.defined_at.setdefault(v.id, (name, span))

    # --- expressions ----------------------------------------------------------------------
    def expr(self, e: ast.Expr) -> Any:
        """A Value, a constant (int/float/str/bool), or None after an error was reported.

        Walks the tree with an explicit stack (operands left to right, then the operation),
        so a deeply nested or very long expression cannot overflow Python's stack; the parser
        builds such trees non-recursively too.
        """
        todo: list[tuple[ast.Expr, bool]] = [(e, False)]
        done: list[Any] = []  # the values of finished subexpressions, in order
        while todo:
            node, ready = todo.pop()
            operands = _operands(node)
            if ready or not operands:
                values = done[len(done) - len(operands):]
                del done[len(done) - len(operands):]
                done.append(self.evaluate(node, values))
            else:
                todo.append((node, True))
                todo.extend((o, False) for o in reversed(operands))
        return done[0]

    def evaluate(self, e: ast.Expr, operands: list[Any]) -> Any:
        """One node's value, given its operands' values (see `_operands`)."""
        if isinstance(e, ast.Num | ast.Str):
            return e.value
        if isinstance(e, ast.Name):
            if e.id in self.env:
                v = self.env[e.id]
                return None if v is _POISON else v
            if e.id in BOOLEANS:
                return e.id == "true"
            self.unknown(e.id, "name", list(self.env), e.span)
            return None
        if isinstance(e, ast.BinOp):
            return self.binop(e, *operands)
        return self.call(e, operands)

    def unknown(self, name: str, what: str, known: list[str], span: Span) -> None:
        self.diag.error(f"unknown {what} {name!r}{did_you_mean(name, known)}", span)

    def binop(self, e: ast.BinOp, left: Any, right: Any) -> Any:
        if left is None or right is None:
            return None
        if e.op != "+" or not (isinstance(left, Value) and isinstance(right, Value)):
            self.diag.error(f"operator {e.op!r} is only defined as `tensor + tensor` "
                            "(a residual add)", e.span)
            return None
        return self.apply("add", [left, right], {}, e.span, (e.left.span, e.right.span), {}, {})

    def call(self, e: ast.Call, operands: list[Any]) -> Any:
        ops = surface_ops()
        args = operands[:len(e.args)]
        kwargs = {k.name: v for k, v in zip(e.kwargs, operands[len(e.args):], strict=True)}
        if e.func not in ops:
            self.unknown(e.func, "function", list(ops), e.func_span)
            return None
        if any(a is None for a in args) or any(v is None for v in kwargs.values()):
            return None
        return self.apply(e.func, args, kwargs, e.span, tuple(a.span for a in e.args),
                          {k.name: k.span for k in e.kwargs},
                          {k.name: k.value.span for k in e.kwargs})

    def apply(self, op: str, args: list[Any], kwargs: dict[str, Any], span: Span,
              arg_spans: tuple[Span, ...], kw_spans: dict[str, Span],
              kw_value_spans: dict[str, Span]) -> Any:
        """Run the op's surface rule. An error about one argument points at it (at the value
        of a keyword argument, or at all of `name=value` when the keyword is the problem); the
        note saying where a tensor was defined is kept for errors about tensors."""
        ctx = SurfaceCtx(self.g, span, self.classes, self.counters)
        surface = REGISTRY[op].surface
        assert surface is not None
        try:
            return surface(ctx, args, kwargs)
        except SurfaceError as exc:
            where, at, value = exc.where, span, None
            if isinstance(where, int) and where < len(arg_spans):
                at, value = arg_spans[where], args[where]
            elif isinstance(where, str) and where in kw_spans:
                at = (kw_spans if exc.keyword else kw_value_spans)[where]
                value = kwargs.get(where)
            about_a_constant = where is not None and not isinstance(value, Value)
            self.diag.error(str(exc), at, () if about_a_constant else self.notes_for(args))
        except ShapeError as exc:
            self.diag.error(str(exc), span, self.notes_for(args))
        return None

    def notes_for(self, args: list[Any]) -> tuple[tuple[str, Span | None], ...]:
        for a in args:
            if isinstance(a, Value) and a.id in self.defined_at:
                name, where = self.defined_at[a.id]
                return ((f"{name} ({a.type}) defined here", where),)
        return ()


def _operands(e: ast.Expr) -> tuple[ast.Expr, ...]:
    """The subexpressions `_Checker.evaluate` needs the values of, in evaluation order."""
    if isinstance(e, ast.BinOp):
        return (e.left, e.right)
    if isinstance(e, ast.Call):
        return (*e.args, *(k.value for k in e.kwargs))
    return ()


def check(program: ast.Program) -> CheckedModel:
    """Check a parsed program; raises CheckError with every error found."""
    c = _Checker(program)
    m = program.model
    inputs = [d for d in (c.declare(i, False) for i in m.inputs) if d]
    targets = [d for d in (c.declare(t, True) for t in m.targets) if d]
    if not m.inputs:
        c.diag.error(f"model {m.name} declares no input (add e.g. `input x: f32[64]`)", m.span)
    if not m.targets:
        c.diag.error(f"model {m.name} declares no target (add e.g. `target y: class[10]`)",
                     m.span)
    loss_stmt: ast.Assign | None = None
    bound: list[tuple[ast.Assign, Value]] = []
    for stmt in m.body:
        if stmt.name in BOOLEANS:
            c.diag.error(f"cannot assign to {stmt.name!r}: it is the boolean literal",
                         stmt.name_span)
            continue
        if stmt.name in c.declared:
            c.diag.error(f"cannot assign to {stmt.name!r}: it is a declared input or target",
                         stmt.name_span)
            continue
        v = c.expr(stmt.value)
        if stmt.name == "loss":
            loss_stmt = stmt
        if isinstance(v, Value):
            c.bind_name(stmt.name, v, stmt.name_span)
            bound.append((stmt, v))
            continue
        if v is not None:
            what = shown(v) if isinstance(v, bool) else f"the constant {v!r}"  # true, not True
            c.diag.error(f"{stmt.name!r} must be a tensor expression, not {what}",
                         stmt.value.span)
        c.env[stmt.name] = _POISON  # later uses stay silent: the error is already reported
    loss_op, prediction, loss = _find_loss(c, m, loss_stmt)
    if loss_stmt is not None and loss is not None and prediction is not None:
        _check_target_use(c, [t.name for t in targets], loss_stmt, prediction, loss)
    federated = _check_federated(c, program.federated)
    optimizer = replace(check_optimizer(c.diag, program.optimizer, program),
                        proximal_mu=float(federated["proximal_mu"]))
    c.diag.raise_if_any()
    assert loss is not None and prediction is not None
    graph = _without_dead_code(c, c.g.build([("loss", loss), ("prediction", prediction)]),
                               bound, m)
    verify(graph)
    task = REGISTRY[loss_op].task or (
        "classification" if targets[0].classes is not None else "regression")
    return CheckedModel(m.name, graph, tuple(inputs), tuple(targets), optimizer, federated,
                        loss_op, task, program.file, program.source, tuple(c.diag.warnings))


def _find_loss(c: _Checker, m: ast.ModelDef,
               stmt: ast.Assign | None) -> tuple[str, Value | None, Value | None]:
    if stmt is None:
        c.diag.error(f"model {m.name} assigns no `loss` (add e.g. "
                     "`loss = softmax_cross_entropy(logits, y)`)", m.span)
        return "", None, None
    loss = c.env.get("loss")
    if loss is None or loss is _POISON:
        return "", None, None
    node = next((n for n in c.g.nodes if n.out == loss), None)
    if node is None or loss.type.shape != () or not REGISTRY[node.op].loss:
        losses = sorted(k for k, op in REGISTRY.items() if op.loss and op.surface)
        c.diag.error(f"`loss` must be one of {', '.join(losses)} applied to the "
                     f"model's output, but it is {loss.type}", stmt.value.span)
        return "", None, None
    return node.op, node.inputs[0], loss


def _without_dead_code(c: _Checker, graph: Graph, bound: list[tuple[ast.Assign, Value]],
                       m: ast.ModelDef) -> Graph:
    """The graph without what neither the loss nor the prediction uses, with a warning for each
    such statement (its layers' parameters would be trained for nothing and travel in every
    update) and each unused input (the host still writes it)."""
    kept = live(graph)
    used = {v.id for n in kept.nodes for v in n.inputs} | {v.id for _, v in kept.outputs}
    dropped = [p for p in graph.params if p not in kept.params]
    for stmt, v in bound:
        if v.id in used:
            continue
        params = sum(p.value.type.numel(1) for p in dropped
                     if stmt.span.line <= p.span.line <= (stmt.span.end_line or stmt.span.line))
        extra = f", with its {params} parameter values" if params else ""
        c.diag.warning(f"{stmt.name!r} is used by neither the loss nor the prediction: it is "
                       f"left out of the module{extra}", stmt.name_span)
    for d in m.inputs:
        value = c.env.get(d.name)
        if isinstance(value, Value) and value.id not in used:
            c.diag.warning(f"input {d.name!r} is never used (hosts still write it each batch)",
                           d.name_span or d.span)
    return kept


def _check_target_use(c: _Checker, targets: list[str], stmt: ast.Assign, prediction: Value,
                      loss: Value) -> None:
    """The targets feed the loss, never the prediction: a prediction computed from a label
    would train on it and then predict from an empty target buffer (predict has none)."""
    producer = {n.out.id: n for n in c.g.nodes}
    ids = {c.env[t].id: t for t in targets if isinstance(c.env.get(t), Value)}

    def uses(root: Value) -> dict[int, Node]:
        """Each target id that `root` depends on → the first node (in program order) reading it."""
        seen: set[int] = set()
        stack: list[Value] = [root]
        found: dict[int, Node] = {}
        while stack:
            v = stack.pop()
            node = producer.get(v.id)
            if node is None or v.id in seen:
                continue
            seen.add(v.id)
            for x in node.inputs:
                if x.id in ids and (x.id not in found or found[x.id].out.id > node.out.id):
                    found[x.id] = node
                stack.append(x)
        return found

    if prediction.id in ids:
        c.diag.error(f"the loss's prediction is the target {ids[prediction.id]!r} itself: a "
                     "model predicts from its inputs", stmt.value.span)
    for tid, node in sorted(uses(prediction).items()):
        c.diag.error(f"the prediction depends on the target {ids[tid]!r}: a model predicts from "
                     "its inputs (predict() has no targets)", node.span,
                     (("the loss's prediction", stmt.value.span),))
    if ids and not uses(loss):
        names = " or ".join(repr(t) for t in ids.values())
        c.diag.error(f"the loss never uses the target {names}: it would train without labels",
                     stmt.value.span)


def _literal(e: ast.Expr) -> int | float | str | None:
    """A setting's value: a number, a string or a bare name's text; None for anything else
    (settings are literals, not model expressions)."""
    if isinstance(e, ast.Num | ast.Str):
        return e.value
    return e.id if isinstance(e, ast.Name) else None


def _shown(e: ast.Expr) -> str:
    """A setting's value as a message shows it."""
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Num | ast.Str):
        return repr(e.value)
    return f"{e.func}(…)" if isinstance(e, ast.Call) else "an expression"


def _check_federated(c: _Checker, fed: ast.FederatedDef | None) -> dict[str, Any]:
    out = {k: d for k, (d, _) in FEDERATED_SETTINGS.items()}
    for s in fed.settings if fed else ():
        known = FEDERATED_SETTINGS.get(s.name)
        if known is None:
            c.unknown(s.name, "federated setting", list(FEDERATED_SETTINGS), s.span)
            continue
        kind, shown = known[1], _shown(s.value)
        v: Any = _literal(s.value)
        if kind == "int" and (not isinstance(v, int) or v < 1):
            c.diag.error(f"{s.name} must be a positive integer but got {shown}", s.value.span)
        elif kind == "nonneg" and (not isinstance(v, int | float) or v < 0):
            c.diag.error(f"{s.name} must be a number ≥ 0 but got {shown}", s.value.span)
        elif kind == "nonneg" and not (v == 0 or F32_TINY <= v <= F32_MAX):  # a float32 hparam
            c.diag.error(f"{s.name} must be a number ≥ 0 and a normal float32 but got {shown}",
                         s.value.span)
        elif kind == "strategy" and v not in STRATEGIES:
            hint = did_you_mean(str(v), STRATEGIES) if v else ""
            name = repr(s.value.id) if isinstance(s.value, ast.Name) else shown
            c.diag.error(f"unknown strategy {name}{hint} (expected one of "
                         f"{', '.join(STRATEGIES)})", s.value.span)
        else:  # `or 0.0`: -0.0 is 0 (the manifest would say -0.0)
            out[s.name] = (float(v) or 0.0) if kind == "nonneg" else v
    given = {s.name for s in fed.settings} if fed else set()
    if out["strategy"] == "fedprox" and "proximal_mu" not in given:
        out["proximal_mu"] = FEDPROX_DEFAULT_MU
    return out
