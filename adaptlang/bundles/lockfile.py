"""``adapt.lock``: the plans specs compile to, per spec and model, so that drift fails CI.

The lock is JSON with sorted keys (byte-identical for the same inputs)::

    {"lock_format": 1, "adaptlang_version": "0.1.0", "grammar_sha256": "...",
     "specs": {"specs/multitask.adapt": {"spec_sha256": "...", "models": {
         "llama": {"plan_sha256": "...", "fingerprint": "...", "model_from_spec": false,
                   "deltas": {"attn": {"kind": "lora", "sites": 64, "params": 4194304}},
                   "tasks": {"qa": {"trainable_params": ..., "bundle_params": ...}}}}}}}

A model built with a task head (``adaptc lock --head sequence-classification
--num-labels 2``) records ``"head"`` (and ``"num_labels"`` when given) in its
entry, and a check rebuilds it with the same head; entries without a head
have neither key.

Spec paths are relative to the lock file's folder, with ``/``. A check
recompiles every locked (spec, model) pair and reports each whose plan
changed, with the likely cause: the spec's sources (imports included), the
model's structure, the grammar, or adaptlang itself; plus the tasks and
deltas whose counts moved. A formatting-only edit keeps the plan, so it is
not drift.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from adaptlang.errors import AdaptError, Diagnostic, UsageError
from adaptlang.limits import MAX_NUM_LABELS

__all__ = ["LOCK_FORMAT", "build_lock", "check_lock", "lock_entry", "lock_json", "parse_lock", "read_lock"]

LOCK_FORMAT = 1


def grammar_sha256() -> str:
    """The sha256 of the grammar this adaptlang parses with."""
    from adaptlang.syntax.parser import read_grammar

    return hashlib.sha256(read_grammar().encode("utf-8")).hexdigest()


def spec_sources_sha256(spec: Any) -> str:
    """The sha256 of a spec's source texts (the root, then every file it uses, in load order)."""
    digest = hashlib.sha256()
    for text in spec.sources.values():
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    """A spec path as the lock names it: relative to the lock's folder, with ``/``."""
    try:
        return os.path.relpath(path.resolve(), root.resolve()).replace(os.sep, "/")
    except ValueError:  # another drive (Windows)
        return path.resolve().as_posix()


def lock_entry(spec_path: Path, model: str | None, head: str | None = None,
               num_labels: int | None = None, *, allow_factory: bool | None = None,
               source: tuple[str, str] | None = None) -> tuple[str, dict[str, Any], str]:
    """Compiles one spec against one model and returns ``(model key, entry, spec sha256)``.

    ``head``/``num_labels`` build the model with a task head (as ``compile_plan``)
    and are recorded in the entry. ``allow_factory`` is as in ``compile_plan``
    (None: ``model`` is the caller's own, the spec's statement is a file's);
    ``source`` is ``(file, what in it)`` that ``model`` was read from, when it was.

    Raises:
        FactoryRefusedError: A factory named by a file, not allowed.
        SpecError, BindError, UsageError: From compiling.
    """
    from adaptlang.plan.compiler import compile_plan
    from adaptlang.plan.models import refuse_factory
    from adaptlang.spec import load_spec

    if head is None and num_labels is not None:
        head = "sequence-classification"
    spec = load_spec(spec_path)
    ref = model or spec.model
    if allow_factory is False or (allow_factory is None and model is None):
        # Checked here, not in compile_plan: the reference is handed to it as an argument.
        refuse_factory(ref, *(source or (str(spec_path), "its model statement")))
    plan = compile_plan(spec, ref, head=head, num_labels=num_labels)
    data = plan.to_dict()
    entry: dict[str, Any] = {
        "model_from_spec": model is None,
        "plan_sha256": plan.sha256,
        "fingerprint": data["model"]["fingerprint"],
        "deltas": {n: {"kind": d["kind"], "sites": d["site_count"], "params": d["params"]}
                   for n, d in data["deltas"].items()},
        "tasks": {n: {"trainable_params": t["trainable_params"], "bundle_params": t["bundle_params"]}
                  for n, t in data["tasks"].items()},
    }
    if head is not None:
        entry["head"] = head
    if num_labels is not None:
        entry["num_labels"] = int(num_labels)
    return str(ref), entry, spec_sources_sha256(spec)


def build_lock(specs: list[Path], models: list[str], lock_dir: Path, head: str | None = None,
               num_labels: int | None = None, *, allow_factory: bool = False) -> dict[str, Any]:
    """Builds the lock for every spec against every model (each spec's own model when none given).

    ``head``/``num_labels`` apply to every model of this lock (see :func:`lock_entry`).
    ``models`` are the caller's own; ``allow_factory`` lets a spec's own
    ``model`` statement name a factory.

    Raises:
        FactoryRefusedError: A spec names a factory and ``allow_factory`` is False.
    """
    from adaptlang import __version__

    out: dict[str, Any] = {}
    for spec_path in specs:
        entries, spec_sha = {}, ""
        for model in models or [None]:
            key, entry, spec_sha = lock_entry(spec_path, model, head, num_labels,
                                              allow_factory=True if allow_factory else None)
            entries[key] = entry
        out[_relative(spec_path, lock_dir)] = {"spec_sha256": spec_sha, "models": entries}
    return {"lock_format": LOCK_FORMAT, "adaptlang_version": __version__, "grammar_sha256": grammar_sha256(),
            "specs": out}


def lock_json(lock: dict[str, Any]) -> str:
    """Serializes a lock: sorted keys, two-space indent, trailing newline."""
    return json.dumps(lock, sort_keys=True, indent=2, ensure_ascii=True) + "\n"


def read_lock(path: Path) -> dict[str, Any]:
    """Reads and checks a lock file.

    Raises:
        UsageError: Missing, not JSON, or not a lock this adaptlang writes.
    """
    if path.is_dir():
        raise UsageError(Diagnostic("the lock file is a folder", obj=str(path),
                                    hint="--lockfile names a file, e.g. adapt.lock"))
    if not path.exists():
        raise UsageError(Diagnostic("no lock file", obj=str(path),
                                    hint="create it with `adaptc lock SPEC... --model M`"))
    from adaptlang.limits import MAX_LOCK_FILE_BYTES
    from adaptlang.textfile import FileProblem, read_text_file

    try:  # a committed link to /dev/zero must not hang `lock --check`
        text = read_text_file(path, MAX_LOCK_FILE_BYTES, what="a lock file (MAX_LOCK_FILE_BYTES)")
    except FileProblem as problem:
        raise UsageError(Diagnostic(f"cannot read the lock file: {problem.message}", obj=str(path),
                                    hint=problem.hint)) from None
    return parse_lock(text, str(path))


def parse_lock(text: str, name: str) -> dict[str, Any]:
    """Parses and checks the text of a lock file (``name`` is what errors call it).

    Raises:
        UsageError: Not JSON, or not a lock this adaptlang writes.
    """
    try:
        lock = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UsageError(Diagnostic(f"cannot read the lock file: {exc}", obj=name)) from None
    if not isinstance(lock, dict) or lock.get("lock_format") != LOCK_FORMAT or not isinstance(lock.get("specs"), dict):
        raise UsageError(Diagnostic("not an adaptlang lock file (or a newer format)", obj=name,
                                    hint="regenerate it with `adaptc lock`"))
    problem = _lock_problem(lock)
    if problem:
        raise UsageError(Diagnostic(f"a malformed lock file: {problem}", obj=name,
                                    hint="regenerate it with `adaptc lock`"))
    return lock


#: What each locked (spec, model) entry holds, with the JSON types a check reads.
_ENTRY_FIELDS = {"plan_sha256": str, "fingerprint": str, "deltas": dict, "tasks": dict}


def _lock_problem(lock: dict[str, Any]) -> str | None:
    """Returns what is wrong with a parsed lock's shape, or None.

    A lock comes from a repository, maybe a stranger's: every field the
    check reads is checked here, so a bad one is a usage error rather than
    a crash, and spec names must be ``.adapt`` files (a lock may not point
    the check at ``/proc/self/environ`` and have it quoted in an error).
    """
    for spec, entry in lock["specs"].items():
        if not spec.endswith(".adapt"):
            return f"spec '{spec}' is not a .adapt file"
        if not isinstance(entry, dict) or not isinstance(entry.get("models"), dict):
            return f"spec '{spec}' has no 'models' object"
        if not isinstance(entry.get("spec_sha256", ""), str):
            return f"spec '{spec}': spec_sha256 is not a string"
        for model, fields in entry["models"].items():
            if not isinstance(fields, dict):
                return f"spec '{spec}', model '{model}' is not an object"
            for key, kind in _ENTRY_FIELDS.items():
                if not isinstance(fields.get(key), kind):
                    return f"spec '{spec}', model '{model}': '{key}' is missing or not a {kind.__name__}"
            for section in ("deltas", "tasks"):
                if not all(isinstance(v, dict) for v in fields[section].values()):
                    return f"spec '{spec}', model '{model}': '{section}' holds a non-object"
            head, labels = fields.get("head"), fields.get("num_labels")
            if head is not None and not isinstance(head, str):
                return f"spec '{spec}', model '{model}': 'head' is not a string"
            if labels is not None and (not isinstance(labels, int) or isinstance(labels, bool)
                                       or not 1 <= labels <= MAX_NUM_LABELS):
                return (f"spec '{spec}', model '{model}': 'num_labels' is not a whole number from 1 to "
                        f"{MAX_NUM_LABELS:,} (MAX_NUM_LABELS)")
    return None


def _causes(lock: dict[str, Any], old: dict[str, Any], spec_changed: bool, new: dict[str, Any]) -> list[str]:
    """Explains why a plan changed."""
    from adaptlang import __version__

    causes = []
    if spec_changed:
        causes.append("the spec changed (its sources, or a file it uses)")
    if old["fingerprint"] != new["fingerprint"]:
        causes.append(f"the model changed (fingerprint {old['fingerprint'][:12]} -> {new['fingerprint'][:12]})")
    if lock.get("grammar_sha256") != grammar_sha256():
        causes.append("the grammar changed")
    if lock.get("adaptlang_version") != __version__:
        causes.append(f"adaptlang changed ({lock.get('adaptlang_version')} -> {__version__})")
    return causes or ["the compiler's output changed for the same spec, model and grammar"]


def _count(value: Any) -> str:
    """A count as the drift report shows it (a lock's value may be anything JSON holds)."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else repr(value)


def _count_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Lines for deltas and tasks added, removed or recounted."""
    lines = []
    for section, keys in (("delta", ("sites", "params")), ("task", ("trainable_params", "bundle_params"))):
        a, b = old[section + "s"], new[section + "s"]
        for name in sorted(set(a) | set(b)):
            if name not in a:
                lines.append(f"{section} '{name}' added")
            elif name not in b:
                lines.append(f"{section} '{name}' removed")
            elif a[name] != b[name]:
                moved = ", ".join(f"{k} {_count(a[name].get(k, 0))} -> {_count(b[name].get(k, 0))}" for k in keys
                                  if a[name].get(k) != b[name].get(k))
                lines.append(f"{section} '{name}': {moved or 'settings changed'}")
    return lines


def check_lock(lock: dict[str, Any], lock_dir: Path, only: list[Path] | None = None, *,
               allow_factory: bool = False, lock_name: str = "adapt.lock") -> list[Diagnostic]:
    """Recompiles every locked (spec, model) pair; returns one diagnostic per drifted pair.

    Args:
        lock: A lock as :func:`read_lock` returns it.
        lock_dir: The lock file's folder (spec paths are relative to it).
        only: Check these specs only (each must be in the lock).
        allow_factory: Let the lock's models (and the specs' own) be
            ``pkg.module:factory`` references, which are run.
        lock_name: The lock file, named when a factory is refused.

    Raises:
        FactoryRefusedError: A locked model is a factory and ``allow_factory``
            is False (not drift: nothing was checked).
    """
    from adaptlang.plan.models import FactoryRefusedError
    drift: list[Diagnostic] = []
    specs = lock["specs"]
    names = list(specs) if only is None else [_relative(p, lock_dir) for p in only]
    for name in names:
        if name not in specs:
            drift.append(Diagnostic("not in the lock", obj=name, hint="add it with `adaptc lock`"))
            continue
        path = lock_dir / name
        if not path.is_file():
            drift.append(Diagnostic("the spec is gone", obj=name, hint="remove it from the lock with `adaptc lock`"))
            continue
        for model, old in specs[name]["models"].items():
            where = f"{name} (model {model})"
            from_spec = bool(old.get("model_from_spec"))
            try:
                key, new, spec_sha = lock_entry(
                    path, None if from_spec else model, old.get("head"), old.get("num_labels"),
                    allow_factory=allow_factory,
                    source=None if from_spec else (lock_name, f"the entry for {name}"))
            except FactoryRefusedError:
                raise
            except AdaptError as exc:
                drift.append(Diagnostic(f"no longer compiles: {exc.diagnostics[0].message}", obj=where))
                continue
            if key != model:
                drift.append(Diagnostic(f"the spec's default model changed: {model} -> {key}", obj=where,
                                        hint="if intended, update the lock with `adaptc lock`"))
                continue
            if new["plan_sha256"] == old["plan_sha256"]:
                continue
            spec_changed = spec_sha != specs[name].get("spec_sha256")
            notes = tuple(_causes(lock, old, spec_changed, new) + _count_changes(old, new))
            drift.append(Diagnostic(f"the plan changed (sha256 {old['plan_sha256'][:12]} -> "
                                    f"{new['plan_sha256'][:12]})", obj=where, notes=notes,
                                    hint="if intended, update the lock with `adaptc lock`"))
    return drift
