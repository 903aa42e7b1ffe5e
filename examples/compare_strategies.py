"""Compare server strategies in `fedc simulate`: the same clients, data and seed, one plot.

Run (the recorded run in docs/simulation.md):
    python examples/compare_strategies.py examples/digits_mlp.fed --data digits \\
        --strategies fedavg fedavgm fedprox --partition dirichlet:0.1 --clients 20 \\
        --clients-per-round 10 --rounds 40 --local-epochs 5 --mu 0.1 --seed 0 \\
        --plot docs/img/strategies_dirichlet0.1.png
Prints a Markdown table (final and best test accuracy, the first round reaching --target) and
writes one results folder per strategy under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fedc.data import load_dataset
from fedc.fl import report
from fedc.fl.simulate import SimResult, Simulation, compile_mu, config_from
from fedc.pipeline import Options, check_source, compile_source


def run(source: str, filename: str, data_name: str, strategy: str,
        args: argparse.Namespace) -> SimResult:
    federated = check_source(source, filename).federated  # the defaults
    options = {"mu": args.mu} if strategy == "fedprox" and args.mu is not None else None
    config = config_from(federated, strategy=strategy, strategy_options=options,
                         clients=args.clients,
                         clients_per_round=args.clients_per_round, rounds=args.rounds,
                         local_epochs=args.local_epochs, partition=args.partition,
                         seed=args.seed)
    art = compile_source(source, filename, Options(proximal_mu=compile_mu(config)))
    data = load_dataset(data_name, seed=config.seed)
    return Simulation(art.wasm, art.manifest, data, config).run()


def first_round_reaching(result: SimResult, target: float) -> str:
    for r in result.rounds:
        if r.test_accuracy is not None and r.test_accuracy >= target:
            return str(r.round)
    return "never"


def table(results: dict[str, SimResult], target: float) -> str:
    lines = [f"| strategy | options | final test accuracy | best | final test loss | "
             f"first round ≥ {target:.2f} |", "|---|---|---|---|---|---|"]
    for name, res in results.items():
        opts = ", ".join(f"{k}={v:g}" for k, v in res.summary()["strategy"]["options"].items()
                         if isinstance(v, float | int))
        best = max(r.test_accuracy or 0.0 for r in res.rounds)
        lines.append(f"| {name} | {opts or '–'} | {res.final.test_accuracy:.4f} | {best:.4f} | "
                     f"{res.final.test_loss:.4f} | {first_round_reaching(res, target)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--strategies", nargs="+", default=["fedavg", "fedavgm", "fedprox"])
    ap.add_argument("--partition", default="dirichlet:0.1")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--clients-per-round", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--local-epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mu", type=float, help="FedProx's mu (default: the .fed's or 0.01)")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--out", type=Path, default=Path("runs/compare"))
    args = ap.parse_args()

    source = Path(args.file).read_text()
    results = {s: run(source, args.file, args.data, s, args) for s in args.strategies}
    for name, res in results.items():
        payload = {"strategy": name, **res.summary()}
        report.write_run(args.out / name, payload, res)
    if args.plot:
        report.plot(args.plot, {n: r.rounds for n, r in results.items()},
                    f"{args.data}, {args.clients} clients, {args.partition}, "
                    f"{args.clients_per_round} per round, {args.local_epochs} local epochs")
    print(table(results, args.target))
    print(json.dumps({n: dataclasses.asdict(r.config) for n, r in results.items()}, default=str))


if __name__ == "__main__":
    main()
