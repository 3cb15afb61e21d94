"""Parsing ``.adapt`` text into an AST (:mod:`adaptlang.syntax.ast`).

The grammar (``adapt.lark``, package data of ``adaptlang.grammar``) is parsed
by Lark's LALR(1) parser with its contextual lexer, built once per process.
Every syntax error becomes a :class:`~adaptlang.errors.SpecError` whose one
diagnostic has a span, the source line and a message in words (see
:mod:`adaptlang.syntax.diagnose`); a Lark exception never leaves this module.

Comments are not part of the grammar's trees; :func:`scan_comments` collects
them by a separate pass so that the formatter can put them back.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path
from typing import Iterator

from lark import Lark, Token
from lark.exceptions import UnexpectedInput, VisitError

from adaptlang.errors import Diagnostic, Span, SpecError, UsageError
from adaptlang.syntax import ast
from adaptlang.syntax.build import AstBuilder

__all__ = ["get_parser", "parse_file", "parse_selector", "parse_text", "scan_comments"]

#: The language versions this parser knows.
SUPPORTED_VERSIONS = (1,)


class FoldNewlines:
    """Post-lexer: one ``_NL`` token per run of line ends (and ``;``).

    Blank lines and comment-only lines would otherwise give the grammar runs
    of newlines to allow everywhere; folding keeps the grammar LALR(1).
    """

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        """Yields the tokens of ``stream`` with repeated ``_NL`` tokens dropped."""
        previous_nl = False
        for tok in stream:
            if tok.type == "_NL":
                if previous_nl:
                    continue
                previous_nl = True
            else:
                previous_nl = False
            yield tok


def read_grammar() -> str:
    """Returns the text of ``adapt.lark`` from the installed package data."""
    return resources.files("adaptlang.grammar").joinpath("adapt.lark").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def get_parser() -> Lark:
    """Returns the process-wide Lark parser (built on first use)."""
    return Lark(read_grammar(), parser="lalr", lexer="contextual", postlex=FoldNewlines(),
                propagate_positions=True, maybe_placeholders=True,
                start=["start", "selector_start"])


_COMMENT_OR_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\r\n]*')


def scan_comments(text: str, file: str = "<string>") -> list[ast.Comment]:
    """Returns every ``#`` comment of ``text`` in order (a ``#`` inside a string is text).

    Args:
        text: Source text.
        file: The file name spans carry.
    """
    comments = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if "#" not in line:
            continue
        for m in _COMMENT_OR_STRING.finditer(line):
            if m.group().startswith("#"):
                body = m.group().rstrip()
                comments.append(ast.Comment(
                    span=Span(file, lineno, m.start() + 1, lineno, m.start() + 1 + len(body)), text=body))
                break
    return comments


def parse_text(text: str, file: str = "<string>") -> ast.Module:
    """Parses a whole spec.

    Args:
        text: The source.
        file: Its path as the user named it (spans and messages use it).

    Returns:
        The :class:`~adaptlang.syntax.ast.Module`, comments included.

    Raises:
        SpecError: On a syntax error, a missing or misplaced ``adaptlang``
            header; the diagnostic carries the source line.
    """
    text = text[1:] if text.startswith("\ufeff") else text
    module = _run(text, file, "start")
    module = module.model_copy(update={"comments": scan_comments(text, file)})
    check_header(module)
    return module


def parse_file(path: str | Path) -> ast.Module:
    """Reads and parses a spec file; spans use ``path`` as given.

    Raises:
        UsageError: The file is missing or unreadable.
        SpecError: As :func:`parse_text`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(Diagnostic("no such file", obj=str(path))) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(Diagnostic(f"cannot read: {exc}", obj=str(path))) from None
    return parse_text(text, str(path))


def parse_selector(text: str, file: str = "<selector>") -> ast.Selector:
    """Parses one selector (``layers[*].self_attn.{q_proj, v_proj} is Linear``).

    Raises:
        SpecError: On a syntax error, located in ``text`` (line 1 for one line).
    """
    return _run(text, file, "selector_start")


def _run(text: str, file: str, start: str):
    """Parses ``text`` from rule ``start`` and builds the AST, turning every failure into a SpecError."""
    from adaptlang.syntax.diagnose import diagnose

    parser = get_parser()
    try:
        tree = parser.parse(text, start=start)
    except UnexpectedInput as exc:
        diag = diagnose(exc, text, file, start)
        raise SpecError(diag.with_source(text)) from None
    try:
        return AstBuilder(file, text).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, SpecError):
            raise exc.orig_exc.with_source(text, file) from None
        raise


def check_header(module: ast.Module) -> None:
    """Checks that the ``adaptlang`` header is there, once, as the first statement.

    Raises:
        SpecError: Naming where the header is missing, misplaced or repeated.
    """
    headers = [s for s in module.statements if isinstance(s, ast.Header)]
    diags = []
    if not headers:
        first = module.statements[0].span if module.statements else None
        line = first.line if first else 1
        diags.append(Diagnostic(
            "missing `adaptlang 1` header", span=Span(module.file, line, 1, line, 2),
            hint="start the spec with the line `adaptlang 1` (the language version)"))
    else:
        if module.statements[0] is not headers[0]:
            diags.append(Diagnostic(
                "the `adaptlang` header must be the first statement", span=headers[0].span,
                hint="move this line to the top of the file (comments may come before it)",
                notes=(f"the first statement is at line {module.statements[0].span.line}",)))
        for extra in headers[1:]:
            diags.append(Diagnostic(
                "the `adaptlang` header is given twice", span=extra.span, hint="remove this line",
                notes=(f"first given at {headers[0].span.line}:{headers[0].span.col}",)))
    if diags:
        raise SpecError([d.with_source(module.source) for d in diags])
