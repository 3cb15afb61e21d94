"""Syntax errors in words: a Lark exception becomes one located Diagnostic.

Three sources of knowledge, tried in order:

1. Rules that read the text around the error: an unterminated string, a stray
   character, a block still open at the end of the file or when the next
   statement starts, a ``}`` that closes nothing.
2. Errors by example (:mod:`adaptlang.syntax.error_examples`): malformed
   snippets whose parser state, and where it matters the offending token,
   identify the mistake. The snippets are parsed once, lazily, into an index
   from LALR state to messages, so the lookup is a dictionary access.
3. A fallback naming what was found and what the grammar expected there.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedInput

from adaptlang.errors import Diagnostic, Span, SpecError, source_line

__all__ = ["ErrorContext", "diagnose", "describe_terminal", "example_index"]

#: How terminals read in messages.
_TERMINAL_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "PERCENT": "a percentage", "STRING": "a string",
    "SEG": "a path segment", "ROLE": "a role (`@name`)", "INT": "an integer",
    "MODEL_REF": "a model name", "_NL": "end of line", "$END": "end of file",
    "STAR": "'*'", "STARSTAR": "'**'", "PLUS": "'+'", "MINUS": "'-'", "SLASH": "'/'",
    "COLON": "':'", "COMMA": "','", "DOT": "'.'", "EQUAL": "'='", "VBAR": "'|'",
    "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'",
}

_STATEMENT_START = re.compile(
    r"\s*(?:(?:adaptlang|model|let|use|task|quantize)\b|[A-Za-z_]\w*\s+[A-Za-z_]\w*\s*\{)")
_STRING = re.compile(r'"[^"\\\n]*(?:\\.[^"\\\n]*)*+"?')  # unrolled: no memory per character
_LAST_TOKEN = re.compile(r"([A-Za-z0-9_@.%]+|\S)\s*$")


def describe_terminal(name: str) -> str:
    """Returns how a terminal reads in a message (``NAME`` -> ``a name``)."""
    return _TERMINAL_WORDS.get(name, f"'{name.lower()}'")


@dataclass(frozen=True)
class OpenBlock:
    """A ``{`` at the top level that is not closed before the error."""

    header: str  # "lora attn"
    line: int
    col: int


@dataclass(frozen=True)
class ErrorContext:
    """Everything the message rules look at.

    Attributes:
        text: The whole source.
        file: Its name.
        line: 1-based line of the error.
        col: 1-based column of the error.
        width: Columns the caret covers.
        token_type: The offending terminal (``"$END"`` at the end, ``"<char>"``
            for a character no terminal matches).
        token: Its text.
        expected: Terminal names the parser could have taken.
        state: The LALR state, when known.
        block: The block open at the error, if any.
        start: The grammar rule parsed (``start`` or ``selector_start``).
    """

    text: str
    file: str
    line: int
    col: int
    width: int
    token_type: str
    token: str
    expected: frozenset[str]
    state: int | None
    block: OpenBlock | None
    start: str

    @property
    def line_text(self) -> str:
        """The text of the error's line."""
        return source_line(self.text, self.line) or ""

    @property
    def before(self) -> str:
        """The error's line up to the error."""
        return self.line_text[: self.col - 1]

    @property
    def first_word(self) -> str:
        """The first word of the error's line (a property's key, a statement's keyword)."""
        m = re.match(r"\s*([A-Za-z_]\w*)", self.line_text)
        return m.group(1) if m else ""

    @property
    def key(self) -> str:
        """The key of the property the error is in (after a ``;`` or a same-line ``{``)."""
        start = self.block.col if self.block is not None and self.block.line == self.line else 0
        segment = self.before[start:].split(";")[-1]
        m = re.match(r"\s*([A-Za-z_]\w*)", segment)
        return m.group(1) if m else self.first_word

    @property
    def prev(self) -> str:
        """The last token before the error on its line, roughly."""
        m = _LAST_TOKEN.search(self.before)
        return m.group(1) if m else ""

    @property
    def found(self) -> str:
        """The offending token, as a message says it."""
        if self.token_type in ("_NL", "$END"):
            return describe_terminal(self.token_type)
        if self.token_type == ";":
            return "';'"
        return f"'{self.token}'"

    def span(self) -> Span:
        """Where the caret goes."""
        return Span(self.file, self.line, self.col, self.line, self.col + max(self.width, 1))

    def expected_words(self) -> str:
        """``'}', a name or end of line``: what the grammar accepts here."""
        words = sorted({describe_terminal(t) for t in self.expected})
        if not words:
            return "nothing more"
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def diagnose(exc: UnexpectedInput, text: str, file: str, start: str = "start") -> Diagnostic:
    """Returns the diagnostic for a Lark parse error.

    Args:
        exc: The exception Lark raised.
        text: The source parsed.
        file: Its name, for the span.
        start: The start rule used.
    """
    ctx = make_context(exc, text, file, start)
    for rule in _RULES:
        diag = rule(ctx)
        if diag is not None:
            return diag
    label = lookup_example(ctx) or classify_by_expected(ctx)
    if label is not None:
        message, hint, *where = label(ctx)
        span = ctx.span()
        if where:  # the label points elsewhere on the line: (column, width)
            col, width = where[0]
            span = Span(ctx.file, ctx.line, col, ctx.line, col + width)
        return Diagnostic(message, span=span, hint=hint)
    return Diagnostic(f"unexpected {ctx.found}; expected {ctx.expected_words()}", span=ctx.span())


def _state_id(state: Any) -> int | None:
    """The LALR state number of a Lark exception's ``state`` (an int or a ParserState)."""
    if state is None:
        return None
    return getattr(state, "position", state)


def make_context(exc: UnexpectedInput, text: str, file: str, start: str) -> ErrorContext:
    """Collects what the rules need from a Lark exception."""
    state = _state_id(getattr(exc, "state", None))

    def block_at(pos: int) -> OpenBlock | None:
        # A selector alone has no blocks: its braces are alternatives.
        return find_open_block(text, pos) if start == "start" else None

    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream
        line, col = exc.line, exc.column
        char = text[pos] if pos < len(text) else ""
        return ErrorContext(text, file, line, col, 1, "<char>", char,
                            frozenset(exc.allowed or ()), state, block_at(pos), start)
    tok: Token | None = getattr(exc, "token", None)
    if tok is None or tok.type in ("<EOF>", "$END"):  # UnexpectedEOF carries no usable token
        tok = Token("$END", "")
    expected = frozenset(getattr(exc, "accepts", None) or getattr(exc, "expected", ()) or ())
    if tok.type == "$END":
        line, col = end_of_text(text)
        pos = len(text)
        width = 1
    else:
        line, col = tok.line, tok.column
        pos = tok.start_pos if tok.start_pos is not None else len(text)
        width = 1 if tok.type == "_NL" else len(tok.value)
    kind = ";" if tok.type == "_NL" and tok.value == ";" else tok.type
    return ErrorContext(text, file, line, col, width, kind, str(tok.value), expected, state,
                        block_at(pos), start)


def end_of_text(text: str) -> tuple[int, int]:
    """The line and column just after the last non-blank character."""
    stripped = text.rstrip()
    if not stripped:
        return 1, 1
    line = stripped.count("\n") + 1
    return line, len(stripped.rsplit("\n", 1)[-1]) + 1


def find_open_block(text: str, pos: int) -> OpenBlock | None:
    """Returns the top-level block still open at offset ``pos`` (strings and comments skipped)."""
    depth, opener, i = 0, None, 0
    while i < pos:
        ch = text[i]
        if ch == '"':
            m = _STRING.match(text, i)
            i = m.end() if m else i + 1
            continue
        if ch == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if ch == "{":
            if depth == 0:
                opener = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
        i += 1
    if depth == 0 or opener is None:
        return None
    line = text.count("\n", 0, opener) + 1
    line_start = text.rfind("\n", 0, opener) + 1
    header = " ".join(text[line_start:opener].split())
    if not header and line > 1:  # `lora a` / `{` on the next line
        prev_start = text.rfind("\n", 0, line_start - 1) + 1
        header = " ".join(text[prev_start:line_start - 1].split("#")[0].split())
    return OpenBlock(header or "block", line, opener - line_start + 1)


# ---------------------------------------------------------------------------
# Rules that read the text.


def _unterminated_string(ctx: ErrorContext) -> Diagnostic | None:
    if ctx.token_type != "<char>" or ctx.token != '"':
        return None
    rest = len(ctx.line_text) - ctx.col + 1
    return Diagnostic("unterminated string", span=Span(ctx.file, ctx.line, ctx.col, ctx.line, ctx.col + rest),
                      hint="close it with '\"' on the same line (strings cannot span lines)")


_CHAR_HINTS = {
    "'": ("strings are written in double quotes", 'write "..." instead of \'...\''),
    "@": ("a role is written `@NAME`", "for example `@q`, `@mlp`, `@layers[-2:]`"),
    "%": ("a percentage is a number followed by '%'", "for example `density 0.5%`"),
}


def _stray_character(ctx: ErrorContext) -> Diagnostic | None:
    if ctx.token_type != "<char>":
        return None
    ch = ctx.token
    if ch in _CHAR_HINTS:
        message, hint = _CHAR_HINTS[ch]
        return Diagnostic(message, span=ctx.span(), hint=hint)
    shown = f"'{ch}'" if ch.isprintable() and ch.isascii() else f"'{ch}' (U+{ord(ch):04X})" if ch else "end"
    hint = None
    if ch in "“”‘’":
        hint = 'use plain double quotes: "..."'
    elif ch in "–—−":
        hint = "use a plain '-'"
    elif ctx.block is not None:
        hint = "a property is `KEY VALUE`; values are numbers, names, strings or selectors"
    return Diagnostic(f"stray character {shown}", span=ctx.span(), hint=hint)


def _close_block_message(block: OpenBlock) -> str:
    return f"expected '}}' to close '{block.header}' opened at {block.line}:{block.col}"


def _eof_in_block(ctx: ErrorContext) -> Diagnostic | None:
    if ctx.token_type != "$END" or ctx.block is None or ctx.start != "start":
        return None
    return Diagnostic(_close_block_message(ctx.block), span=ctx.span(),
                      hint="add '}' after the block's last property")


def _statement_in_block(ctx: ErrorContext) -> Diagnostic | None:
    block = ctx.block
    if block is None or ctx.line <= block.line or not _STATEMENT_START.match(ctx.line_text):
        return None
    col = len(ctx.line_text) - len(ctx.line_text.lstrip()) + 1
    word = ctx.first_word
    return Diagnostic(_close_block_message(block), span=Span(ctx.file, ctx.line, col, ctx.line, col + len(word)),
                      hint=f"a block ends with '}}' before the next statement; add '}}' before line {ctx.line}")


def _unmatched_brace(ctx: ErrorContext) -> Diagnostic | None:
    if ctx.token_type != "RBRACE" or ctx.block is not None or ctx.start != "start":
        return None
    return Diagnostic("unmatched '}': no block is open here", span=ctx.span(),
                      hint="remove it, or check the block above for an extra '}'")


_RULES: tuple[Callable[[ErrorContext], Diagnostic | None], ...] = (
    _unterminated_string, _stray_character, _eof_in_block, _statement_in_block, _unmatched_brace,
)


# ---------------------------------------------------------------------------
# Errors by example.

Label = Callable[[ErrorContext], tuple]


def _token_key(kind: str) -> str:
    """End of line and end of input read the same (a selector typed alone ends at $END)."""
    return "<end>" if kind in ("_NL", "$END", ";") else kind


@functools.lru_cache(maxsize=1)
def example_index() -> dict[int, list[tuple[str, str, Label]]]:
    """Parses every example once: LALR state -> ``(token type, token text, label)`` in table order."""
    from adaptlang.syntax.error_examples import EXAMPLES
    from adaptlang.syntax.parser import get_parser

    parser = get_parser()
    index: dict[int, list[tuple[str, str, Label]]] = {}
    for label, snippets, start in EXAMPLES:
        for snippet in snippets:
            try:
                parser.parse(snippet, start=start)
            except (UnexpectedCharacters, SpecError):  # SpecError: a literal the builder refuses
                continue
            except UnexpectedInput as exc:
                state = _state_id(exc.state)
                tok = exc.token  # type: ignore[attr-defined]
                if state is not None:
                    index.setdefault(state, []).append((_token_key(tok.type), str(tok.value), label))
    return index


def classify_by_expected(ctx: ErrorContext) -> Label | None:
    """A label chosen by what the parser expected, for states no example reaches.

    LALR splits one situation into several states (a property after ``{``,
    after a newline, after ``{`` and a newline); the expected terminals are
    the same in all of them, so they name the situation.
    """
    from adaptlang.syntax.error_examples import BY_EXPECTED

    for test, label in BY_EXPECTED:
        if test(ctx.expected):
            return label
    return None


def lookup_example(ctx: ErrorContext) -> Label | None:
    """The label of the example that best matches: same state and token, then same kind, then state."""
    if ctx.state is None:
        return None
    candidates = example_index().get(ctx.state, [])
    key = _token_key(ctx.token_type)
    for kind, _, label in candidates:
        if kind == key:
            return label
    return candidates[0][2] if candidates else None
