"""The `fedc` command: parses flags, calls the pipeline, prints diagnostics (never a traceback)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .diagnostics import FedcError, InternalError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with a one-line reason, like every CLI
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _nonneg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


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
    c.add_argument("--json", action="store_true", help="one JSON object on stdout")
    c.set_defaults(run=cmd_compile)

    c = sub.add_parser("train", help="centralised training inside the Wasm module")
    c.add_argument("file")
    c.add_argument("--data", required=True, help="digits | breast_cancer | iris | wine | FILE.npz")
    c.add_argument("--epochs", type=_positive, default=10)
    c.add_argument("--batch-size", type=_positive, help="default: the federated block's")
    c.add_argument("--lr", type=_positive_float, help="override the optimizer's learning rate")
    c.add_argument("--seed", type=_nonneg, default=0)
    c.add_argument("--test-fraction", type=float, default=0.2)
    c.add_argument("--save", help="write model.wasm, manifest.json and weights.npy here")
    _compile_flags(c)
    c.add_argument("--json", action="store_true", help="one JSON object on stdout")
    c.set_defaults(run=cmd_train)
    return p


def _compile_flags(c: argparse.ArgumentParser) -> None:
    c.add_argument("--max-batch", type=_positive, help="largest batch the module accepts")
    c.add_argument("--features", choices=["simd128", "scalar"], default="simd128",
                   help="simd128 (default) or scalar for engines without SIMD")


def _options(args: argparse.Namespace) -> Any:
    from .pipeline import Options
    return Options(max_batch=args.max_batch, variant=args.features)


def cmd_check(args: argparse.Namespace) -> dict[str, Any]:
    from .pipeline import check_source
    model = check_source(_read(args.file), args.file)
    if not args.json:
        print(f"{args.file}: ok: model {model.name}, {len(model.graph.params)} parameter tensors, "
              f"loss {model.loss_op}, optimizer {model.optimizer.name}")
    return {"model": model.name, "params": sum(p.value.type.numel(1) for p in model.graph.params)}


def cmd_compile(args: argparse.Namespace) -> dict[str, Any]:
    from .pipeline import compile_source
    start = time.perf_counter()
    art = compile_source(_read(args.file), args.file, _options(args))
    seconds = time.perf_counter() - start
    if args.emit and not args.json:
        text = {"ir": art.ir_text, "llvm": art.llvm_ir, "llvm-opt": art.optimized_ir,
                "manifest": json.dumps(art.manifest, indent=2)}[args.emit]
        print(text)
    if args.out:
        art.write(args.out)
    elif not args.emit:
        raise UsageError.at("nothing to do: give -o DIR to write the module, or --emit FORM")
    mem = art.manifest["memory"]
    if not args.json and args.out:
        print(f"wrote {Path(args.out) / 'model.wasm'} ({len(art.wasm)} bytes) and manifest.json; "
              f"memory {mem['bytes']} bytes (arena {mem['arena_bytes']}, activations "
              f"{mem['activation_bytes']} shared from {mem['activation_bytes_without_reuse']}); "
              f"{seconds:.2f} s", file=sys.stderr)
    return {"out": args.out, "wasm_bytes": len(art.wasm), "memory": mem,
            "sha256": art.manifest["wasm"]["sha256"], "compile_seconds": seconds,
            **({"emit": args.emit} if args.emit else {})}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_dataset
    from .pipeline import compile_source
    from .runtime import Model
    from .train import EpochResult, check_fits, train

    if not 0 < args.test_fraction < 1:
        raise UsageError.at(f"--test-fraction must be between 0 and 1, got {args.test_fraction}")
    start = time.perf_counter()
    art = compile_source(_read(args.file), args.file, _options(args))
    compile_s = time.perf_counter() - start
    data = load_dataset(args.data, seed=args.seed, test_fraction=args.test_fraction,
                        task=art.model.task)
    check_fits(art.manifest, data)
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

    result = train(model, data, epochs=args.epochs, batch_size=batch, seed=args.seed,
                   on_epoch=report)
    if args.save:
        out = art.write(args.save)
        np.save(out / "weights.npy", model.get_weights())
    return {"model": art.model.name, "data": data.name, "train_samples": len(data.y_train),
            "test_samples": len(data.y_test), "batch_size": batch, "seed": args.seed,
            "compile_seconds": compile_s, "wasm_bytes": len(art.wasm), **result.summary()}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError.at(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError.at(f"cannot read {path}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], dict[str, Any]] = args.run
    try:
        payload = run(args)
    except FedcError as exc:
        code = EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
        print(exc.render(), file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "exit_code": code,
                              "diagnostics": [d.to_json() for d in exc.diagnostics]}))
        return code
    except InternalError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INTERNAL
    except ValueError as exc:
        runtime = sys.modules.get("fedc_runtime")
        if runtime is None or not isinstance(exc, runtime.RuntimeDataError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "exit_code": EXIT_ERROR,
                              "diagnostics": [{"severity": "error", "message": str(exc)}]}))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps({"ok": True, **payload}))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
