"""Reading a spec file (or any small text file a stranger names) without surprises.

``use "x.adapt"`` names a file from inside a file that may come from a
stranger, so reading it must not hang (a FIFO blocks ``open`` until a writer
comes), read a device or ``/proc`` (``/proc/self/environ`` would be parsed
and its content shown in the error), follow a symlink loop, or load a file
of gigabytes. :func:`read_text_file` checks the path before opening it
(``os.stat``: regular file, size), opens without blocking, checks again
what it opened (``os.fstat``: the file may have been swapped in between),
reads at most the limit, and decodes strict UTF-8. Every failure is a
:class:`FileProblem` whose message names the path and the reason, never the
file's content.

Every reader of such files goes through it: the parser's :func:`parse_file`,
``adaptc fmt``, ``use`` (:mod:`adaptlang.spec.lower`) and the planner's
``config.json`` (:mod:`adaptlang.plan.models`). It sits at the bottom of the
layers, beside :mod:`adaptlang.errors` and :mod:`adaptlang.limits`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["FileProblem", "is_regular", "read_text_file", "short_path"]

#: How much of a very long path a message shows.
_SHOWN = 120


class FileProblem(Exception):
    """A file that cannot be read as asked.

    Args:
        message: What is wrong (names the path, never the content).
        hint: How to fix it, or None.
        missing: True when the file does not exist (callers word that case their own way).
    """

    def __init__(self, message: str, hint: str | None = None, missing: bool = False):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.missing = missing


def short_path(path: str) -> str:
    """A path for a message: at most ~120 characters (a 5,000-character name is cut in the middle)."""
    if len(path) <= _SHOWN:
        return path
    return f"{path[:60]}...{path[-50:]} ({len(path):,} characters)"


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _os_problem(exc: OSError, shown: str) -> FileProblem:
    """The problem for an ``OSError`` raised by ``stat`` or ``open`` (its reason, not its text)."""
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return FileProblem(f"'{shown}' does not exist", missing=True)
    if code == errno.ELOOP:
        return FileProblem(f"'{shown}' is a symbolic link loop", "point the link at a real file")
    if code == errno.ENAMETOOLONG:
        return FileProblem(f"the path '{shown}' is too long for the file system", "use a shorter path")
    if code in (errno.EACCES, errno.EPERM):
        return FileProblem(f"permission denied reading '{shown}'", "check the file's permissions")
    reason = exc.strerror or type(exc).__name__
    return FileProblem(f"cannot read '{shown}': {reason}")


def read_text_file(path: str | os.PathLike[str], limit: int, suffix: str | None = None,
                   what: str = "file") -> str:
    """Reads a regular file of at most ``limit`` bytes as UTF-8 text.

    Args:
        path: The file.
        limit: The most bytes it may have (the limit's name goes in the message
            by the caller's choice of ``what``).
        suffix: When given (``".adapt"``), the path as named and the file it
            resolves to (through symlinks) must both end with it.
        what: How messages name the limit's subject (``"a spec file"``).

    Returns:
        The text.

    Raises:
        FileProblem: A path with a NUL byte, a missing file, a symlink loop, a
            name too long, permission denied, anything but a regular file, a
            file past ``limit``, a wrong suffix, or text that is not UTF-8.
    """
    name = os.fspath(path)
    shown = short_path(name)
    if "\0" in name:
        visible = shown.replace("\0", "\\0")
        raise FileProblem(f"the path '{visible}' contains a NUL byte", "a file name cannot contain NUL")
    if suffix is not None and not name.endswith(suffix):
        raise FileProblem(f"'{shown}' is not a {suffix} file", f"only {suffix} files can be read here")
    try:
        before = os.stat(name)  # follows symlinks: what the name leads to
    except OSError as exc:
        raise _os_problem(exc, shown) from None
    if not stat.S_ISREG(before.st_mode):
        raise FileProblem(f"'{shown}' is {_kind(before.st_mode)}, not a regular file",
                          "name a regular file")
    if suffix is not None:
        real = os.path.realpath(name)
        if not real.endswith(suffix):
            raise FileProblem(f"'{shown}' leads to '{short_path(real)}', which is not a {suffix} file",
                              f"a link must point at a {suffix} file")
    if before.st_size > limit:
        raise FileProblem(f"'{shown}' is too big: {before.st_size:,} bytes, past the limit of "
                          f"{limit:,} bytes for {what}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags)  # O_NONBLOCK: a FIFO swapped in after stat opens without waiting
    except OSError as exc:
        raise _os_problem(exc, shown) from None
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode):
            raise FileProblem(f"'{shown}' is {_kind(after.st_mode)}, not a regular file", "name a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _os_problem(exc, shown) from None
    finally:
        os.close(fd)
    if size > limit:
        raise FileProblem(f"'{shown}' is too big: over {limit:,} bytes, the limit for {what}")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(f"'{shown}' is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start:,})", "save the file as UTF-8") from None


def is_regular(path: Path) -> bool:
    """Whether ``path`` exists and is a regular file, never raising (NUL bytes, long names, loops)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
