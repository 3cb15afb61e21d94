"""The abstract syntax tree of a ``.adapt`` file; every node carries its span.

The parser (``syntax.parser``) builds these nodes, the formatter
(``syntax.format``) prints them back, and the spec layer lowers them to the
pydantic IR. Selector nodes are shared with the later layers: the spec IR holds
:class:`Selector` values as they were parsed, and the planner's selector engine
matches them against a model signature.

Nodes are frozen pydantic models (extra fields forbidden), so an AST can be
compared, hashed by value and dumped for debugging.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from adaptlang.errors import Span

__all__ = [
    "Alt", "AnyMany", "AnyOne", "BinOp", "Comment", "DeltaDecl", "Element", "Expr",
    "Group", "Header", "Index", "IndexItem", "Let", "ModelStmt", "Module", "NamePat",
    "Name", "Neg", "Node", "Number", "Percent", "Property", "QuantizeDecl", "Role",
    "SelPath", "Selector", "Slice", "Statement", "String", "Tagged", "TaskDecl",
    "TaskExpr", "TaskFrozen", "TaskGroup", "TaskRef", "TaskScale", "TaskSum", "Use",
    "Value", "DELTA_KINDS", "KIND_PROPERTIES", "PLACEMENT_KEYS",
]

#: The delta kinds of language version 1, in documentation order.
DELTA_KINDS = ("lora", "ia3", "adapter", "prompt", "tune", "sparse")

#: Property keys whose value is a selector rather than an expression.
PLACEMENT_KEYS = ("on", "after", "before", "parallel", "params")

#: The property keys of each delta kind (and of ``quantize`` blocks), in
#: documentation order. The spec layer checks values; the parser uses these
#: for "did you mean" hints in syntax errors.
KIND_PROPERTIES: dict[str, tuple[str, ...]] = {
    "lora": ("on", "rank", "alpha", "dropout", "init", "variant", "bias"),
    "ia3": ("on", "init", "feedforward"),
    "adapter": ("after", "before", "parallel", "size", "reduction", "act", "dropout", "scale", "residual"),
    "prompt": ("tokens", "init"),
    "tune": ("params",),
    "sparse": ("on", "density", "select", "seed"),
    "quantize": ("on", "block", "double", "compute"),
}


class Node(BaseModel):
    """Base of every AST node: frozen, no extra fields, with a source span."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    # Spans are excluded from dumps: formatting must never change meaning.
    span: Span = Field(exclude=True)


# --------------------------------------------------------------------------
# Expressions: `let` arithmetic and property values.


class Number(Node):
    """A numeric literal; ``text`` keeps the spelling for the formatter."""

    value: int | float
    text: str


class Percent(Node):
    """A percentage literal such as ``0.5%``; ``value`` is as written (0.5)."""

    value: float
    text: str

    @property
    def fraction(self) -> float:
        """The value as a fraction of one (``0.5%`` is 0.005)."""
        return self.value / 100.0


class String(Node):
    """A double-quoted string literal, unescaped."""

    value: str


class Name(Node):
    """A bare word: a constant's name, an enum word (``gelu``) or ``true``."""

    name: str


class BinOp(Node):
    """Binary arithmetic ``left op right``."""

    op: Literal["+", "-", "*", "/"]
    left: "Expr"
    right: "Expr"


class Neg(Node):
    """Unary minus."""

    operand: "Expr"


class Group(Node):
    """A parenthesised expression, kept so the formatter can print it back."""

    inner: "Expr"


class Tagged(Node):
    """A word followed by a value, as in ``init text "Answer:"``."""

    tag: str
    value: "Expr"


Expr = Union[Number, Percent, String, Name, BinOp, Neg, Group]
Value = Union[Number, Percent, String, Name, BinOp, Neg, Group, Tagged]


# --------------------------------------------------------------------------
# Selectors (shared with the spec and plan layers). Each element has a
# constant ``kind`` field so that dumps (``Spec.canonical``) tell ``*`` from
# ``**``, which would otherwise both dump as ``{}``.


class NamePat(Node):
    """One path segment by name; may glob within the segment (``*_proj``)."""

    kind: Literal["name"] = "name"
    pattern: str


class AnyOne(Node):
    """``*``: exactly one segment."""

    kind: Literal["any_one"] = "any_one"


class AnyMany(Node):
    """``**``: zero or more segments."""

    kind: Literal["any_many"] = "any_many"


class Slice(Node):
    """``start:stop:step`` inside an index; omitted parts are None."""

    start: int | None = None
    stop: int | None = None
    step: int | None = None


IndexItem = Union[int, Slice, Literal["*"]]


class Index(Node):
    """``[3]``, ``[-4:]``, ``[0, 5, 9]``, ``[*]``: children of a list-like module.

    An Index element always follows the element naming the list-like module
    (``layers[3]`` is ``NamePat('layers')`` then ``Index([3])``) and matches
    exactly one segment: a child index of that module, negative indices
    counting from the end.
    """

    kind: Literal["index"] = "index"
    items: list[IndexItem]


class Role(Node):
    """``@q``, ``@layers``: a role, resolved per model family."""

    kind: Literal["role"] = "role"
    name: str


class Alt(Node):
    """``{q_proj, v_proj}``: any one of the alternatives (each a path)."""

    kind: Literal["alt"] = "alt"
    options: list[list["Element"]]


Element = Union[NamePat, AnyOne, AnyMany, Index, Role, Alt]


class SelPath(Node):
    """One selector path: elements joined by dots, an optional class filter.

    Attributes:
        anchored: True for a leading ``/`` (match from the root); otherwise the
            path may start at any segment. It always runs to the end.
        elements: The segments' patterns in order.
        classes: Class names from ``is A | B`` (empty: any class).
    """

    anchored: bool = False
    elements: list[Element]
    classes: list[str] = []


class Selector(Node):
    """``SEL, SEL except SEL, SEL``: a union of paths minus exceptions."""

    include: list[SelPath]
    exclude: list[SelPath] = []


# --------------------------------------------------------------------------
# Task expressions.


class TaskRef(Node):
    """A delta's or task's name."""

    name: str


class TaskSum(Node):
    """``a + b + c``: all active, in written order."""

    terms: list["TaskExpr"]


class TaskScale(Node):
    """``0.5 * a``: ``a``'s contribution scaled."""

    weight: Expr
    operand: "TaskExpr"


class TaskFrozen(Node):
    """``frozen(a)``: used but not trained."""

    operand: "TaskExpr"


class TaskGroup(Node):
    """``( ... )``."""

    inner: "TaskExpr"


TaskExpr = Union[TaskRef, TaskSum, TaskScale, TaskFrozen, TaskGroup]


# --------------------------------------------------------------------------
# Statements.


class Comment(Node):
    """A ``#`` comment; ``text`` includes the ``#``."""

    text: str


class Header(Node):
    """``adaptlang 1``."""

    version: int


class ModelStmt(Node):
    """``model llama`` or ``model "path/or/id"``."""

    name: str
    quoted: bool = False


class Let(Node):
    """``let NAME = EXPR``."""

    name: str
    name_span: Span = Field(exclude=True)
    value: Expr


class Use(Node):
    """``use "other.adapt"``."""

    path: str


class Property(Node):
    """``KEY VALUE`` or ``KEY VALUE for SELECTOR`` inside a block.

    Attributes:
        key: The property name.
        key_span: Where the key is written.
        value: A selector for placement keys (``on``, ``after``, ``before``,
            ``parallel``, ``params``), otherwise a value expression.
        override: The ``for`` selector of a per-site override, or None.
    """

    key: str
    key_span: Span = Field(exclude=True)
    value: Union[Selector, Value]
    override: Selector | None = None


class DeltaDecl(Node):
    """``KIND NAME { PROPERTY* }``."""

    kind: str
    kind_span: Span = Field(exclude=True)
    name: str
    name_span: Span = Field(exclude=True)
    properties: list[Property]


class QuantizeDecl(Node):
    """``quantize FORMAT { PROPERTY* }``."""

    format: str
    format_span: Span = Field(exclude=True)
    properties: list[Property]


class TaskDecl(Node):
    """``task NAME = TASK-EXPR``."""

    name: str
    name_span: Span = Field(exclude=True)
    expr: TaskExpr


Statement = Union[Header, ModelStmt, Let, Use, DeltaDecl, QuantizeDecl, TaskDecl]


class Module(Node):
    """A whole file.

    Attributes:
        file: The path as given (used in spans and diagnostics).
        source: The full text, for rendering diagnostics.
        statements: In written order.
        comments: Every comment, in written order (the formatter re-attaches
            them to statements by line).
    """

    file: str
    source: str
    statements: list[Statement]
    comments: list[Comment] = []


for _model in (BinOp, Neg, Group, Tagged, Alt, TaskSum, TaskScale, TaskFrozen, TaskGroup, Property):
    _model.model_rebuild()
