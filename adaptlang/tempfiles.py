"""Temporary files of atomic writes: recognisable names, and removing the ones a killed save left.

Every file adaptlang writes atomically (bundles, PEFT adapters, imported
specs) is first written to a hidden temporary next to its target, named::

    .<target name>.adaptlang-<host>-<pid>-<8 random characters>.tmp

and renamed over the target once complete. A process killed between the
two (SIGKILL, power loss) leaves that temporary behind; each later write
into the same folder removes the ones that are *stale*:

* written by this machine (``<host>``) and ``<pid>`` is no longer running; or
* older than :data:`STALE_AFTER_S` (a temporary from another machine sharing
  the folder over a network file system, whose pids mean nothing here; or a
  pid reused by an unrelated process since).

A temporary of a save still running (here: its pid is alive; elsewhere:
younger than a day) is left alone, so two concurrent saves into one folder
never delete each other's work. Only names matching :data:`TEMP_NAME`
exactly are touched: other hidden files, and temporaries of other tools, are
never removed.

It sits at the bottom of the layers (stdlib only), beside
:mod:`adaptlang.textfile`, so that text outputs (``adaptc fmt``, ``compile -o``)
use it without importing torch.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from pathlib import Path

__all__ = ["STALE_AFTER_S", "TEMP_NAME", "make_temp", "remove_stale_temps", "temp_prefix"]

#: The name of every temporary adaptlang writes (see the module docstring).
TEMP_NAME = re.compile(r"\.(?P<target>.+)\.adaptlang-(?P<host>[A-Za-z0-9_]{1,32})-(?P<pid>[0-9]{1,10})-"
                       r"[a-z0-9_]{8}\.tmp\Z")

#: A temporary older than this is stale whatever its pid (one day: far longer than any save).
STALE_AFTER_S = 24 * 3600.0


def _host() -> str:
    """This machine's name, as temporary names hold it (letters, digits and ``_``; at most 32)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname() or "host")[:32]
    return name or "host"


def temp_prefix(target: Path) -> str:
    """The name prefix of a temporary for ``target`` written by this process."""
    return f".{target.name}.adaptlang-{_host()}-{os.getpid()}-"


def make_temp(target: Path) -> tuple[int, str]:
    """Creates a temporary next to ``target``; returns ``(open fd, path)`` as :func:`tempfile.mkstemp` does."""
    folder = target.parent if str(target.parent) else Path(".")
    return tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=folder)


def _running(pid: int) -> bool:
    """True when a process ``pid`` exists on this machine (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but not ours, or cannot tell: keep its file
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Removes the stale temporaries of adaptlang writes in ``folder`` (module docstring).

    Never raises: a folder that cannot be listed, or a file that cannot be
    removed, is left as it is (the write that follows reports real problems).

    Returns:
        The files removed.
    """
    folder = folder if str(folder) else Path(".")
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    host, now = _host(), time.time()
    for name in names:
        match = TEMP_NAME.match(name)
        if match is None:
            continue
        path = folder / name
        try:
            info = path.lstat()
        except OSError:
            continue
        if not path.is_file() or path.is_symlink():
            continue
        pid = int(match["pid"])
        ours = match["host"] == host
        stale = now - info.st_mtime > STALE_AFTER_S or (ours and pid != os.getpid() and not _running(pid))
        if not stale:
            continue
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed
