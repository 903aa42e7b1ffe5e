"""The checker: positions and messages of every user error, and reporting all of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedc.diagnostics import CheckError, Diagnostic, FedcError
from fedc.optim import OPTIMIZERS
from fedc.optim.base import boolean
from fedc.pipeline import check_source

CASES = sorted((Path(__file__).parent / "check_errors").glob("*.fed"))


def _expectation(path: Path) -> tuple[int, int, str]:
    first = path.read_text().splitlines()[0]
    m = re.match(r"# expect: (\d+):(\d+): (.*)", first)
    assert m, f"{path.name} lacks an '# expect: LINE:COL: message' first line"
    return int(m[1]), int(m[2]), m[3]


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_check_error_reports_position_and_message(path):
    line, col, message = _expectation(path)
    with pytest.raises(FedcError) as info:
        check_source(path.read_text(), path.name)
    diags = info.value.diagnostics
    assert any(d.span and (d.span.line, d.span.col) == (line, col) and message in d.message
               for d in diags), "\n" + info.value.render()
    rendered = info.value.render()
    assert f"{path.name}:{line}:{col}: error: " in rendered
    assert "^" in rendered  # the caret line under the source


def test_checker_reports_every_error_not_only_the_first():
    src = """model M:
    input x: f32[64]
    target y: class[10]
    h = relu(dense(q, 32))
    g = tanhh(h)
    logits = dense(x, 10)
    loss = softmax_cross_entropy(logits, y)
optimizer sgd(lr=-1)
federated:
    rounds = 0
"""
    with pytest.raises(CheckError) as info:
        check_source(src, "many.fed")
    positions = {(d.span.line, d.span.col) for d in info.value.diagnostics if d.span}
    assert {(4, 20), (5, 9), (8, 18), (10, 14)} <= positions, info.value.render()


def test_shape_error_carries_a_note_pointing_at_the_definition():
    src = """model M:
    input x: f32[64]
    target y: class[10]
    h = relu(dense(x, 32))
    r = h + x
    loss = softmax_cross_entropy(dense(r, 10), y)
optimizer sgd(lr=0.1)
"""
    with pytest.raises(CheckError) as info:
        check_source(src, "note.fed")
    assert "note: h (f32[N,32]) defined here: note.fed:4:5" in info.value.render()


def test_an_argument_error_points_at_the_value_or_at_a_wrong_keyword_and_notes_only_tensors():
    src = """model M:
    input x: f32[4]
    target y: class[3]
    a = dense(x, 3, bias=1)
    b = dense(x, 3, bais=true)
    c = conv2d(x, 8, 3)
    loss = softmax_cross_entropy(dense(x, 3), y)
optimizer sgd(lr=0.1)
"""
    with pytest.raises(CheckError) as info:
        check_source(src, "args.fed")
    value, keyword, tensor = info.value.diagnostics
    assert (value.span.line, value.span.col, value.span.end_col) == (4, 26, 27), value.span
    assert value.notes == ()  # where x was defined says nothing about `bias=1`
    assert (keyword.span.col, keyword.span.end_col) == (21, 30)  # all of `bais=true`
    assert "no argument 'bais'; did you mean 'bias'?" in keyword.message
    assert tensor.notes and "x (f32[N,4]) defined here" in tensor.notes[0][0], tensor


def test_a_layer_flag_written_as_a_string_is_an_error_saying_to_drop_the_quotes():
    src = """model M:
    input x: f32[4]
    target y: class[3]
    loss = softmax_cross_entropy(dense(x, 3, bias='false'), y)
optimizer sgd(lr=0.1)
"""
    diag = _only_error(src)
    assert diag.message == ("dense expects true or false (without quotes) for 'bias' but got "
                            "'false'") and diag.span.col == 51, diag


DEAD = """model M:
    input x: f32[4]
    input z: f32[2]
    target y: class[3]
    a = dense(x, 50)
    b = relu(a)
    h = dense(x, 8)
    h = relu(h)
    loss = softmax_cross_entropy(dense(h, 3), y)
optimizer sgd(lr=0.1)
"""


def test_statements_nothing_uses_are_left_out_with_a_warning_each():
    """`a` and `b` feed neither the loss nor the prediction: their layer would be trained for
    nothing and sent in every update. The first `h` is used by the second, so it stays."""
    model = check_source(DEAD, "dead.fed")
    assert [p.value.name for p in model.graph.params] == [
        "dense_1.weight", "dense_1.bias", "dense_2.weight", "dense_2.bias"]
    assert [n.op for n in model.graph.nodes].count("relu") == 1
    shown = [(w.severity, w.span.line, w.span.col, w.message) for w in model.warnings]
    assert shown == [
        ("warning", 5, 5, "'a' is used by neither the loss nor the prediction: it is left out "
                          "of the module, with its 250 parameter values"),
        ("warning", 6, 5, "'b' is used by neither the loss nor the prediction: it is left out "
                          "of the module"),
        ("warning", 3, 11, "input 'z' is never used (hosts still write it each batch)")]
    assert [d.name for d in model.inputs] == ["x", "z"]  # the ABI keeps every declared input


def test_warnings_go_to_stderr_or_into_the_json_result(tmp_path):
    import json
    import subprocess
    import sys
    path = tmp_path / "dead.fed"
    path.write_text(DEAD)
    out = subprocess.run([sys.executable, "-m", "fedc", "check", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith(f"{path}: ok")
    assert f"{path}:5:5: warning: 'a' is used by neither" in out.stderr and "^" in out.stderr
    out = subprocess.run([sys.executable, "-m", "fedc", "compile", str(path), "-o",
                          str(tmp_path / "out"), "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == ""
    warnings = json.loads(out.stdout)["warnings"]
    assert [(w["severity"], w["line"]) for w in warnings] == [("warning", 5), ("warning", 6),
                                                              ("warning", 3)]


def test_a_negative_zero_proximal_mu_is_zero(digits_mlp_source):
    import math
    model = check_source(digits_mlp_source + "    proximal_mu = -0.0\n", "m.fed")
    assert math.copysign(1.0, model.federated["proximal_mu"]) == 1.0


def _only_error(src: str) -> Diagnostic:
    """The one diagnostic checking `src` raises."""
    with pytest.raises(CheckError) as info:
        check_source(src, "t.fed")
    (d,) = info.value.diagnostics
    return d


def test_valid_example_checks(digits_mlp_source):
    model = check_source(digits_mlp_source, "digits_mlp.fed")
    assert model.task == "classification"
    assert [p.value.name for p in model.graph.params] == [
        "dense_0.weight", "dense_0.bias", "dense_1.weight", "dense_1.bias"]
    assert model.federated["strategy"] == "fedavg"
    assert model.optimizer.hparams["momentum"] == 0.9


@pytest.mark.parametrize("expr", ["x" + " + x" * 3000, "relu(" * 3000 + "x" + ")" * 3000],
                         ids=["long_sum", "deep_nesting"])
def test_checker_handles_expressions_deeper_than_pythons_stack(expr):
    src = ("model M:\n    input x: f32[4]\n    target y: class[3]\n"
           f"    h = {expr}\n    loss = softmax_cross_entropy(dense(h, 3), y)\n"
           "optimizer sgd(lr=0.1)\n")
    model = check_source(src, "deep.fed")
    assert len(model.graph.nodes) > 3000


def test_checker_keeps_evaluation_order_and_every_error_in_calls():
    src = """model M:
    input x: f32[4]
    target y: class[3]
    h = foo(bar(x, q=zz), baz(x) + w)
    loss = softmax_cross_entropy(dense(x, 3), y)
optimizer sgd(lr=0.1)
"""
    with pytest.raises(CheckError) as info:
        check_source(src, "order.fed")
    found = [(d.span.line, d.span.col, d.message.split("'")[1]) for d in info.value.diagnostics]
    assert found == [(4, 22, "zz"), (4, 13, "bar"), (4, 27, "baz"), (4, 36, "w"),
                     (4, 9, "foo")]


def test_federated_settings_that_are_not_literals_get_one_plain_error_each():
    src = """model M:
    input x: f32[4]
    target y: class[3]
    loss = softmax_cross_entropy(dense(x, 3), y)
optimizer sgd(lr=0.1)
federated:
    rounds = dense(x, 2)
    local_epochs = 1 + 2
    batch_size = true
    strategy = fedavg()
"""
    with pytest.raises(CheckError) as info:
        check_source(src, "fed.fed")
    assert [(d.span.line, d.message.split(" (expected")[0]) for d in info.value.diagnostics] == [
        (7, "rounds must be a positive integer but got dense(…)"),
        (8, "local_epochs must be a positive integer but got an expression"),
        (9, "batch_size must be a positive integer but got true"),
        (10, "unknown strategy fedavg(…)"),
    ]


def test_a_failed_declaration_is_reported_once_not_at_every_use():
    src = """model M:
    input x: class[4]
    target y: class[1]
    h = relu(dense(x, 8))
    loss = softmax_cross_entropy(dense(h, 3), y)
optimizer sgd(lr=0.1)
"""
    with pytest.raises(CheckError) as info:
        check_source(src, "decl.fed")
    assert [d.span.line for d in info.value.diagnostics] == [2, 3], info.value.render()



def _optimizer_cases(flags: bool) -> list[tuple[str, str]]:
    """(optimizer, hyper-parameter) for every true/false one (flags) or every numeric one."""
    return [(o, h) for o, d in OPTIMIZERS.items() for h, hp in d.hparams.items()
            if (hp.check is boolean) == flags]


def _with_optimizer(opt: str, setting: str) -> str:
    lr = "" if setting.startswith("lr=") else "lr=0.1, "
    return ("model M:\n    input x: f32[4]\n    target y: class[3]\n"
            "    loss = softmax_cross_entropy(dense(x, 3), y)\n"
            f"optimizer {opt}({lr}{setting})\n")


@pytest.mark.parametrize("value", ["true", "false"])
@pytest.mark.parametrize(("opt", "hparam"), _optimizer_cases(flags=False))
def test_a_boolean_for_a_numeric_hyper_parameter_is_an_error_at_its_position(opt, hparam, value):
    # true and false used to count as 1 and 0, so sgd(lr=true) compiled with lr = 1
    src = _with_optimizer(opt, f"{hparam}={value}")
    d = _only_error(src)
    rule = OPTIMIZERS[opt].hparams[hparam].rule
    assert d.message == f"{opt}: {hparam} must be a number {rule} but got the boolean {value}"
    col = src.splitlines()[4].index(f"{hparam}={value}") + len(hparam) + 2
    assert d.span is not None and (d.span.line, d.span.col) == (5, col)


@pytest.mark.parametrize("value", ["1", "0", "0.0", "'true'"])
@pytest.mark.parametrize(("opt", "hparam"), _optimizer_cases(flags=True))
def test_a_flag_hyper_parameter_takes_only_true_or_false(opt, hparam, value):
    with pytest.raises(CheckError) as info:
        check_source(_with_optimizer(opt, f"{hparam}={value}"), "f.fed")
    assert [d.message for d in info.value.diagnostics] == [
        f"{opt}: {hparam} must be true or false but got {value}"]


@pytest.mark.parametrize("setting", ["clip_norm=true", "warmup=false",
                                     "schedule=step(step_size=true)",
                                     "schedule=cosine(t_max=10, eta_min=false)"])
def test_a_boolean_for_a_general_optimizer_setting_says_it_is_a_boolean(setting):
    with pytest.raises(CheckError) as info:
        check_source(_with_optimizer("sgd", setting), "g.fed")
    (d,) = info.value.diagnostics
    assert "but got the boolean " in d.message, d.message


_HUGE = 10**160  # its square is beyond a float: √fan_in and the like overflowed


@pytest.mark.parametrize(("decl", "layer", "line", "col", "start"), [
    ("f32[1, 8, 8]", f"conv2d(x, 4, {_HUGE}, padding={_HUGE})", 4, 9,
     "conv2d_0.weight is f32[4,1,1"),
    (f"f32[{_HUGE}, {_HUGE}]", "flatten(x)", 2, 14, f"input x: f32[{_HUGE}, {_HUGE}] per example"),
    ("f32[8]", "dense(x, 2000000000)", 4, 9, "dense_0.weight is f32[8,2000000000]"),
])
def test_a_tensor_no_wasm32_module_can_hold_is_an_error_at_its_source(decl, layer, line, col,
                                                                      start):
    # sizes beyond a float made OverflowError and int-to-str tracebacks in the checker
    src = (f"model M:\n    input x: {decl}\n    target y: class[3]\n    h = {layer}\n"
           "    loss = softmax_cross_entropy(dense(flatten(h), 3), y)\noptimizer sgd(lr=0.1)\n")
    with pytest.raises(CheckError) as info:
        check_source(src, "huge.fed")
    (d,) = info.value.diagnostics
    assert d.message.startswith(start), d.message
    assert d.message.endswith("more than a wasm32 module's 4 GiB of memory holds "
                              "(2^30 four-byte values)"), d.message
    assert d.span is not None and (d.span.line, d.span.col) == (line, col)


@pytest.mark.parametrize(("value", "what"), [("true", "the boolean true"),
                                             ("false", "the boolean false"),
                                             ("2", "the constant 2"), ("'a'", "the constant 'a'")])
def test_a_constant_assigned_in_the_model_is_named_as_the_source_spells_it(value, what):
    # the booleans were shown as Python's True and False
    src = ("model M:\n    input x: f32[4]\n    target y: class[3]\n"
           f"    h = {value}\n    loss = softmax_cross_entropy(dense(x, 3), y)\n"
           "optimizer sgd(lr=0.1)\n")
    d = _only_error(src)
    assert d.message == f"'h' must be a tensor expression, not {what}"
    assert d.span is not None and (d.span.line, d.span.col) == (4, 9)


def _with_scalar_input(statement: str) -> str:
    """A model with a per-example scalar input `s` and `statement` on line 5."""
    return ("model M:\n    input s: f32\n    input x: f32[4]\n    target y: class[3]\n"
            f"    {statement}\n    loss = softmax_cross_entropy(dense(x, 3), y)\n"
            "optimizer sgd(lr=0.1)\n")


@pytest.mark.parametrize("op", ["conv1d(s, 4, 3)", "max_pool1d(s, 2)", "avg_pool2d(s, 2)"])
def test_a_window_op_on_a_per_example_scalar_shows_its_type(op):
    # the type read f32[N,] (the empty per-example shape joined after "N,")
    d = _only_error(_with_scalar_input(f"g = {op}"))
    assert d.message.endswith("of type f32[N, channels, length] but got f32[N]" if "1d" in op
                              else "of type f32[N, channels, height, width] but got f32[N]"), \
        d.message
    assert d.span is not None and (d.span.line, d.span.col) == (5, 9)


@pytest.mark.parametrize("axis", ["", ", axis=1", ", axis=-1"])
def test_concat_of_per_example_scalars_says_they_have_no_axis(axis):
    # the message listed the axes to choose from: "one of  (dim 0 is the batch)", none
    d = _only_error(_with_scalar_input(f"g = concat(s, s{axis})"))
    assert d.message == ("concat joins tensors along a non-batch axis, but f32[N] has none "
                         "(one value per example)")
    assert d.span is not None and (d.span.line, d.span.col) == (5, 16)


@pytest.mark.parametrize(("sep", "last"), [("\n", "\n"), ("\r\n", "\r\n"), ("\r", "\r"),
                                           ("\n", "")])
def test_no_optimizer_is_reported_at_the_last_line_however_lines_end(sep, last):
    # with \r line ends it pointed at line 1, without a final line end at the line before last
    src = sep.join(["model M:", "    input x: f32[4]", "    target y: class[3]",
                    "    loss = softmax_cross_entropy(dense(x, 3), y)"]) + last
    with pytest.raises(CheckError) as info:
        check_source(src, "o.fed")
    (d,) = info.value.diagnostics
    assert d.message.startswith("no optimizer declared")
    assert d.span is not None and (d.span.line, d.span.col) == (4, 1)
    assert "\n       loss = softmax_cross_entropy" in info.value.render()
