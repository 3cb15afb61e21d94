"""Turns Lark's parse tree into :mod:`adaptlang.syntax.ast` nodes, spans attached.

Kept apart from ``parser.py`` so that the grammar's rule names and the AST's
classes meet in one place: renaming a rule in ``adapt.lark`` means editing a
method here, nothing else.
"""

from __future__ import annotations

import math
from typing import Any

from lark import Token, Transformer

from adaptlang.errors import Diagnostic, Span, SpecError
from adaptlang.limits import MAX_NUMBER_LITERAL_CHARS, MAX_STRING_LITERAL_CHARS
from adaptlang.syntax import ast

__all__ = ["AstBuilder", "unescape"]

_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def unescape(literal: str) -> str:
    """Returns the value of a string literal (quotes removed, escapes resolved).

    Only ``\\"``, ``\\\\``, ``\\n`` and ``\\t`` mean something; any other escaped
    character stands for itself, so a Windows path survives ``\\d`` intact.
    """
    body = literal[1:-1]
    if "\\" not in body:
        return body
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class _Block(list):
    """A block's properties, remembering its braces (a delta's span ends at the ``}``)."""

    def __init__(self, props: list[Any], lbrace: Token, rbrace: Token):
        super().__init__(props)
        self.lbrace = lbrace
        self.rbrace = rbrace


class _Signed:
    """An index integer with the tokens it was written with (a slice's span needs them)."""

    __slots__ = ("value", "first", "last")

    def __init__(self, value: int, first: Token, last: Token):
        self.value, self.first, self.last = value, first, last


class _Classes(list):
    """The names of an ``is A | B`` filter, remembering the last token (for the path's span)."""

    def __init__(self, names: list[str], last: Token):
        super().__init__(names)
        self.last = last


class AstBuilder(Transformer):
    """Lark transformer building AST nodes; one method per grammar rule.

    It runs inside the LALR parser (Lark's ``transformer=`` option): each rule
    becomes its node when the parser reduces it, so no parse tree is built and
    nothing recurses however deep or long the input. Spans come from the
    children (tokens and nodes), not from Lark's position propagation.

    ``file`` and ``source`` are set by the parser before each parse.

    Raises (from the rule methods, during the parse):
        SpecError: A number or string literal past its limit
            (:data:`~adaptlang.limits.MAX_NUMBER_LITERAL_CHARS`,
            :data:`~adaptlang.limits.MAX_STRING_LITERAL_CHARS`), a number
            that is not finite as a float, a bad language version.
    """

    def __init__(self, file: str = "<string>", source: str = ""):
        super().__init__(visit_tokens=False)
        self.file = file
        self.source = source

    # ---------------------------------------------------------- spans

    def tok_span(self, tok: Token) -> Span:
        """The span of one token."""
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    def _start(self, item: Any) -> tuple[int, int]:
        if isinstance(item, ast.Node):
            return item.span.line, item.span.col
        if isinstance(item, _Signed):
            item = item.first
        elif isinstance(item, _Block):
            item = item.lbrace
        elif isinstance(item, list):
            return self._start(item[0])
        return item.line, item.column

    def _end(self, item: Any) -> tuple[int, int]:
        if isinstance(item, ast.Node):
            return item.span.end_line, item.span.end_col
        if isinstance(item, _Signed):
            item = item.last
        elif isinstance(item, (_Block, _Classes)):
            item = item.rbrace if isinstance(item, _Block) else item.last
        elif isinstance(item, list):
            return self._end(item[-1])
        return item.end_line, item.end_column

    def join(self, first: Any, last: Any) -> Span:
        """The span from the start of ``first`` to the end of ``last`` (nodes, tokens, lists)."""
        line, col = self._start(first)
        end_line, end_col = self._end(last)
        return Span(self.file, line, col, end_line, end_col)

    def over(self, children: list[Any]) -> Span:
        """The span of a rule's match: first to last child present (placeholders skipped)."""
        present = [c for c in children if c is not None and not (isinstance(c, list) and not c
                                                                 and not isinstance(c, _Block))]
        return self.join(present[0], present[-1])

    # ---------------------------------------------------------- literals

    def check_number(self, tok: Token, what: str = "number") -> None:
        """Refuses a number literal longer than the limit (Python cannot even convert some)."""
        if len(tok) > MAX_NUMBER_LITERAL_CHARS:
            raise SpecError(Diagnostic(
                f"{what} literal of {len(tok):,} characters is longer than the limit of "
                f"{MAX_NUMBER_LITERAL_CHARS} (MAX_NUMBER_LITERAL_CHARS)",
                span=self.tok_span(tok), hint="write the value with fewer digits, or with an exponent (`1e-4`)"))

    def to_float(self, tok: Token, text: str) -> float:
        """A float literal's value; one that is not a finite, non-zero-as-written float is refused."""
        value = float(text)
        if not math.isfinite(value):
            raise SpecError(Diagnostic(
                f"the number {text} is too large to represent (the largest is about 1.8e308)",
                span=self.tok_span(tok), hint="use a smaller number"))
        if value == 0.0 and any(ch in "123456789" for ch in text.lower().split("e")[0]):
            raise SpecError(Diagnostic(
                f"the number {text} is too small to represent (it would read as 0)",
                span=self.tok_span(tok), hint="write 0 if zero is meant, or a larger number"))
        return value

    def parse_number(self, tok: Token) -> int | float:
        """An integer literal stays ``int`` (so ``rank 8`` is an int); others are floats."""
        self.check_number(tok)
        text = str(tok)
        if text.isdigit():
            return int(text)
        return self.to_float(tok, text)

    # ---------------------------------------------------------- module

    def start(self, children: list[Any]) -> ast.Module:
        statements = [c for c in children if c is not None and not isinstance(c, Token)]
        span = self.over(statements) if statements else Span(self.file, 1, 1, 1, 1)
        return ast.Module(span=span, file=self.file, source=self.source, statements=statements)

    def selector_start(self, children: list[Any]) -> ast.Selector:
        return next(c for c in children if isinstance(c, ast.Selector))

    def header(self, children: list[Token]) -> ast.Header:
        number = children[1]
        self.check_number(number, "version")
        if not number.isdigit():
            raise SpecError(Diagnostic(
                f"the language version is a whole number, not '{number}'", span=self.tok_span(number),
                hint="write `adaptlang 1`"))
        return ast.Header(span=self.join(children[0], number), version=int(number))

    def model(self, children: list[Token]) -> ast.ModelStmt:
        ref = children[1]
        quoted = ref.type == "STRING"
        if quoted:
            self.check_string(ref)
        return ast.ModelStmt(span=self.join(children[0], ref), name=unescape(ref) if quoted else str(ref),
                             quoted=quoted)

    def let(self, children: list[Any]) -> ast.Let:
        kw, name, value = children
        return ast.Let(span=self.join(kw, value), name=str(name), name_span=self.tok_span(name),
                       value=value)

    def use(self, children: list[Token]) -> ast.Use:
        self.check_string(children[1])
        return ast.Use(span=self.join(children[0], children[1]), path=unescape(children[1]))

    def delta(self, children: list[Any]) -> ast.DeltaDecl:
        kind, name, props = children
        return ast.DeltaDecl(span=self.join(kind, props), kind=str(kind), kind_span=self.tok_span(kind),
                             name=str(name), name_span=self.tok_span(name), properties=list(props))

    def quantize(self, children: list[Any]) -> ast.QuantizeDecl:
        kw, fmt, props = children
        return ast.QuantizeDecl(span=self.join(kw, props), format=str(fmt),
                                format_span=self.tok_span(fmt), properties=list(props))

    def task(self, children: list[Any]) -> ast.TaskDecl:
        kw, name, expr = children
        return ast.TaskDecl(span=self.join(kw, expr), name=str(name), name_span=self.tok_span(name),
                            expr=expr)

    def block(self, children: list[Any]) -> _Block:
        return _Block([c for c in children if isinstance(c, ast.Property)], children[0], children[-1])

    def property(self, children: list[Any]) -> ast.Property:
        key, value, override = children
        return ast.Property(span=self.join(key, override if override is not None else value), key=str(key),
                            key_span=self.tok_span(key), value=value, override=override)

    def override(self, children: list[Any]) -> ast.Selector:
        return children[1]

    def placement_key(self, children: list[Token]) -> Token:
        return children[0]

    # ---------------------------------------------------------- values

    def number(self, children: list[Token]) -> ast.Number:
        tok = children[0]
        return ast.Number(span=self.tok_span(tok), value=self.parse_number(tok), text=str(tok))

    def percent(self, children: list[Token]) -> ast.Percent:
        tok = children[0]
        self.check_number(tok, "percentage")
        return ast.Percent(span=self.tok_span(tok), value=self.to_float(tok, tok[:-1]), text=str(tok))

    def string(self, children: list[Token]) -> ast.String:
        self.check_string(children[0])
        return ast.String(span=self.tok_span(children[0]), value=unescape(children[0]))

    def check_string(self, tok: Token) -> None:
        """Refuses a string literal longer than the limit."""
        if len(tok) - 2 > MAX_STRING_LITERAL_CHARS:
            raise SpecError(Diagnostic(
                f"string literal of {len(tok) - 2:,} characters is longer than the limit of "
                f"{MAX_STRING_LITERAL_CHARS:,} (MAX_STRING_LITERAL_CHARS)",
                span=Span(self.file, tok.line, tok.column, tok.line, tok.column + 1),
                hint="keep long texts (a prompt's init text) under the limit"))

    def name(self, children: list[Token]) -> ast.Name:
        return ast.Name(span=self.tok_span(children[0]), name=str(children[0]))

    def tagged(self, children: list[Any]) -> ast.Tagged:
        tag, value = children
        return ast.Tagged(span=self.join(tag, value), tag=str(tag), value=value)

    def binop(self, children: list[Any]) -> ast.BinOp:
        left, op, right = children
        return ast.BinOp(span=self.join(left, right), op=str(op), left=left, right=right)

    def neg(self, children: list[Any]) -> ast.Neg:
        minus, operand = children
        return ast.Neg(span=self.join(minus, operand), operand=operand)

    def group(self, children: list[Any]) -> ast.Group:
        lpar, inner, rpar = children
        return ast.Group(span=self.join(lpar, rpar), inner=inner)

    # ---------------------------------------------------------- selectors

    def selector(self, children: list[Any]) -> ast.Selector:
        include: list[ast.SelPath] = []
        exclude: list[ast.SelPath] = []
        target = include
        for child in children:
            if isinstance(child, Token):  # EXCEPT
                target = exclude
            else:
                target.append(child)
        return ast.Selector(span=self.join(children[0], children[-1]), include=include, exclude=exclude)

    def sel_path(self, children: list[Any]) -> ast.SelPath:
        slash, elements, classes = children
        anchored = slash is not None
        classes = classes or []
        return ast.SelPath(span=self.over(children), anchored=anchored, elements=elements,
                           classes=list(classes))

    def sel_chain(self, children: list[Any]) -> list[ast.Element]:
        elements: list[ast.Element] = []
        for child in children:
            elements.extend(child if isinstance(child, list) else [child])
        return elements

    def indexed(self, children: list[Any]) -> list[ast.Element]:
        base, index = children
        return [*(base if isinstance(base, list) else [base]), index]

    def seg(self, children: list[Token]) -> ast.NamePat:
        return ast.NamePat(span=self.tok_span(children[0]), pattern=str(children[0]))

    def any_one(self, children: list[Token]) -> ast.AnyOne:
        return ast.AnyOne(span=self.tok_span(children[0]))

    def any_many(self, children: list[Token]) -> ast.AnyMany:
        return ast.AnyMany(span=self.tok_span(children[0]))

    def role(self, children: list[Token]) -> ast.Role:
        return ast.Role(span=self.tok_span(children[0]), name=str(children[0])[1:])

    def alt(self, children: list[Any]) -> ast.Alt:
        options = [c for c in children if isinstance(c, list)]
        return ast.Alt(span=self.join(children[0], children[-1]), options=options)

    def classes(self, children: list[Token]) -> _Classes:
        return _Classes([str(c) for c in children[1:]], children[-1])

    def index(self, children: list[Any]) -> ast.Index:
        lsqb, *items, rsqb = children
        items = [i.value if isinstance(i, _Signed) else i for i in items if not isinstance(i, Token)]
        return ast.Index(span=self.join(lsqb, rsqb), items=items)

    def signed(self, children: list[Token]) -> _Signed:
        minus, digits = children
        self.check_number(digits, "index")
        return _Signed(-int(digits) if minus is not None else int(digits), minus or digits, digits)

    def index_star(self, children: list[Token]) -> str:
        return "*"

    def slice(self, children: list[Any]) -> ast.Slice:
        start, _, stop, _, step = children
        values = [None if c is None else c.value for c in (start, stop, step)]
        return ast.Slice(span=self.over(children), start=values[0], stop=values[1], step=values[2])

    # ---------------------------------------------------------- tasks

    def task_ref(self, children: list[Token]) -> ast.TaskRef:
        return ast.TaskRef(span=self.tok_span(children[0]), name=str(children[0]))

    def task_sum(self, children: list[Any]) -> ast.TaskSum:
        terms = [c for c in children if not isinstance(c, Token)]
        return ast.TaskSum(span=self.join(terms[0], terms[-1]), terms=terms)

    def task_scale(self, children: list[Any]) -> ast.TaskScale:
        weight, _, operand = children
        return ast.TaskScale(span=self.join(weight, operand), weight=weight, operand=operand)

    def task_frozen(self, children: list[Any]) -> ast.TaskFrozen:
        kw, _, inner, rpar = children
        return ast.TaskFrozen(span=self.join(kw, rpar), operand=inner)

    def task_group(self, children: list[Any]) -> ast.TaskGroup:
        lpar, inner, rpar = children
        return ast.TaskGroup(span=self.join(lpar, rpar), inner=inner)
