"""Turns Lark's parse tree into :mod:`adaptlang.syntax.ast` nodes, spans attached.

Kept apart from ``parser.py`` so that the grammar's rule names and the AST's
classes meet in one place: renaming a rule in ``adapt.lark`` means editing a
method here, nothing else.
"""

from __future__ import annotations

from typing import Any

from lark import Token, Transformer, v_args
from lark.tree import Meta

from adaptlang.errors import Diagnostic, Span, SpecError
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


def _parse_number(text: str) -> int | float:
    """An integer literal stays ``int`` (so ``rank 8`` is an int); others are floats."""
    if text.isdigit():
        return int(text)
    return float(text)


@v_args(meta=True)
class AstBuilder(Transformer):
    """Lark transformer building AST nodes; one method per grammar rule.

    Args:
        file: The file name spans carry.
        source: The text, kept on the :class:`~adaptlang.syntax.ast.Module`.
    """

    def __init__(self, file: str, source: str):
        super().__init__(visit_tokens=False)
        self.file = file
        self.source = source

    # ---------------------------------------------------------- spans

    def tok_span(self, tok: Token) -> Span:
        """The span of one token."""
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    def meta_span(self, meta: Meta) -> Span:
        """The span of a rule's match."""
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def join(self, first: Any, last: Any) -> Span:
        """The span from the start of ``first`` to the end of ``last`` (nodes or tokens)."""
        a = first.span if isinstance(first, ast.Node) else self.tok_span(first)
        b = last.span if isinstance(last, ast.Node) else self.tok_span(last)
        return Span(self.file, a.line, a.col, b.end_line, b.end_col)

    # ---------------------------------------------------------- module

    def start(self, meta: Meta, children: list[Any]) -> ast.Module:
        span = self.meta_span(meta) if not meta.empty else Span(self.file, 1, 1, 1, 1)
        return ast.Module(span=span, file=self.file, source=self.source,
                          statements=[c for c in children if c is not None])

    def selector_start(self, meta: Meta, children: list[Any]) -> ast.Selector:
        return children[0]

    def header(self, meta: Meta, children: list[Token]) -> ast.Header:
        number = children[1]
        if not number.isdigit():
            raise SpecError(Diagnostic(
                f"the language version is a whole number, not '{number}'", span=self.tok_span(number),
                hint="write `adaptlang 1`"))
        return ast.Header(span=self.meta_span(meta), version=int(number))

    def model(self, meta: Meta, children: list[Token]) -> ast.ModelStmt:
        ref = children[1]
        quoted = ref.type == "STRING"
        return ast.ModelStmt(span=self.meta_span(meta), name=unescape(ref) if quoted else str(ref),
                             quoted=quoted)

    def let(self, meta: Meta, children: list[Any]) -> ast.Let:
        _, name, value = children
        return ast.Let(span=self.meta_span(meta), name=str(name), name_span=self.tok_span(name),
                       value=value)

    def use(self, meta: Meta, children: list[Token]) -> ast.Use:
        return ast.Use(span=self.meta_span(meta), path=unescape(children[1]))

    def delta(self, meta: Meta, children: list[Any]) -> ast.DeltaDecl:
        kind, name, props = children
        return ast.DeltaDecl(span=self.meta_span(meta), kind=str(kind), kind_span=self.tok_span(kind),
                             name=str(name), name_span=self.tok_span(name), properties=props)

    def quantize(self, meta: Meta, children: list[Any]) -> ast.QuantizeDecl:
        _, fmt, props = children
        return ast.QuantizeDecl(span=self.meta_span(meta), format=str(fmt),
                                format_span=self.tok_span(fmt), properties=props)

    def task(self, meta: Meta, children: list[Any]) -> ast.TaskDecl:
        _, name, expr = children
        return ast.TaskDecl(span=self.meta_span(meta), name=str(name), name_span=self.tok_span(name),
                            expr=expr)

    def block(self, meta: Meta, children: list[Any]) -> list[ast.Property]:
        return [c for c in children if isinstance(c, ast.Property)]

    def property(self, meta: Meta, children: list[Any]) -> ast.Property:
        key, value, override = children
        return ast.Property(span=self.meta_span(meta), key=str(key), key_span=self.tok_span(key),
                            value=value, override=override)

    def override(self, meta: Meta, children: list[Any]) -> ast.Selector:
        return children[1]

    def placement_key(self, meta: Meta, children: list[Token]) -> Token:
        return children[0]

    # ---------------------------------------------------------- values

    def number(self, meta: Meta, children: list[Token]) -> ast.Number:
        tok = children[0]
        return ast.Number(span=self.tok_span(tok), value=_parse_number(tok), text=str(tok))

    def percent(self, meta: Meta, children: list[Token]) -> ast.Percent:
        tok = children[0]
        return ast.Percent(span=self.tok_span(tok), value=float(tok[:-1]), text=str(tok))

    def string(self, meta: Meta, children: list[Token]) -> ast.String:
        return ast.String(span=self.tok_span(children[0]), value=unescape(children[0]))

    def name(self, meta: Meta, children: list[Token]) -> ast.Name:
        return ast.Name(span=self.tok_span(children[0]), name=str(children[0]))

    def tagged(self, meta: Meta, children: list[Any]) -> ast.Tagged:
        tag, value = children
        return ast.Tagged(span=self.join(tag, value), tag=str(tag), value=value)

    def binop(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        left, op, right = children
        return ast.BinOp(span=self.join(left, right), op=str(op), left=left, right=right)

    def neg(self, meta: Meta, children: list[Any]) -> ast.Neg:
        minus, operand = children
        return ast.Neg(span=self.join(minus, operand), operand=operand)

    def group(self, meta: Meta, children: list[Any]) -> ast.Group:
        lpar, inner, rpar = children
        return ast.Group(span=self.join(lpar, rpar), inner=inner)

    # ---------------------------------------------------------- selectors

    def selector(self, meta: Meta, children: list[Any]) -> ast.Selector:
        include: list[ast.SelPath] = []
        exclude: list[ast.SelPath] = []
        target = include
        for child in children:
            if isinstance(child, Token):  # EXCEPT
                target = exclude
            else:
                target.append(child)
        return ast.Selector(span=self.join(children[0], children[-1]), include=include, exclude=exclude)

    def sel_path(self, meta: Meta, children: list[Any]) -> ast.SelPath:
        slash, elements, classes = children
        anchored = slash is not None
        classes = classes or []
        return ast.SelPath(span=self.meta_span(meta), anchored=anchored, elements=elements,
                           classes=[str(c) for c in classes])

    def sel_chain(self, meta: Meta, children: list[Any]) -> list[ast.Element]:
        elements: list[ast.Element] = []
        for child in children:
            elements.extend(child if isinstance(child, list) else [child])
        return elements

    def indexed(self, meta: Meta, children: list[Any]) -> list[ast.Element]:
        base, index = children
        return [*(base if isinstance(base, list) else [base]), index]

    def seg(self, meta: Meta, children: list[Token]) -> ast.NamePat:
        return ast.NamePat(span=self.tok_span(children[0]), pattern=str(children[0]))

    def any_one(self, meta: Meta, children: list[Token]) -> ast.AnyOne:
        return ast.AnyOne(span=self.tok_span(children[0]))

    def any_many(self, meta: Meta, children: list[Token]) -> ast.AnyMany:
        return ast.AnyMany(span=self.tok_span(children[0]))

    def role(self, meta: Meta, children: list[Token]) -> ast.Role:
        return ast.Role(span=self.tok_span(children[0]), name=str(children[0])[1:])

    def alt(self, meta: Meta, children: list[Any]) -> ast.Alt:
        options = [c for c in children if isinstance(c, list)]
        return ast.Alt(span=self.join(children[0], children[-1]), options=options)

    def classes(self, meta: Meta, children: list[Token]) -> list[str]:
        return [str(c) for c in children[1:]]

    def index(self, meta: Meta, children: list[Any]) -> ast.Index:
        lsqb, *items, rsqb = children
        return ast.Index(span=self.join(lsqb, rsqb), items=[i for i in items if not isinstance(i, Token)])

    def signed(self, meta: Meta, children: list[Token]) -> int:
        minus, digits = children
        return -int(digits) if minus is not None else int(digits)

    def index_star(self, meta: Meta, children: list[Token]) -> str:
        return "*"

    def slice(self, meta: Meta, children: list[Any]) -> ast.Slice:
        start, _, stop, _, step = children
        return ast.Slice(span=self.meta_span(meta), start=start, stop=stop, step=step)

    # ---------------------------------------------------------- tasks

    def task_ref(self, meta: Meta, children: list[Token]) -> ast.TaskRef:
        return ast.TaskRef(span=self.tok_span(children[0]), name=str(children[0]))

    def task_sum(self, meta: Meta, children: list[Any]) -> ast.TaskSum:
        terms = [c for c in children if not isinstance(c, Token)]
        return ast.TaskSum(span=self.join(terms[0], terms[-1]), terms=terms)

    def task_scale(self, meta: Meta, children: list[Any]) -> ast.TaskScale:
        weight, _, operand = children
        return ast.TaskScale(span=self.join(weight, operand), weight=weight, operand=operand)

    def task_frozen(self, meta: Meta, children: list[Any]) -> ast.TaskFrozen:
        kw, _, inner, rpar = children
        return ast.TaskFrozen(span=self.join(kw, rpar), operand=inner)

    def task_group(self, meta: Meta, children: list[Any]) -> ast.TaskGroup:
        lpar, inner, rpar = children
        return ast.TaskGroup(span=self.join(lpar, rpar), inner=inner)
