"""Benchmark: training samples/s of fedc (Wasm simd128 and relaxed-simd, native) against PyTorch
eager (1 thread and default threads) and a hand-written numpy step, interleaved in one run.

Run: python bench/bench_train.py [--reps 7] [--seconds 0.3] [--cases digits_mlp,mnist_mlp]
Every contender trains the same model (same layer sizes, SGD with momentum) on the same
synthetic data in shuffled batches, one epoch per call, with a fresh numpy permutation per
epoch. Contenders take turns within each repetition (the order rotates), so load from other
processes hits all of them; the tables show the median and the min–max of the repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # path under the repository
    batch: int
    shape: tuple[int, ...]  # one example
    hidden: tuple[int, ...] | None  # an MLP's hidden widths (numpy step); None: no numpy step
    rows: int = 2048
    classes: int = 10


CASES = {
    "digits_mlp": Case("digits_mlp", "examples/digits_mlp.fed", 32, (64,), (128,)),
    "mnist_mlp": Case("mnist_mlp", "examples/mnist_mlp.fed", 64, (784,), (256, 128)),
    "digits_cnn": Case("digits_cnn", "examples/digits_cnn.fed", 32, (1, 8, 8), None),
}


def data(case: Case) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(case.rows, *case.shape)).astype(np.float32)
    return x, rng.integers(0, case.classes, size=case.rows).astype(np.int32)


Epoch = Callable[[np.ndarray, np.ndarray, np.random.Generator], None]


# --- fedc ----------------------------------------------------------------------------------

def fedc_contenders(case: Case) -> dict[str, Epoch]:
    from fedc.native import NativeModel
    from fedc.pipeline import Options, compile_source
    from fedc.runtime import Model

    text = (ROOT / case.source).read_text()
    out: dict[str, Epoch] = {}
    for variant in ("simd128", "relaxed-simd"):
        art = compile_source(text, case.source, Options(variant=variant))
        model = Model(art.wasm, art.manifest)
        model.init_weights(0)
        out[f"fedc wasm {variant}"] = _fedc_epoch(model, case.batch)
        if variant == "simd128":
            native = NativeModel.from_artifacts(art)
            native.init_weights(0)
            out["fedc native"] = _fedc_epoch(native, case.batch)
    return out


def _fedc_epoch(model: Any, batch: int) -> Epoch:
    def epoch(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
        model.train_epoch(x, y, batch, seed=rng)
    return epoch


# --- PyTorch eager -------------------------------------------------------------------------

def torch_model(case: Case) -> Any:
    """The case's model as torch.nn layers (PyTorch's default initialisation)."""
    import torch.nn as nn

    if case.hidden is not None:
        layers: list[Any] = []
        width = case.shape[0]
        for h in case.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        return nn.Sequential(*layers, nn.Linear(width, case.classes))
    return nn.Sequential(  # examples/digits_cnn.fed
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, case.classes))


def torch_contender(case: Case) -> Epoch:
    """PyTorch eager with the process's thread count (set by the environment)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = torch_model(case)
    wd = 1e-4 if case.hidden is None else 0.0
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=wd)

    def epoch(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        perm = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for start in range(0, len(x), case.batch):
            idx = perm[start:start + case.batch]
            opt.zero_grad()
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item()

    return epoch


# --- a hand-written numpy step (MLPs) ------------------------------------------------------

def numpy_contender(case: Case) -> dict[str, Epoch]:
    """Forward, backward and SGD-momentum for dense-relu-…-dense-softmax-xent, float32."""
    if case.hidden is None:
        return {}
    rng = np.random.default_rng(0)
    widths = [case.shape[0], *case.hidden, case.classes]
    params = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        bound = 1 / np.sqrt(a)
        params += [rng.uniform(-bound, bound, (a, b)).astype(np.float32),
                   rng.uniform(-bound, bound, b).astype(np.float32)]
    vel = [np.zeros_like(p) for p in params]

    def step(xb: np.ndarray, yb: np.ndarray) -> float:
        acts = [xb]
        for i in range(0, len(params) - 2, 2):
            acts.append(np.maximum(acts[-1] @ params[i] + params[i + 1], 0))
        z = acts[-1] @ params[-2] + params[-1]
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(axis=1, keepdims=True)
        rows = np.arange(len(yb))
        loss = float(-np.log(p[rows, yb]).mean())
        p[rows, yb] -= 1
        d = p / len(yb)
        grads: list[np.ndarray] = [np.empty(0)] * len(params)
        for i in range(len(params) - 2, -1, -2):
            a = acts[i // 2]
            grads[i], grads[i + 1] = a.T @ d, d.sum(axis=0)
            if i:
                d = (d @ params[i].T) * (a > 0)
        for p_, v, g in zip(params, vel, grads, strict=True):
            v *= 0.9
            v += g
            p_ -= 0.05 * v
        return loss

    def epoch(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
        perm = rng.permutation(len(x))
        for start in range(0, len(x), case.batch):
            idx = perm[start:start + case.batch]
            step(x[idx], y[idx])

    return {"numpy step 1 thread": epoch}


# --- the interleaved run -------------------------------------------------------------------
# PyTorch and numpy run in worker processes with their thread counts fixed by the environment
# before import (switching OpenMP pools in one process left idle threads spinning); the parent
# runs the fedc contenders and asks one worker at a time for a measurement, so nothing overlaps.

WORKERS = {  # name → environment of its process
    "torch eager 1 thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "torch eager default threads": {},
    "numpy step 1 thread": {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
}


def measure(epoch: Epoch, x: np.ndarray, y: np.ndarray, seconds: float, seed: int) -> float:
    """Samples/s over whole epochs, at least `seconds` long."""
    rng = np.random.default_rng(seed)
    runs, t0 = 0, time.perf_counter()
    while True:
        epoch(x, y, rng)
        runs += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return runs * len(x) / dt


def _worker(name: str, case: Case) -> None:
    """Child process: build the contender, warm up, then answer "SEED SECONDS" lines."""
    import torch

    if name.startswith("numpy"):
        (epoch,) = numpy_contender(case).values()
    else:
        epoch = torch_contender(case)
    x, y = data(case)
    epoch(x, y, np.random.default_rng(0))
    print(torch.get_num_threads(), flush=True)
    for line in sys.stdin:
        seed, seconds = line.split()
        print(measure(epoch, x, y, float(seconds), int(seed)), flush=True)


class Worker:
    """A contender in its own process (see WORKERS)."""

    def __init__(self, name: str, case: Case) -> None:
        self._start([sys.executable, __file__, "--worker", name, "--cases", case.name],
                    {**os.environ, **WORKERS[name]})

    def _start(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        """Run the worker; its first line is its thread count."""
        self.proc = subprocess.Popen(cmd, env=env, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.threads = int(self.proc.stdout.readline())

    def measure(self, seed: int, seconds: float) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{seed} {seconds}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


class NodeWorker(Worker):
    """fedc's JS runtime training the same module in Node (V8), bench/node_train.mjs."""

    def __init__(self, case: Case, variant: str, tmp: Path, data_file: Path) -> None:
        from fedc.pipeline import Options, compile_source

        art = compile_source((ROOT / case.source).read_text(), case.source,
                             Options(variant=variant))
        model_dir = art.write(tmp / variant)
        self._start(["node", *NODE_FLAGS, str(ROOT / "bench" / "node_train.mjs"),
                     str(model_dir), str(data_file), str(case.rows), str(case.batch)])


# Node 20 runs relaxed SIMD only behind this flag (Node 22 and Chrome ≥ 114 by default).
NODE_FLAGS = ("--experimental-wasm-relaxed-simd",)


def _node_workers(case: Case, tmp: Path) -> dict[str, Worker]:
    if shutil.which("node") is None:
        print("bench_train: node not found, skipping the Node (V8) contenders", file=sys.stderr)
        return {}
    x, y = data(case)
    data_file = tmp / "data.bin"  # the inputs as float32, then the labels as int32
    data_file.write_bytes(x.tobytes() + y.astype(np.int32).tobytes())
    return {f"fedc wasm {v} (Node, V8)": NodeWorker(case, v, tmp, data_file)
            for v in ("simd128", "relaxed-simd")}


def run_case(case: Case, reps: int, seconds: float) -> dict[str, list[float]]:
    """Samples/s of every contender, one list entry per repetition."""
    with tempfile.TemporaryDirectory(prefix="fedc-bench-") as tmp:
        return _run_case(case, reps, seconds, Path(tmp))


def _run_case(case: Case, reps: int, seconds: float, tmp: Path) -> dict[str, list[float]]:
    local = fedc_contenders(case)
    x, y = data(case)
    for epoch in local.values():  # warm-up
        epoch(x, y, np.random.default_rng(0))
    workers = {name: Worker(name, case) for name in WORKERS
               if case.hidden is not None or not name.startswith("numpy")}
    workers.update(_node_workers(case, tmp))
    names = [*local, *workers]
    rates: dict[str, list[float]] = {name: [] for name in names}
    try:
        for rep in range(reps):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                rates[name].append(measure(local[name], x, y, seconds, rep) if name in local
                                   else workers[name].measure(rep, seconds))
    finally:
        for w in workers.values():
            w.close()
    threads = workers["torch eager default threads"].threads
    rates[f"torch eager default ({threads} threads)"] = rates.pop("torch eager default threads")
    return rates


def available(names: list[str]) -> list[Case]:
    """The requested cases whose example compiles (another example may be work in progress)."""
    from fedc.diagnostics import FedcError
    from fedc.pipeline import compile_source

    out = []
    for name in names:
        case = CASES[name]
        path = ROOT / case.source
        try:
            compile_source(path.read_text(), case.source)
        except (OSError, FedcError) as exc:
            print(f"skipping {name}: {str(exc).splitlines()[0]}", file=sys.stderr)
            continue
        out.append(case)
    return out


def summary(values: list[float], scale: float = 1.0, fmt: str = "{:,.0f}") -> str:
    v = np.asarray(values) * scale
    return f"{fmt.format(np.median(v))} ({fmt.format(v.min())}–{fmt.format(v.max())})"


def table(case: Case, rates: dict[str, list[float]]) -> str:
    ref = float(np.median(rates["torch eager 1 thread"]))
    lines = [f"### {case.name}: batch {case.batch}, {case.source}", "",
             "| contender | samples/s | µs per step | × torch 1 thread |",
             "| --- | --- | --- | --- |"]
    for name, v in rates.items():
        step_us = [case.batch / r * 1e6 for r in v]
        lines.append(f"| {name} | {summary(v)} | {summary(step_us, fmt='{:,.1f}')} | "
                     f"{np.median(v) / ref:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.3, help="per measurement")
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated, of: {', '.join(CASES)}")
    ap.add_argument("--json", action="store_true", help="one JSON object per case on stdout")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    unknown = [n for n in args.cases.split(",") if n not in CASES]
    if unknown:
        ap.error(f"--cases: unknown case {', '.join(map(repr, unknown))} "
                 f"(known: {', '.join(CASES)})")
    if args.worker:
        _worker(args.worker, CASES[args.cases])
        return
    for case in available(args.cases.split(",")):
        rates = run_case(case, args.reps, args.seconds)
        print(json.dumps({"case": case.name, "rates": rates}) if args.json else
              table(case, rates) + "\n", flush=True)


if __name__ == "__main__":
    main()
