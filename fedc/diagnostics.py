"""Diagnostics: source spans (file:line:col), fedc's error classes, and caret rendering."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns count from 1, end is exclusive."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    @classmethod
    def from_meta(cls, file: str, meta: object) -> Span:
        """A span from a lark tree's or token's positions (propagate_positions=True)."""
        line = getattr(meta, "line", None)
        if line is None:
            return cls(file, 1, 1)
        return cls(
            file,
            line,
            getattr(meta, "column", 1),
            getattr(meta, "end_line", None),
            getattr(meta, "end_column", None),
        )


UNKNOWN = Span("<fedc>", 1, 1)


@dataclass(frozen=True)
class Diagnostic:
    """One message about one place: an error or a note."""

    message: str
    span: Span | None = None
    severity: str = "error"
    notes: tuple[tuple[str, Span | None], ...] = ()

    def render(self, sources: dict[str, str] | None = None) -> str:
        head = f"{self.span}: " if self.span else ""
        lines = [f"{head}{self.severity}: {self.message}"]
        if self.span is not None:
            lines.extend(_caret(self.span, (sources or {}).get(self.span.file)))
        for text, where in self.notes:
            lines.append(f"note: {text}" + (f": {where}" if where else ""))
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        """severity, message, file/line/col when it has a place, and notes (always a list):
        each note's message and, when it has one, its file/line/col."""
        out: dict[str, object] = {"severity": self.severity, "message": self.message,
                                  **_where(self.span)}
        out["notes"] = [{"message": text, **_where(at)} for text, at in self.notes]
        return out


def _where(span: Span | None) -> dict[str, object]:
    return {} if span is None else {"file": span.file, "line": span.line, "col": span.col}


def _caret(span: Span, source: str | None) -> list[str]:
    if source is None:
        return []
    lines = source.splitlines()
    if not 1 <= span.line <= len(lines):
        return []
    text = lines[span.line - 1].expandtabs(1)
    start = max(span.col - 1, 0)
    if span.end_line == span.line and span.end_col and span.end_col > span.col:
        width = span.end_col - span.col
    else:
        width = max(len(text.rstrip()) - start, 1)
    return [f"   {text}", "   " + " " * start + "^" * width]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of `known` to a misspelt `name`, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass
class FedcError(Exception):
    """A user's mistake: one or more diagnostics. The CLI prints them, never a traceback."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    stage: str = "fedc"

    @classmethod
    def at(cls, message: str, span: Span | None = None, source: str | None = None,
           notes: tuple[tuple[str, Span | None], ...] = ()) -> FedcError:
        sources = {span.file: source} if span is not None and source is not None else {}
        return cls([Diagnostic(message, span, notes=notes)], sources)

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        return "\n".join(d.render(self.sources) for d in self.diagnostics)

    @property
    def message(self) -> str:
        return self.diagnostics[0].message if self.diagnostics else ""


class ParseError(FedcError):
    """The source is not a well-formed fedc program."""


class CheckError(FedcError):
    """Names, types, shapes or settings are wrong; carries every error found."""


class UsageError(FedcError):
    """A bad command-line flag or API argument (exit status 2)."""


class DataError(FedcError):
    """A dataset or array handed to fedc does not fit the model."""


class ToolchainError(FedcError):
    """An external tool (wasm-ld) is missing or failed."""


class InternalError(Exception):
    """A bug in fedc itself, never a user's mistake."""

    def __init__(self, message: str, span: Span | None = None) -> None:
        where = f" (while compiling {span})" if span else ""
        super().__init__(
            f"internal compiler error: {message}{where}\n"
            "this is a bug in fedc; please report it with the .fed file that triggered it"
        )
        self.span = span
        self.detail = message


class Collector:
    """Collects diagnostics so a stage can report every error before stopping."""

    def __init__(self, source: str | None = None, file: str = "<input>") -> None:
        self.items: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []  # reported, but the stage goes on
        self.sources = {file: source} if source is not None else {}

    def error(self, message: str, span: Span | None,
              notes: tuple[tuple[str, Span | None], ...] = ()) -> None:
        self.items.append(Diagnostic(message, span, notes=notes))

    def warning(self, message: str, span: Span | None,
                notes: tuple[tuple[str, Span | None], ...] = ()) -> None:
        self.warnings.append(Diagnostic(message, span, "warning", notes))

    def raise_if_any(self, cls: type[FedcError] = CheckError) -> None:
        if self.items:
            raise cls(list(self.items), dict(self.sources))
