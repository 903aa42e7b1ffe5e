"""The `fedc` command as a build pipeline sees it: exit codes, JSON on stdout, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "digits_mlp.fed")


def fedc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedc", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_train_digits_json_reaches_95_percent_in_wasm():
    out = fedc("train", EXAMPLE, "--data", "digits", "--epochs", "20", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] is True
    assert result["test_accuracy"] >= 0.95
    assert result["epochs"] == 20 and len(result["history"]) == 20
    assert result["samples_per_second"] > 0 and result["train_loss"] > 0


def test_check_reports_file_line_col_with_a_caret_and_exit_1(tmp_path):
    bad = tmp_path / "bad.fed"
    bad.write_text("model M:\n    input x: f32[4]\n    target y: class[2]\n"
                   "    loss = softmax_cross_entropy(dense(x, 3), y)\noptimizer sgd(lr=0.1)\n")
    out = fedc("check", str(bad))
    assert out.returncode == 1
    assert f"{bad}:4:34: error: softmax_cross_entropy expects logits f32[N, 2]" in out.stderr
    assert "^^^" in out.stderr and "Traceback" not in out.stderr


def test_syntax_error_exit_1_and_json_diagnostics(tmp_path):
    bad = tmp_path / "syntax.fed"
    bad.write_text("model M\n    input x: f32[4]\n")
    out = fedc("check", str(bad), "--json")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    payload = json.loads(out.stdout)
    assert payload["ok"] is False
    assert payload["diagnostics"][0]["line"] == 1


@pytest.mark.parametrize("args", [
    ["compile"],
    ["compile", EXAMPLE, "--max-batch", "0"],
    ["compile", EXAMPLE, "--features", "avx"],
    ["train", EXAMPLE],
    ["train", EXAMPLE, "--data", "digits", "--epochs", "-3"],
    # exit 1 with scikit-learn's words about train_test_split's random_state before
    ["train", EXAMPLE, "--data", "digits", "--seed", "4294967296"],
    ["frobnicate"],
])
def test_bad_usage_exits_2_without_traceback(args):
    out = fedc(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "usage:" in out.stderr


def test_missing_file_is_a_usage_error():
    out = fedc("check", "no/such/model.fed")
    assert out.returncode == 2 and "no such file: no/such/model.fed" in out.stderr


@pytest.mark.parametrize("command, flag", [("train", "--data"), ("simulate", "--data"),
                                           ("bundle", "--demo-data")])
def test_a_missing_data_file_is_a_usage_error_naming_the_flag(tmp_path, command, flag):
    # it was a DataError (exit 1), as for a file that exists but does not fit the model
    missing = tmp_path / "nosuch.npz"
    extra = ["-o", str(tmp_path / "b")] if command == "bundle" else \
        ["--out", str(tmp_path / "b")] if command == "simulate" else []
    out = fedc(command, EXAMPLE, flag, str(missing), *extra, "--json")
    assert out.returncode == 2 and f"{flag}: no such data file: {missing}" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "b").exists()
    assert json.loads(out.stdout)["exit_code"] == 2


@pytest.mark.parametrize("command, flag", [("train", "--data"), ("simulate", "--data"),
                                           ("bundle", "--demo-data"), ("serve", "--eval-data")])
def test_an_unknown_dataset_name_is_a_usage_error_with_a_hint(tmp_path, command, flag):
    # a bad flag value like a missing file (exit 2); it was a DataError (exit 1)
    extra = ["-o", str(tmp_path / "b")] if command == "bundle" else \
        ["--state", str(tmp_path / "s.db")] if command == "serve" else []
    out = fedc(command, EXAMPLE, flag, "digit", *extra, "--json")
    assert out.returncode == 2, out.stderr
    assert f"{flag}: unknown dataset 'digit'; did you mean 'digits'?" in out.stderr
    assert json.loads(out.stdout)["exit_code"] == 2 and not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("command", ["train", "simulate"])
def test_an_empty_data_flag_is_a_usage_error_not_the_current_directory(tmp_path, command):
    # Path("") is ".": "error: . is a directory, not a .npz data file" (exit 1)
    out = fedc(command, EXAMPLE, "--data", " ", "--json")
    assert out.returncode == 2 and "--data: no dataset given (expected one of digits" in out.stderr
    assert json.loads(out.stdout)["exit_code"] == 2


def test_compile_writes_module_and_manifest(tmp_path):
    out = fedc("compile", EXAMPLE, "-o", str(tmp_path / "build"), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    manifest = json.loads((tmp_path / "build" / "manifest.json").read_text())
    assert info["sha256"] == manifest["wasm"]["sha256"]
    assert (tmp_path / "build" / "model.wasm").stat().st_size == info["wasm_bytes"]


def test_emit_ir_prints_the_training_graph():
    out = fedc("compile", EXAMPLE, "--emit", "ir")
    assert out.returncode == 0
    assert "= matmul_tn" in out.stdout and "softmax_cross_entropy_grad" in out.stdout


def test_emit_llvm_prints_vector_code():
    out = fedc("compile", EXAMPLE, "--emit", "llvm-opt")
    assert out.returncode == 0 and "<4 x float>" in out.stdout


def test_dataset_that_does_not_fit_the_model_is_a_clear_error():
    out = fedc("train", EXAMPLE, "--data", "iris", "--json")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "has 4 features per example but input 'x' is f32[64]" in out.stderr


def test_npz_with_labels_beyond_the_target_classes_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((50, 64)).astype(np.float32),
             y=np.arange(50) % 12)
    out = fedc("train", EXAMPLE, "--data", str(tmp_path / "d.npz"), "--epochs", "1")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "12 classes" in out.stderr


def test_train_save_writes_weights(tmp_path):
    out = fedc("train", EXAMPLE, "--data", "digits", "--epochs", "1", "--save",
               str(tmp_path / "s"), "--json")
    assert out.returncode == 0, out.stderr
    w = np.load(tmp_path / "s" / "weights.npy")
    assert w.shape == (9610,) and w.dtype == np.float32


def test_train_json_of_a_diverged_run_has_null_losses_not_nan():
    """JSON has no NaN: json.dumps wrote the bare NaN that strict parsers reject."""
    out = fedc("train", EXAMPLE, "--data", "digits", "--epochs", "2", "--lr", "1e30", "--json")
    assert out.returncode == 0, out.stderr

    def reject(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON")

    result = json.loads(out.stdout, parse_constant=reject)
    assert result["train_loss"] is None and result["test_loss"] is None
    assert result["history"][-1]["train_loss"] is None


def test_the_parser_imports_no_server_code():
    """Every fedc command builds the whole parser first: it must not import the server, the
    Flower bridge, the partitioner or urllib (~70 ms of `fedc compile`'s start)."""
    code = ("import sys; from fedc.cli import build_parser; build_parser(); "
            "print(' '.join(m for m in ('fedc.serve.rounds', 'fedc.serve.flower_bridge', "
            "'fedc.fl.partition', 'fedc.fl.faults', 'urllib.request') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_unusable_out_dir_is_a_usage_error_with_json(tmp_path):
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    for out_dir, why in [(in_the_way, "it exists and is not a directory"),
                         (in_the_way / "sub", "Not a directory")]:
        out = fedc("compile", EXAMPLE, "-o", str(out_dir), "--json")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert f"cannot write {out_dir}: {why}" in out.stderr
        assert json.loads(out.stdout)["ok"] is False


@pytest.mark.parametrize("form, marker", [("ir", "= matmul_tn"), ("manifest", '"params_region"')])
def test_emit_with_json_puts_the_form_in_the_json_object(form, marker):
    out = fedc("compile", EXAMPLE, "--emit", form, "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)  # the whole of stdout: one JSON object
    assert payload["emit"] == form and marker in payload["text"]


@pytest.mark.parametrize("args", [
    ["compile", EXAMPLE, "--max-batch", "0", "--json"],
    ["check", EXAMPLE, "--json", "--bogus"],
])
def test_bad_usage_with_json_still_prints_one_json_object(args):
    out = fedc(*args)
    assert out.returncode == 2 and "usage:" in out.stderr
    payload = json.loads(out.stdout)
    assert payload["ok"] is False and payload["exit_code"] == 2
    assert payload["diagnostics"][0]["message"] in out.stderr


def test_a_file_that_is_not_utf8_is_an_input_error_at_the_bad_byte(tmp_path):
    bad = tmp_path / "latin1.fed"
    bad.write_bytes(b"model M:\n    input x: f32[4]  # caf\xe9\n")
    out = fedc("check", str(bad), "--json")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{bad}:2:27: error: the file is not UTF-8 text (byte 0xe9)" in out.stderr
    assert "^" in out.stderr
    assert json.loads(out.stdout)["diagnostics"][0]["line"] == 2


@pytest.mark.parametrize("flags, message", [
    ([], "nothing to do: give -o DIR to write the module, or --emit FORM"),
    # --bundle without -o went on to print the IR as if --bundle had not been given
    (["--bundle", "--emit", "ir"], "--bundle writes a client bundle: give -o DIR for its folder"),
], ids=["nothing", "bundle"])
@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
def test_compile_with_nothing_to_do_is_a_usage_error_before_compiling(monkeypatch, capsys,
                                                                      json_flag, flags, message):
    import fedc.pipeline
    from fedc.cli import main

    def compile_source(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled although there was nothing to do")

    monkeypatch.setattr(fedc.pipeline, "compile_source", compile_source)
    code = main(["compile", EXAMPLE, *flags, *json_flag])
    out = capsys.readouterr()
    assert code == 2 and f"error: {message}" in out.err
    if json_flag:
        assert json.loads(out.out) == {"ok": False, "exit_code": 2, "diagnostics": [
            {"severity": "error", "message": message, "notes": []}]}
    else:
        assert out.out == ""


def test_json_diagnostics_carry_the_notes_the_text_shows(tmp_path):
    bad = tmp_path / "twice.fed"
    bad.write_text("model M:\n    input x: f32[4]\n    input x: f32[4]\n    target y: class[3]\n"
                   "    h = dense(x, 3)\n    r = h + x\n"
                   "    loss = softmax_cross_entropy(r, y)\noptimizer sgd(lr=0.1)\n")
    out = fedc("check", str(bad), "--json")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    diags = json.loads(out.stdout)["diagnostics"]
    assert [d["notes"] for d in diags] == [
        [{"message": "first declared here", "file": str(bad), "line": 2, "col": 5}],
        [{"message": "h (f32[N,3]) defined here", "file": str(bad), "line": 5, "col": 5}],
    ]
    for d in diags:  # each note is in the text output too
        for note in d["notes"]:
            assert f"note: {note['message']}: {bad}:{note['line']}:{note['col']}" in out.stderr


def test_json_diagnostics_without_notes_have_an_empty_list():
    out = fedc("check", EXAMPLE, "--json", "--bogus")
    assert json.loads(out.stdout)["diagnostics"][0]["notes"] == []


@pytest.mark.parametrize("flags", [["--emit", "llvm"], ["--emit", "llvm", "--json"]])
def test_a_reader_that_closes_stdout_early_ends_fedc_quietly(flags):
    # `fedc compile --emit llvm | head -1` printed a BrokenPipeError traceback. The IR (150 KB)
    # is more than a pipe holds, so fedc is still writing when the pipe closes
    proc = subprocess.Popen([sys.executable, "-m", "fedc", "compile", EXAMPLE, *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


def test_an_internal_error_is_exit_70_and_one_json_object_with_json(monkeypatch, capsys):
    from fedc import cli
    from fedc.diagnostics import InternalError

    def broken(args):
        raise InternalError("LLVM rejected the generated IR")
    monkeypatch.setattr(cli, "cmd_check", broken)
    assert cli.main(["check", EXAMPLE, "--json"]) == 70
    out = capsys.readouterr()
    message = str(InternalError("LLVM rejected the generated IR"))
    assert message.startswith("internal compiler error: LLVM rejected") and "report" in message
    assert json.loads(out.out) == {"ok": False, "exit_code": 70, "diagnostics": [
        {"severity": "error", "message": message, "notes": []}]}
    assert message in out.err
    assert cli.main(["check", EXAMPLE]) == 70 and capsys.readouterr().out == ""
