"""``load_spec``: from a path or text to a checked :class:`~adaptlang.spec.model.Spec`.

Lowering reads the root file and, depth first, every file it ``use``s; then
it resolves constants per file, lowers each block, flattens the tasks and
raises one :class:`~adaptlang.errors.SpecError` carrying every problem found
(each diagnostic with its file's source line), so a user fixes a spec in one
round trip.

``use "other.adapt"`` brings the other file's deltas and tasks into scope
(its ``let`` constants stay private to it; its ``model`` and ``quantize``
statements describe its own base and are not imported). Paths are relative
to the using file, or to the working directory for a spec given as text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from adaptlang.errors import Diagnostic, DiagnosticSink, Span, SpecError, UsageError, did_you_mean
from adaptlang.spec import model as ir
from adaptlang.spec.blocks import lower_delta, lower_quantize
from adaptlang.limits import MAX_SPEC_FILE_BYTES, MAX_USE_DEPTH
from adaptlang.spec.constants import check_override, resolve_constants
from adaptlang.textfile import FileProblem, read_text_file, short_path
from adaptlang.spec.tasks import TaskSource, flatten_tasks
from adaptlang.spec.values import BROKEN
from adaptlang.syntax import ast
from adaptlang.syntax.parser import SUPPORTED_VERSIONS, parse_text

__all__ = ["load_spec", "lower_text"]

STRING_FILE = "<string>"
#: How file-size messages name the limit.
_FILE_LIMIT = "a spec file (MAX_SPEC_FILE_BYTES)"


def load_spec(path_or_text: Any, constants: Mapping[str, float] | None = None) -> ir.Spec:
    """Parses and checks a spec, with every file it uses.

    Args:
        path_or_text: A :class:`~pathlib.Path`; a ``str`` naming an existing
            file or ending in ``.adapt`` (a path); otherwise the spec's text.
        constants: Values replacing ``let`` constants of the same name, in
            any file of the spec (``adaptc compile --set r=16``).

    Returns:
        The checked spec.

    Raises:
        SpecError: Every problem found in the spec and the files it uses.
        UsageError: A missing spec file, or a name in ``constants`` that no
            ``let`` defines.
    """
    if isinstance(path_or_text, os.PathLike) or (isinstance(path_or_text, str) and _looks_like_path(path_or_text)):
        path = Path(path_or_text)
        try:
            text = read_text_file(path, MAX_SPEC_FILE_BYTES, what=_FILE_LIMIT)
        except FileProblem as problem:
            if problem.missing:
                raise UsageError(Diagnostic("no such file", obj=short_path(str(path_or_text)),
                                            hint="check the spec path")) from None
            raise UsageError(Diagnostic(problem.message, obj=short_path(str(path_or_text)),
                                        hint=problem.hint)) from None
        return lower_text(text, str(path_or_text), path.parent, constants, Path(os.path.realpath(path)))
    if not isinstance(path_or_text, str):
        raise UsageError(Diagnostic(f"expected a spec path or text, got {type(path_or_text).__name__}",
                                    obj="load_spec"))
    return lower_text(path_or_text, STRING_FILE, Path.cwd(), constants)


def _looks_like_path(text: str) -> bool:
    """A one-line string ending in ``.adapt`` or naming an existing file is a path."""
    if "\n" in text or not text.strip():
        return False
    if text.strip().endswith(".adapt"):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def lower_text(text: str, file: str, base_dir: Path, constants: Mapping[str, float] | None = None,
               resolved: Path | None = None) -> ir.Spec:
    """Lowers a spec given as text; ``file`` names it in spans, ``base_dir`` anchors its ``use`` paths.

    Raises:
        SpecError, UsageError: As :func:`load_spec`; a ``constants`` value that
            is not a finite number within ``MAX_SPEC_NUMBER`` is a UsageError
            naming the constant.
    """
    overrides = {name: check_override(name, value) for name, value in (constants or {}).items()}
    lowerer = Lowerer(overrides)
    lowerer.load(file, text, base_dir, resolved, root=True)
    return lowerer.finish(file)


def _is_alias(decl: ast.TaskDecl) -> bool:
    """``task x = x``: a task that is exactly the delta of its own name."""
    return isinstance(decl.expr, ast.TaskRef) and decl.expr.name == decl.name


class Lowerer:
    """Lowering state for one spec and its imports.

    Args:
        overrides: ``let`` values to replace, by name.
    """

    def __init__(self, overrides: dict[str, float]):
        self.overrides = overrides
        self.used_overrides: set[str] = set()
        self.sink = DiagnosticSink()
        self.sources: dict[str, str] = {}
        self.defined: dict[str, tuple[Span, str, bool]] = {}
        self.delta_kinds: dict[str, str] = {}
        self.deltas: dict[str, Any] = {}
        self.tasks: dict[str, TaskSource] = {}
        self.quantize: list[Any] = []
        self.model: ast.ModelStmt | None = None
        self.root_constants: dict[str, float] = {}
        self.stack: list[tuple[Path | None, str]] = []
        self.loaded: set[Path] = set()
        self.constant_names: set[str] = set()
        self.paired: set[str] = set()

    # ------------------------------------------------------------ files

    def load(self, file: str, text: str, base_dir: Path, resolved: Path | None, root: bool) -> None:
        """Parses one file, loads what it uses, then lowers its own statements."""
        self.sources[file] = text
        if resolved is not None:
            self.loaded.add(resolved)
        try:
            module = parse_text(text, file)
        except SpecError as exc:
            self.sink.diagnostics.extend(exc.diagnostics)
            return
        self.stack.append((resolved, file))
        try:
            for stmt in module.statements:
                if isinstance(stmt, ast.Use):
                    self.load_use(stmt, file, base_dir)
            self.lower_module(module, root)
        finally:
            self.stack.pop()

    def load_use(self, use: ast.Use, file: str, base_dir: Path) -> None:
        """Loads one ``use``d file (once per spec), reporting every problem at the ``use``.

        Only regular files whose name (and whose target, through symlinks)
        ends in ``.adapt`` are read (see :func:`~adaptlang.textfile.read_text_file`);
        chains of ``use`` stop at ``MAX_USE_DEPTH`` files, so loading recurses
        at most that deep.
        """
        named = short_path(use.path).replace("\0", "\\0")
        if len(self.stack) >= MAX_USE_DEPTH:
            self.sink.add(Diagnostic(
                f"`use` chain too deep: '{named}' would be file {len(self.stack) + 1} of one chain, past "
                f"the limit of {MAX_USE_DEPTH} (MAX_USE_DEPTH)", span=use.span,
                hint="real specs use one or two levels: use the shared files from one place",
                notes=(f"the chain starts at {self.stack[0][1]}",)))
            return
        target = base_dir / use.path
        shown = os.path.normpath(use.path if file == STRING_FILE else os.path.join(os.path.dirname(file), use.path))
        try:
            text = read_text_file(target, MAX_SPEC_FILE_BYTES, suffix=".adapt", what=_FILE_LIMIT)
        except FileProblem as problem:
            if problem.missing:
                self.sink.add(Diagnostic(f"cannot find '{named}' (used here)", span=use.span,
                                         hint="a `use` path is relative to the file that contains it",
                                         notes=(f"looked for {short_path(shown)}",)))
            else:
                self.sink.add(Diagnostic(f"cannot use '{named}': {problem.message}", span=use.span,
                                         hint=problem.hint or "`use` reads regular .adapt files only"))
            return
        resolved = Path(os.path.realpath(target))  # read above: the name is valid and no link loops
        chain = [r for r, _ in self.stack]
        if resolved in chain:
            names = [name for _, name in self.stack[chain.index(resolved):]] + [shown]
            self.sink.add(Diagnostic(f"`use` cycle: {' -> '.join(names)}", span=use.span,
                                     hint="specs may not use each other in a circle; move the shared "
                                          "deltas into a third file that both use"))
            return
        if resolved in self.loaded:
            return  # already brought in (a diamond of uses): once is enough
        self.load(shown, text, Path(target).parent, resolved, root=False)

    # ------------------------------------------------------------ statements

    def lower_module(self, module: ast.Module, root: bool) -> None:
        """Lowers one file's statements (its imports are already loaded)."""
        for stmt in module.statements:
            if isinstance(stmt, ast.Header) and stmt.version not in SUPPORTED_VERSIONS:
                known = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
                self.sink.add(Diagnostic(f"unknown language version {stmt.version}", span=stmt.span,
                                         hint=f"this adaptc reads version {known}: write `adaptlang 1`"))
        lets = [s for s in module.statements if isinstance(s, ast.Let)]
        self.constant_names.update(let.name for let in lets)
        local = {name: value for name, value in self.overrides.items() if any(l.name == name for l in lets)}
        self.used_overrides.update(local)
        constants = resolve_constants(lets, local, self.sink)
        if root:
            self.root_constants = {k: v for k, v in constants.items() if v is not BROKEN}
        for stmt in module.statements:
            if isinstance(stmt, ast.ModelStmt) and root:
                self.set_model(stmt)
            elif isinstance(stmt, ast.DeltaDecl):
                self.add_delta(stmt, constants, module.file)
            elif isinstance(stmt, ast.QuantizeDecl) and root:
                q = lower_quantize(stmt, constants, self.sink)
                if q is not None:
                    self.quantize.append(q)
            elif isinstance(stmt, ast.TaskDecl):
                if self.define(stmt.name, stmt.name_span, "task", _is_alias(stmt)):
                    self.tasks[stmt.name] = TaskSource(stmt, constants)

    def set_model(self, stmt: ast.ModelStmt) -> None:
        """Records the default model (once)."""
        if self.model is not None:
            first = self.model.span
            self.sink.add(Diagnostic("`model` is given twice", span=stmt.span, hint="keep one `model` line",
                                     notes=(f"first given at {first.line}:{first.col}",)))
            return
        self.model = stmt

    def define(self, name: str, span: Span, what: str, alias: bool) -> bool:
        """Claims ``name`` for a delta or a task; reports a second definition at ``span``.

        Deltas and tasks share one namespace, with one exception: a task
        ``task x = x`` (exactly the delta of its own name) may share the
        delta's name, so a one-delta task can be named after its delta.

        Args:
            name: The name.
            span: Where it is being defined.
            what: ``"delta"`` or ``"task"``.
            alias: For a task, whether it is ``task x = x``; True for a delta.
        """
        first = self.defined.get(name)
        if first is None:
            self.defined[name] = (span, what, alias)
            return True
        first_span, first_what, first_alias = first
        if first_what != what and alias and first_alias and name not in self.paired:
            self.paired.add(name)
            return True
        where = f"{first_span.file}:{first_span.line}:{first_span.col}"
        self.sink.add(Diagnostic(f"'{name}' is defined twice: here and at {where}", span=span,
                                 hint="deltas and tasks share one namespace; rename one of them",
                                 notes=(f"first defined at {where}",)))
        return False

    def add_delta(self, decl: ast.DeltaDecl, constants: Mapping[str, float], file: str) -> None:
        """Lowers a delta declaration and claims its name."""
        fresh = self.define(decl.name, decl.name_span, "delta", True)
        delta = lower_delta(decl, constants, self.sink, file)
        if not fresh:
            return
        self.delta_kinds[decl.name] = decl.kind
        if delta is not None:
            self.deltas[decl.name] = delta

    # ------------------------------------------------------------ the spec

    def finish(self, path: str) -> ir.Spec:
        """Flattens tasks, raises every problem found, or returns the Spec."""
        unknown = [name for name in self.overrides if name not in self.used_overrides]
        if unknown:
            name = unknown[0]
            hint = did_you_mean(name, self.constant_names) or (
                f"the spec's constants are: {', '.join(sorted(self.constant_names))}"
                if self.constant_names else "the spec defines no constants (`let NAME = VALUE`)")
            raise UsageError(Diagnostic(f"unknown constant '{name}'", obj="--set", hint=hint))
        tasks = flatten_tasks(self.tasks, self.delta_kinds, self.sink)
        if not self.tasks:
            tasks = {"default": ir.Task(name="default", implicit=True,
                                        terms=[ir.TaskTerm(delta=name) for name in self.delta_kinds])}
        if self.sink.diagnostics:
            raise SpecError(self.sorted_diagnostics())
        return ir.Spec(version=1, model=self.model.name if self.model else None,
                       constants=self.root_constants, deltas=self.deltas, tasks=tasks,
                       quantize=self.quantize, path=path, sources=dict(self.sources))

    def sorted_diagnostics(self) -> list[Diagnostic]:
        """Every diagnostic with its source line, in file order, then line and column."""
        order = {file: i for i, file in enumerate(self.sources)}
        diags = []
        for diag in self.sink.diagnostics:
            if diag.span is not None and diag.span.file in self.sources:
                diag = diag.with_source(self.sources[diag.span.file])
            diags.append(diag)

        def key(d: Diagnostic) -> tuple[int, int, int]:
            if d.span is None:
                return (len(order), 0, 0)
            return (order.get(d.span.file, len(order)), d.span.line, d.span.col)

        return sorted(diags, key=key)
