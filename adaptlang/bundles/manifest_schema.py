"""The one gate every bundle manifest passes: JSON limits, a pydantic schema, the plan's schema, value ranges.

A manifest comes from a stranger's file. :func:`parse_manifest` reads it in
this order, and each step's failure is a
:class:`~adaptlang.errors.BundleError` naming the file and the field
(``manifest field task_plan.deltas.attn.sites[0].alpha: ...``):

1. the JSON text: nesting at most :data:`~adaptlang.limits.BUNDLE_MAX_JSON_DEPTH`,
   no ``NaN``/``Infinity``/overflowing numbers anywhere
   (:mod:`adaptlang.bundles.safejson`);
2. the format version (a newer one is refused before its fields are judged);
3. :class:`Manifest`, a pydantic model of every field ``docs/bundles.md``
   lists, with their JSON types (strict: ``"5"`` is no number, ``true`` no
   integer); fields a newer adaptlang adds are allowed;
4. the task plan against the plan layer's published schema and counts
   (:meth:`adaptlang.plan.plan.Plan.from_json`), and its ``plan_sha256``;
5. the plan's property values against the language's own ranges
   (:mod:`adaptlang.spec.values`: ``rank`` a positive whole number,
   ``dropout`` in [0, 1), ...), task weights positive, and real values at most
   :data:`~adaptlang.limits.BUNDLE_MAX_PROPERTY_MAGNITUDE` in size (an
   ``alpha 1e308`` makes every output NaN and a merge write NaN);
6. the spec section against its sha256 values, the optional training record.

The on-disk format is unchanged: every bundle written so far passes.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adaptlang.bundles.manifest import BUNDLE_FORMAT, sha256_text
from adaptlang.bundles.safejson import first_error, parse_json
from adaptlang.bundles.training_record import check_training_record
from adaptlang.errors import AdaptError, BundleError, Diagnostic, Span
from adaptlang.limits import BUNDLE_MAX_PROPERTY_MAGNITUDE

__all__ = ["Manifest", "check_plan_values", "check_real", "language_check", "parse_manifest", "validate_manifest"]

#: Task names are identifiers, so ``<task>.safetensors`` is always a plain file name.
TASK_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Lenient(BaseModel):
    """Strict JSON types; unknown fields allowed (a newer adaptlang may add some)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class SpecSection(_Lenient):
    """The ``spec`` section: the source the task was compiled from."""

    path: str
    sha256: str
    sources: dict[str, str]
    source_sha256: dict[str, str] = Field(default_factory=dict)
    overrides: dict[str, float] = Field(default_factory=dict)


class ModelSection(_Lenient):
    """The ``model`` section: the plan's model section plus the recorded module structure."""

    fingerprint: str
    structure: dict[str, str] = Field(default_factory=dict)


class Manifest(_Lenient):
    """A bundle manifest (``docs/bundles.md``, "The manifest")."""

    bundle_format: int
    adaptlang_version: str
    task: str = Field(pattern=TASK_PATTERN)
    spec: Optional[SpecSection]
    plan_sha256: str
    task_plan: dict[str, Any]
    model: ModelSection
    dtype: Optional[str] = None
    tensors: dict[str, str]
    training: Optional[dict[str, Any]] = None


def _refuse(where: str, field: str, message: str, hint: str | None = None,
            notes: tuple[str, ...] = ()) -> BundleError:
    return BundleError(Diagnostic(f"manifest field {field}: {message}", obj=where, notes=notes,
                                  hint=hint or "the manifest was edited or corrupted; use an intact copy"))


def parse_manifest(raw: str, where: str) -> dict[str, Any]:
    """Parses and checks a manifest's JSON text (steps 1-6 of the module docstring).

    Raises:
        BundleError: Naming ``where`` and the first field at fault.
    """
    return validate_manifest(parse_json(raw, where, "the adaptlang manifest"), where)


def validate_manifest(data: Any, where: str) -> dict[str, Any]:
    """Checks parsed manifest data (steps 2-6 of the module docstring); returns it unchanged.

    Raises:
        BundleError: Naming ``where`` and the first field at fault.
    """
    if not isinstance(data, dict):
        raise BundleError(Diagnostic("the adaptlang manifest is not a JSON object", obj=where))
    version = data.get("bundle_format")
    if isinstance(version, int) and not isinstance(version, bool) and version > BUNDLE_FORMAT:
        shown = data.get("adaptlang_version")
        shown = shown if isinstance(shown, str) and len(shown) < 40 else "a newer version"
        raise BundleError(Diagnostic(
            f"bundle format {version} is newer than this adaptlang reads ({BUNDLE_FORMAT})", obj=where,
            hint=f"upgrade adaptlang (this bundle was written by adaptlang {shown})"))
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        field, message = first_error(exc.errors())
        raise _refuse(where, field, message,
                      notes=(f"{exc.error_count()} problem(s) in all",) if exc.error_count() > 1 else ()) from None
    if manifest.bundle_format < 1:
        raise _refuse(where, "bundle_format", f"{manifest.bundle_format} is not a bundle format")
    plan = _check_plan(where, data["task_plan"], manifest.task)
    if manifest.model.fingerprint != plan.model["fingerprint"]:
        raise BundleError(Diagnostic("the manifest's model fingerprint differs from its task plan's", obj=where))
    _check_spec(where, manifest.spec)
    if data.get("training") is not None:  # optional: bundles saved outside `adaptc train` have none
        check_training_record(data["training"], where, writing=False)
    return data


def _check_plan(where: str, task_plan: dict[str, Any], task: str) -> Any:
    """Checks the task plan: the plan layer's schema and hash, its one task, the language's ranges."""
    from adaptlang.plan.plan import Plan

    try:
        plan = Plan.from_json(task_plan)
    except AdaptError as exc:
        diag = exc.diagnostics[0]
        # The plan validator's lines read "$.deltas.attn.sites[0]: missing 'rank'": name the manifest's field.
        notes = tuple(n.replace("$", "task_plan", 1) if n.startswith("$") else n for n in diag.notes)
        raise _refuse(where, "task_plan", diag.message, notes=notes) from None
    if list(plan.tasks) != [task]:
        raise BundleError(Diagnostic(f"the manifest's task plan holds tasks {list(plan.tasks)}, not ['{task}']",
                                     obj=where))
    problem = check_plan_values(task_plan)
    if problem is not None:
        field, message = problem
        raise _refuse(where, f"task_plan.{field}", message)
    return plan


def check_real(value: int | float, what: str) -> str | None:
    """Returns why a real value read from a file is too large to use, or None.

    Compared without converting to float first: a JSON integer of 400 digits
    would overflow ``float()``.
    """
    if abs(value) > BUNDLE_MAX_PROPERTY_MAGNITUDE:
        shown = f"{value:g}" if isinstance(value, float) else (str(value) if len(str(value)) < 20 else "(huge)")
        return (f"{what} {shown} is larger than the limit BUNDLE_MAX_PROPERTY_MAGNITUDE = "
                f"{BUNDLE_MAX_PROPERTY_MAGNITUDE:g}")
    return None


def language_check(prop: Any, value: Any) -> str | None:
    """Runs one of the language's numeric property checks on a plain number; returns its complaint."""
    from adaptlang.spec.values import ValueProblem
    from adaptlang.syntax import ast

    node = ast.Number(value=value, text=repr(value), span=Span("<bundle>", 1, 1, 1, 1))
    try:
        prop.check(node, {})
    except ValueProblem as exc:
        return exc.message
    return None


def check_plan_values(plan: dict[str, Any]) -> tuple[str, str] | None:
    """Checks a schema-valid plan's numeric site properties and task weights against the language's ranges.

    The ranges are the spec layer's own (:data:`adaptlang.spec.values.PROPERTY_TYPES`),
    applied to the plan's values as if written in a spec; real values are also
    bounded by :data:`~adaptlang.limits.BUNDLE_MAX_PROPERTY_MAGNITUDE`.

    Returns:
        ``(field path within the plan, problem)`` of the first value out of range, or None.
    """
    from adaptlang.spec.values import DENSITY, DROPOUT, NUMBER, POS_INT, POS_NUMBER, PROPERTY_TYPES, REDUCTION, SEED

    integral, real = (POS_INT, SEED), (POS_NUMBER, NUMBER, DROPOUT, DENSITY, REDUCTION)
    for name, delta in plan["deltas"].items():
        types = PROPERTY_TYPES.get(delta["kind"], {})
        for i, site in enumerate(delta["sites"]):
            for key, value in site.items():
                prop = types.get(key)
                if prop is None or isinstance(value, (str, bool)) or value is None:
                    continue  # not a language property (widths, paths), or an enum the plan schema checked
                if prop in integral or prop in real:
                    # Magnitude first: the language's real checks call float(), which overflows on huge ints.
                    problem = check_real(value, key) if prop in real else None
                    problem = problem or language_check(prop, value)
                    if problem is not None:
                        return f"deltas.{name}.sites[{i}].{key}", problem
    for name, task in plan["tasks"].items():
        for i, term in enumerate(task["deltas"]):
            problem = check_real(term["weight"], "weight") or language_check(POS_NUMBER, term["weight"])
            if problem is not None:
                return f"tasks.{name}.deltas[{i}].weight", problem.replace("a number > 0", "a task weight > 0")
    return None


def _check_spec(where: str, spec: SpecSection | None) -> None:
    """Checks the recorded spec source against its sha256 values."""
    if spec is None:
        return
    if spec.path not in spec.sources:
        raise _refuse(where, "spec.path", f"'{spec.path[:80]}' is not one of the recorded sources")
    if sha256_text(spec.sources[spec.path]) != spec.sha256:
        raise BundleError(Diagnostic(
            f"the recorded spec '{spec.path}' does not match its sha256", obj=where,
            hint="the manifest was edited or corrupted; use an intact copy of the bundle"))
    for name, digest in spec.source_sha256.items():
        if name not in spec.sources or sha256_text(spec.sources[name]) != digest:
            raise BundleError(Diagnostic(f"the recorded spec file '{name}' does not match its sha256", obj=where))
