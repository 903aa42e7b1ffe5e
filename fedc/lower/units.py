"""Codegen units: one lowered module → the IR text of a few modules that LLVM optimises and
compiles apart (in parallel, fedc/emit.py) and wasm-ld links back into one.

LLVM's optimisation and code generation are most of `fedc compile`'s time, and llvmlite
serialises every call into LLVM behind one lock, so a second core helps only with a second
module. fedc's modules split cleanly: the exports call one noinline kernel per node
(lower/module.py), and each kernel, with the internal helpers it calls, is optimised on its own
anyway. So a unit is a set of node kernels plus a copy of every helper and global variable they
reach (linkonce_odr: wasm-ld keeps one of each); unit 0 also holds the exports.

The split depends only on the module (never on the machine's cores), so the build stays
byte-for-byte deterministic: a machine with one core compiles the same units one after another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llvmlite import ir

# Above this much IR text (bytes, helpers counted once per unit that needs them) a module is
# split into two units; LLVM's time grows about linearly with it. Small models stay one unit:
# a unit costs a process start and the helpers shared between kernels are compiled twice.
# Fresh-process `fedc compile`, medians of 5 interleaved: topic_classifier (182 KB) 1.27 →
# 1.00 s split, digits_mlp (174 KB) 0.96 → 0.90 s, breast_cancer_logreg (72 KB) 0.74 → 0.79.
SPLIT_BYTES = 120_000
MAX_UNITS = 2

_REF = re.compile(r'@"([^"]+)"|@([-\w.$]+)')


@dataclass(frozen=True)
class Units:
    """The IR text of each unit, and of the whole module (what `--emit llvm` prints)."""
    texts: tuple[str, ...]
    whole: str


def split_units(mod: ir.Module, exports: tuple[str, ...] | list[str]) -> Units:
    """The module `lower_module` built, as codegen units (one when it is small). Splitting
    sets linkages on `mod` itself (cross-unit kernels external, globals linkonce_odr): print
    or split a module once, and print it before splitting."""
    pieces = {name: str(value) for name, value in mod.globals.items()}
    header = [f'; ModuleID = "{mod.name}"', f'target triple = "{mod.triple}"',
              f'target datalayout = "{mod.data_layout}"', ""]
    metadata = mod._get_metadata_lines()  # noqa: SLF001 (llvmlite prints them this way)
    types = [t.get_declaration() for t in mod.get_identified_types().values()]
    whole = "\n".join([*header, *types, *pieces.values(), *metadata])
    refs = {name: _references(text, name) for name, text in pieces.items()}
    functions = {name: v for name, v in mod.globals.items() if isinstance(v, ir.Function)}
    defined = {name for name, fn in functions.items() if fn.blocks}
    # the node kernels: what the exports call and LLVM may not inline (lower/module.py), in
    # the module's order (a set's order changes with the interpreter's string hashing, and
    # the balancing breaks ties by this order)
    called = set().union(*(refs[e] for e in exports))
    kernels = [k for k in functions if k in called and k in defined and k not in exports
               and "noinline" in functions[k].attributes]
    helpers = defined - set(kernels) - set(exports)
    closure = {k: _closure(k, refs, helpers) for k in [*exports, *kernels]}
    roots = _assign(kernels, closure, pieces, exports)
    if len(roots) == 1:
        return Units((whole,), whole)
    for k in kernels:  # called across units now: external linkage (wasm-ld exports none of it)
        if k not in roots[0]:
            functions[k].linkage = ""
            pieces[k] = str(functions[k])
    for name, value in mod.globals.items():
        # every unit that uses a global variable defines it, and wasm-ld keeps one: LLVM sees
        # the same definition as in one module (a declaration optimised some kernels apart)
        if isinstance(value, ir.GlobalVariable):
            value.linkage = "linkonce_odr"
            value._clear_string_cache()  # noqa: SLF001 (llvmlite caches a global's text)
            pieces[name] = str(value)
    texts = []
    for unit_roots in roots:
        body = set().union(*(closure[r] for r in unit_roots))
        needed = set().union(*(refs[n] for n in body)) | body
        lines = [*header, *types]
        for name, value in mod.globals.items():
            if name in body:
                lines.append(pieces[name])
            elif name not in needed:
                pass
            elif isinstance(value, ir.Function):
                lines.append(_declaration(value))
            else:
                lines.append(pieces[name])
        texts.append("\n".join([*lines, *metadata]))
    return Units(tuple(texts), whole)


def _references(text: str, own: str) -> frozenset[str]:
    return frozenset(a or b for a, b in _REF.findall(text)) - {own}


def _closure(root: str, refs: dict[str, frozenset[str]], helpers: set[str]) -> set[str]:
    """root and every helper it reaches through calls (each unit gets its own copy)."""
    seen, todo = {root}, [root]
    while todo:
        for r in refs[todo.pop()]:
            if r in helpers and r not in seen:
                seen.add(r)
                todo.append(r)
    return seen


def _assign(kernels: list[str], closure: dict[str, set[str]], pieces: dict[str, str],
            exports: tuple[str, ...] | list[str]) -> list[list[str]]:
    """Each kernel's unit: biggest first, to the unit with the least IR so far (unit 0 starts
    with the exports); the order is the module's, so the split is deterministic."""
    cost = {k: sum(len(pieces[n]) for n in closure[k]) for k in kernels}
    base = sum(len(pieces[n]) for e in exports for n in closure[e])
    n = min(MAX_UNITS, 1 + (base + sum(cost.values())) // SPLIT_BYTES)
    if n == 1:
        return [list(exports)]
    roots: list[list[str]] = [list(exports)] + [[] for _ in range(n - 1)]
    load = [base] + [0] * (n - 1)
    for k in sorted(kernels, key=lambda k: -cost[k]):
        i = min(range(n), key=lambda i: load[i])
        roots[i].append(k)
        load[i] += cost[k]
    return roots


def _declaration(fn: ir.Function) -> str:
    args = ", ".join(str(a.type) for a in fn.args)
    return f"declare {fn.ftype.return_type} {fn.get_reference()}({args})\n"
