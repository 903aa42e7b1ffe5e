"""Syntax errors: every failure is a ParseError with the right position and a friendly message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedc.diagnostics import ParseError
from fedc.syntax import parse
from fedc.syntax.parser import EXAMPLES

ERRORS = Path(__file__).parent / "errors"
EXAMPLE = (Path(__file__).parents[1] / "examples" / "digits_mlp.fed").read_text()
EXPECT = re.compile(r"# expect: (\d+):(\d+): (.+)")


def parse_error(text: str, filename: str = "m.fed") -> ParseError:
    with pytest.raises(ParseError) as info:
        parse(text, filename)
    return info.value


@pytest.mark.parametrize("path", sorted(ERRORS.glob("*.fed")), ids=lambda p: p.stem)
def test_error_file_reports_expected_position_and_message(path: Path) -> None:
    text = path.read_bytes().decode("utf-8")
    expect = EXPECT.match(text.splitlines()[0])
    assert expect, f"{path.name}: the first line must be '# expect: LINE:COL: message'"
    err = parse_error(text, path.name)
    (diagnostic,) = err.diagnostics
    assert diagnostic.span is not None
    assert (diagnostic.span.line, diagnostic.span.col) == (int(expect[1]), int(expect[2]))
    assert expect[3] in diagnostic.message


@pytest.mark.parametrize(("label", "snippet"),
                         [(label, s) for label, snippets in EXAMPLES.items() for s in snippets])
def test_every_labelled_example_gets_its_label(label: str, snippet: str) -> None:
    assert parse_error(snippet).message == label


@pytest.mark.parametrize("prefix", ["", "\n", "# comment\n\n"])
def test_labels_do_not_depend_on_leading_blank_lines(prefix: str) -> None:
    text = prefix + "model M:\n    input x: f32[4]\n    target y f32\n"
    assert parse_error(text).message == "missing ':' after the target's name"


def test_error_renders_location_source_line_and_caret() -> None:
    err = parse_error("model M:\n    input x: f32[4]\n    h = relu(x) y\n", "digits.fed")
    assert str(err).splitlines() == [
        "digits.fed:3:17: error: expected end of line after ')', found name 'y'",
        "       h = relu(x) y",
        "                   ^",
    ]
    assert err.render() == str(err)


def test_duplicate_names_point_at_the_second_with_a_note_on_the_first() -> None:
    err = parse_error("model M:\n    x = 1\nfederated:\n    rounds = 1\n    rounds = 2\n")
    diagnostic = err.diagnostics[0]
    assert diagnostic.span is not None and diagnostic.span.line == 5
    assert diagnostic.notes[0][0] == "first given here"
    assert diagnostic.notes[0][1] is not None and diagnostic.notes[0][1].line == 4


def test_indented_first_line_is_unexpected_indentation() -> None:
    err = parse_error("  model M:\n    x = 1\n")
    assert err.message == "unexpected indentation"
    assert err.diagnostics[0].span is not None and err.diagnostics[0].span.col == 3


def test_errors_in_crlf_files_keep_their_positions() -> None:
    err = parse_error("model M:\r\n    x = 1\r\n    y = x $ 2\r\n")
    assert err.diagnostics[0].span is not None
    assert (err.diagnostics[0].span.line, err.diagnostics[0].span.col) == (3, 11)


@pytest.mark.parametrize("char", ["\x00", "\udcff", "\u2028", "\x0c", "\x85", "é", "\\"])
def test_odd_characters_are_parse_errors(char: str) -> None:
    err = parse_error(f"model M:\n    x = 1 {char} 2\n")
    assert err.diagnostics[0].span is not None and err.diagnostics[0].span.line == 2
    assert "unexpected character" in err.message


@pytest.mark.parametrize("digits", [400, 5000])
@pytest.mark.parametrize("where", ["h = {n}", "h = dense(x, {n})"])
def test_an_integer_beyond_float64_is_too_large_like_a_float(digits: int, where: str) -> None:
    # 5000 digits: int() refused the literal (an internal error); 400: float() of it overflowed
    # wherever a number was wanted (e.g. optimizer sgd(lr=1000…0))
    n = "1" + "0" * (digits - 1)
    err = parse_error(f"model M:\n    {where.format(n=n)}\n")
    assert err.message == f"number 100000000000… ({digits} characters) is too large"
    assert err.diagnostics[0].span is not None
    assert (err.diagnostics[0].span.line, err.diagnostics[0].span.col) == (2, where.index("{") + 5)


def test_the_largest_integers_below_float64s_limit_are_numbers() -> None:
    n = 2**1000
    assert parse(f"model M:\n    h = {n}\n").model.body[0].value.value == n


def test_nul_in_a_comment_is_allowed() -> None:
    parse("model M:\n    x = 1  # \x00\n")


def test_deeply_nested_calls_do_not_overflow_the_stack() -> None:
    parse("model M:\n    x = " + "f(" * 3000 + "1" + ")" * 3000 + "\n")
    with pytest.raises(ParseError, match="unclosed"):
        parse("model M:\n    x = " + "f(" * 3000 + "1\n")


# ---- hypothesis: whatever the text, the parser answers with an AST or a ParseError --------

FRAGMENTS = [
    "model", "input", "target", "optimizer", "federated", ":", "=", "(", ")", "[", "]", ",",
    "+", "-", "*", "#", "'", '"', "\n", "\r\n", "\t", "    ", " ", "f32", "class", "x", "1",
    "-1e-3", ".", "\\", "\x00",
]


def parses_or_raises_parse_error(text: str) -> None:
    try:
        program = parse(text, "fuzz.fed")
    except ParseError as err:
        (diagnostic,) = err.diagnostics
        assert diagnostic.span is not None and diagnostic.span.line >= 1
        assert diagnostic.message and str(err).startswith("fuzz.fed:")
    else:
        assert program.model.name


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    text = EXAMPLE
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "replace"]))
        piece = draw(st.sampled_from(FRAGMENTS) | st.characters())
        if edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 8)):]
        elif edit == "insert":
            text = text[:at] + piece + text[at:]
        else:
            text = text[:at] + piece + text[at + 1:]
    return text


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(mutated_example())
def test_mutated_examples_only_raise_parse_errors(text: str) -> None:
    parses_or_raises_parse_error(text)


@FUZZ
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))
def test_random_token_soup_only_raises_parse_errors(text: str) -> None:
    parses_or_raises_parse_error(text)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_parse_errors(text: str) -> None:
    parses_or_raises_parse_error(text)


@FUZZ
@given(st.text(max_size=60))
def test_arbitrary_text_after_a_valid_model_only_raises_parse_errors(text: str) -> None:
    parses_or_raises_parse_error("model M:\n    input x: f32[4]\n    h = " + text)


def test_a_utf8_byte_order_mark_is_not_part_of_the_program(digits_mlp_source):
    """Windows editors start UTF-8 files with one; positions are those the editor shows."""
    from fedc.diagnostics import FedcError
    from fedc.pipeline import check_source, decode_source
    bom = b"\xef\xbb\xbf"
    assert check_source(decode_source(bom + digits_mlp_source.encode(), "b.fed"), "b.fed")
    bad = digits_mlp_source.replace("model DigitsMLP", "model DigitsMLP ?")
    with pytest.raises(FedcError) as info:
        check_source(decode_source(bom + bad.encode(), "b.fed"), "b.fed")
    (diag,) = info.value.diagnostics
    assert (diag.span.line, diag.span.col) == (2, 17), diag  # line 1 is a comment
