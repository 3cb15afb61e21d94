"""One task's bundle: building it from tensors and a plan, writing it, reading and checking it.

:func:`read_bundle` trusts nothing in the file: the safetensors header is
checked by :mod:`adaptlang.bundles.files`; then the manifest (format version,
fields, the task plan's own sha256 and schema, the spec source against its
sha256), then the tensors against the plan (exactly the keys, shapes and
kinds of values the plan implies), then each tensor's bytes against its
sha256, then sparse positions (sorted, distinct, in range). Any failure is a
:class:`~adaptlang.errors.BundleError` naming the file; nothing is touched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptlang.bundles.files import (
    check_finite, hash_tensors, read_header, read_tensors, write_files, write_safetensors,
)
from adaptlang.bundles.manifest import (
    BUNDLE_FORMAT, MANIFEST_KEY, Provenance, expected_bundle, manifest_json, split_key,
)
from adaptlang.bundles.manifest_schema import parse_manifest
from adaptlang.bundles.training_record import check_training_record
from adaptlang.errors import BundleError, Diagnostic, UsageError

__all__ = [
    "Bundle", "STORAGE_DTYPES", "TASK_NAME", "build_bundle", "check_bundle_tensors", "check_storage_dtype",
    "read_bundle", "read_manifest", "write_bundles",
]

#: Task names are identifiers, so ``<task>.safetensors`` is always a plain file name.
TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass
class Bundle:
    """A task's bundle, in memory.

    Attributes:
        path: The file it was read from (or will be written to).
        manifest: The manifest dict.
        tensors: Key ``"{delta}/{site path}/{local name}"`` -> tensor (CPU).
    """

    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def task(self) -> str:
        """The task's name."""
        return self.manifest["task"]

    @property
    def task_plan(self) -> dict[str, Any]:
        """The plan JSON dict restricted to this task (a copy)."""
        return json.loads(json.dumps(self.manifest["task_plan"]))

    @property
    def provenance(self) -> Provenance:
        """Where the task came from."""
        return Provenance.from_manifest(self.manifest)

    @property
    def structure(self) -> dict[str, str]:
        """The base model's modules as recorded (see ``describe_structure``)."""
        return dict(self.manifest["model"].get("structure", {}))

    def delta_tensors(self, delta: str) -> dict[str, torch.Tensor]:
        """Returns one delta's tensors, keyed as in the bundle."""
        return {k: v for k, v in self.tensors.items() if split_key(k)[0] == delta}


#: Dtypes ``save(dtype=...)`` may store floating tensors in (what safetensors and PEFT read back).
STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_storage_dtype(dtype: Any, where: str = "save(dtype=...)") -> None:
    """Refuses a storage dtype that would destroy trained values (an integer, bool, complex or float8 type).

    Called before anything is written, so the previous bundles stay as they were.

    Raises:
        UsageError: ``dtype`` is not None and not one of :data:`STORAGE_DTYPES`.
    """
    if dtype is None or dtype in STORAGE_DTYPES:
        return
    shown = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else repr(dtype)[:60]
    raise UsageError(Diagnostic(
        f"cannot store bundles as {shown}: trained values need a floating-point dtype", obj=where,
        hint="use torch.bfloat16 or torch.float16 (half the size), torch.float32, or None (as trained)",
        notes=("casting to an integer or bool type would replace every trained value",)
        if isinstance(dtype, torch.dtype) and not (dtype.is_floating_point or dtype.is_complex) else ()))


def build_bundle(path: Path, task: str, task_plan: dict[str, Any], tensors: dict[str, torch.Tensor],
                 provenance: Provenance, structure: dict[str, str], version: str,
                 dtype: torch.dtype | None = None, training: dict[str, Any] | None = None) -> Bundle:
    """Assembles a bundle: tensors (floating ones cast to ``dtype``) and their manifest.

    Args:
        path: Where it will be written.
        task: The task.
        task_plan: The plan JSON dict restricted to the task (with its ``plan_sha256``).
        tensors: Its deltas' parameters and buffers, keyed as in the bundle.
        provenance: Spec source and the whole plan's sha256.
        structure: The base model's modules (``describe_structure``).
        version: The adaptlang version writing it.
        dtype: Store floating tensors in this dtype (e.g. ``torch.bfloat16``); None keeps theirs.
        training: The manifest's optional ``training`` record
            (:mod:`~adaptlang.bundles.training_record`), checked here.

    Raises:
        BundleError: A malformed training record.
        UsageError: A ``dtype`` that is not floating point (:func:`check_storage_dtype`).
    """
    check_storage_dtype(dtype)
    stored = {}
    for key in sorted(tensors):
        value = tensors[key].detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        stored[key] = value.contiguous()
    model = dict(task_plan["model"])
    model["structure"] = dict(structure)
    manifest = {
        "bundle_format": BUNDLE_FORMAT,
        "adaptlang_version": version,
        "task": task,
        "spec": provenance.spec_section(),
        "plan_sha256": provenance.plan_sha256,
        "task_plan": task_plan,
        "model": model,
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "tensors": hash_tensors(stored),
    }
    if training is not None:
        manifest["training"] = check_training_record(training, str(path), writing=True)
    return Bundle(path, manifest, stored)


def write_bundles(bundles: list[Bundle], extra: list[tuple[Path, Any]] | None = None) -> list[Path]:
    """Writes bundles atomically, all or none (see :func:`~adaptlang.bundles.files.write_files`).

    Args:
        bundles: The bundles (each to its ``path``).
        extra: More ``(path, writer)`` jobs to write in the same all-or-none batch (a spec file).

    Returns:
        The bundle paths, in order.
    """
    jobs = []
    for bundle in bundles:
        metadata = {"format": "pt", MANIFEST_KEY: manifest_json(bundle.manifest)}
        jobs.append((bundle.path, lambda handle, b=bundle, m=metadata: write_safetensors(handle, b.tensors, m)))
    write_files(jobs + list(extra or []))
    return [bundle.path for bundle in bundles]


def read_manifest(path: Path | str) -> dict[str, Any]:
    """Reads and checks a bundle's manifest only (header, fields, task plan, spec hashes).

    Raises:
        BundleError: Not a safetensors file, not an adaptlang bundle, or a
            manifest that is malformed or does not match its own hashes.
    """
    header = read_header(path)
    return _checked_manifest(header)


def read_bundle(path: Path | str) -> Bundle:
    """Reads a bundle and checks everything in it (module docstring).

    Raises:
        BundleError: Naming the file and what is wrong with it.
    """
    header = read_header(path)
    manifest = _checked_manifest(header)
    where = str(header.path)
    plan = manifest["task_plan"]
    expected = expected_bundle(plan, [t["name"] for t in plan["tasks"][manifest["task"]]["deltas"]])
    _check_layout(where, {k: (e.shape, e.dtype) for k, e in header.tensors.items()}, expected)
    if set(manifest["tensors"]) != set(header.tensors):
        raise BundleError(Diagnostic("the manifest's tensor table does not list the file's tensors", obj=where))
    tensors = read_tensors(header)
    digests = hash_tensors(tensors)
    for key, tensor in tensors.items():
        if digests[key] != manifest["tensors"][key]:
            raise BundleError(Diagnostic(
                f"tensor '{key}' does not match its sha256 in the manifest", obj=where,
                hint="the file was changed or corrupted after it was written; use an intact copy"))
        if expected[key].index:
            _check_indices(where, key, tensor, plan)
    check_finite(where, tensors)
    return Bundle(header.path, manifest, tensors)


def _checked_manifest(header: Any) -> dict[str, Any]:
    """Parses the manifest from a safetensors header through the one gate (:mod:`.manifest_schema`)."""
    where = str(header.path)
    raw = header.metadata.get(MANIFEST_KEY)
    if raw is None:
        raise BundleError(Diagnostic(
            "not an adaptlang bundle: a safetensors file without an adaptlang manifest", obj=where,
            hint="a PEFT adapter folder can be converted with `adaptc import-peft DIR`"))
    return parse_manifest(raw, where)


def check_bundle_tensors(where: str, tensors: dict[str, torch.Tensor], plan: dict[str, Any], task: str) -> None:
    """Checks in-memory tensors against what a task plan implies (keys, shapes, value kinds).

    Raises:
        BundleError: Naming ``where`` and the first tensor that does not fit.
    """
    expected = expected_bundle(plan, [t["name"] for t in plan["tasks"][task]["deltas"]])
    _check_layout(where, {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}, expected)


def _check_layout(where: str, entries: dict[str, tuple[tuple[int, ...], torch.dtype]],
                  expected: dict[str, Any]) -> None:
    """Checks that there are exactly the tensors a plan implies, with their shapes and kinds."""
    missing = sorted(set(expected) - set(entries))
    extra = sorted(set(entries) - set(expected))
    if missing or extra:
        notes = tuple(f"missing: {k}" for k in missing[:5]) + tuple(f"unexpected: {k}" for k in extra[:5])
        raise BundleError(Diagnostic("the bundle's tensors do not match its task plan", obj=where, notes=notes))
    for key, spec in expected.items():
        shape, dtype = entries[key]
        if shape != spec.shape:
            raise BundleError(Diagnostic(
                f"tensor '{key}' has shape {shape}, the task plan implies {spec.shape}", obj=where))
        if spec.index != (dtype == torch.int64) or (not spec.index and not dtype.is_floating_point):
            want = "int64 positions" if spec.index else "floating-point values"
            raise BundleError(Diagnostic(f"tensor '{key}' has dtype {dtype}, expected {want}", obj=where))


def _check_indices(where: str, key: str, indices: torch.Tensor, plan: dict[str, Any]) -> None:
    """Checks sparse positions: strictly increasing and inside the parameter."""
    delta, path, _ = split_key(key)
    site = next(s for s in plan["deltas"][delta]["sites"] if s["path"] == path)
    numel = 1
    for d in site["shape"]:
        numel *= int(d)
    ok = indices.numel() == 0 or (int(indices.min()) >= 0 and int(indices.max()) < numel)
    if not ok or (indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all())):
        raise BundleError(Diagnostic(
            f"sparse positions '{key}' are not sorted, distinct and within the parameter's {numel} entries",
            obj=where))
