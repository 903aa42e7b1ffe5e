"""Checking the `optimizer` line: AST keyword arguments → OptimizerSpec, each error at its span."""

from __future__ import annotations

from ..diagnostics import Collector, Span, did_you_mean
from ..syntax import ast
from .base import OPTIMIZERS, OptimizerDef
from .schedules import MAX_STEPS, SCHEDULES
from .spec import OptimizerSpec, ScheduleSpec

F32_MAX = 3.4028234663852886e38
F32_TINY = 1.1754943508222875e-38  # the smallest normal float32

# settings every optimizer accepts besides its own hyper-parameters
GENERAL = ("clip_norm", "schedule", "warmup")
# PyTorch spellings the language writes differently → (advice, the hyper-parameter it needs)
_TORCH_SPELLINGS = {"betas": ("write beta1=…, beta2=… (PyTorch's betas=(beta1, beta2))", "beta1")}
_EXAMPLES = {"step": "step(step_size=100, gamma=0.5)", "cosine": "cosine(t_max=1000)"}


def _number(e: ast.Expr) -> float | None:
    """A literal number that float32 holds as a normal number or 0 (the module keeps
    hyper-parameters as float32), or None. true and false are not numbers here."""
    if isinstance(e, ast.Num):
        v = float(e.value)
        return v if v == 0 or F32_TINY <= abs(v) <= F32_MAX else None
    return None


def _flag(e: ast.Expr) -> float | None:
    """true → 1.0, false → 0.0 (how a flag hyper-parameter is stored), or None."""
    if isinstance(e, ast.Name) and e.id in ("true", "false"):
        return float(e.id == "true")
    return None


def _rule(rule: str, e: ast.Expr) -> str:
    """`rule`, plus why a literal that looks fine was refused."""
    return rule + (" and a normal float32" if isinstance(e, ast.Num) and _number(e) is None
                   else "")


def _number_rule(rule: str, e: ast.Expr) -> str:
    """A bare comparison rule ("> 0") for a value that is no number says a number is needed."""
    return _rule(rule, e) if isinstance(e, ast.Num) else f"a number {rule}"


def _show(e: ast.Expr) -> str:
    if isinstance(e, ast.Num):
        return repr(e.value)
    if isinstance(e, ast.Name):
        return f"the boolean {e.id}" if _flag(e) is not None else e.id
    if isinstance(e, ast.Str):
        return repr(e.value)
    if isinstance(e, ast.Call):
        return f"{e.func}(…)"
    return "an expression"


def check_optimizer(diag: Collector, opt: ast.OptimizerDef | None,
                    program: ast.Program) -> OptimizerSpec:
    """Validate the optimizer line; every problem goes to `diag` (the result is then unusable)."""
    if opt is None:
        # the last line, however lines end (\r, \r\n) and whether or not the last one does
        end = Span(program.file, max(len(program.source.splitlines()), 1), 1)
        diag.error("no optimizer declared (add e.g. `optimizer sgd(lr=0.05, momentum=0.9)`)", end)
        return OptimizerSpec("sgd", {})
    d = OPTIMIZERS.get(opt.name)
    if d is None:
        diag.error(f"unknown optimizer {opt.name!r}{did_you_mean(opt.name, list(OPTIMIZERS))} "
                   f"(expected one of {', '.join(OPTIMIZERS)})", opt.span)
        return OptimizerSpec(opt.name, {}, opt.span)
    values: dict[str, float] = {}
    spans: dict[str, Span] = {}
    general: dict[str, object] = {}
    for kw in opt.kwargs:
        spans[kw.name] = kw.span  # the parser already rejects a repeated keyword
        if kw.name in d.hparams:
            hp = d.hparams[kw.name]
            # a flag takes only true/false and a number never does: Python's True == 1 must
            # not let sgd(lr=true) train with lr 1 or sgd(nesterov=1) turn Nesterov on
            v = _flag(kw.value) if hp.flag else _number(kw.value)
            if v is None or not hp.check(v):
                rule = hp.rule if hp.flag else _number_rule(hp.rule, kw.value)
                diag.error(f"{opt.name}: {kw.name} must be {rule} but got {_show(kw.value)}",
                           kw.value.span)
            else:
                values[kw.name] = v
        elif kw.name in GENERAL:
            general[kw.name] = _general(diag, opt.name, kw)
        else:
            known = [*d.hparams, *GENERAL]
            hint = (_TORCH_SPELLINGS.get(kw.name) if kw.name in _TORCH_SPELLINGS
                    and _TORCH_SPELLINGS[kw.name][1] in d.hparams else None)
            diag.error(f"{opt.name} has no hyper-parameter {kw.name!r}" + (
                f"; {hint[0]}" if hint else
                f"{did_you_mean(kw.name, known)} (expected {', '.join(known)})"), kw.span)
    _fill_defaults(diag, d, opt, values, spans)
    schedule = general.get("schedule")
    warmup, clip = general.get("warmup"), general.get("clip_norm")
    return OptimizerSpec(
        opt.name, values, opt.span,
        schedule=schedule if isinstance(schedule, ScheduleSpec) else ScheduleSpec(),
        warmup=warmup if isinstance(warmup, int) else 0,
        clip_norm=clip if isinstance(clip, float) else None)


def _fill_defaults(diag: Collector, d: OptimizerDef, opt: ast.OptimizerDef,
                   values: dict[str, float], spans: dict[str, Span]) -> None:
    bad = {k for k in spans if k in d.hparams and k not in values}
    for name, hp in d.hparams.items():
        if name in values or name in bad:
            continue
        if hp.default is None:
            diag.error(f"{opt.name} needs the hyper-parameter {name!r} "
                       f"(e.g. {opt.name}({name}=0.01))", opt.span)
            bad.add(name)
        else:
            values[name] = hp.default
    if not bad and d.validate is not None:
        for name, message in d.validate(values):
            diag.error(f"{opt.name}: {message}", spans.get(name, opt.span))


def _general(diag: Collector, opt: str, kw: ast.Keyword) -> object:
    """clip_norm → float, warmup → int, schedule → ScheduleSpec; None after an error."""
    if kw.name == "schedule":
        return _schedule(diag, kw.value)
    v = _number(kw.value)
    if kw.name == "clip_norm":
        if v is None or not v > 0:
            diag.error(f"{opt}: clip_norm must be {_rule('a number > 0', kw.value)} but got "
                       f"{_show(kw.value)}", kw.value.span)
            return None
        return v
    if v is None or v != int(v) or not 0 <= v <= MAX_STEPS:
        diag.error(f"{opt}: warmup must be a whole number of steps in 0..{MAX_STEPS} but got "
                   f"{_show(kw.value)}", kw.value.span)
        return None
    return int(v)


def _schedule(diag: Collector, e: ast.Expr) -> ScheduleSpec | None:
    known = list(SCHEDULES)
    kwargs: tuple[ast.Keyword, ...] = ()
    args: tuple[ast.Expr, ...] = ()
    if isinstance(e, ast.Name):
        name, name_span = e.id, e.span
    elif isinstance(e, ast.Call):
        name, name_span, kwargs, args = e.func, e.func_span, e.kwargs, e.args
    else:
        diag.error(f"schedule must be one of constant, {', '.join(_EXAMPLES.values())} but got "
                   f"{_show(e)}", e.span)
        return None
    sd = SCHEDULES.get(name)
    if sd is None:
        diag.error(f"unknown schedule {name!r}{did_you_mean(name, known)} (expected one of "
                   f"{', '.join(known)})", name_span)
        return None
    if args:
        diag.error(f"schedule arguments are keyword arguments, e.g. "
                   f"{_EXAMPLES.get(name, name)}", args[0].span)
        return None
    out: dict[str, float] = {}
    ok = True
    for kw in kwargs:
        p = sd.params.get(kw.name)
        v = _number(kw.value)
        if p is None:
            expected = f"expected {', '.join(sd.params)}" if sd.params else "it takes none"
            diag.error(f"schedule {name} has no parameter {kw.name!r} ({expected})", kw.span)
        elif v is None or not p.check(v):
            rule = _rule(p.rule, kw.value) if p.integer else _number_rule(p.rule, kw.value)
            diag.error(f"{name}: {kw.name} must be {rule} but got {_show(kw.value)}",
                       kw.value.span)
        else:
            out[kw.name] = v
            continue
        ok = False
    given = {kw.name for kw in kwargs}
    for pname, p in sd.params.items():
        if pname not in given and p.default is None:
            diag.error(f"schedule {name} needs {pname!r} (e.g. {_EXAMPLES.get(name, name)})",
                       e.span)
            ok = False
        out.setdefault(pname, p.default if p.default is not None else 0.0)
    return ScheduleSpec(name, out) if ok else None
