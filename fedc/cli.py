"""The `fedc` command: parses flags, calls the pipeline, prints diagnostics (never a traceback)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._lazy import np
from .data import MAX_SEED
from .diagnostics import Diagnostic, FedcError, InternalError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with a one-line reason, like every CLI
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise _BadUsage(message)


class _BadUsage(SystemExit):
    """argparse's usage error (exit 2), keeping the reason for --json's object."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.message = message


def _number(convert: Callable[[str], Any], ok: Callable[[Any], bool],
            what: str) -> Callable[[str], Any]:
    """An argparse type: convert, then check; a bad value is a usage error (exit 2)."""
    def parse(text: str) -> Any:
        try:
            v = convert(text)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


_positive = _number(int, lambda v: v >= 1, "a positive integer")
_nonneg = _number(int, lambda v: v >= 0, "an integer ≥ 0")
# the seed also seeds scikit-learn's train/test split, whose random_state is a uint32
_seed = _number(int, lambda v: 0 <= v <= MAX_SEED, f"an integer in 0..{MAX_SEED}")
_positive_float = _number(float, lambda v: v > 0, "a number > 0")
# an infinite learning rate is accepted by float() and > 0, and makes the first step NaN
_learning_rate = _number(float, lambda v: 0 < v < float("inf"), "a finite number > 0")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fedc", description="Compile federated-learning models to SIMD WebAssembly.")
    p.add_argument("--version", action="version", version=f"fedc {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("check", help="parse and check a .fed file")
    c.add_argument("file")
    c.add_argument("--json", action="store_true", help="one JSON object on stdout")
    c.set_defaults(run=cmd_check)

    c = sub.add_parser("compile", help="compile a .fed file to model.wasm + manifest.json")
    c.add_argument("file")
    c.add_argument("-o", "--out", help="output folder (default: no files written with --emit)")
    c.add_argument("--emit", choices=["ir", "llvm", "llvm-opt", "manifest"],
                   help="print an intermediate form instead of (or besides) writing files")
    _compile_flags(c)
    c.add_argument("--bundle", action="store_true",
                   help="with -o: also write the client bundle (JS, Python, page; fedc bundle)")
    c.add_argument("--target", choices=["wasm", "flower", "native"], default="wasm",
                   help="wasm (default): model.wasm + manifest.json; flower: a Flower app in -o; "
                        "native: the same module for this CPU, run in-process (--emit llvm or "
                        "llvm-opt shows it; fedc train --target native trains with it)")
    c.add_argument("--data", help="--target flower: the run config's dataset (for partition-id "
                                   "nodes and central evaluation)")
    c.add_argument("--json", action="store_true", help="one JSON object on stdout")
    c.set_defaults(run=cmd_compile)

    c = sub.add_parser("train", help="centralised training inside the Wasm module")
    c.add_argument("file")
    c.add_argument("--data", required=True, help="digits | breast_cancer | iris | wine | "
                   "waveforms | synthetic_text | FILE.npz")
    c.add_argument("--epochs", type=_positive, default=10)
    c.add_argument("--batch-size", type=_positive, help="default: the federated block's")
    c.add_argument("--lr", type=_learning_rate, help="override the optimizer's learning rate")
    c.add_argument("--seed", type=_seed, default=0)
    c.add_argument("--test-fraction", type=float, default=0.2)
    c.add_argument("--save", help="write model.wasm, manifest.json and weights.npy here")
    c.add_argument("--target", choices=["wasm", "native"], default="wasm",
                   help="train in the Wasm module (default) or in the same module compiled for "
                        "this CPU (fedc.native; measures what the sandbox costs)")
    _compile_flags(c)
    c.add_argument("--json", action="store_true", help="one JSON object on stdout")
    c.set_defaults(run=cmd_train)

    c = sub.add_parser("simulate", help="federated training on one machine, clients in Wasm "
                       "(or natively: --target native)")
    _simulate_flags(c)
    c.set_defaults(run=cmd_simulate)

    from .serve.commands import add_commands  # bundle, serve, status
    add_commands(sub, _compile_flags, _positive, _positive_float, _nonneg, _seed, _key_value)
    return p


def _compile_flags(c: argparse.ArgumentParser) -> None:
    c.add_argument("--max-batch", type=_positive, help="largest batch the module accepts")
    c.add_argument("--features", choices=VARIANTS, default="simd128",
                   help="model.wasm's build: simd128 (default, deterministic), relaxed-simd "
                        "(f32x4.relaxed_madd) or scalar for engines without SIMD")
    c.add_argument("--variants", type=_variant_list, default=(),
                   help="comma-separated extra builds (e.g. scalar,relaxed-simd) written as "
                        "model.<variant>.wasm; runtimes load the best one their engine supports")


VARIANTS = ["simd128", "relaxed-simd", "scalar"]


def _variant_list(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown variant {bad[0]!r} (expected "
                                         f"{', '.join(VARIANTS)})")
    return names


def _options(args: argparse.Namespace) -> Any:
    from .pipeline import Options
    return Options(max_batch=args.max_batch, variant=args.features, variants=args.variants)


def warn(args: argparse.Namespace, model: Any, into_json: bool = False) -> list[dict[str, Any]]:
    """A checked model's warnings on stderr (`file:line:col: warning: …` with a caret), and
    as JSON objects; with --json and `into_json` (check, compile) only in the JSON result."""
    if not (args.json and into_json):
        for w in model.warnings:
            print(w.render({model.file: model.source}), file=sys.stderr)
    return [w.to_json() for w in model.warnings]


def cmd_check(args: argparse.Namespace) -> dict[str, Any]:
    from .pipeline import check_source
    model = check_source(_read(args.file), args.file)
    warnings = warn(args, model, into_json=True)
    if not args.json:
        print(f"{args.file}: ok: model {model.name}, {len(model.graph.params)} parameter tensors, "
              f"loss {model.loss_op}, optimizer {model.optimizer.name}")
    return {"model": model.name, "params": sum(p.value.type.numel(1) for p in model.graph.params),
            "warnings": warnings}


def cmd_compile(args: argparse.Namespace) -> dict[str, Any]:
    from .pipeline import compile_source
    if args.target == "flower" and not args.out:
        raise UsageError.at("--target flower needs -o DIR (the Flower app's folder)")
    if args.data is not None and args.target != "flower":
        raise UsageError.at("--data sets a Flower app's dataset: use it with --target flower")
    if args.target == "flower" and (args.bundle or args.variants):
        # the app ships one module: the flags were dropped, and a variant stayed in its manifest
        raise UsageError.at(f"--target flower writes a Flower app with one module: "
                            f"{'--bundle' if args.bundle else '--variants'} does not apply "
                            "(fedc bundle makes client bundles)")
    if args.target == "flower":
        from .data import check_data_file
        check_data_file("--data", args.data)  # a missing file fails before compiling
    if args.target == "native" and args.emit not in ("ir", "llvm", "llvm-opt"):
        raise UsageError.at("a native build runs in-process (fedc train --target native, "
                            "fedc.native.NativeModel): use --emit ir, llvm or llvm-opt to see it")
    if not args.out and not args.emit:  # say so before a compile whose result would be dropped
        raise UsageError.at("nothing to do: give -o DIR to write the module, or --emit FORM")
    if args.bundle and not args.out:
        raise UsageError.at("--bundle writes a client bundle: give -o DIR for its folder")
    start = time.perf_counter()
    art = compile_source(_read(args.file), args.file, _options(args))
    seconds = time.perf_counter() - start
    emitted: dict[str, Any] = {"warnings": warn(args, art.model, into_json=True)}
    if args.target == "native":
        return {**_compile_native(args, art, seconds), **emitted}
    if args.emit:  # with --json the form goes into the JSON object instead
        text = {"ir": art.ir_text, "llvm": art.llvm_ir, "llvm-opt": art.optimized_ir,
                "manifest": json.dumps(art.manifest, indent=2)}[args.emit]
        emitted.update(emit=args.emit, text=text)
        if not args.json:
            print(text)
    if args.target == "flower":
        return {**_compile_flower(args, art, seconds), **emitted}
    if args.out and args.bundle:
        from .harness.bundle import write_bundle
        write_bundle(art.wasm, art.manifest, args.out)
    elif args.out:
        art.write(args.out)
    mem = art.manifest["memory"]
    if not args.json and args.out:
        print(f"wrote {Path(args.out) / 'model.wasm'} ({len(art.wasm)} bytes) and manifest.json; "
              f"memory {mem['bytes']} bytes (arena {mem['arena_bytes']}, activations "
              f"{mem['activation_bytes']} shared from {mem['activation_bytes_without_reuse']}); "
              f"{seconds:.2f} s", file=sys.stderr)
    return {"out": args.out, "wasm_bytes": len(art.wasm), "memory": mem,
            "sha256": art.manifest["wasm"]["sha256"], "compile_seconds": seconds, **emitted}


def _compile_native(args: argparse.Namespace, art: Any, seconds: float) -> dict[str, Any]:
    """`fedc compile --target native --emit FORM`: the host build's IR (JIT-compiled to check)."""
    from .native import jit, native_ir
    start = time.perf_counter()
    code = jit(art)
    jit_seconds = time.perf_counter() - start
    text = {"ir": art.ir_text, "llvm": native_ir(art), "llvm-opt": code.optimized_ir}[args.emit]
    if not args.json:
        print(text)
        print(f"native build for this CPU: {seconds + jit_seconds:.2f} s", file=sys.stderr)
    return {"target": "native", "emit": args.emit, "text": text, "compile_seconds": seconds,
            "jit_seconds": jit_seconds}


def _compile_flower(args: argparse.Namespace, art: Any, seconds: float) -> dict[str, Any]:
    """`fedc compile --target flower -o DIR`: a Flower app (fedc/harness/flower.py)."""
    from .harness.flower import app_dataset, write_flower_app
    dataset = app_dataset(args.data, art.manifest) if args.data is not None else None
    files = write_flower_app(art.wasm, art.manifest, args.out, dataset)
    out = Path(args.out)
    if not args.json:
        print(f"wrote the {art.manifest['model']} Flower app to {out}/ ({len(files)} files); "
              f"run it with: flwr run {out} --stream; {seconds:.2f} s", file=sys.stderr)
    return {"out": str(out), "target": "flower", "files": [str(f.relative_to(out)) for f in files],
            "sha256": art.manifest["wasm"]["sha256"], "compile_seconds": seconds}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .data import check_data_file, load_dataset
    from .pipeline import compile_source
    from .runtime import Model
    from .train import EpochResult, check_fits, train

    if not 0 < args.test_fraction < 1:
        raise UsageError.at(f"--test-fraction must be between 0 and 1, got {args.test_fraction}")
    source = _read(args.file)
    check_data_file("--data", args.data)
    start = time.perf_counter()
    art = compile_source(source, args.file, _options(args))
    compile_s = time.perf_counter() - start
    warn(args, art.model)
    data = load_dataset(args.data, seed=args.seed, test_fraction=args.test_fraction,
                        task=art.model.task)
    check_fits(art.manifest, data)
    if args.target == "native":
        from .native import NativeModel
        model = NativeModel.from_artifacts(art)
    else:
        model = Model(art.wasm, art.manifest)
    batch = args.batch_size or int(art.manifest["federated"]["batch_size"])
    if batch > model.max_batch:
        raise UsageError.at(f"--batch-size {batch} exceeds the module's max batch "
                            f"{model.max_batch} (compile with --max-batch)")
    if args.lr is not None:
        model.set_hparam("lr", args.lr)

    def report(e: EpochResult) -> None:
        if not args.json:
            acc = f"  test_acc {e.test_accuracy:.4f}" if e.test_accuracy is not None else ""
            print(f"epoch {e.epoch:3d}/{args.epochs}  loss {e.train_loss:.4f}  "
                  f"test_loss {e.test_loss:.4f}{acc}  {e.samples_per_second:,.0f} samples/s",
                  flush=True)

    # the module goes to --save before training: a folder that cannot be written fails now, not
    # after the last epoch with the trained weights lost
    out = art.write(args.save) if args.save else None
    result = train(model, data, epochs=args.epochs, batch_size=batch, seed=args.seed,
                   on_epoch=report)
    if out is not None:
        _save_weights(out / "weights.npy", model.get_weights())
    return {"model": art.model.name, "data": data.name, "train_samples": len(data.y_train),
            "test_samples": len(data.y_test), "batch_size": batch, "seed": args.seed,
            "compile_seconds": compile_s, "wasm_bytes": len(art.wasm), "target": args.target,
            **result.summary()}


def _save_weights(path: Path, weights: np.ndarray) -> None:
    try:
        np.save(path, weights)
    except OSError as exc:
        raise UsageError.at(f"cannot write {path}: {exc.strerror or exc}") from None


# --- fedc simulate -------------------------------------------------------------------------------


def _per_round(text: str) -> int | float:
    """A client count ("10") or a fraction of the clients ("0.5", "1.0")."""
    try:
        v: int | float = int(text)
    except ValueError:
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        if not 0 < v <= 1:
            raise argparse.ArgumentTypeError(f"expected a count ≥ 1 or a fraction in (0, 1], "
                                             f"got {text!r}") from None
        return v
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a count ≥ 1 or a fraction in (0, 1], "
                                         f"got {text!r}")
    return v


_probability = _number(float, lambda v: 0 <= v < 1, "a probability in [0, 1)")
_fraction = _number(float, lambda v: 0 < v < 1, "a fraction between 0 and 1")
_nonneg_float = _number(float, lambda v: 0 <= v < float("inf"), "a number ≥ 0")
# an infinite deadline or speed reached the run's JSON as Infinity, which is not JSON
_finite_positive = _number(float, lambda v: 0 < v < float("inf"), "a finite number > 0")


def _checked(parse: Callable[[str], Any]) -> Callable[[str], str]:
    """An argparse type that runs a fedc parser and turns its UsageError into exit 2."""
    def check(text: str) -> str:
        try:
            parse(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
        return text
    return check


def _strategy_name(text: str) -> str:
    from .fl.strategies import make_strategy
    make_strategy(text)  # an unknown name raises, listing the valid ones
    return text.strip().lower()


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _parse_scheme(text: str) -> object:  # imported when used: numpy.random is slow to import
    from .fl.partition import parse_scheme
    return parse_scheme(text)


def _parse_attack(text: str) -> object:
    from .fl.faults import parse_attack
    return parse_attack(text)


def _simulate_flags(c: argparse.ArgumentParser) -> None:
    c.add_argument("file")
    c.add_argument("--data", required=True, help="digits | breast_cancer | iris | wine | "
                   "waveforms | synthetic_text | FILE.npz")
    c.add_argument("--clients", type=_positive, help="simulated clients (default: the clients "
                   "per round, so all take part)")
    c.add_argument("--rounds", type=_positive, help="default: the federated block's")
    c.add_argument("--clients-per-round", type=_per_round, metavar="M",
                   help="a count, or a fraction of --clients (default: the federated block's)")
    c.add_argument("--local-epochs", type=_positive, help="default: the federated block's")
    c.add_argument("--batch-size", type=_positive, help="default: the federated block's")
    c.add_argument("--lr", type=_learning_rate, help="override the optimizer's learning rate")
    c.add_argument("--strategy", type=_checked(_strategy_name), help="default: the federated "
                   "block's")
    c.add_argument("--strategy-opt", type=_key_value, action="append", default=[],
                   metavar="KEY=VALUE", help="a strategy option, e.g. mu=0.01, f=2, beta=0.2")
    c.add_argument("--partition", type=_checked(_parse_scheme), default="iid",
                   help="iid | dirichlet:ALPHA | shards:K | quantity:ALPHA (default iid)")
    c.add_argument("--show-partition", action="store_true",
                   help="print each client's sample count and label histogram")
    c.add_argument("--seed", type=_seed, default=0)
    c.add_argument("--test-fraction", type=_fraction, default=0.2,
                   help="held-out test split for the centralised evaluation")
    c.add_argument("--dropout", type=_probability, default=0.0,
                   help="probability that a sampled client fails in a round")
    c.add_argument("--deadline", type=_finite_positive, metavar="SECONDS",
                   help="refuse updates that take longer (simulated client speeds)")
    c.add_argument("--speed-median", type=_finite_positive, default=1000.0,
                   help="median client speed in samples/s (lognormal; default 1000)")
    c.add_argument("--speed-sigma", type=_nonneg_float, default=1.0,
                   help="log-std of client speeds (default 1.0)")
    c.add_argument("--byzantine", type=_nonneg, default=0, metavar="K",
                   help="K clients (chosen by the seed) send forged models")
    c.add_argument("--attack", type=_checked(_parse_attack), default="scale:-10",
                   help="scale:F — send global + F·(honest − global) (default scale:-10)")
    c.add_argument("--federated-eval", action="store_true",
                   help="also evaluate on each client's local test split (20%% of its data)")
    c.add_argument("--workers", type=_positive, default=1,
                   help="processes training clients (results are identical for any number)")
    c.add_argument("--out", help="results folder (default: runs/NAME or runs/<model>-<time>)")
    c.add_argument("--name", help="name of the run's folder under runs/")
    c.add_argument("--plot", metavar="FILE.png", help="plot accuracy and loss per round")
    c.add_argument("--target", choices=["wasm", "native"], default="wasm",
                   help="clients train in the Wasm module (default) or in the same module "
                        "compiled for this CPU (fedc.native: a server's fast path, same results)")
    _compile_flags(c)
    c.add_argument("--json", action="store_true", help="one JSON object on stdout")


def cmd_simulate(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from .data import check_data_file, load_dataset
    from .fl import report
    from .fl.report import RoundProgress
    from .fl.simulate import Simulation, compile_mu
    from .pipeline import check_source, compile_source
    from .train import check_fits

    source = _read(args.file)
    check_data_file("--data", args.data)
    config = _sim_config(args, check_source(source, args.file).federated)
    config.validate()  # a bad flag fails before compiling or loading data
    # the simulated strategy decides the client kernel: FedProx's term is compiled in or left out
    art = compile_source(source, args.file,
                         replace(_options(args), proximal_mu=compile_mu(config)))
    warn(args, art.model)
    data = load_dataset(args.data, seed=config.seed, test_fraction=config.test_fraction,
                        task=art.model.task)
    check_fits(art.manifest, data)
    native = None
    if args.target == "native":
        from .native import native_ir
        native = native_ir(art)
    sim = Simulation(art.wasm, art.manifest, data, config, native)
    # where the results and the plot go is checked before training, which it would otherwise lose
    out = Path(args.out) if args.out else report.default_out_dir(args.name, art.model.name)
    report.prepare(out, Path(args.plot) if args.plot else None)
    _show_start(args, sim)
    with RoundProgress(config.rounds, enabled=not args.json) as bar:
        result = sim.run(bar.update)
    return _sim_report(args, out, art.model.name, data, result)


def _sim_config(args: argparse.Namespace, federated: dict[str, Any]) -> Any:
    from .fl.simulate import config_from
    return config_from(
        federated, clients=args.clients, rounds=args.rounds,
        clients_per_round=args.clients_per_round, local_epochs=args.local_epochs,
        batch_size=args.batch_size, strategy=args.strategy, lr=args.lr,
        strategy_options=dict(args.strategy_opt) or None, partition=args.partition,
        seed=args.seed, test_fraction=args.test_fraction, dropout=args.dropout,
        deadline=args.deadline, speed_median=args.speed_median, speed_sigma=args.speed_sigma,
        byzantine=args.byzantine, attack=args.attack, federated_eval=args.federated_eval,
        workers=args.workers)


def _sim_report(args: argparse.Namespace, out: Path, model: str, data: Any,
                result: Any) -> dict[str, Any]:
    """Write the run's files, then the plot; the JSON payload; a one-line summary for humans."""
    from .fl import report

    config = result.config
    payload: dict[str, Any] = {"model": model, "data": data.name,
                               "train_samples": len(data.y_train),
                               "test_samples": len(data.y_test), **result.summary()}
    payload["out"] = str(out)
    if args.plot:
        payload["plot"] = args.plot
    partition = report.partition_json(result.partition)
    payload["files"] = report.write_run(out, {**payload, "partition": partition}, result)
    if args.plot:  # after the results: a plot that fails at the end loses nothing else
        report.plot(Path(args.plot), {config.strategy: result.rounds},
                    f"{model} on {data.name}: {config.clients} clients, {config.partition}")
    if args.show_partition:
        payload["partition"] = partition
    if not args.json:
        acc = result.final.test_accuracy
        where = " (native)" if result.target == "native" else ""
        print(f"{len(result.rounds)} rounds, {payload['client_updates']} client updates{where} in "
              f"{result.seconds:.2f} s: test loss {result.final.test_loss:.4f}"
              + (f", test accuracy {acc:.4f}" if acc is not None else "")
              + (" (diverged)" if result.diverged else "") + f"; results in {out}")
    return payload


def _show_start(args: argparse.Namespace, sim: Any) -> None:
    for warning in sim.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.show_partition and not args.json:
        from rich.console import Console

        from .fl.report import partition_table
        Console(stderr=True).print(partition_table(sim.rows))


def _read(path: str) -> str:
    from .pipeline import decode_source
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError.at(f"no such file: {path}") from None
    except OSError as exc:
        raise UsageError.at(f"cannot read {path}: {exc}") from None
    return decode_source(data, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _BadUsage as exc:  # --json promises one JSON object on stdout, even now
        if "--json" in (sys.argv[1:] if argv is None else argv):
            print(json.dumps({"ok": False, "exit_code": EXIT_USAGE,
                              "diagnostics": [Diagnostic(exc.message).to_json()]}))
        return EXIT_USAGE
    run: Callable[[argparse.Namespace], dict[str, Any]] = args.run
    try:
        payload = run(args)
    except FedcError as exc:
        code = EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
        print(exc.render(), file=sys.stderr)
        return _failed(args, code, exc.diagnostics)
    except InternalError as exc:
        print(str(exc), file=sys.stderr)
        return _failed(args, EXIT_INTERNAL, [Diagnostic(str(exc))])
    except ValueError as exc:
        runtime = sys.modules.get("fedc_runtime")
        if runtime is None or not isinstance(exc, runtime.RuntimeDataError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return _failed(args, EXIT_ERROR, [Diagnostic(str(exc))])
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps({"ok": True, **payload}))
    return EXIT_OK


def _failed(args: argparse.Namespace, code: int, diagnostics: Sequence[Diagnostic]) -> int:
    """`code`; with --json, after the one JSON object that says so on stdout."""
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "exit_code": code,
                          "diagnostics": [d.to_json() for d in diagnostics]}))
    return code


def entry() -> None:
    """The `fedc` command and `python -m fedc`: main(), then exit at once. Skipping the
    interpreter's teardown (freeing a compilation's LLVM and IR objects) saves 0.2–0.5 s per
    command; every file fedc writes is closed by then. A reader that stops early (`fedc ... |
    head`) ends the command quietly, with the shell's code for SIGPIPE, as other tools do."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        code = 128 + 13
    try:
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)


if __name__ == "__main__":
    entry()
