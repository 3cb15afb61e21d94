"""Versioning specs in git: ``adaptc diff`` and ``adaptc lock``.

``adaptc diff OLD NEW [--model M]`` compares two specs by meaning. An
operand is a file, or ``REV:path`` read with ``git show`` from the
repository of the working directory (``REV:path`` is relative to the
repository root, ``REV:./path`` to the working directory, as in git); files
it ``use``s are read from the same revision. Exit codes follow ``git diff``:
0 after printing the diff, whatever it says; with ``--exit-code``, 1 when
there are semantic changes and 0 when there are none. Errors: 1 for a spec
error, 2 for a usage error (a missing file, not a git repository, no such
revision).

``adaptc lock SPEC... [--model M]... [--head H]`` writes ``adapt.lock``; ``adaptc lock
--check [SPEC...]`` recompiles the locked pairs and exits 1 naming each
(spec, model) whose plan drifted, and why.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, List, Optional

import typer

from adaptlang.cli.head_args import ALLOW_FACTORY_OPTION, HEAD_OPTION, NUM_LABELS_OPTION, Head, head_kwargs
from adaptlang.errors import Diagnostic, UsageError

__all__ = ["diff_command", "lock_command", "read_operand", "register"]


def _git(args: list[str], what: str) -> str:
    """Runs git in the working directory and returns stdout; failures are usage errors.

    Callers put ``--end-of-options`` before any operand that came from the
    user, so a revision spelt like an option (``--output=FILE``) is never
    read as one (git 2.24 and later).
    """
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False,
                              encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(Diagnostic(f"cannot run git: {exc}", obj=what)) from None
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["git failed"])[-1]
        if "not a git repository" in done.stderr:
            message = "not inside a git repository"
        raise UsageError(Diagnostic(f"cannot read {what} from git: {message}", obj=what,
                                    hint="REV:path reads a file at a revision, e.g. HEAD~1:specs/x.adapt"))
    return done.stdout


def _uses(text: str, label: str) -> list[Any]:
    """The ``use`` statements of a spec text (an unparsable spec reports itself later)."""
    from adaptlang.errors import AdaptError
    from adaptlang.syntax import ast
    from adaptlang.syntax.parser import parse_text

    try:
        module = parse_text(text, label)
    except AdaptError:
        return []
    return [s for s in module.statements if isinstance(s, ast.Use)]


def split_operand(operand: str) -> tuple[str, str]:
    """Splits ``REV:path`` and checks both halves before git sees them.

    Raises:
        UsageError: An empty path, a revision that starts with ``-`` (git
            would read it as an option), or a NUL or newline in either part.
    """
    rev, _, path = operand.partition(":")
    bad = next((c for c in ("\0", "\n", "\r") if c in operand), None)
    if bad is not None or rev.startswith("-") or not path:
        why = ("a revision cannot start with '-'" if rev.startswith("-") else
               "no path after the colon" if not path else "control characters are not allowed")
        raise UsageError(Diagnostic(f"invalid REV:path operand: {why}", obj=operand,
                                    hint="give a spec file, or REV:path such as HEAD~1:specs/x.adapt"))
    return rev, path


def _inside(rel: str, operand: str, scratch: Path, use: Any = None, text: str = "") -> Path:
    """Returns where ``rel`` (a repository path) goes under ``scratch``, refusing any path that leaves it.

    The files of a revision are written into a fresh temporary folder; a
    path that is absolute, climbs above the repository root with ``..``,
    or resolves (through a symbolic link) outside the folder would write
    somewhere the user never named.

    Raises:
        SpecError: A committed ``use`` that leaves the repository (its span).
        UsageError: A ``REV:path`` operand that does.
    """
    from adaptlang.errors import SpecError, Span

    root = scratch.resolve()
    norm = os.path.normpath(rel) if rel else rel
    target = (scratch / norm).resolve() if norm else root
    escapes = (not norm or os.path.isabs(rel) or norm == os.pardir or norm.startswith(os.pardir + os.sep)
               or (target != root and root not in target.parents))
    if not escapes:
        return target
    if use is None:
        raise UsageError(Diagnostic(f"the path '{rel}' leaves the repository", obj=operand,
                                    hint="REV:path names a file inside the repository"))
    span: Span = use.span
    raise SpecError(Diagnostic(
        f"use \"{use.path}\" leaves the repository at that revision, so it cannot be read from git",
        span=span, hint="a spec read from a revision may use files inside the repository only"
                        ).with_source(text))


def _check_blob(rev: str, rel: str, operand: str, use: Any = None, text: str = "") -> None:
    """Refuses ``REV:rel`` unless it is a file (a blob) within the spec file limit, before reading it.

    ``git show`` of a committed 1 GB blob would hold it all in memory and write
    it to the temporary folder; a folder (a tree) named by ``use`` would clash
    with a file inside it named by another ``use``. The object is asked for on
    standard input, so no part of it is read as an option.

    Raises:
        SpecError: A committed ``use`` of a folder or of a file past the limit (its span).
        UsageError: A ``REV:path`` operand that is.
    """
    from adaptlang.errors import SpecError
    from adaptlang.limits import MAX_SPEC_FILE_BYTES

    try:
        done = subprocess.run(["git", "cat-file", "--batch-check=%(objecttype) %(objectsize)"],
                              input=f"{rev}:{rel}\n", capture_output=True, text=True, check=False,
                              encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(Diagnostic(f"cannot run git: {exc}", obj=operand)) from None
    kind, _, size = done.stdout.strip().partition(" ")
    if done.returncode != 0 or kind == "" or size == "missing" or kind.endswith("missing"):
        return  # git show says why, in its words
    problem = None
    if kind != "blob":
        problem = f"'{rel}' is a {'folder' if kind == 'tree' else kind} at {rev}, not a file"
    elif size.isdigit() and int(size) > MAX_SPEC_FILE_BYTES:
        problem = (f"'{rel}' at {rev} has {int(size):,} bytes, past the limit of {MAX_SPEC_FILE_BYTES:,} "
                   "bytes for a spec file (MAX_SPEC_FILE_BYTES)")
    if problem is None:
        return
    if use is None:
        raise UsageError(Diagnostic(problem, obj=operand, hint="REV:path names a spec file"))
    raise SpecError(Diagnostic(f'use "{use.path}": {problem}', span=use.span,
                               hint="use names a .adapt file").with_source(text))


def read_operand(operand: str, scratch: Path) -> Any:
    """Loads a diff operand: a spec file, or ``REV:path`` from git (with the files it uses).

    Args:
        operand: The command-line operand.
        scratch: A temporary folder for files read from git; nothing is
            written anywhere else.

    Returns:
        The checked Spec (diagnostics name ``REV:path``).

    Raises:
        UsageError: A missing file, an invalid operand, a git failure.
        SpecError: The spec, or a ``use`` that leaves the repository.
    """
    from adaptlang.spec import load_spec
    from adaptlang.spec.lower import lower_text

    if Path(operand).is_file() or ":" not in operand:
        if not Path(operand).is_file():
            raise UsageError(Diagnostic("no such file", obj=operand, hint="give a spec file or REV:path"))
        return load_spec(Path(operand))
    rev, path = split_operand(operand)
    if path.startswith(("./", "../")):  # git reads these relative to the working directory
        prefix = _git(["rev-parse", "--show-prefix"], operand).strip()
        path = os.path.normpath(os.path.join(prefix, path)).replace(os.sep, "/")
    scratch.mkdir(parents=True, exist_ok=True)
    _inside(path, operand, scratch)
    pending: list[tuple[str, Any, str]] = [(path, None, "")]
    seen: set[str] = set()
    root_text = None
    while pending:  # the root, then every file it uses, from the same revision
        rel, use, user_text = pending.pop()
        target = _inside(rel, operand, scratch, use, user_text)
        if rel in seen:
            continue
        seen.add(rel)
        _check_blob(rev, rel, operand, use, user_text)
        text = _git(["show", "--end-of-options", f"{rev}:{rel}"], f"{rev}:{rel}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _inside(rel, operand, scratch, use, user_text)  # the folders just made hold no link out
            target.write_text(text, encoding="utf-8")
        except OSError as exc:  # a name clash between the files read (a file where a folder goes)
            raise UsageError(Diagnostic(f"cannot place {rev}:{rel} in the temporary folder: "
                                        f"{exc.strerror or type(exc).__name__}", obj=operand)) from None
        root_text = text if rel == path else root_text
        for found in _uses(text, f"{rev}:{rel}"):
            joined = os.path.join(os.path.dirname(rel), found.path)
            pending.append((joined if os.path.isabs(found.path) else
                            os.path.normpath(joined).replace(os.sep, "/"), found, text))
    return lower_text(root_text or "", operand, (scratch / path).parent)


def diff_command(
    old: str = typer.Argument(..., help="The old spec: a file or REV:path.", show_default=False),
    new: str = typer.Argument(..., help="The new spec: a file or REV:path.", show_default=False),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Also compile both and compare the plans (sites, parameter counts).",
    ),
    exit_code: bool = typer.Option(False, "--exit-code", help="Exit 1 when the specs differ (as git diff)."),
    head: Optional[Head] = HEAD_OPTION,
    num_labels: Optional[int] = NUM_LABELS_OPTION,
    allow_factory: bool = ALLOW_FACTORY_OPTION,
) -> None:
    """Show what changed between two specs: deltas, tasks, sites and parameter counts."""
    from adaptlang.bundles.specdiff import SpecDiff, diff_plans, diff_specs, render_diff
    from adaptlang.cli.output import write_stdout

    with tempfile.TemporaryDirectory(prefix="adaptc-diff-") as scratch:
        old_spec = read_operand(old, Path(scratch) / "old")
        new_spec = read_operand(new, Path(scratch) / "new")
        result = SpecDiff(spec=diff_specs(old_spec, new_spec))
        heads: dict[str, Any] = head_kwargs(head, num_labels)
        if allow_factory:
            heads["allow_factory"] = True
        if model is not None or head is not None or num_labels is not None:  # --head alone: each spec's own model, with that head
            from adaptlang.plan.compiler import compile_plan

            result.plan = diff_plans(compile_plan(old_spec, model, **heads), compile_plan(new_spec, model, **heads))
    write_stdout(render_diff(result, old, new, model))
    if exit_code and result.changed:
        raise typer.Exit(1)


def lock_command(
    specs: Optional[List[Path]] = typer.Argument(None, help="Specs to lock (with --check: to check).",
                                                 show_default=False),
    models: Optional[List[str]] = typer.Option(
        None, "--model", "-m", help="Compile against this model (repeatable; default: each spec's own).",
    ),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 naming each plan that drifted."),
    lockfile: str = typer.Option("adapt.lock", "--lockfile",
                                 help="The lock file (- is standard output, or standard input with --check)."),
    head: Optional[Head] = HEAD_OPTION,
    num_labels: Optional[int] = NUM_LABELS_OPTION,
    allow_factory: bool = ALLOW_FACTORY_OPTION,
) -> None:
    """Record (or --check) the plan each spec compiles to, per model, in adapt.lock.

    ``--head`` applies to every model locked in this run and is recorded per
    entry; ``--check`` rebuilds each entry with the head it recorded.
    """
    import sys

    from adaptlang.bundles.lockfile import build_lock, check_lock, lock_json, parse_lock, read_lock
    from adaptlang.cli.output import error_console, output_file, plain, print_diagnostics, write_output

    heads = head_kwargs(head, num_labels)
    if check:
        if heads:
            raise UsageError(Diagnostic("--head and --num-labels are read from the lock with --check",
                                        obj="--head", hint="drop them: each entry records the head it was built with"))
        if lockfile == "-":  # `git show HEAD:adapt.lock | adaptc lock --check --lockfile -`
            lock, lock_dir = parse_lock(sys.stdin.read(), "<stdin>"), Path(".")
        else:
            if not lockfile.strip():
                raise UsageError(Diagnostic("--lockfile needs a file name, not an empty string", obj="--lockfile"))
            lock, lock_dir = read_lock(Path(lockfile)), Path(lockfile).parent
        drift = check_lock(lock, lock_dir, list(specs) if specs else None, allow_factory=allow_factory,
                           lock_name=str(lockfile))
        if drift:
            print_diagnostics(drift)
            raise typer.Exit(1)
        count = sum(len(entry["models"]) for entry in lock["specs"].values())
        error_console().print(plain(f"{lockfile} is up to date ({count} plans)"))
        return
    if not specs:
        raise UsageError(Diagnostic("no spec to lock", obj="lock", hint="adaptc lock SPEC... --model M"))
    target = output_file(lockfile, "--lockfile")  # before compiling anything
    lock_dir = target.parent if target is not None else Path(".")
    for spec in specs:
        if not spec.is_file():
            raise UsageError(Diagnostic("no such file", obj=str(spec)))
    lock = build_lock(list(specs), list(models or []), lock_dir, **heads, allow_factory=allow_factory)
    write_output(target, lock_json(lock), json=True)
    count = sum(len(entry["models"]) for entry in lock["specs"].values())
    error_console().print(plain(f"wrote {lockfile if target is not None else 'the lock to standard output'} "
                                f"({count} plans)"))


def register(app: typer.Typer) -> None:
    """Adds ``diff`` and ``lock``."""
    app.command("diff")(diff_command)
    app.command("lock")(lock_command)
