"""Simulation reports: a SimResult → results.json, rounds.csv, weights.npy, a PNG plot, and the
live progress bar and partition table on stderr."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics import UsageError
from .partition import ClientRow
from .simulate import RoundResult, SimResult

CSV_FIELDS = ("round", "test_accuracy", "test_loss", "train_loss", "federated_accuracy",
              "federated_loss", "federated_accuracy_min", "selected", "updates", "dropped",
              "stragglers", "byzantine", "aggregated", "simulated_seconds", "seconds",
              "train_seconds", "note")


def default_out_dir(name: str | None, model: str, root: Path = Path("runs")) -> Path:
    """runs/NAME, or runs/<model>-<YYYYmmdd-HHMMSS> (with -2, -3… if that exists already)."""
    if name:
        return root / name
    stem = f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = root / stem, 2
    while out.exists():
        out, n = root / f"{stem}-{n}", n + 1
    return out


def prepare(out: Path, plot_path: Path | None = None) -> None:
    """Make the run's folder and check the plot's path, before a run whose results would be
    lost if either failed at its end; UsageError naming the path."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "it exists and is not a directory" if isinstance(exc, FileExistsError) else \
            exc.strerror or str(exc)
        raise UsageError.at(f"cannot write the run's results to {out}: {why}") from None
    if plot_path is None:
        return
    formats = _plot_formats()
    suffix = plot_path.suffix.lower().lstrip(".")
    if suffix not in formats:
        what = f"'.{suffix}' is not an image format" if suffix else "it has no file extension"
        others = ", ".join("." + f for f in sorted(formats) if f != "png")
        raise UsageError.at(f"cannot write the plot {plot_path}: {what} (use .png, or one of "
                            f"{others})")
    if not plot_path.parent.is_dir():
        raise UsageError.at(f"cannot write the plot {plot_path}: no such directory "
                            f"{plot_path.parent}")


def _plot_formats() -> set[str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return set(FigureCanvasAgg(Figure()).get_supported_filetypes())


def write_run(out: Path, payload: dict[str, Any], result: SimResult) -> dict[str, str]:
    """results.json (the whole payload), rounds.csv (one row per round) and weights.npy."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = {"results": out / "results.json", "rounds": out / "rounds.csv",
                 "weights": out / "weights.npy"}
        files["results"].write_text(json.dumps(payload, indent=2) + "\n")
        write_csv(files["rounds"], result.rounds)
        np.save(files["weights"], result.weights)
    except OSError as exc:
        raise UsageError.at(f"cannot write the run's results to {out}: "
                            f"{exc.strerror or exc}") from None
    return {k: str(v) for k, v in files.items()}


def write_csv(path: Path, rounds: Sequence[RoundResult]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rounds:
            row = r.to_json()
            writer.writerow({k: _cell(row[k]) for k in CSV_FIELDS})


def _cell(v: Any) -> Any:
    if isinstance(v, list):  # client ids, space-separated in one cell
        return " ".join(str(k) for k in v)
    return "" if v is None else v


def plot(path: Path, runs: dict[str, Sequence[RoundResult]], title: str = "") -> None:
    """Test accuracy and test loss per round, one line per run, as a PNG (Agg: no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for label, rounds in runs.items():
        x = [r.round for r in rounds]
        acc = [np.nan if r.test_accuracy is None else r.test_accuracy for r in rounds]
        acc_ax.plot(x, acc, marker=".", label=label)
        loss_ax.plot(x, [r.test_loss for r in rounds], marker=".", label=label)
    acc_ax.set(xlabel="round", ylabel="test accuracy", title="accuracy")
    loss_ax.set(xlabel="round", ylabel="test loss", title="loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise UsageError.at(f"cannot write the plot {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # an extension matplotlib has no writer for
        raise UsageError.at(f"cannot write the plot {path}: {exc}") from None
    finally:
        plt.close(fig)


def partition_table(rows: Sequence[ClientRow]) -> Any:
    """A rich Table: one line per client with its sample count and label histogram."""
    from rich.table import Table

    table = Table(title="partition", show_edge=False)
    table.add_column("client", justify="right")
    table.add_column("samples", justify="right")
    classes = len(rows[0].label_counts) if rows else 0
    for c in range(classes):
        table.add_column(str(c), justify="right")
    for r in rows:
        table.add_row(str(r.client), str(r.samples), *(str(n) for n in r.label_counts))
    return table


def partition_json(rows: Sequence[ClientRow]) -> list[dict[str, Any]]:
    return [{"client": r.client, "samples": r.samples, "labels": list(r.label_counts)}
            for r in rows]


class RoundProgress:
    """A live rich progress bar on stderr: round, accuracy, loss, elapsed time."""

    def __init__(self, rounds: int, enabled: bool = True) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("round"), MofNCompleteColumn(), BarColumn(),
            TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(),
            console=Console(stderr=True))
        self.task = self.progress.add_task("simulate", total=rounds, metrics="")

    def __enter__(self) -> RoundProgress:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()

    def update(self, r: RoundResult) -> None:
        if not self.enabled:
            return
        acc = "" if r.test_accuracy is None else f"acc {r.test_accuracy:.4f}  "
        fails = len(r.dropped) + len(r.stragglers)
        extra = f"  {fails} failed" if fails else ""
        self.progress.update(self.task, advance=1,
                             metrics=f"{acc}loss {r.test_loss:.4f}{extra}")
