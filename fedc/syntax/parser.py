"""Front end: .fed source text → the AST of fedc.syntax.ast (a Program), or a ParseError."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator
from typing import TypeVar

from lark import Lark, Token, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.indenter import Indenter
from lark.tree import Meta
from lark.visitors import Transformer_NonRecursive

from ..diagnostics import Diagnostic, InternalError, ParseError, Span
from ..resources import resource_dir
from . import ast

DTYPES = ("f32", "i32", "class")


def parse(text: str, filename: str = "<input>") -> ast.Program:
    """Parse a .fed program; every failure is a ParseError pointing at the offending token."""
    if text.startswith("\ufeff"):  # a UTF-8 byte order mark (Windows editors write one)
        text = text[1:]
    source = _prepare(text)
    try:
        _check_line_breaks(source, filename)
        sections = _ToAst(filename).transform(_lark().parse(source))
        model = _one(sections, ast.ModelDef)
        optimizer, federated = _one(sections, ast.OptimizerDef), _one(sections, ast.FederatedDef)
    except VisitError as err:
        if not isinstance(err.orig_exc, _Reject):
            raise InternalError(f"building the AST: {err.orig_exc!r}") from err
        raise err.orig_exc.error(filename, text) from None
    except _Reject as err:
        raise err.error(filename, text) from None
    except _LayoutError as err:
        where = _point(filename, err.line, err.column)
        raise _Reject(err.message, where).error(filename, text) from None
    except UnexpectedInput as err:
        raise _Reject(*_diagnose(err, source, filename)).error(filename, text) from None
    if model is None:
        raise InternalError("the grammar let a program without a model through")
    return ast.Program(model, optimizer, federated, filename, text)


def _prepare(text: str) -> str:
    """Normalise line ends (CRLF, CR) and end with a newline; lines and columns are kept."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


# str.splitlines, which shows the source line under a message, breaks lines at these
# characters but the lexer does not: allowing them would make positions disagree.
_ODD_LINE_BREAK = re.compile("[\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def _check_line_breaks(text: str, file: str) -> None:
    match = _ODD_LINE_BREAK.search(text)
    if match:
        where = _point(file, *_line_col(text, match.start()))
        raise _Reject(f"unexpected character {match.group()!r} (lines end with \\n)", where)


class _Reject(Exception):
    """A problem found in the source, with its place; becomes a ParseError at the top."""

    def __init__(self, message: str, span: Span,
                 notes: tuple[tuple[str, Span | None], ...] = ()) -> None:
        super().__init__(message)
        self.message, self.span, self.notes = message, span, notes

    def error(self, filename: str, text: str) -> ParseError:
        return ParseError([Diagnostic(self.message, self.span, notes=self.notes)], {filename: text})


# ---- the grammar and the layout post-lexer ---------------------------------------------


@functools.cache
def _lark() -> Lark:
    grammar = (resource_dir("grammar") / "fed.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", lexer="contextual", postlex=_Layout(),
                propagate_positions=_takes_space, maybe_placeholders=True)


def _takes_space(node: object) -> bool:
    """Spans end at the last real token: line ends and indentation markers don't count."""
    return not (isinstance(node, Token) and node.type in ("_NL", "_INDENT", "_DEDENT"))


class _LayoutError(Exception):
    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


class _Layout(Indenter):
    """Python-style layout: turns _NL into _INDENT/_DEDENT by comparing indentation strings.

    Unlike lark's Indenter, the state lives in the generator (one cached Lark parses safely
    from several threads), tabs and spaces are compared as written rather than by width,
    a stray closing bracket never trips an assert, and bad dedents say where they are.
    """

    NL_type = "_NL"
    OPEN_PAREN_types = ["LPAR", "LSQB"]
    CLOSE_PAREN_types = ["RPAR", "RSQB"]
    INDENT_type = "_INDENT"
    DEDENT_type = "_DEDENT"
    tab_len = 8

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        levels = [""]
        depth = 0
        last: Token | None = None
        for token in stream:
            if last is None and (token.column or 1) > 1 and token.type != "_NL":
                yield _marker("_INDENT", *_start(token))  # the first line is indented
            last = token
            if token.type != "_NL":
                yield token
                depth += token.type in self.OPEN_PAREN_types
                depth -= depth > 0 and token.type in self.CLOSE_PAREN_types
            elif depth == 0:  # inside brackets a line end is just white space
                yield token
                yield from _relayout(levels, token)
        for _ in levels[1:]:
            yield _marker("_DEDENT", *_end(last))


def _relayout(levels: list[str], newline: Token) -> Iterator[Token]:
    """The _INDENT/_DEDENT tokens implied by the indentation that ends `newline`."""
    indent = newline.rsplit("\n", 1)[1]
    line, _, pos = _end(newline)
    where = (line, len(indent) + 1, pos)
    if indent == levels[-1]:
        return
    if indent.startswith(levels[-1]):
        levels.append(indent)
        yield _marker("_INDENT", *where)
    elif indent in levels:
        while levels[-1] != indent:
            levels.pop()
            yield _marker("_DEDENT", *where)
    elif " " in indent + "".join(levels) and "\t" in indent + "".join(levels):
        raise _LayoutError("inconsistent use of tabs and spaces in indentation", *where[:2])
    else:
        raise _LayoutError("inconsistent dedent: this indentation matches no enclosing block",
                           *where[:2])


def _start(token: Token) -> tuple[int, int, int]:
    return token.line or 1, token.column or 1, token.start_pos or 0


def _end(token: Token | None) -> tuple[int, int, int]:
    if token is None:
        return 1, 1, 0
    return token.end_line or 1, token.end_column or 1, token.end_pos or 0


def _marker(kind: str, line: int, column: int, pos: int) -> Token:
    return Token(kind, "", pos, line, column, line, column, pos)


# ---- syntax errors: a position and a friendly message ----------------------------------

# What belongs where a construct starts, known from the tokens the parser would accept
# there (lark computes them with every pending reduction applied, so they name the context).
_STATEMENT = "expected 'input NAME: TYPE', 'target NAME: TYPE' or 'NAME = expression'"
_BY_ACCEPTS: dict[frozenset[str], str] = {
    frozenset({"MODEL", "_NL"}): "expected 'model NAME:' at the start of the file",
    frozenset({"MODEL"}): "expected 'model NAME:' at the start of the file",
    frozenset({"INPUT", "TARGET", "NAME"}): _STATEMENT,
    frozenset({"INPUT", "TARGET", "NAME", "_DEDENT"}): _STATEMENT,
    frozenset({"NAME", "_DEDENT"}): "expected a setting 'NAME = value'",
    frozenset({"OPTIMIZER", "FEDERATED", "MODEL", "$END"}):
        "expected 'optimizer' or 'federated:' here (is this line missing its indentation?)",
}

# Labels for the states right after a keyword or name, where the generic message would be
# vague. Each example fails in the state its label describes. Like lark's match_examples,
# but states are compared by the parser's current state and acceptable tokens only, not
# by stack depth, which a leading blank line or an earlier statement changes.
_B = "model M:\n    "  # inside a model block
_M = "model M:\n    x = 1\n"  # after one
EXAMPLES: dict[str, list[str]] = {
    "expected a model name after 'model'": ["model:\n", "model\n", "model 1:\n"],
    "missing ':' after model name": ["model M\n", "model M x\n", "model M = 1\n"],
    "a block starts on a new line after ':'": ["model M: x = 1\n", _M + "federated: x = 1\n"],
    "expected a name after 'input'": [_B + "input : f32\n", _B + "input\n"],
    "expected a name after 'target'": [_B + "target : f32\n", _B + "target\n"],
    "missing ':' after the input's name": [_B + "input x f32\n", _B + "input x\n"],
    "missing ':' after the target's name": [_B + "target y i32\n", _B + "target y\n"],
    "expected a type after ':' (f32[...], i32[...] or class[K])": [
        _B + "input x:\n", _B + "input x: [3]\n", _B + "target y:\n", _B + "target y: [3]\n",
    ],
    "expected an optimizer after 'optimizer', e.g. sgd(lr=0.05)": [_M + "optimizer\n"],
    "missing ':' after 'federated'": [_M + "federated\n"],
    "expected a setting 'NAME = value'": [_M + "federated:\n    1\n"],
}


@functools.cache
def _example_labels() -> dict[tuple[object, frozenset[str]], str]:
    table: dict[tuple[object, frozenset[str]], str] = {}
    for label, snippets in EXAMPLES.items():
        for snippet in snippets:
            try:
                _lark().parse(_prepare(snippet))
            except UnexpectedToken as err:
                table.setdefault(_state_key(err), label)
    return table


def _state_key(err: UnexpectedToken) -> tuple[object, frozenset[str]]:
    return err.state.position, frozenset(err.accepts or err.expected)


_DESCRIBE = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "_NL": "end of line",
    "_INDENT": "an indented block", "$END": "end of file", "_DEDENT": "end of block",
}
_EXPRESSION_START = frozenset({"NAME", "NUMBER", "STRING", "LPAR", "MINUS"})
_OPERATORS = frozenset({"PLUS", "MINUS", "STAR", "LPAR"})
_CLOSERS = frozenset({"RPAR", "RSQB"})
_AFTER_CODE = frozenset({"_NL", "_DEDENT", "$END"})


def _diagnose(err: UnexpectedInput, text: str, file: str) -> tuple[str, Span]:
    """The message and position for lark's error, most specific rule first."""
    if isinstance(err, UnexpectedCharacters):
        return _bad_character(text[err.pos_in_stream or 0]), _point(file, err.line, err.column)
    if not isinstance(err, UnexpectedToken):  # LALR reports nothing else; be safe anyway
        return "syntax error", _point(file, getattr(err, "line", 1), getattr(err, "column", 1))
    token = err.token
    offset = len(text) if token.type == "$END" else _start(token)[2]
    return _bracket_problem(token, text, offset, file) or _token_problem(err, text, offset, file)


def _bracket_problem(token: Token, text: str, offset: int, file: str) -> tuple[str, Span] | None:
    """An error past a line break inside a bracket that never closes blames the bracket."""
    bracket = _innermost_open_bracket(text, offset)
    if bracket is None:
        stray = token.type in _CLOSERS
        return (f"unmatched '{token}'", _token_span(file, token)) if stray else None
    opened_at, closed_at = bracket
    line, col = _line_col(text, opened_at)
    if closed_at is None and (token.type == "$END" or line < _start(token)[0]):
        return f"unclosed '{text[opened_at]}'", _point(file, line, col)
    return None


def _token_problem(err: UnexpectedToken, text: str, offset: int, file: str) -> tuple[str, Span]:
    token = err.token
    if token.type == "_INDENT":
        return "unexpected indentation", _token_span(file, token)
    if token.type in _AFTER_CODE:  # point where the missing token belongs
        span = _point(file, *_line_col(text, _code_end_before(text, offset)))
    else:
        span = _token_span(file, token)
    return _label(err) or _generic(err, text, offset), span


def _label(err: UnexpectedToken) -> str | None:
    key = _state_key(err)
    return _BY_ACCEPTS.get(key[1]) or _example_labels().get(key)


def _generic(err: UnexpectedToken, text: str, offset: int) -> str:
    """`expected ',' or ')' after 'x', found number 3`, from the set of acceptable tokens."""
    message = f"expected {_describe_expected(set(err.accepts or err.expected))}"
    previous = _previous_lexeme(text, offset)
    if previous:
        message += f" after '{previous}'"
    if err.token.type not in _AFTER_CODE:
        message += f", found {_describe_token(err.token)}"
    return message


def _describe_expected(accepts: set[str]) -> str:
    if "PLUS" in accepts:  # after a complete expression: operators are not what's missing
        accepts -= _OPERATORS
    items = []
    if "NUMBER" in accepts:
        accepts -= _EXPRESSION_START
        items.append("an expression")
    items += sorted(_describe_terminal(name) for name in accepts if name != "_DEDENT")
    if len(items) < 2:
        return items[0] if items else "something else"
    return ", ".join(items[:-1]) + " or " + items[-1]


def _describe_terminal(name: str) -> str:
    if name in _DESCRIBE:
        return _DESCRIBE[name]
    try:
        return f"'{_lark().get_terminal(name).pattern.value}'"
    except KeyError:
        return name.lower()


def _describe_token(token: Token) -> str:
    if token.type == "NAME":
        return f"name '{token}'"
    if token.type in ("NUMBER", "STRING"):
        return f"{token.type.lower()} {token}"
    return _DESCRIBE.get(token.type, f"'{token}'")


def _bad_character(char: str) -> str:
    if char in ("'", '"'):
        return "unterminated string"
    shown = f"'{char}'" if char.isprintable() else repr(char)
    return f"unexpected character {shown}"


# A coarse tokenizer, used only to explain errors: strings and comments are skipped whole.
_LEXEME = re.compile(r"""'(?:[^'\\\n]|\\.)*'?|"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[\w.]+|\S""")


def _innermost_open_bracket(text: str, offset: int) -> tuple[int, int | None] | None:
    """The innermost bracket open at `offset`, and where (if anywhere) it closes."""
    stack: list[int] = []
    closed: dict[int, int] = {}
    for match in _LEXEME.finditer(text):
        if match.group() in ("(", "["):
            stack.append(match.start())
        elif match.group() in (")", "]") and stack:
            closed[stack.pop()] = match.start()
    open_here = [o for o in (*stack, *closed) if o < offset and closed.get(o, offset) >= offset]
    return (max(open_here), closed.get(max(open_here))) if open_here else None


def _previous_lexeme(text: str, offset: int) -> str:
    lexemes = [m.group() for m in _LEXEME.finditer(text, 0, offset) if m.group()[0] != "#"]
    return lexemes[-1] if lexemes else ""


def _code_end_before(text: str, offset: int) -> int:
    """Where the last code (not comment or white space) before `offset` ends."""
    ends = [m.end() for m in _LEXEME.finditer(text, 0, offset) if m.group()[0] != "#"]
    return ends[-1] if ends else 0


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def _point(file: str, line: int, col: int) -> Span:
    """A one-character span: the caret marks a place, not the rest of the line."""
    return Span(file, line, col, line, col + 1)


def _token_span(file: str, token: Token) -> Span:
    return Span.from_meta(file, token)


# ---- parse tree → AST ------------------------------------------------------------------

_Section = TypeVar("_Section", ast.ModelDef, ast.OptimizerDef, ast.FederatedDef)
_SECOND = {
    ast.ModelDef: "a second 'model' block (a file holds one model)",
    ast.OptimizerDef: "a second 'optimizer' line (a file holds one)",
    ast.FederatedDef: "a second 'federated:' block (a file holds one)",
}


def _one(sections: list[object], kind: type[_Section]) -> _Section | None:
    """The section of this kind, if any; a second one is an error."""
    found = [s for s in sections if isinstance(s, kind)]
    if len(found) > 1:
        raise _Reject(_SECOND[kind], found[1].span, (("the first is here", found[0].span),))
    return found[0] if found else None


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """Builds AST nodes bottom-up, each with the Span of its source.

    Non-recursive, so deeply nested expressions cannot overflow Python's stack.
    """

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def _span(self, where: Meta | Token) -> Span:
        return Span.from_meta(self.file, where)

    def start(self, meta: Meta, sections: list[object]) -> list[object]:
        return sections

    def model_def(self, meta: Meta, items: list) -> ast.ModelDef:
        name, *stmts = items
        head = Span(self.file, meta.line, meta.column, name.end_line, name.end_column)
        return ast.ModelDef(
            str(name),
            tuple(s for s in stmts if isinstance(s, ast.InputDecl)),
            tuple(s for s in stmts if isinstance(s, ast.TargetDecl)),
            tuple(s for s in stmts if isinstance(s, ast.Assign)),
            head,
        )

    def input_decl(self, meta: Meta, items: list) -> ast.InputDecl:
        name, type_ = items
        return ast.InputDecl(str(name), type_, self._span(meta), self._span(name))

    def target_decl(self, meta: Meta, items: list) -> ast.TargetDecl:
        name, type_ = items
        return ast.TargetDecl(str(name), type_, self._span(meta), self._span(name))

    def assign(self, meta: Meta, items: list) -> ast.Assign:
        name, value = items
        return ast.Assign(str(name), value, self._span(meta), self._span(name))

    def type(self, meta: Meta, items: list) -> ast.TensorTypeExpr:
        dtype, *dims = items
        if dtype not in DTYPES:
            message = f"unknown dtype '{dtype}' (expected f32, i32 or class)"
            raise _Reject(message, self._span(dtype))
        return ast.TensorTypeExpr(str(dtype), tuple(_dim(d) for d in dims), self._span(meta))

    def optimizer_def(self, meta: Meta, items: list) -> ast.OptimizerDef:
        (spec,) = items
        if isinstance(spec, Token):  # `optimizer sgd`: every setting left at its default
            return ast.OptimizerDef(str(spec), (), self._span(spec))
        if spec.args:
            raise _Reject("optimizer settings are keyword arguments, e.g. sgd(lr=0.05)",
                          spec.args[0].span)
        return ast.OptimizerDef(spec.func, spec.kwargs, spec.span)

    def federated_def(self, meta: Meta, settings: list[ast.Setting]) -> ast.FederatedDef:
        _unique([(s.name, s.span) for s in settings], "setting")
        head = Span(self.file, meta.line, meta.column, meta.line, meta.column + len("federated"))
        return ast.FederatedDef(tuple(settings), head)

    def setting(self, meta: Meta, items: list) -> ast.Setting:
        name, value = items
        return ast.Setting(str(name), value, self._span(meta), self._span(name))

    # -- expressions

    def name(self, meta: Meta, items: list[Token]) -> ast.Name:
        return ast.Name(str(items[0]), self._span(items[0]))

    def number(self, meta: Meta, items: list[Token]) -> ast.Num:
        text, span = str(items[0]), self._span(items[0])
        # an integer is too large where a float of its size would be: beyond float64's range
        # (Python's int() also refuses more than 4300 digits, and float() of a larger int fails)
        if not math.isfinite(float(text)):
            shown = text if len(text) <= 24 else f"{text[:12]}… ({len(text)} characters)"
            raise _Reject(f"number {shown} is too large", span)
        return ast.Num(int(text) if text.isdigit() else float(text), span)

    def string(self, meta: Meta, items: list[Token]) -> ast.Str:
        return ast.Str(_unquote(items[0], self._span(items[0])), self._span(items[0]))

    def neg(self, meta: Meta, items: list) -> ast.Num:
        (operand,) = items
        if not isinstance(operand, ast.Num):
            raise _Reject("unary '-' applies only to numbers", self._span(meta))
        return ast.Num(-operand.value, self._span(meta))

    def add(self, meta: Meta, items: list) -> ast.BinOp:
        return ast.BinOp("+", items[0], items[1], self._span(meta))

    def sub(self, meta: Meta, items: list) -> ast.BinOp:
        return ast.BinOp("-", items[0], items[1], self._span(meta))

    def mul(self, meta: Meta, items: list) -> ast.BinOp:
        return ast.BinOp("*", items[0], items[1], self._span(meta))

    def call(self, meta: Meta, items: list) -> ast.Call:
        func, arguments = items
        args: list[ast.Expr] = []
        kwargs: list[ast.Keyword] = []
        for arg in arguments or ():
            if kwargs and not isinstance(arg, ast.Keyword):
                raise _Reject("positional argument after keyword argument", arg.span)
            (kwargs if isinstance(arg, ast.Keyword) else args).append(arg)
        _unique([(k.name, k.span) for k in kwargs], "keyword argument")
        return ast.Call(str(func), tuple(args), tuple(kwargs), self._span(meta), self._span(func))

    def arguments(self, meta: Meta, items: list) -> list:
        return items

    def keyword(self, meta: Meta, items: list) -> ast.Keyword:
        name, value = items
        return ast.Keyword(str(name), value, self._span(meta))


def _dim(dim: ast.Expr) -> int:
    if isinstance(dim, ast.Num) and isinstance(dim.value, int) and dim.value > 0:
        return dim.value
    raise _Reject("a dimension must be a positive integer", dim.span)


def _unique(names: list[tuple[str, Span]], what: str) -> None:
    first: dict[str, Span] = {}
    for name, span in names:
        if name in first:
            raise _Reject(f"duplicate {what} '{name}'", span, (("first given here", first[name]),))
        first[name] = span


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


def _unquote(token: Token, span: Span) -> str:
    """The string's value: `\\n`, `\\t`, `\\\\` and escaped quotes are the only escapes."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) not in _ESCAPES:
            raise _Reject(f"unknown escape '\\{match.group(1)}' in a string", span)
        return _ESCAPES[match.group(1)]

    return re.sub(r"\\(.)", replace, str(token)[1:-1], flags=re.DOTALL)
