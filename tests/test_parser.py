"""The front end: .fed text → AST nodes with the right values and spans."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedc.diagnostics import Span
from fedc.syntax import (
    Assign,
    BinOp,
    Call,
    Expr,
    InputDecl,
    Keyword,
    Name,
    Num,
    Program,
    Str,
    TensorTypeExpr,
    parse,
)

EXAMPLE_PATH = Path(__file__).parents[1] / "examples" / "digits_mlp.fed"
EXAMPLE = EXAMPLE_PATH.read_text()
HEAD = "model M:\n    input x: f32[4]\n"


def value_of(expr_text: str) -> Expr:
    """The AST of one expression, parsed as the right-hand side of an assignment."""
    return parse(f"{HEAD}    h = {expr_text}\n").model.body[0].value


def strip(node: object) -> object:
    """The node's shape without spans, for comparing structure."""
    match node:
        case Name(id=name):
            return name
        case Num(value=value) | Str(value=value):
            return value
        case BinOp(op=op, left=left, right=right):
            return (op, strip(left), strip(right))
        case Call(func=func, args=args, kwargs=kwargs):
            return (func, [strip(a) for a in args], {k.name: strip(k.value) for k in kwargs})
    raise AssertionError(node)


# ---- the example and the top-level structure -------------------------------------------


def test_digits_example_parses_into_model_optimizer_and_settings() -> None:
    program = parse(EXAMPLE, "digits_mlp.fed")
    assert isinstance(program, Program)
    assert (program.file, program.source) == ("digits_mlp.fed", EXAMPLE)
    model = program.model
    assert model.name == "DigitsMLP"
    assert [(i.name, i.type.dtype, i.type.dims) for i in model.inputs] == [("x", "f32", (64,))]
    assert [(t.name, t.type.dtype, t.type.dims) for t in model.targets] == [("y", "class", (10,))]
    assert [(a.name, strip(a.value)) for a in model.body] == [
        ("h", ("relu", [("dense", ["x", 128], {})], {})),
        ("logits", ("dense", ["h", 10], {})),
        ("loss", ("softmax_cross_entropy", ["logits", "y"], {})),
    ]
    assert program.optimizer is not None and program.optimizer.name == "sgd"
    assert {k.name: strip(k.value) for k in program.optimizer.kwargs} == {
        "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
    }
    assert program.federated is not None
    assert {s.name: strip(s.value) for s in program.federated.settings} == {
        "rounds": 30, "clients_per_round": 10, "local_epochs": 1, "batch_size": 32,
        "strategy": "fedavg",
    }


def test_optimizer_and_federated_are_optional() -> None:
    program = parse(HEAD + "    h = x\n")
    assert program.optimizer is None and program.federated is None


def test_federated_may_come_before_optimizer() -> None:
    program = parse(HEAD + "federated:\n    rounds = 2\noptimizer sgd(lr=0.1)\n")
    assert program.optimizer is not None and program.federated is not None


def test_optimizer_without_arguments_has_no_kwargs() -> None:
    for line in ("optimizer sgd\n", "optimizer sgd()\n"):
        optimizer = parse(HEAD + line).optimizer
        assert optimizer is not None and (optimizer.name, optimizer.kwargs) == ("sgd", ())


def test_model_statements_keep_source_order_and_several_inputs_are_allowed() -> None:
    program = parse(
        "model Two:\n    h = x\n    input a: f32[3]\n    target y: i32[]\n    input b: i32[2, 2]\n"
    )
    assert [i.name for i in program.model.inputs] == ["a", "b"]
    assert program.model.targets[0].type == TensorTypeExpr("i32", (), program.model.targets[0]
                                                           .type.span)


# ---- types -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "dtype", "dims"), [
    ("f32[64]", "f32", (64,)),
    ("f32[1, 8, 8]", "f32", (1, 8, 8)),
    ("f32[1, 8, 8,]", "f32", (1, 8, 8)),
    ("i32[20]", "i32", (20,)),
    ("class[10]", "class", (10,)),
    ("f32[]", "f32", ()),
    ("f32", "f32", ()),
])
def test_types_give_dtype_and_per_example_dims(
        text: str, dtype: str, dims: tuple[int, ...]) -> None:
    decl = parse(f"model M:\n    input x: {text}\n").model.inputs[0]
    assert (decl.type.dtype, decl.type.dims) == (dtype, dims)


# ---- expressions -----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("3", 3), ("3.0", 3.0), ("1e-3", 1e-3), ("2E+2", 200.0), (".5", 0.5), ("5.", 5.0),
    ("-3", -3), ("-1e-3", -1e-3), ("-(2)", -2), ("--2", 2), ("- 0.5", -0.5),
])
def test_numbers_and_negated_numbers_become_num(text: str, value: float) -> None:
    num = value_of(text)
    assert isinstance(num, Num) and num.value == value
    assert type(num.value) is type(value)


def test_negative_number_span_covers_the_minus_sign() -> None:
    assert value_of("-1e-3").span == Span("<input>", 3, 9, 3, 14)


@pytest.mark.parametrize(("text", "value"), [
    ("'relu'", "relu"), ('"relu"', "relu"), (r"'it\'s'", "it's"), (r'"a\"b"', 'a"b'),
    (r"'tab\there'", "tab\there"), (r"'back\\slash'", "back\\slash"), ("''", ""),
])
def test_strings_in_either_quotes_become_str(text: str, value: str) -> None:
    assert value_of(text) == Str(value, value_of(text).span)


def test_call_has_positional_then_keyword_arguments() -> None:
    call = value_of("conv(x, 16, kernel=3, pad='same')")
    assert isinstance(call, Call)
    assert strip(call) == ("conv", ["x", 16], {"kernel": 3, "pad": "same"})
    assert all(isinstance(k, Keyword) for k in call.kwargs)


def test_call_without_arguments_and_with_trailing_comma() -> None:
    assert strip(value_of("f()")) == ("f", [], {})
    assert strip(value_of("f(x, k=1,)")) == ("f", ["x"], {"k": 1})


@pytest.mark.parametrize(("text", "tree"), [
    ("a + b", ("+", "a", "b")),
    ("a + b + c", ("+", ("+", "a", "b"), "c")),
    ("a - b - c", ("-", ("-", "a", "b"), "c")),
    ("a + b * c", ("+", "a", ("*", "b", "c"))),
    ("a * b + c", ("+", ("*", "a", "b"), "c")),
    ("(a + b) * c", ("*", ("+", "a", "b"), "c")),
    ("h + dense(h, 8)", ("+", "h", ("dense", ["h", 8], {}))),
    ("a * -2", ("*", "a", -2)),
])
def test_binary_operators_have_usual_precedence_and_left_associativity(
        text: str, tree: object) -> None:
    assert strip(value_of(text)) == tree


# ---- spans -----------------------------------------------------------------------------


def test_every_span_points_at_its_source_text() -> None:
    program = parse(EXAMPLE, "digits_mlp.fed")
    lines = EXAMPLE.splitlines()

    def text_at(span: Span) -> str:
        assert span.file == "digits_mlp.fed" and span.end_line == span.line
        return lines[span.line - 1][span.col - 1:span.end_col - 1]

    h = program.model.body[0]
    assert isinstance(h, Assign) and isinstance(h.value, Call)
    assert text_at(h.span) == "h = relu(dense(x, 128))"
    assert text_at(h.name_span) == "h"
    assert text_at(h.value.span) == "relu(dense(x, 128))"
    assert text_at(h.value.func_span) == "relu"
    dense = h.value.args[0]
    assert isinstance(dense, Call) and text_at(dense.span) == "dense(x, 128)"
    assert text_at(dense.args[1].span) == "128"
    x = program.model.inputs[0]
    assert isinstance(x, InputDecl) and x.name_span is not None
    assert (text_at(x.span), text_at(x.name_span), text_at(x.type.span)) == (
        "input x: f32[64]", "x", "f32[64]")
    assert text_at(program.model.span) == "model DigitsMLP"
    assert program.optimizer is not None and text_at(program.optimizer.span).startswith("sgd(")
    assert text_at(program.optimizer.kwargs[0].span) == "lr=0.05"
    assert program.federated is not None and text_at(program.federated.span) == "federated"
    rounds = program.federated.settings[0]
    assert rounds.name_span is not None
    assert (text_at(rounds.span), text_at(rounds.name_span)) == ("rounds = 30", "rounds")


def test_spans_use_the_given_filename() -> None:
    assert parse(HEAD + "    h = x\n", "nets/tiny.fed").model.body[0].span.file == "nets/tiny.fed"


# ---- layout: comments, blank lines, line ends, indentation -----------------------------


def shape(program: Program) -> object:
    return (
        program.model.name,
        [(i.name, i.type.dims) for i in program.model.inputs],
        [(a.name, strip(a.value)) for a in program.model.body],
        program.optimizer and [(k.name, strip(k.value)) for k in program.optimizer.kwargs],
        program.federated and [(s.name, strip(s.value)) for s in program.federated.settings],
    )


@pytest.mark.parametrize("variant", [
    pytest.param(lambda t: t.replace("\n", "\r\n"), id="crlf"),
    pytest.param(lambda t: t.replace("\n", "\r"), id="old-mac-cr"),
    pytest.param(lambda t: t.rstrip("\n"), id="no-final-newline"),
    pytest.param(lambda t: t.replace("\n", "   \n"), id="trailing-whitespace"),
    pytest.param(lambda t: t.replace("    ", "\t"), id="tabs"),
    pytest.param(lambda t: t.replace("    ", "  "), id="two-spaces"),
    pytest.param(lambda t: t.replace("\n", "\n\n"), id="blank-lines"),
    pytest.param(lambda t: t.replace("\n", "  # note\n"), id="trailing-comments"),
    pytest.param(lambda t: t.replace("\n", "\n# aside\n"), id="comment-lines"),
    pytest.param(lambda t: t.replace("\n", "\n      # odd indent\n"), id="indented-comments"),
    pytest.param(lambda t: "\n\n# header\n" + t + "# the end", id="comment-at-eof"),
    pytest.param(lambda t: "\n".join(line if line.startswith("#") else
                                      line.replace(", ", ",\n  # inside brackets\n        ")
                                      for line in t.split("\n")), id="multi-line-calls"),
    pytest.param(lambda t: t.replace("\n", "\r\n").rstrip("\r\n") + "  # no newline", id="mixed"),
])
def test_layout_variants_parse_to_the_same_program(variant) -> None:  # type: ignore[no-untyped-def]
    assert shape(parse(variant(EXAMPLE))) == shape(parse(EXAMPLE))


def test_crlf_positions_match_lf_positions() -> None:
    crlf = parse(EXAMPLE.replace("\n", "\r\n")).model.body[2].value.span
    assert crlf == parse(EXAMPLE).model.body[2].value.span


def test_keywords_are_ordinary_names_inside_expressions() -> None:
    assert strip(value_of("f(input, model)")) == ("f", ["input", "model"], {})


def test_parse_is_safe_from_several_threads() -> None:
    results: list[object] = []

    def work() -> None:
        for _ in range(20):
            results.append(shape(parse(EXAMPLE)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [shape(parse(EXAMPLE))] * 80


# ---- hypothesis: generated valid programs parse back to what was generated -------------

# no keyword (model, input, target, optimizer, federated) starts with these letters
NAMES = st.builds("{}{}".format, st.sampled_from("abhxyz_"),
                  st.text("abdilmnprstu_019", max_size=5))


LEAVES = NAMES | st.integers(0, 10**6).map(str) | st.sampled_from(["0.5", "1e-3", "-2", "'s'"])
EXPRESSIONS = st.recursive(LEAVES, lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from([" + ", " - ", " * "]), inner).map("".join),
    st.tuples(NAMES, st.lists(inner, max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
    inner.map(lambda e: f"({e})"),
), max_leaves=8)


@st.composite
def programs(draw: st.DrawFn) -> tuple[str, list[str]]:
    indent = draw(st.sampled_from(["    ", "  ", "\t"]))
    targets = draw(st.lists(NAMES, min_size=1, max_size=5))
    lines = [f"model {draw(NAMES)}:", f"{indent}input x: f32[{draw(st.integers(1, 999))}]"]
    lines += [f"{indent}{name} = {draw(EXPRESSIONS)}" for name in targets]
    tail = [["optimizer sgd(lr=0.1)"], ["federated:", f"{indent}rounds = 3"]]
    for section in draw(st.permutations(tail))[:draw(st.integers(0, 2))]:
        lines += section
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return newline.join(lines) + draw(st.sampled_from(["", newline])), targets


@settings(max_examples=200, deadline=None)
@given(programs())
def test_generated_programs_parse_with_their_assignments(case: tuple[str, list[str]]) -> None:
    text, targets = case
    assert [a.name for a in parse(text).model.body] == targets
