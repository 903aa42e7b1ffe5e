"""Benchmark: `fedc simulate` throughput for the digits MLP, 1 vs 2 worker processes, clients in
Wasm or in the native build (--target native).

Run: python bench/bench_simulate.py [--reps 5] [--rounds 10] [--json]
Two workloads on digits with examples/digits_mlp.fed (20 clients, dirichlet:0.5, 10 clients per
round): local_epochs 1 (about 3 train steps per client update: overhead-bound) and local_epochs 5.
For each, reps alternate between 1 and 2 workers and the two targets; the table shows medians
(min–max) of rounds per second (whole rounds: training, aggregation and the test-set
evaluation) and of the wall time per client update (the round's training phase over its
updates: with 2 workers, two clients train at once). Worker start-up (process spawn and
module instantiation, or the native build's JIT) is reported apart. Every rep checks that the
final weights are bit-identical across worker counts and targets.
A machine check first times the same Wasm training loop in one process alone and in two
processes at once: two workers cannot beat what the machine gives two processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def measure(art: Any, data: Any, config: Any, native_ir: str | None = None) -> dict[str, Any]:
    from fedc.fl.simulate import Simulation

    sim = Simulation(art.wasm, art.manifest, data, config, native_ir)
    result = sim.run()
    summary = result.summary()
    return {"rounds_per_second": summary["rounds_per_second"],
            "ms_per_client_update": 1e3 * summary["seconds_per_client_update"],
            "startup_s": result.startup_seconds, "sha256": summary["weights_sha256"],
            "accuracy": result.final.test_accuracy}


def _train_loop(art: Any, data: Any, seconds: float, out: Any) -> None:
    from fedc.runtime import Model

    model = Model(art.wasm, art.manifest)
    x, y = data.x_train[:320], data.y_train[:320]
    model.train_epoch(x, y, 32, 0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.train_epoch(x, y, 32, steps)
        steps += 10
    out.put(steps / (time.perf_counter() - start))


def machine_check(art: Any, data: Any, seconds: float = 2.0) -> tuple[float, float]:
    """Train steps/s of one process alone, and of two processes running at once (summed)."""
    ctx = multiprocessing.get_context("spawn")
    rates = []
    for n in (1, 2):
        out = ctx.Queue()
        procs = [ctx.Process(target=_train_loop, args=(art, data, seconds, out))
                 for _ in range(n)]
        for p in procs:
            p.start()
        rates.append(sum(out.get() for _ in procs))
        for p in procs:
            p.join()
    return rates[0], rates[1]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from fedc.data import load_dataset
    from fedc.fl.simulate import SimConfig
    from fedc.native import native_ir
    from fedc.pipeline import compile_source

    src = (ROOT / "examples" / "digits_mlp.fed").read_text()
    art = compile_source(src, "examples/digits_mlp.fed")
    data = load_dataset("digits", seed=0)
    targets = {"wasm": None, "native": native_ir(art)}
    alone, pair = machine_check(art, data)
    rows = []
    for epochs in (1, 5):
        base = SimConfig(clients=20, rounds=args.rounds, clients_per_round=10,
                         local_epochs=epochs, partition="dirichlet:0.5", seed=0)
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {
            (t, w): [] for t in targets for w in (1, 2)}
        for _ in range(args.reps):
            for (target, workers), reps in runs.items():  # interleaved: load hits all alike
                reps.append(measure(art, data, dataclasses.replace(base, workers=workers),
                                    targets[target]))
            if len({reps[-1]["sha256"] for reps in runs.values()}) != 1:
                sys.exit("final weights differ between worker counts or targets")
        for (target, workers), reps in runs.items():
            rows.append({"local_epochs": epochs, "target": target, "workers": workers,
                         **{k: [r[k] for r in reps] for k in
                            ("rounds_per_second", "ms_per_client_update", "startup_s")}})
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "steps_per_second_one_process": alone,
                          "steps_per_second_two_processes": pair, "rows": rows}, indent=2))
        return
    print(f"machine: {alone:,.0f} train steps/s in one process, {pair:,.0f} in two at once "
          f"({pair / alone:.2f}x)")
    print(f"digits MLP 64-128-10, 20 clients, 10 per round, {args.rounds} rounds, "
          f"{args.reps} reps, {os.cpu_count()} CPUs; median (min–max)")
    print(f"{'local epochs':>12} {'target':>6} {'workers':>7}  {'rounds/s':>22}  "
          f"{'ms per client update':>22}  {'start-up s':>10}")
    for r in rows:
        print(f"{r['local_epochs']:>12} {r['target']:>6} {r['workers']:>7}  "
              f"{spread(r['rounds_per_second']):>22}"
              f"  {spread(r['ms_per_client_update']):>22}"
              f"  {statistics.median(r['startup_s']):10.2f}")


if __name__ == "__main__":  # spawned workers import this file: keep the guard
    main()
