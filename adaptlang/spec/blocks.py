"""Lowering one ``KIND NAME { ... }`` or ``quantize FORMAT { ... }`` block to the IR.

Every property is checked against :data:`~adaptlang.spec.values.PROPERTY_TYPES`:
unknown keys (with a suggestion), keys given twice, values of the wrong type
or range, ``for`` overrides of keys that cannot vary per site, and each
kind's required keys. Problems go to a sink; a block with any problem gives
no IR (its name still counts as defined, so tasks do not report it again).
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import ValidationError

from adaptlang.errors import Diagnostic, DiagnosticSink, Span, did_you_mean
from adaptlang.spec import model as ir
from adaptlang.spec.values import PROPERTY_TYPES, SilentProblem, ValueProblem
from adaptlang.syntax import ast

__all__ = ["lower_delta", "lower_quantize", "QUANTIZE_FORMATS"]

#: The base transforms' formats.
QUANTIZE_FORMATS = ("nf4", "int8")

_IR_CLASSES = {"lora": ir.LoraDelta, "ia3": ir.IA3Delta, "adapter": ir.AdapterDelta,
               "prompt": ir.PromptDelta, "tune": ir.TuneDelta, "sparse": ir.SparseDelta}
_ADAPTER_PLACEMENTS = ("after", "before", "parallel")
_REQUIRED = {"lora": "on", "ia3": "on", "sparse": "on", "tune": "params", "prompt": "tokens",
             "quantize": "on"}


def header_span(first: Span, last: Span) -> Span:
    """The span from ``KIND`` to the end of ``NAME`` (what messages about a block point at)."""
    return Span(first.file, first.line, first.col, last.end_line, last.end_col)


def report(sink: DiagnosticSink, problem: ValueProblem, key: str | None = None) -> None:
    """Records a value problem (a silent one was reported where its constant failed)."""
    if isinstance(problem, SilentProblem):
        return
    message = problem.message
    if key is not None and message.startswith("expected "):
        message = f"`{key}` {message.replace('expected', 'expects', 1)}"
    sink.add(Diagnostic(message, span=problem.span, hint=problem.hint))


class BlockReader:
    """Reads the properties of one block into IR fields and overrides.

    Args:
        kind: ``lora`` ... or ``quantize``.
        owner: How messages name the block (``lora 'attn'``).
        constants: The file's resolved constants.
        sink: Where problems go.
    """

    def __init__(self, kind: str, owner: str, constants: Mapping[str, float], sink: DiagnosticSink):
        self.kind = kind
        self.owner = owner
        self.schema = PROPERTY_TYPES[kind]
        self.constants = constants
        self.sink = sink
        self.fields: dict[str, Any] = {}
        self.keys: dict[str, ast.Property] = {}
        self.overrides: list[ir.Override] = []
        self.errors = 0

    def error(self, message: str, span: Span | None, hint: str | None = None, notes: tuple[str, ...] = ()) -> None:
        """Records one problem in this block."""
        self.errors += 1
        self.sink.add(Diagnostic(message, span=span, hint=hint, notes=notes))

    def read(self, properties: list[ast.Property]) -> None:
        """Checks every property in written order."""
        for prop in properties:
            if prop.key not in self.schema:
                self.unknown_key(prop)
            elif prop.override is not None:
                self.read_override(prop)
            elif prop.key in self.keys:
                first = self.keys[prop.key].key_span
                hint = (f"to set it for some sites only, write `{prop.key} VALUE for SELECTOR`"
                        if prop.key in ir.OVERRIDABLE[self.kind] else "remove one of them")
                self.error(f"`{prop.key}` is given twice in {self.owner}", prop.key_span, hint,
                           (f"first given at {first.line}:{first.col}",))
            else:
                self.keys[prop.key] = prop
                value = self.check(prop.key, prop.value)
                if value is not _FAILED:
                    self.fields[prop.key] = value

    def check(self, key: str, value: Any) -> Any:
        """The IR value of ``value`` for ``key``, or ``_FAILED`` after reporting why."""
        try:
            return self.schema[key].check(value, self.constants)
        except ValueProblem as problem:
            self.errors += 1
            report(self.sink, problem, key)
            return _FAILED

    def unknown_key(self, prop: ast.Property) -> None:
        """Reports a key this kind does not have, with the nearest one and its owner kind."""
        hint = did_you_mean(prop.key, self.schema)
        owners = [k for k, keys in PROPERTY_TYPES.items() if prop.key in keys]
        notes: tuple[str, ...] = ()
        if owners:
            notes = (f"`{prop.key}` is a property of {', '.join(owners)}",)
        if hint is None:
            hint = f"{self.kind} takes: {', '.join(self.schema)}"
        self.error(f"unknown property '{prop.key}' for {self.kind}", prop.key_span, hint, notes)

    def read_override(self, prop: ast.Property) -> None:
        """Checks ``KEY VALUE for SELECTOR``: only keys that may vary per site."""
        allowed = ir.OVERRIDABLE[self.kind]
        if prop.key not in allowed:
            hint = (f"per-site keys of {self.kind}: {', '.join(allowed)}" if allowed
                    else f"{self.kind} has no per-site properties")
            self.error(f"`{prop.key}` cannot be set per site (`for`) in {self.owner}", prop.key_span, hint)
            return
        value = self.check(prop.key, prop.value)
        if value is _FAILED:
            return
        self.overrides.append(ir.Override(key=prop.key, value=value, selector=prop.override, span=prop.span))

    def missing(self, what: str, span: Span, hint: str) -> None:
        """Reports a required property that is not there."""
        self.error(f"{self.owner} needs {what}", span, hint)


_FAILED: Any = object()


def lower_delta(decl: ast.DeltaDecl, constants: Mapping[str, float], sink: DiagnosticSink,
                source_file: str) -> Any | None:
    """Returns the IR delta of a declaration, or None after reporting its problems."""
    head = header_span(decl.kind_span, decl.name_span)
    if decl.kind not in _IR_CLASSES:
        hint = did_you_mean(decl.kind, ast.DELTA_KINDS) or f"delta kinds are: {', '.join(ast.DELTA_KINDS)}"
        sink.add(Diagnostic(f"unknown delta kind '{decl.kind}'", span=decl.kind_span, hint=hint))
        return None
    owner = f"{decl.kind} '{decl.name}'"
    reader = BlockReader(decl.kind, owner, constants, sink)
    reader.read(decl.properties)
    fields = dict(reader.fields)
    if decl.kind == "adapter":
        _place_adapter(reader, decl, fields, head)
    else:
        required = _REQUIRED.get(decl.kind)
        if required and required not in reader.keys:
            example = "tokens 20" if required == "tokens" else f"{required} layers[*].self_attn.q_proj"
            reader.missing(f"`{required}`", head, f"add `{example}` to the block")
    if decl.kind == "prompt" and "init" in fields:
        fields["init"] = ir.PromptInit(**fields["init"])
    if reader.errors:
        return None
    return _build(_IR_CLASSES[decl.kind], sink, name=decl.name, overrides=reader.overrides,
                  span=head, source_file=source_file, **fields)


def _place_adapter(reader: BlockReader, decl: ast.DeltaDecl, fields: dict[str, Any], head: Span) -> None:
    """Checks an adapter's one placement and one width; sets ``placement`` and ``on``."""
    given = [k for k in _ADAPTER_PLACEMENTS if k in reader.keys]
    if not given:
        reader.missing("a placement: `after`, `before` or `parallel`", head,
                       "for example `after layers[*].mlp`")
    elif len(given) > 1:
        second = reader.keys[given[1]]
        reader.error(f"{reader.owner} has two placements, `{given[0]}` and `{given[1]}`", second.key_span,
                     "an adapter takes exactly one of `after`, `before` or `parallel`")
    else:
        fields["placement"] = given[0]
        fields["on"] = fields.pop(given[0])
    for key in _ADAPTER_PLACEMENTS:
        fields.pop(key, None)
    if "size" in reader.keys and "reduction" in reader.keys:
        later = max(reader.keys["size"], reader.keys["reduction"], key=lambda p: (p.span.line, p.span.col))
        reader.error("`size` and `reduction` both set the adapter's width; give one", later.key_span,
                     "`size N` is the width itself; `reduction R` is the model width divided by R")
    elif "size" not in reader.keys and "reduction" not in reader.keys:
        reader.missing("a width: `size N` or `reduction R`", head, "for example `size 64` or `reduction 16`")


def lower_quantize(decl: ast.QuantizeDecl, constants: Mapping[str, float], sink: DiagnosticSink) -> Any | None:
    """Returns the IR of a ``quantize`` block, or None after reporting its problems."""
    head = header_span(decl.span, decl.format_span)
    if decl.format not in QUANTIZE_FORMATS:
        hint = did_you_mean(decl.format, QUANTIZE_FORMATS) or f"formats: {', '.join(QUANTIZE_FORMATS)}"
        sink.add(Diagnostic(f"unknown quantize format '{decl.format}'", span=decl.format_span, hint=hint))
        return None
    reader = BlockReader("quantize", f"quantize {decl.format}", constants, sink)
    reader.read(decl.properties)
    if "on" not in reader.keys:
        reader.missing("`on`", head, "add `on layers[*].** is Linear` to the block")
    if reader.errors:
        return None
    return _build(ir.Quantize, sink, format=decl.format, overrides=reader.overrides, span=head,
                  **reader.fields)


def _build(cls: Any, sink: DiagnosticSink, **fields: Any) -> Any | None:
    """Constructs an IR model; a validation failure (a checker gap) becomes a diagnostic, not a traceback."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        sink.add(Diagnostic(f"invalid value for `{where}`: {first.get('msg', 'invalid')}", span=fields.get("span")))
        return None
