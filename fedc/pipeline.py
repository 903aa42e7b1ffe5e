"""The compiler driver: parse → check → autodiff → verify → plan → lower → emit → link."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import __version__
from .autodiff import grad
from .check import CheckedModel, check
from .diagnostics import CheckError, Diagnostic, ParseError, Span, UsageError
from .emit import FEATURES, emit_units
from .fuse import fuse
from .ir import Graph, Param, Value, format_graph, verify
from .layout import PANELS
from .link import ARENA_BASE, link, memory_size
from .lower.module import EXPORTS, lower_module
from .lower.units import split_units
from .ops.dropout import DROPOUT_KEY
from .ops.embedding import token_vocab
from .optim import OptimizerSpec
from .optim.settings import F32_MAX, F32_TINY
from .plan import MemoryPlan, plan
from .syntax import parse

DEFAULT_MAX_BATCH = 256
MAX_MEMORY = 1 << 32  # a wasm32 module addresses at most 65536 pages of 64 KiB


@dataclass(frozen=True)
class Options:
    max_batch: int | None = None  # default: max(256, the federated batch size)
    variant: str = "simd128"
    # extra builds of the same module (e.g. "scalar", "relaxed-simd"), written as
    # model.<variant>.wasm and listed in the manifest's "variants" for runtimes to choose from
    variants: tuple[str, ...] = ()
    fuse: bool = True  # fold relu (and its gradient's mask) into GEMM epilogues (fedc/fuse.py)
    # FedProx μ instead of the federated block's (`fedc simulate --strategy fedprox`): > 0
    # compiles the proximal term and its anchor into train_step, 0 leaves them out
    proximal_mu: float | None = None


@dataclass
class Artifacts:
    """Everything one compilation produced."""

    model: CheckedModel
    train_graph: Graph
    plan: MemoryPlan
    llvm_ir: str
    optimized_ir: str
    wasm: bytes
    manifest: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, bytes] = field(default_factory=dict)  # Options.variants' modules

    @property
    def ir_text(self) -> str:
        return format_graph(self.train_graph, f"train {self.model.name}")

    def write(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "model.wasm").write_bytes(self.wasm)
            for name, wasm in self.variants.items():
                (out / variant_file(name)).write_bytes(wasm)
            (out / "manifest.json").write_text(json.dumps(self.manifest, indent=2) + "\n")
        except OSError as exc:  # a bad -o (a file, a read-only place) is the user's to fix
            why = ("it exists and is not a directory" if isinstance(exc, FileExistsError)
                   else exc.strerror or str(exc))
            raise UsageError([Diagnostic(f"cannot write {exc.filename or out}: {why}")]) from None
        return out


def check_source(text: str, filename: str = "<input>") -> CheckedModel:
    return check(parse(text, filename))


def compile_source(text: str, filename: str = "<input>",
                   options: Options | None = None) -> Artifacts:
    opts = options or Options()
    for variant in (opts.variant, *opts.variants):
        if variant not in FEATURES:
            raise UsageError([Diagnostic(f"unknown target variant {variant!r} "
                                         f"(expected one of {', '.join(FEATURES)})")])
    model = check_source(text, filename)
    if opts.proximal_mu is not None:
        model = _with_proximal_mu(model, opts.proximal_mu)
    train = grad(model.graph)
    verify(train)
    if opts.fuse:
        train = fuse(train)
        verify(train)
    max_batch = (max(DEFAULT_MAX_BATCH, int(model.federated["batch_size"]))
                 if opts.max_batch is None else opts.max_batch)
    # an API caller's 1.5 or True reached LLVM as a float (an internal error) or the manifest
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise UsageError([Diagnostic(f"max_batch (--max-batch) must be an integer ≥ 1 but got "
                                     f"{max_batch!r}")])
    opt = model.optimizer
    mplan = plan(train, max_batch=max_batch, state_slots=len(opt.slots()),
                 n_hparams=len(opt.runtime_hparams()), anchor=opt.proximal)
    _check_memory(model, train, mplan)
    llvm_ir, optimized_ir, wasm = _build(train, mplan, opt, opts.variant)
    art = Artifacts(model, train, mplan, llvm_ir, optimized_ir, wasm)
    art.variants = {v: _build(train, mplan, opt, v)[2]
                    for v in dict.fromkeys(opts.variants) if v != opts.variant}
    art.manifest = manifest(art, opts.variant)
    return art


def _check_memory(model: CheckedModel, train: Graph, mplan: MemoryPlan) -> None:
    """A plan beyond wasm32's 4 GiB is the model's size, not a linker problem: blame its
    largest tensor, where the source made it."""
    need = memory_size(mplan.end)
    if need <= MAX_MEMORY:
        return
    decls = {d.name: d.span for d in (*model.inputs, *model.targets)}
    made: list[tuple[Value, Span | None]] = [
        *((v, decls.get(v.name)) for v in train.inputs),
        *((p.value, p.span) for p in train.params), *((n.out, n.span) for n in train.nodes)]
    big, span = max(made, key=lambda m: m[0].type.numel(mplan.max_batch))
    size = big.type.numel(mplan.max_batch) * 4
    raise CheckError([Diagnostic(
        f"model {model.name} needs {_gib(need)} of memory for batches of up to "
        f"{mplan.max_batch}, more than a wasm32 module's 4 GiB; its largest tensor, "
        f"{big.type}, takes {_gib(size)}", span,
        notes=(("a smaller max batch (--max-batch, the federated block's batch_size) or "
                "smaller layers make it fit", None),))], {model.file: model.source})


def _gib(n: int) -> str:
    if n.bit_length() > 80:  # a power of two says enough, and n / 2**30 overflows a float
        return f"more than 2^{n.bit_length() - 31} GiB"
    return f"{n / 2**30:,.1f} GiB"


def _build(train: Graph, mplan: MemoryPlan, opt: OptimizerSpec,
           variant: str) -> tuple[str, str, bytes]:
    """Lower, emit and link one variant of the module (all variants share the memory plan):
    the LLVM IR as lowered, as optimised (unit after unit) and the linked module."""
    units = split_units(lower_module(train, mplan, opt, frozenset({variant})), EXPORTS)
    emitted = emit_units(units.texts, variant)
    wasm = link([e.object_code for e in emitted], mplan.end, list(EXPORTS))
    optimized = [e.optimized_ir for e in emitted]
    if len(optimized) > 1:  # one module after another: say where each begins
        optimized = [f"; codegen unit {i + 1} of {len(optimized)} (fedc/lower/units.py)\n{text}"
                     for i, text in enumerate(optimized)]
    return units.whole, "\n".join(optimized), wasm


def variant_file(variant: str) -> str:
    return f"model.{variant}.wasm"


def _with_proximal_mu(model: CheckedModel, mu: float) -> CheckedModel:
    if not mu >= 0:
        raise UsageError([Diagnostic(f"proximal_mu must be a number ≥ 0 but got {mu}")])
    if not (mu == 0 or F32_TINY <= mu <= F32_MAX):  # the federated block's rule: a float32 hparam
        raise UsageError([Diagnostic(f"proximal_mu must be a number ≥ 0 and a normal float32 "
                                     f"but got {mu}")])
    return replace(model, optimizer=replace(model.optimizer, proximal_mu=float(mu)),
                   federated={**model.federated, "proximal_mu": float(mu)})


def decode_source(data: bytes, filename: str) -> str:
    """A .fed file's bytes as text; bytes that are not UTF-8 are an error at their line:col."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # lines end with \n, \r\n or \r, as the parser counts them
        before = data[:exc.start].decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        line, col = before.count("\n") + 1, len(before) - before.rfind("\n")
        span = Span(filename, line, col, line, col + 1)  # the caret marks that byte alone
        shown = data.decode("utf-8", "replace")  # the caret line shows U+FFFD there
        raise ParseError([Diagnostic(f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x})",
                                     span)], {filename: shown}) from None


def compile_file(path: str | Path, out_dir: str | Path | None = None,
                 options: Options | None = None) -> Artifacts:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UsageError([Diagnostic(f"cannot read {p}: {exc}")]) from exc
    text = decode_source(data, str(p))
    art = compile_source(text, str(p), options)
    if out_dir is not None:
        art.write(out_dir)
    return art


def manifest(art: Artifacts, variant: str) -> dict[str, Any]:
    m, pl = art.model, art.plan
    offsets = {b.name: b.offset for b in pl.buffers}
    pred = art.train_graph.output("prediction")
    vocab = token_vocab(art.train_graph)
    return {
        "format": "fedc-manifest/1",
        "fedc_version": __version__,
        "model": m.name,
        "source": Path(m.file).name,
        "task": m.task,
        "loss": m.loss_op,
        "wasm": {"file": "model.wasm", "sha256": hashlib.sha256(art.wasm).hexdigest(),
                 "bytes": len(art.wasm), "variant": variant},
        # other builds of the same module (same memory layout and exports): a runtime loads
        # the best one its engine supports (docs/abi.md, "Variants")
        "variants": {v: {"file": variant_file(v), "sha256": hashlib.sha256(w).hexdigest(),
                         "bytes": len(w)} for v, w in art.variants.items()},
        "memory": {"bytes": memory_size(pl.end), "arena_base": ARENA_BASE,
                   "arena_bytes": pl.end - ARENA_BASE,
                   "activation_bytes": pl.activation_bytes,
                   "activation_bytes_without_reuse": pl.activation_bytes_unshared},
        "max_batch": pl.max_batch,
        "exports": {
            "train_step": {"params": ["i32"], "results": ["f32"]},
            "eval_step": {"params": ["i32"], "results": ["f32"]},
            "predict": {"params": ["i32"], "results": []},
            "train_steps": {"params": ["i32", "i32"], "results": []},
        },
        # train_steps(n, count) writes step j's loss here (f32)
        "losses": {"offset": pl.losses_offset, "count": pl.max_batch},
        "inputs": [_decl(d, offsets[d.name], vocab.get(d.name)) for d in m.inputs],
        "targets": [_decl(d, offsets[d.name]) for d in m.targets],
        "outputs": [{"name": "prediction", "dtype": "f32", "shape": list(pred.type.row_shape),
                     "offset": pl.addr(pred)}],
        "params_region": {"offset": pl.params_offset, "count": pl.param_count},
        "grads_region": {"offset": pl.grads_offset, "count": pl.param_count},
        "params": [_param(p, pl) for p in art.train_graph.params],
        "optimizer": {**m.optimizer.to_json(), "hparams_offset": pl.hparams_offset,
                      "state_region": {"offset": pl.state_offset, "count": pl.state_count,
                                       "slots": list(m.optimizer.slots()),
                                       "slot_stride": pl.slot_stride},
                      "step_counter": {"offset": pl.step_offset, "dtype": "i32"}},
        "anchor_region": (None if pl.anchor_offset is None else
                          {"offset": pl.anchor_offset, "count": pl.param_count}),
        # dropout's key: the host writes [seed, step] (u32) before every train_step
        "rng": (None if DROPOUT_KEY not in offsets else
                {"name": DROPOUT_KEY, "offset": offsets[DROPOUT_KEY], "dtype": "u32",
                 "shape": [2]}),
        "federated": m.federated,
        "buffers": [b.to_json() for b in pl.buffers],
    }


def _param(p: Param, pl: MemoryPlan) -> dict[str, Any]:
    """A parameter's manifest entry; `layout` where memory holds it in panels (fedc/layout.py:
    the runtimes convert, gradients, optimizer state and anchor share the layout)."""
    out: dict[str, Any] = {"name": p.value.name, "dtype": "f32",
                           "shape": list(p.value.type.row_shape), "offset": pl.addr(p.value),
                           "size": p.value.type.numel(1), "init": dict(p.init)}
    if p.value.id in pl.panels:
        out["layout"] = {"panels": PANELS}
    return out


def _decl(d: Any, offset: int, vocab: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": d.name, "dtype": d.dtype, "shape": list(d.shape),
                           "offset": offset}
    if d.classes is not None:
        out["classes"] = d.classes
    if vocab is not None:  # token ids for an embedding: the host checks 0 ≤ id < vocab
        out["vocab"] = vocab
    return out


