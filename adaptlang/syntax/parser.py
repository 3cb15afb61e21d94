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

import contextlib
import functools
import gc
import re
import threading
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Iterator

from lark import Lark, Token
from lark.exceptions import UnexpectedInput

from adaptlang.errors import Diagnostic, Span, SpecError, UsageError
from adaptlang.limits import MAX_NESTING_DEPTH, MAX_SPEC_FILE_BYTES
from adaptlang.syntax import ast
from adaptlang.syntax.build import AstBuilder
from adaptlang.textfile import FileProblem, read_text_file

__all__ = ["get_parser", "parse_file", "parse_selector", "parse_text", "scan_comments"]

#: The language versions this parser knows.
SUPPORTED_VERSIONS = (1,)


_OPENERS = frozenset(("LPAR", "LBRACE", "LSQB"))
_CLOSERS = frozenset(("RPAR", "RBRACE", "RSQB"))


class PostLexer:
    """Post-lexer: one ``_NL`` token per run of line ends (and ``;``), and the nesting limit.

    Blank lines and comment-only lines would otherwise give the grammar runs
    of newlines to allow everywhere; folding keeps the grammar LALR(1).

    Nesting is counted here, on the token stream, so that it is refused
    before any tree is built: each open bracket counts one, and so does each
    ``-`` of a run of minus signs (``- - -x`` nests three negations; a ``-``
    before ``(`` stays counted until the ``)``). Flat chains (``a + b + c``)
    open nothing and cost nothing.

    Raises:
        SpecError: When the depth passes :data:`~adaptlang.limits.MAX_NESTING_DEPTH`,
            located at the bracket or sign that went too deep. The parser
            fills in the file name.
    """

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        """Yields the tokens of ``stream`` with repeated ``_NL`` tokens dropped."""
        previous_nl = False
        depth = 0  # brackets and signs open, the current run of minus signs included
        opened: list[int] = []  # what each open bracket added to ``depth`` (itself and the signs before it)
        run = 0  # minus signs just before this token
        for tok in stream:
            kind = tok.type
            if kind == "_NL":
                if previous_nl:
                    continue
                previous_nl = True
            else:
                previous_nl = False
            if kind == "MINUS":
                run += 1
                depth += 1
            elif kind in _OPENERS:
                depth += 1
                opened.append(run + 1)
                run = 0
            else:
                depth -= run
                run = 0
                if kind in _CLOSERS and opened:
                    depth -= opened.pop()
            if depth > MAX_NESTING_DEPTH:
                raise SpecError(Diagnostic(
                    f"nested more than {MAX_NESTING_DEPTH} deep (MAX_NESTING_DEPTH): brackets and "
                    "minus signs open here", span=Span("<string>", tok.line, tok.column, tok.line, tok.column + 1),
                    hint="name the inner parts with `let` or `task`, or remove brackets that add nothing"))
            yield tok


def read_grammar() -> str:
    """Returns the text of ``adapt.lark`` from the installed package data."""
    return resources.files("adaptlang.grammar").joinpath("adapt.lark").read_text(encoding="utf-8")


#: The builder the parser calls as it reduces rules; its ``file`` and ``source`` are set per parse.
_BUILDER = AstBuilder()
#: One parse at a time uses ``_BUILDER`` (a parse holds the GIL throughout anyway).
_LOCK = threading.RLock()


@functools.lru_cache(maxsize=1)
def get_parser() -> Lark:
    """Returns the process-wide Lark parser (built on first use).

    The AST builder runs inside the LALR parser, so a parse builds the AST
    directly: no parse tree, no recursive walk, memory linear in the input.
    """
    return Lark(read_grammar(), parser="lalr", lexer="contextual", postlex=PostLexer(),
                transformer=_BUILDER, propagate_positions=False, maybe_placeholders=True,
                start=["start", "selector_start"])


# Unrolled and possessive (`[^"\\]*(?:\\.[^"\\]*)*+`): a single-character repeat scans without a
# backtracking frame per character, and `*+` keeps none per escape, so a long string costs no
# memory (`(a|b)*` cost ~400 bytes a character).
_COMMENT_OR_STRING = re.compile(r'"[^"\\\n]*(?:\\.[^"\\\n]*)*+"|#[^\r\n]*')


def scan_comments(text: str, file: str = "<string>") -> list[ast.Comment]:
    """Returns every ``#`` comment of ``text`` in order (a ``#`` inside a string is text).

    Args:
        text: Source text.
        file: The file name spans carry.
    """
    comments = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # lines as the parser counts them
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
    check_size(len(text), file, "characters")
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
        text = read_text_file(path, MAX_SPEC_FILE_BYTES, what="a spec file (MAX_SPEC_FILE_BYTES)")
    except FileProblem as problem:
        raise UsageError(Diagnostic("no such file" if problem.missing else problem.message, obj=str(path),
                                    hint=problem.hint)) from None
    return parse_text(text, str(path))


def parse_selector(text: str, file: str = "<selector>") -> ast.Selector:
    """Parses one selector (``layers[*].self_attn.{q_proj, v_proj} is Linear``).

    Raises:
        SpecError: On a syntax error, located in ``text`` (line 1 for one line).
    """
    return _run(text, file, "selector_start")


def check_size(size: int, file: str, unit: str) -> None:
    """Refuses a spec larger than :data:`~adaptlang.limits.MAX_SPEC_FILE_BYTES`.

    Raises:
        SpecError: Naming the file, its size and the limit.
    """
    if size > MAX_SPEC_FILE_BYTES:
        raise SpecError(Diagnostic(
            f"the spec has {size:,} {unit}, more than the limit of {MAX_SPEC_FILE_BYTES:,} "
            "(MAX_SPEC_FILE_BYTES)", obj=file,
            hint="split it into files joined with `use`, or generate less"))


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Pauses the cyclic garbage collector during a parse.

    A parse allocates millions of small objects and frees none of them in
    cycles; the collector would rescan the growing heap again and again
    (two thirds of the time of a 1 MB spec). Restored afterwards as it was.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _run(text: str, file: str, start: str):
    """Parses ``text`` from rule ``start`` into the AST, turning every failure into a SpecError."""
    from adaptlang.syntax.diagnose import diagnose

    parser = get_parser()
    with _LOCK, _no_gc():
        _BUILDER.file, _BUILDER.source = file, text
        try:
            return parser.parse(text, start=start)
        except UnexpectedInput as exc:
            diag = diagnose(exc, text, file, start)
            raise SpecError(diag.with_source(text)) from None
        except SpecError as exc:  # a limit, from the post-lexer (no file name there) or the builder
            diags = [replace(d, span=replace(d.span, file=file)) if d.span is not None else d
                     for d in exc.diagnostics]
            raise SpecError(diags).with_source(text, file) from None
        finally:
            _BUILDER.source = ""


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
