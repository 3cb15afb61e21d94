"""Diagnostics as values: source spans, rendered errors and the one exception family.

Every error a user can cause (a spec, a model, a bundle, CLI arguments) is an
:class:`AdaptError` carrying one or more :class:`Diagnostic` values. A
diagnostic knows where it points (a :class:`Span`, or the name of the object at
fault) and renders itself as::

    specs/x.adapt:4:5: error: unknown property 'rnak' for lora
        rnak 8
        ^^^^
      help: did you mean 'rank'?

This module imports nothing from the rest of the package but
:mod:`adaptlang.limits` (it is the bottom layer), so every other layer may
raise these errors.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from adaptlang.limits import MAX_ERRORS_PER_FILE, MAX_SUGGESTION_CANDIDATES

__all__ = [
    "AdaptError",
    "BindError",
    "BundleError",
    "DataError",
    "Diagnostic",
    "RuntimeApplyError",
    "Span",
    "SpecError",
    "UsageError",
    "escape_controls",
    "suggest",
]

#: Characters a terminal acts on rather than shows: C0 controls but tab and
#: newline (ESC starts colour, clear-screen, title and hyperlink sequences;
#: CR and BS overwrite), DEL, the C1 controls (U+0080-U+009F; U+009B is a
#: one-character CSI), and the bidirectional overrides and isolates that
#: reorder what is shown ("Trojan Source"); also lone surrogates, which is how
#: Python holds the bytes of a file name that is not UTF-8, and which a UTF-8
#: stream cannot write.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def escape_controls(text: str, *, json: bool = False) -> str:
    """Returns ``text`` with every character a terminal would act on written as a visible escape.

    Source text, names and paths from files reach the terminal through
    diagnostics and ``adaptc`` output; a raw ``ESC [2J`` would clear the
    screen and an OSC 8 sequence would plant a hyperlink. Tab and newline
    are layout and stay.

    Args:
        text: Any text.
        json: Write ``\\u001b`` (a valid JSON escape for the same
            character, so JSON stays valid and equal) instead of ``\\x1b``.

    Returns:
        The text, unchanged when it holds no such character.
    """
    if not _CONTROLS.search(text):
        return text

    def visible(match: "re.Match[str]") -> str:
        code = ord(match.group())
        return f"\\u{code:04x}" if json or code > 0xFF else f"\\x{code:02x}"

    return _CONTROLS.sub(visible, text)



@dataclass(frozen=True, order=True)
class Span:
    """A region of a source file; lines and columns are 1-based, end exclusive.

    Attributes:
        file: Path of the source as the user gave it, or ``"<string>"``.
        line: First line.
        col: First column.
        end_line: Last line.
        end_col: Column just past the region on ``end_line``.
    """

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def to_tuple(self) -> tuple[str, int, int, int, int]:
        """Returns the span as a plain tuple (for JSON)."""
        return (self.file, self.line, self.col, self.end_line, self.end_col)


@dataclass(frozen=True)
class Diagnostic:
    """One problem, as a value.

    Attributes:
        message: What is wrong, in one line.
        span: Where in a source file, when the problem has a source location.
        obj: The object at fault when there is no source location (a module
            path, a bundle file, a CLI option).
        hint: A suggestion (``did you mean 'rank'?``) or how to fix it.
        notes: Extra lines (nearest real paths, available roles, ...).
        severity: ``"error"`` or ``"warning"``.
        source_line: The text of the line ``span`` points at, when known.
    """

    message: str
    span: Span | None = None
    obj: str | None = None
    hint: str | None = None
    notes: tuple[str, ...] = ()
    severity: str = "error"
    source_line: str | None = None

    def render(self) -> str:
        """Renders the diagnostic as ``file:line:col: error: ...`` with a caret."""
        esc = escape_controls  # every piece may quote a file: nothing in it may drive the terminal
        if self.span is not None:
            where = f"{esc(self.span.file)}:{self.span.line}:{self.span.col}: "
        elif self.obj is not None:
            where = f"{esc(self.obj)}: "
        else:
            where = ""
        lines = [f"{where}{self.severity}: {esc(self.message)}"]
        if self.span is not None and self.source_line is not None:
            text = self.source_line.rstrip("\n").expandtabs(1)
            start = max(self.span.col - 1, 0)
            if self.span.end_line == self.span.line:
                end = start + max(self.span.end_col - self.span.col, 1)
            else:
                end = max(len(text), start + 1)
            # Columns count characters of the source; an escape is wider than the character it shows.
            shown_start = len(esc(text[:start])) + max(start - len(text), 0)
            shown_end = len(esc(text[:end])) + max(end - len(text), 0)
            lines.append(f"    {esc(text)}")
            lines.append("    " + " " * shown_start + "^" * max(shown_end - shown_start, 1))
        if self.hint:
            lines.append(f"  help: {esc(self.hint)}")
        lines.extend(f"  note: {esc(note)}" for note in self.notes)
        return "\n".join(lines)

    def with_source(self, text: str) -> "Diagnostic":
        """Returns a copy that carries the line of ``text`` its span points at."""
        if self.span is None or self.source_line is not None:
            return self
        line = source_line(text, self.span.line)
        return self if line is None else _replace(self, source_line=line)


@functools.lru_cache(maxsize=4)
def _line_starts(text: str) -> list[int]:
    """Offsets where each line of ``text`` starts; computed once per text (a str caches its hash)."""
    starts = [0]
    find, i = text.find, text.find("\n")
    while i >= 0:
        starts.append(i + 1)
        i = find("\n", i + 1)
    return starts


def source_line(text: str, line: int) -> str | None:
    """Returns line ``line`` (1-based) of ``text``, or None past its end.

    Lines end at ``\n`` only, as the parser counts them (``str.splitlines``
    would also split at form feeds and other separators and shift the count).
    The line offsets are cached, so reporting many diagnostics on one text
    costs one pass over it, not one per diagnostic.
    """
    starts = _line_starts(text)
    if not 1 <= line <= len(starts):
        return None
    start = starts[line - 1]
    end = starts[line] - 1 if line < len(starts) else len(text)
    text_line = text[start:end]
    return text_line[:-1] if text_line.endswith("\r") else text_line


def _replace(diag: Diagnostic, **changes: object) -> Diagnostic:
    from dataclasses import replace

    return replace(diag, **changes)


class AdaptError(Exception):
    """The one exception family of adaptlang; carries diagnostics as values.

    Args:
        diagnostics: One diagnostic, a message string, or several diagnostics.
    """

    exit_code = 1

    def __init__(self, diagnostics: Diagnostic | str | Sequence[Diagnostic], **kwargs: object):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic(diagnostics, **kwargs)]  # type: ignore[arg-type]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = cap_per_file(list(diagnostics))
        super().__init__(self.render())

    def render(self) -> str:
        """Renders every diagnostic, separated by blank lines."""
        return "\n\n".join(d.render() for d in self.diagnostics)

    def with_source(self, text: str, file: str | None = None) -> "AdaptError":
        """Attaches source lines to diagnostics whose span is in ``file``."""
        diags = [
            d.with_source(text) if d.span is not None and (file is None or d.span.file == file) else d
            for d in self.diagnostics
        ]
        return type(self)(diags)


def cap_per_file(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Keeps the first :data:`~adaptlang.limits.MAX_ERRORS_PER_FILE` errors of each file.

    The rest are counted in one closing ``note`` per file (kept on later
    calls, so capping twice changes nothing). Errors without a span count
    together, under their own heading.
    """
    counts: dict[str | None, int] = {}
    kept: list[Diagnostic] = []
    for diag in diagnostics:
        if diag.severity != "error":
            kept.append(diag)
            continue
        file = diag.span.file if diag.span is not None else None
        counts[file] = counts.get(file, 0) + 1
        if counts[file] <= MAX_ERRORS_PER_FILE:
            kept.append(diag)
    for file, count in counts.items():
        if count > MAX_ERRORS_PER_FILE:
            kept.append(Diagnostic(
                f"{count - MAX_ERRORS_PER_FILE:,} more errors not shown (MAX_ERRORS_PER_FILE = "
                f"{MAX_ERRORS_PER_FILE})", obj=file, severity="note",
                hint="fix the errors shown, then check again"))
    return kept


class SpecError(AdaptError):
    """A problem in a ``.adapt`` spec: syntax or meaning."""


class BindError(AdaptError):
    """A spec that does not fit the model it is compiled against."""


class RuntimeApplyError(AdaptError):
    """Patching, switching or removing deltas on a real model failed."""


class BundleError(AdaptError):
    """A bundle that cannot be written, read or loaded onto this model."""


class DataError(AdaptError):
    """A training or evaluation data file that cannot be used (empty, a missing field, mixed labels, ...)."""


class UsageError(AdaptError):
    """Bad arguments to the CLI or the Python API (exit code 2)."""

    exit_code = 2


@dataclass
class DiagnosticSink:
    """Collects diagnostics so one pass can report every problem it finds."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def add(self, diag: Diagnostic) -> None:
        """Records one diagnostic."""
        self.diagnostics.append(diag)

    def error(self, message: str, span: Span | None = None, **kwargs: object) -> None:
        """Records an error diagnostic."""
        self.diagnostics.append(Diagnostic(message, span=span, **kwargs))  # type: ignore[arg-type]

    def raise_if_any(self, exc_type: type[AdaptError] = SpecError) -> None:
        """Raises ``exc_type`` carrying every recorded error, if there is any."""
        errors = [d for d in self.diagnostics if d.severity == "error"]
        if errors:
            raise exc_type(errors)


def suggest(word: str, candidates: Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """Returns the candidates closest to ``word`` (for "did you mean" hints).

    Args:
        word: What the user wrote.
        candidates: The valid names.
        n: How many suggestions at most.
        cutoff: Similarity threshold in [0, 1] (difflib ratio).

    Returns:
        The best matches, best first; empty when nothing is close, or when
        there are more than :data:`~adaptlang.limits.MAX_SUGGESTION_CANDIDATES`
        candidates (each error would compare against all of them: 20,000
        unknown names among 20,000 constants took minutes).
    """
    if hasattr(candidates, "__len__") and len(candidates) > MAX_SUGGESTION_CANDIDATES:  # type: ignore[arg-type]
        return []
    pool = sorted(set(candidates))
    if len(pool) > MAX_SUGGESTION_CANDIDATES:
        return []
    return difflib.get_close_matches(word, pool, n=n, cutoff=cutoff)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """Returns ``"did you mean 'x'?"`` for the closest candidate, or None."""
    best = suggest(word, candidates)
    return f"did you mean '{best[0]}'?" if best else None
