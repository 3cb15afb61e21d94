"""``format_text``: the canonical layout of a ``.adapt`` file, comments kept.

The layout:

* one statement per line, in the written order (never reordered);
* one blank line between groups (the header with ``model``, ``use`` lines,
  ``let`` lines, each block, ``task`` lines); a single blank line the author
  left inside a group is kept, runs of blank lines become one;
* block properties on their own lines, indented four spaces, values aligned
  in a column at least eight wide (``dropout`` plus one space);
* consecutive ``let`` and ``task`` lines align their ``=``;
* one space around operators, ``{a, b}`` and ``[0, 5]`` spacing.

Comments stay where they were: an own-line comment before the line that
followed it, a trailing comment on the line it trailed, at its column when
that still clears the code by two spaces and opens no wider gap than the
author left (otherwise at the author's gap). Formatting only re-prints the AST,
so it cannot change what a spec means.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from adaptlang.syntax import ast
from adaptlang.syntax.parser import parse_text
from adaptlang.syntax.render import render_expr, render_selector, render_string, render_task, render_value

__all__ = ["format_module", "format_text"]

INDENT = "    "
#: Width of the key column in blocks: ``dropout`` and a space.
MIN_KEY_WIDTH = 8


def format_text(text: str, file: str = "<string>") -> str:
    """Returns ``text`` in the canonical layout.

    Args:
        text: A spec's source.
        file: Its name, for syntax errors.

    Raises:
        SpecError: When the text does not parse.
    """
    return format_module(parse_text(text, file))


@dataclass
class Line:
    """One output line before assembly.

    Attributes:
        src: The source line it comes from (comments are placed by it).
        stmt: Index of the statement it belongs to (leading comments included);
            ``len(statements)`` for comments after the last statement.
        head: Text before the alignment column (``task both``, a property key).
        rest: Text after it (``= a + b``, the property value); empty for others.
        align: The alignment group (``"let"``, ``"task"``, a block id), or None.
        inside: Inside a block (indented).
        opens: A block's first line.
        closes: A block's ``}``.
        comment: A trailing comment, or None.
        comment_col: The trailing comment's source column.
        comment_gap: Spaces between the code and the trailing comment in the source.
        is_comment: An own-line comment.
        continuations: Own-line comments that continue the trailing comment
            (the lines below it, starting in its column).
        text: The aligned code, once known.
    """

    src: int
    stmt: int
    head: str
    rest: str = ""
    align: Any = None
    inside: bool = False
    opens: bool = False
    closes: bool = False
    comment: str | None = None
    comment_col: int = 0
    comment_gap: int = 2
    is_comment: bool = False
    continuations: list[str] = field(default_factory=list)
    text: str = ""


def _group(stmt: Any) -> Any:
    """Statements of one group sit together; each block is a group of its own."""
    if isinstance(stmt, (ast.Header, ast.ModelStmt)):
        return "head"
    if isinstance(stmt, ast.Use):
        return "use"
    if isinstance(stmt, ast.Let):
        return "let"
    if isinstance(stmt, ast.TaskDecl):
        return "task"
    return id(stmt)


def statement_lines(stmt: Any, index: int) -> list[Line]:
    """The code lines of one statement."""
    line = stmt.span.line
    if isinstance(stmt, ast.Header):
        return [Line(line, index, f"adaptlang {stmt.version}")]
    if isinstance(stmt, ast.ModelStmt):
        name = render_string(stmt.name) if stmt.quoted else stmt.name
        return [Line(line, index, f"model {name}")]
    if isinstance(stmt, ast.Use):
        return [Line(line, index, f"use {render_string(stmt.path)}")]
    if isinstance(stmt, ast.Let):
        return [Line(line, index, f"let {stmt.name}", f"= {render_expr(stmt.value)}", align="let")]
    if isinstance(stmt, ast.TaskDecl):
        return [Line(line, index, f"task {stmt.name}", f"= {render_task(stmt.expr)}", align="task")]
    if isinstance(stmt, ast.DeltaDecl):
        return _block_lines(f"{stmt.kind} {stmt.name}", stmt, index)
    if isinstance(stmt, ast.QuantizeDecl):
        return _block_lines(f"quantize {stmt.format}", stmt, index)
    raise TypeError(f"not a statement: {type(stmt).__name__}")


def _block_lines(head: str, stmt: Any, index: int) -> list[Line]:
    lines = [Line(stmt.span.line, index, f"{head} {{", opens=True)]
    for prop in stmt.properties:
        value = render_value(prop.value)
        if prop.override is not None:
            value += f" for {render_selector(prop.override)}"
        lines.append(Line(prop.span.line, index, prop.key, value, align=("block", index), inside=True))
    lines.append(Line(stmt.span.end_line, index, "}", closes=True))
    return lines


def format_module(module: ast.Module) -> str:
    """Prints a parsed module in the canonical layout (see the module docstring)."""
    statements = module.statements
    lines: list[Line] = []
    for i, stmt in enumerate(statements):
        lines.extend(statement_lines(stmt, i))
    src_lines = module.source.split("\n")  # lines as the parser counts them (not at form feeds)
    # A comment with code before it on its line trails that code; others stand on their own line.
    trailing = {c.span.line for c in module.comments if src_lines[c.span.line - 1][: c.span.col - 1].strip()}
    lines = place_comments(lines, module.comments, src_lines, trailing, len(statements))
    blank_before = _blank_lines(lines, statements, src_lines)
    _align(lines, blank_before)
    out: list[str] = []
    for line, blank in zip(lines, blank_before):
        if blank and out:
            out.append("")
        out.append(_render_line(line))
    return "\n".join(out) + "\n" if out else ""


def place_comments(lines: list[Line], comments: list[ast.Comment], src_lines: list[str],
                   trailing: set[int], n_statements: int) -> list[Line]:
    """Attaches trailing comments to the code of their line and inserts own-line ones."""
    by_line: dict[int, list[Line]] = {}
    for line in lines:
        by_line.setdefault(line.src, []).append(line)
    srcs = [line.src for line in lines]  # ascending: statements and their lines come in source order
    own: list[ast.Comment] = []
    last_trailing: tuple[int, int, Line] | None = None  # (line, column, host)
    for comment in comments:
        if comment.span.line not in trailing:
            if last_trailing and last_trailing[:2] == (comment.span.line - 1, comment.span.col):
                host = last_trailing[2]
                host.continuations.append(comment.text)
                last_trailing = (comment.span.line, comment.span.col, host)
            else:
                own.append(comment)
            continue
        hosts = by_line.get(comment.span.line)
        if hosts:
            # `rank 8 }  # c`: the comment is about the property, not the brace.
            host = next((h for h in reversed(hosts) if not h.closes), hosts[-1])
        else:
            # Code on this line, but none of our lines starts here (a lone `{` or `;`): join the
            # line above unless own-line comments sit in between (their order must not change).
            # The first of the last lines above (bisect: a scan per comment was quadratic).
            below = bisect.bisect_left(srcs, comment.span.line)
            if below == 0:  # `; # c` before the first statement: nothing above to trail
                own.append(comment)
                last_trailing = None
                continue
            host = lines[bisect.bisect_left(srcs, srcs[below - 1])]
            if own and own[-1].span.line > host.src:  # `own` is in source order
                own.append(comment)
                last_trailing = None
                continue
        if host.comment is not None:  # a second trailing comment for one line: keep it below the first
            host.continuations.append(comment.text)
        else:
            host.comment, host.comment_col = comment.text, comment.span.col
            code = src_lines[comment.span.line - 1][: comment.span.col - 1]
            host.comment_gap = len(code) - len(code.rstrip())
        last_trailing = (comment.span.line, comment.span.col, host)
    out: list[Line] = []
    next_own = 0
    for line in lines:
        while next_own < len(own) and own[next_own].span.line < line.src:
            c = own[next_own]
            next_own += 1
            out.append(Line(c.span.line, line.stmt, c.text, inside=line.inside or line.closes, is_comment=True))
        out.append(line)
    out.extend(Line(c.span.line, n_statements, c.text, is_comment=True) for c in own[next_own:])
    return out


def _blank_lines(lines: list[Line], statements: list[Any], src_lines: list[str]) -> list[bool]:
    """Whether a blank line goes before each line: between groups, or where the author left one."""
    blank = [False] * len(lines)
    for i in range(1, len(lines)):
        prev, line = lines[i - 1], lines[i]
        if prev.stmt != line.stmt and line.stmt < len(statements):
            a, b = statements[prev.stmt], statements[line.stmt]
            if _group(a) != _group(b):
                blank[i] = True
                continue
        if prev.opens or line.closes:
            continue
        gap = src_lines[prev.src: line.src - 1]
        blank[i] = any(not text.strip() for text in gap)
    return blank


def _align(lines: list[Line], blank_before: list[bool]) -> None:
    """Pads ``head`` so that consecutive lines of one alignment group line up."""
    run: list[Line] = []

    def flush() -> None:
        if not run:
            return
        width = max(len(l.head) for l in run)
        if isinstance(run[0].align, tuple):  # block properties
            width = max(width + 1, MIN_KEY_WIDTH)
            for l in run:
                l.text = f"{INDENT}{l.head.ljust(width)}{l.rest}"
        else:
            for l in run:
                l.text = f"{l.head.ljust(width)} {l.rest}"
        run.clear()

    for line, blank in zip(lines, blank_before):
        if line.is_comment:
            continue
        block = isinstance(line.align, tuple)
        if run and (line.align != run[0].align or (blank and not block)):
            flush()
        if line.align is not None:
            run.append(line)
        else:
            flush()
    flush()


def _render_line(line: Line) -> str:
    """The final text of a line, with its trailing comment."""
    if line.is_comment:
        return (INDENT if line.inside else "") + line.head
    text = line.text or ((INDENT if line.inside else "") + line.head)
    if line.comment is None:
        return text
    # Keep the comment's column (authors align comments) unless the code got shorter and that
    # would open a wider gap than the author left; then keep the author's gap instead.
    gap = max(line.comment_gap, 2)
    column = line.comment_col - 1
    if column < len(text) + 2 or column - len(text) > gap:
        column = len(text) + gap
    rendered = [text.ljust(column) + line.comment]
    rendered.extend(" " * column + more for more in line.continuations)
    return "\n".join(rendered)
