"""Terminal output for ``adaptc``: consoles, diagnostics, number formats, safe writes.

Everything a command shows goes through here, so that user-controlled text
(paths, spec lines, selectors) is never read as rich markup, diagnostics keep
their ``file:line:col: error:`` text and caret alignment intact, and
machine-readable output (plan JSON, DOT) reaches stdout byte for byte.

Text that came from a file (spec source, names, paths, a bundle's embedded
spec) may hold terminal control sequences; whatever reaches the terminal
shows them as escapes (:func:`adaptlang.errors.escape_controls`): ``plain``
for rich text, ``write_stdout`` for data (JSON gets ``\\u001b``, which
keeps it valid and equal). Only ``raw=True`` writes bytes as they are, for
output that is a file's content on purpose and not going to a terminal.

Only the CLI prints; library layers return values or raise
:class:`~adaptlang.errors.AdaptError`.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Iterable

from rich.console import Console
from rich.text import Text

from adaptlang.errors import AdaptError, Diagnostic, UsageError, escape_controls

__all__ = [
    "error_console",
    "format_bytes",
    "format_count",
    "format_share",
    "plain",
    "print_diagnostics",
    "print_error",
    "output_file",
    "output_folder",
    "stdout_console",
    "write_atomic",
    "write_output",
    "write_stdout",
    "write_error",
]

#: The path that means standard output, for options that write text.
STDOUT = "-"

#: errno values that say the disk or its permissions refused a write (the user's to fix, not a bug).
DISK_ERRNOS = frozenset(code for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                                          getattr(errno, "EDQUOT", None), errno.EIO) if code is not None)

# Regexes that colour parts of a rendered diagnostic without touching its text.
_STYLES = (
    (r"(?m)^\S.*?\b(error|warning):", "bold"),
    (r"\berror:", "bold red"),
    (r"\bwarning:", "bold yellow"),
    (r"(?m)^ +\^+$", "bold red"),
    (r"(?m)^  help:", "bold cyan"),
    (r"(?m)^  note:", "bold blue"),
)


#: Columns of tables written to a pipe or file (no terminal to fit).
PIPE_WIDTH = 160


def stdout_console(width: int | None = None) -> Console:
    """Returns a console on the current stdout (looked up now, so test runners work).

    Args:
        width: A fixed width; None lets rich detect the terminal (80 when piped).

    Returns:
        A console that never interprets markup or highlights numbers on its own.
    """
    console = Console(file=sys.stdout, highlight=False, markup=False, emoji=False, width=width)
    if width is None and not console.is_terminal:
        # Piped or captured output is read by programs and people alike: rich's
        # default of 80 columns would cut paths and shapes short, so use more.
        console.width = PIPE_WIDTH
    return console


def error_console() -> Console:
    """Returns a console on the current stderr that never wraps long lines."""
    return Console(
        file=sys.stderr, highlight=False, markup=False, emoji=False, soft_wrap=True
    )


def style_diagnostic(rendered: str) -> Text:
    """Colours a rendered diagnostic; the characters stay exactly as rendered.

    Args:
        rendered: The output of :meth:`Diagnostic.render`.

    Returns:
        A rich ``Text`` whose plain text equals ``rendered``.
    """
    text = Text(rendered)
    for pattern, style in _STYLES:
        text.highlight_regex(pattern, style)
    return text


def print_diagnostics(diagnostics: Iterable[Diagnostic], console: Console | None = None) -> None:
    """Prints diagnostics to stderr, separated by blank lines.

    Args:
        diagnostics: The problems to show.
        console: Where to print; stderr by default.
    """
    console = console or error_console()
    for i, diag in enumerate(diagnostics):
        if i:
            console.print()
        console.print(style_diagnostic(diag.render()))


def print_error(exc: AdaptError) -> None:
    """Prints every diagnostic of an :class:`AdaptError` to stderr.

    Diagnostics that point into a source file but lack the source line get it
    attached here when the file can be read, so the caret always shows.
    """
    diags = [attach_source(d) for d in exc.diagnostics]
    print_diagnostics(diags)


def attach_source(diag: Diagnostic) -> Diagnostic:
    """Returns ``diag`` with its source line filled in from disk, when possible."""
    if diag.span is None or diag.source_line is not None:
        return diag
    from adaptlang.limits import MAX_SPEC_FILE_BYTES
    from adaptlang.textfile import FileProblem, read_text_file

    try:
        return diag.with_source(read_text_file(diag.span.file, MAX_SPEC_FILE_BYTES))
    except FileProblem:
        return diag


def plain(text: object, style: str = "") -> Text:
    """Returns ``text`` as rich ``Text`` (never markup) with control characters escaped."""
    return Text(escape_controls(str(text)), style=style)


def write_stdout(text: str, *, json: bool = False, raw: bool = False) -> None:
    """Writes ``text`` to stdout as given (no wrapping, no colour, no newline added).

    Args:
        text: What to write.
        json: ``text`` is JSON: control characters become ``\\u00XX``, the
            same string to a JSON reader (only DEL and C1 can be raw in
            ``json.dumps`` output).
        raw: Write control characters as they are: for output that is a
            file's bytes by request (``fmt -o -`` into a pipe).
    """
    sys.stdout.write(text if raw else escape_controls(text, json=json))
    sys.stdout.flush()


def write_atomic(path: Path, text: str) -> None:
    """Replaces ``path`` with ``text`` atomically (temp file in the same folder, then rename).

    The file's permission bits are kept when it already exists. Newlines are
    written as given (no platform translation), so output is byte-identical.

    Args:
        path: The file to write.
        text: Its new content.

    Raises:
        OSError: When the folder cannot be written.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # never rename over a device or a FIFO
        raise OSError(errno.EINVAL, "not a regular file (a device, a FIFO, ...)", str(path))
    from adaptlang.tempfiles import make_temp, remove_stale_temps

    # The bundles' recognisable temporaries: one a killed write left here is removed by the next.
    remove_stale_temps(path.parent if str(path.parent) else Path("."))
    fd, tmp_name = make_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp_name, path.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise


def _shown(path: object) -> str:
    """A path as messages name it (control characters escaped, undecodable bytes as \\xNN)."""
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    return escape_controls(text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))


def output_file(value: object, option: str, *, stdout: bool = True) -> Path | None:
    """Checks an option naming a text file to write, before any work is done.

    Every command that writes a file goes through here, so that ``-``, an
    empty path, a folder and a missing folder mean the same everywhere.

    Args:
        value: The option's value as given.
        option: Its name (``-o``, ``--lockfile``), for messages.
        stdout: Whether ``-`` may mean standard output (text); when False it
            is refused.

    Returns:
        The path, or None for standard output.

    Raises:
        UsageError: An empty path, a folder, a file in a folder that does
            not exist, or ``-`` where standard output is not possible.
    """
    raw = os.fsdecode(value) if isinstance(value, bytes) else str(value)
    if raw == STDOUT:
        if stdout:
            return None
        raise UsageError(Diagnostic(f"{option} - (standard output) is not possible here", obj=option,
                                    hint="give a file name"))
    if not raw.strip():
        raise UsageError(Diagnostic(f"{option} needs a file name, not an empty string", obj=option,
                                    hint="give a file name" + (", or - for standard output" if stdout else "")))
    path = Path(raw)
    folder = path.parent
    if path.is_dir() or raw.endswith(("/", os.sep)):
        raise UsageError(Diagnostic(f"{option} {_shown(raw)} is a folder", obj=_shown(raw),
                                    hint="give a file name in it, e.g. " + _shown(path / "out.txt")))
    if not folder.is_dir():
        why = f"{_shown(folder)} is not a folder" if folder.exists() else f"no such folder {_shown(folder)}"
        raise UsageError(Diagnostic(f"{option} {_shown(raw)}: {why}",
                                    obj=_shown(raw), hint="create the folder first, or write elsewhere"))
    if path.exists() and not path.is_file():
        # The write replaces the file by renaming over it: over /dev/null (as root) that would put
        # a plain file where the device was.
        raise UsageError(Diagnostic(f"{option} {_shown(raw)} is not a regular file (a device, a FIFO, ...)",
                                    obj=_shown(raw), hint="adaptc replaces the file it writes: name a file"
                                    + (", or - for standard output" if stdout else "")))
    return path


def output_folder(value: object, option: str) -> Path:
    """Checks an option naming a folder to write files into (bundles, adapters, checkpoints).

    A missing folder is fine (it is created); ``-`` is refused: these
    outputs are several binary files and cannot go to standard output.

    Raises:
        UsageError: ``-``, an empty path, or a path that is a file.
    """
    raw = os.fsdecode(value) if isinstance(value, bytes) else str(value)
    if raw == STDOUT:
        raise UsageError(Diagnostic(f"{option} - : this writes a folder of binary files, not standard output",
                                    obj=option, hint="give a folder"))
    if not raw.strip():
        raise UsageError(Diagnostic(f"{option} needs a folder, not an empty string", obj=option))
    path = Path(raw)
    if path.exists() and not path.is_dir():
        raise UsageError(Diagnostic(f"{option} {_shown(raw)} is a file, not a folder", obj=_shown(raw),
                                    hint="give a folder (it is created when missing)"))
    return path


def write_error(path: object, exc: OSError) -> UsageError:
    """The usage error for a write the disk refused (full, read-only, no permission)."""
    why = exc.strerror or type(exc).__name__
    hint = {errno.ENOSPC: "free some space, or write elsewhere",
            errno.EROFS: "the disk is read-only: write elsewhere",
            errno.EACCES: "you may not write there: write elsewhere"}.get(exc.errno or 0,
                                                                        "write elsewhere")
    return UsageError(Diagnostic(f"cannot write {_shown(path)}: {why}", obj=_shown(path),
                                 hint=hint + "; the file as it was is kept"))


def write_output(path: Path | None, text: str, *, json: bool = False, raw: bool = False) -> None:
    """Writes ``text`` to ``path`` atomically, or to standard output when ``path`` is None.

    A failed write (a full or read-only disk, a folder removed meanwhile)
    leaves the old file untouched and is a usage error naming the path.
    ``json`` and ``raw`` are as in :func:`write_stdout` (standard output only;
    a file gets ``text`` as it is).

    Raises:
        UsageError: The write failed.
    """
    if path is None:
        write_stdout(text, json=json, raw=raw)
        return
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise write_error(path, exc) from None


def format_count(n: int | float | None) -> str:
    """Formats a parameter count with thousands separators (``4,194,304``)."""
    if n is None:
        return "-"
    return f"{int(n):,}"


def format_bytes(n: int | float | None) -> str:
    """Formats a byte count in binary units (``12.6 GiB``)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns


def format_share(part: int | float | None, total: int | float | None) -> str:
    """Formats ``part / total`` as a percentage with enough digits to be non-zero."""
    if not part or not total:
        return "0%"
    share = 100.0 * float(part) / float(total)
    for digits in (2, 3, 4):
        text = f"{share:.{digits}f}%"
        if share >= 10 ** -digits:
            return text
    return f"{share:.2g}%"
