"""`fedc simulate` as a user runs it: JSON on stdout, the run's files, plots, exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedc.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "digits_mlp.fed")


def fedc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real command in a fresh process (exit status and stderr as a shell sees them)."""
    return subprocess.run([sys.executable, "-m", "fedc", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """fedc.cli.main in this process (no interpreter start-up): (exit status, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def simulate_json(*args: str, cwd: Path | None = None) -> dict:
    out = fedc("simulate", EXAMPLE, "--data", "digits", *args, "--json", cwd=cwd)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return json.loads(out.stdout)


def simulate_here(capsys, *args: str) -> dict:
    code, out, err = cli(capsys, "simulate", EXAMPLE, "--data", "digits", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_json_run_writes_results_csv_weights_and_plot(tmp_path, capsys):
    payload = simulate_here(capsys, "--clients", "8", "--clients-per-round", "0.5", "--rounds", "3",
                            "--partition", "shards:2", "--show-partition", "--federated-eval",
                            "--out", str(tmp_path / "run"), "--plot", str(tmp_path / "p.png"))
    assert payload["ok"] is True and payload["config"]["clients_per_round"] == 4
    rounds = payload["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(0 <= r["test_accuracy"] <= 1 and r["test_loss"] > 0 for r in rounds)
    assert all(r["federated_accuracy"] is not None for r in rounds)
    assert payload["final_test_accuracy"] == rounds[-1]["test_accuracy"]
    assert [p["samples"] for p in payload["partition"]] and \
        sum(p["samples"] for p in payload["partition"]) == payload["train_samples"]
    assert all(sum(1 for n in p["labels"] if n) <= 2 for p in payload["partition"])  # shards:2

    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["rounds"] == rounds and saved["weights_sha256"] == payload["weights_sha256"]
    with (tmp_path / "run" / "rounds.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["test_accuracy"]) for r in rows] == [r["test_accuracy"] for r in rounds]
    weights = np.load(tmp_path / "run" / "weights.npy")
    assert weights.dtype == np.float32 and weights.shape == (9610,)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_bits_through_the_cli(tmp_path, capsys):
    args = ("--clients", "6", "--rounds", "2", "--partition", "dirichlet:0.3", "--seed", "7")
    a = simulate_here(capsys, *args, "--out", str(tmp_path / "a"))
    b = simulate_here(capsys, *args, "--out", str(tmp_path / "b"), "--workers", "2")
    assert a["weights_sha256"] == b["weights_sha256"]
    assert (tmp_path / "a" / "weights.npy").read_bytes() == \
        (tmp_path / "b" / "weights.npy").read_bytes()


def test_target_native_gives_the_wasm_bits_and_says_so(tmp_path, capsys):
    args = ("--clients", "6", "--rounds", "2", "--seed", "5")
    wasm = simulate_here(capsys, *args, "--out", str(tmp_path / "w"))
    native = simulate_here(capsys, *args, "--out", str(tmp_path / "n"), "--target", "native")
    assert (wasm["target"], native["target"]) == ("wasm", "native")
    assert native["weights_sha256"] == wasm["weights_sha256"]
    assert [r["test_loss"] for r in native["rounds"]] == [r["test_loss"] for r in wasm["rounds"]]


def test_human_output_shows_progress_and_default_run_folder(tmp_path):
    out = fedc("simulate", EXAMPLE, "--data", "digits", "--rounds", "2", "--name", "smoke",
               "--dropout", "0.3", "--show-partition", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "round" in out.stderr and "2/2" in out.stderr and "partition" in out.stderr
    assert "test accuracy" in out.stdout and "runs/smoke" in out.stdout
    assert (tmp_path / "runs" / "smoke" / "results.json").is_file()


def test_strategy_options_and_fedprox_default_mu(tmp_path, capsys):
    payload = simulate_here(capsys, "--rounds", "1", "--strategy", "trimmed_mean",
                            "--strategy-opt", "beta=0.1", "--out", str(tmp_path / "t"))
    assert payload["strategy"] == {"name": "trimmed_mean", "options": {"beta": 0.1}}
    payload = simulate_here(capsys, "--rounds", "1", "--strategy", "fedprox", "--out",
                            str(tmp_path / "p"))
    # the .fed says fedavg (mu 0): FedProx's default mu, compiled into the clients' kernel
    assert payload["strategy"] == {"name": "fedprox", "options": {"mu": 0.01}}
    assert payload["warnings"] == []


@pytest.mark.parametrize("args,message", [
    (["--strategy", "fedavgg"], "unknown strategy 'fedavgg'; did you mean 'fedavg'?"),
    (["--partition", "dirichlet"], "needs a parameter: dirichlet:ALPHA"),
    (["--partition", "zipf:1"], "unknown partition scheme 'zipf:1'"),
    (["--partition", "dirichlet:-1"], "ALPHA must be a positive number"),
    (["--dropout", "-0.2"], "expected a probability in [0, 1)"),
    (["--dropout", "1"], "expected a probability in [0, 1)"),
    (["--lr", "-0.1"], "expected a finite number > 0"),
    (["--lr", "inf"], "expected a finite number > 0, got 'inf'"),
    (["--deadline", "0"], "expected a finite number > 0"),
    (["--deadline", "inf"], "expected a finite number > 0, got 'inf'"),  # Infinity in the JSON
    (["--speed-median", "inf"], "expected a finite number > 0, got 'inf'"),
    (["--speed-sigma", "1e300"], "are beyond a double's range"),  # a ZeroDivisionError
    (["--clients-per-round", "0"], "a count ≥ 1 or a fraction in (0, 1]"),
    (["--clients-per-round", "1.5"], "a count ≥ 1 or a fraction in (0, 1]"),
    (["--clients", "-3"], "expected a positive integer"),
    (["--byzantine", "-1"], "expected an integer ≥ 0"),
    (["--seed", "4294967296"], "expected an integer in 0..4294967295"),  # sklearn's random_state
    (["--attack", "noise:1"], "unknown attack 'noise:1'"),
    (["--strategy-opt", "beta"], "expected KEY=VALUE"),
    (["--clients", "5", "--clients-per-round", "8"],
     "clients per round (8) is more than the number of clients (5)"),
    (["--byzantine", "11"], "byzantine clients must be in 0..10"),
    (["--strategy", "krum", "--strategy-opt", "g=1"], "krum: unknown option 'g'"),
    (["--strategy", "krum", "--strategy-opt", "f=100"], "krum with f=100 needs n > 2f + 2 = 202 "
     "client updates per round, but a round has at most n = 10 (the clients sampled per round)"),
    (["--strategy", "multikrum", "--strategy-opt", "m=20", "--clients", "5"],
     "multikrum: m=20 is more than the 5 client updates a round has at most"),
    (["--batch-size", "1000"], "exceeds the module's max batch 256"),
    (["--target", "gpu"], "invalid choice: 'gpu' (choose from 'wasm', 'native')"),
])
def test_bad_flags_exit_2_with_a_clear_message(args, message, tmp_path, capsys):
    code, _, err = cli(capsys, "simulate", EXAMPLE, "--data", "digits", "--rounds", "1",
                       "--out", str(tmp_path / "r"), *args)
    assert code == 2, err
    assert message in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args", [["--clients", "0"], ["--partition", "iid:3"],
                                  ["--target", "gpu"]])
def test_a_bad_flag_with_json_still_prints_one_json_object(args, tmp_path, capsys):
    # argparse's own errors used to leave stdout empty, unlike every other error
    code, out, err = cli(capsys, "simulate", EXAMPLE, "--data", "digits", "--json",
                         "--out", str(tmp_path / "r"), *args)
    assert code == 2 and "error: argument" in err
    payload = json.loads(out)
    assert payload["ok"] is False and payload["exit_code"] == 2
    assert payload["diagnostics"][0]["message"] in err


@pytest.mark.parametrize("where, message", [
    ("out_is_a_file", "cannot write the run's results to {out}: it exists and is not a "
                      "directory"),
    ("plot.txt", "cannot write the plot {plot}: '.txt' is not an image format (use .png, or "),
    ("plot", "cannot write the plot {plot}: it has no file extension (use .png, or one of "),
    ("no/plot.png", "cannot write the plot {plot}: no such directory "),
])
def test_unwritable_results_or_plot_are_refused_before_training(where, message, tmp_path,
                                                                capsys):
    # these failed after the last round, losing the run (a .txt plot with a ValueError
    # traceback, and a plot that failed before results.json was written took it along)
    in_the_way = tmp_path / "out_is_a_file"
    in_the_way.write_text("")
    out = in_the_way if where == "out_is_a_file" else tmp_path / "run"
    plot = tmp_path / where
    flags = ["--plot", str(plot)] if where != "out_is_a_file" else []
    code, stdout, err = cli(capsys, "simulate", EXAMPLE, "--data", "digits", "--rounds", "1",
                            "--out", str(out), *flags, "--json")
    assert code == 2 and message.format(out=out, plot=plot) in err, err
    assert "round 1" not in err and json.loads(stdout)["exit_code"] == 2
    assert not (tmp_path / "run" / "results.json").exists()


def test_train_save_to_an_unwritable_folder_is_refused_before_training(tmp_path, capsys):
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    code, out, err = cli(capsys, "train", EXAMPLE, "--data", "digits", "--epochs", "1",
                         "--save", str(in_the_way))
    assert code == 2 and f"cannot write {in_the_way}: it exists and is not a directory" in err
    assert "epoch" not in out  # it was refused after the last epoch, the weights lost


def test_npz_that_does_not_fit_the_model_exits_1(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((60, 30)).astype(np.float32), y=np.arange(60) % 3)
    code, out, err = cli(capsys, "simulate", EXAMPLE, "--data", str(tmp_path / "d.npz"),
                         "--json")
    assert code == 1
    assert "dataset 'd.npz' has 30 features per example but input 'x' is f32[64]" in err
    assert json.loads(out)["ok"] is False


def test_more_clients_than_samples_is_a_clear_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((20, 64)).astype(np.float32), y=np.arange(20) % 10)
    code, _, err = cli(capsys, "simulate", EXAMPLE, "--data", str(tmp_path / "d.npz"),
                       "--clients", "50", "--clients-per-round", "5")
    assert code == 2
    assert "cannot give 50 clients at least one sample each from 16 samples" in err


def test_unwritable_out_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, _, err = cli(capsys, "simulate", EXAMPLE, "--data", "digits", "--rounds", "1",
                       "--out", str(tmp_path / "file" / "run"))
    assert code == 2 and "cannot write the run's results" in err


@pytest.mark.slow
def test_digits_20_clients_dirichlet_reaches_93_percent(tmp_path):
    payload = simulate_json("--clients", "20", "--partition", "dirichlet:0.5",
                            "--clients-per-round", "10", "--rounds", "30", "--local-epochs", "5",
                            "--out", str(tmp_path / "run"))
    assert len(payload["rounds"]) == 30 and payload["client_updates"] == 300
    assert payload["final_test_accuracy"] >= 0.93
    assert payload["rounds"][0]["test_accuracy"] < 0.8  # it learned federatedly, from scratch
